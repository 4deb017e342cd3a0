"""WebDataset tar shards: samples decided in batches, kept members copied byte for byte.

A sample's key comes from its ``.json`` member (the ``--key`` fields, dotted
paths allowed, read as in JSON Lines), or with ``--sidecar parquet`` from the
img2dataset Parquet beside the tar: the rule decides each Parquet row, and the
samples whose ``key`` is in a removed row go. A sample with no usable key (no
``.json``, JSON that does not parse, a missing field, a key absent from the
sidecar, a member without an extension) fails the shard, or with
``--on-unkeyed keep`` is kept and counted. The sample key is WebDataset's (the
member path without extensions), compared with the sidecar's ``key`` as is.
With ``--image-hash pdq`` the sample's image decides instead (see :mod:`.tar_images`);
then the tar is scanned first (every image hashed) and copied if nothing matched.

Samples are decided ``BATCH_SAMPLES`` at a time (one ``keep_mask`` call each), or
sooner when the batch holds ``BATCH_BYTES`` of archive; runs of kept samples are
contiguous in the input and written as single spans.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ShardError
from ..formats.parquet import ParquetShard
from ..formats.webdataset import Sample, TarReader, TarWriter
from ..keys import require_columns
from ..progress import Progress
from ..store.uris import sibling
from . import Counts, ShardFiles, ShardTools
from .jsonl import KeyBatch, parse_json
from .tar_images import ImageKeys

BATCH_SAMPLES = 512
BATCH_BYTES = 64 * 1024 * 1024
_KEEP = "pass --on-unkeyed keep to keep such samples"


class JsonKeys:
    """Keys from each sample's ``.json`` member."""

    meta: str | None = "json"
    #: A .json member too large to read whole fails the shard (see ``TarReader.members``).
    oversized = "fail"

    def __init__(self, files: ShardFiles, tools: ShardTools) -> None:
        self.name, self.tools = files.name, tools

    def decide(self, batch: list[Sample]) -> tuple[np.ndarray, int]:
        """Keep (True) or drop per sample of ``batch``, and how many were kept unkeyed."""
        keys = KeyBatch(self.tools.rule.key.columns)
        unkeyed = 0
        for i, sample in enumerate(batch):
            if sample.structural:
                continue
            problem = None
            if sample.key is None:
                problem = "has no extension, so it belongs to no sample"
            elif sample.meta is None:
                problem = "has no .json member"
            else:
                try:
                    doc = parse_json(sample.meta)
                except ValueError:
                    problem = "has a .json member that is not JSON"
                else:
                    missing = keys.add(i, doc)
                    if missing is not None:
                        problem = f"has no usable {missing!r} in its .json (missing, null, an object or an array)"
            if problem is not None:
                if self.tools.on_unkeyed != "keep":
                    what = f"sample {sample.key!r}" if sample.key is not None else f"member {sample.first!r}"
                    raise ShardError(f"{self.name}: {what} {problem}; fix the shard, choose --key, or {_KEEP}")
                unkeyed += 1
        keep = np.ones(len(batch), bool)
        if keys.rows:
            keep[keys.rows] = keys.keep(self.tools.rule, self.name)
        return keep, unkeyed


def sidecar_rows(table: pa.Table, drop: pa.Array, sidecar: str) -> tuple[list[str], list[str]]:
    """The sample keys a sidecar table names, and those of its rows to ``drop``."""
    try:
        keys = table.column("key").cast(pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise ShardError(f"{sidecar}: its 'key' column is not text; check the Parquet") from None
    return keys.drop_null().to_pylist(), keys.filter(drop).drop_null().to_pylist()


class SidecarKeys:
    """Keys through the img2dataset Parquet beside the tar: its ``key`` column names the samples."""

    meta: str | None = None
    oversized = "fail"  # reads no member's data

    def __init__(self, name: str, tools: ShardTools, known: list[str], removed: list[str], sidecar: str) -> None:
        """From the sidecar's keys (``known``) and those of the rows the rule removes; a key twice is an error."""
        self.name, self.tools = name, tools
        self.known = set(known)
        if len(self.known) != len(known):
            seen: set[str] = set()
            twice = next(k for k in known if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            raise ShardError(
                f"{sidecar}: key {twice!r} is on more than one row, so rows cannot be told apart; fix the Parquet"
            )
        self.removed = set(removed)

    @classmethod
    def read(cls, files: ShardFiles, tools: ShardTools) -> SidecarKeys:
        """Read the sidecar beside ``files``: only ``key`` and the key columns."""
        rule = tools.rule
        sidecar = sibling(files.name, ".parquet")
        try:
            file = files.open_sibling(".parquet")
        except ShardError as exc:
            raise ShardError(
                f"{files.name}: its sidecar Parquet {sidecar} cannot be opened ({exc}); put it beside the tar "
                "or leave out --sidecar"
            ) from None
        shard = ParquetShard(file, sidecar)
        if "key" not in shard.schema.names:
            raise ShardError(f"{sidecar} has no 'key' column, so it is not an img2dataset shard Parquet; check it")
        require_columns(shard.schema, rule.key, sidecar)
        columns = list(dict.fromkeys(["key", *rule.key.columns]))
        known: list[str] = []
        removed: list[str] = []
        for table in shard.row_groups(columns, use_threads=False):
            tools.check_cancelled(files.name)
            table_known, table_removed = sidecar_rows(table, pc.invert(rule.keep_mask(table, sidecar)), sidecar)
            known += table_known
            removed += table_removed
        return cls(files.name, tools, known, removed, sidecar)

    def decide(self, batch: list[Sample]) -> tuple[np.ndarray, int]:
        keep = np.ones(len(batch), bool)
        unkeyed = 0
        for i, sample in enumerate(batch):
            if sample.structural:
                continue
            if sample.key is None or sample.key not in self.known:
                if self.tools.on_unkeyed != "keep":
                    what = f"sample {sample.key!r}" if sample.key is not None else f"member {sample.first!r}"
                    raise ShardError(f"{self.name}: {what} is not in its sidecar Parquet's 'key' column; {_KEEP}")
                unkeyed += 1
            elif sample.key in self.removed:
                keep[i] = False
        return keep, unkeyed


Keys = JsonKeys | SidecarKeys | ImageKeys


def filter_shard(files: ShardFiles, tools: ShardTools) -> Counts:
    """Filter one tar shard; without a sink only counts (and members larger than a read chunk go unread)."""
    # An img2dataset set hands over the sidecar keys it already read with its decision.
    keys = files.state.get("sidecar_keys")
    if keys is None:
        keys = _keys_for(files, tools)
    if isinstance(keys, ImageKeys) and keys.removed_starts is not None:
        tools = dataclasses.replace(tools, progress=Progress.silent())  # the scan counted these rows already
    reader = TarReader(files.source, files.name)
    counts = Counts(members_in=0, members_out=0, unkeyed=0)
    if files.sink is None:
        for _ in kept_runs(reader, keys, counts, tools):
            pass
    else:
        writer = TarWriter(files.sink)
        for start, end in kept_runs(reader, keys, counts, tools):
            reader.copy(start, end, writer.write)
        writer.close()
    if isinstance(keys, ImageKeys):
        counts.images = keys.tally
        counts.unkeyed += keys.earlier_unkeyed  # type: ignore[operator]
    return counts


def _keys_for(files: ShardFiles, tools: ShardTools) -> Keys:
    if tools.rule.key.image != "none":
        return ImageKeys(files, tools)
    return SidecarKeys.read(files, tools) if tools.sidecar == "parquet" else JsonKeys(files, tools)


def scans(tools: ShardTools) -> bool:
    """Tars are scanned only when keyed by image: hashing is the cost, and the rewrite reuses its decisions."""
    return tools.rule.key.image != "none"


def scan_shard(files: ShardFiles, tools: ShardTools) -> Counts | None:
    """Hash every sample's image: the counts if none goes, else None (decisions left for the rewrite)."""
    keys = ImageKeys(files, tools)
    counts = Counts(members_in=0, members_out=0, unkeyed=0)
    for _ in kept_runs(TarReader(files.source, files.name), keys, counts, tools):
        pass
    counts.images = keys.tally
    if counts.rows_out == counts.rows_in:
        return counts
    keys.keep_for_rewrite(files, counts.unkeyed)  # type: ignore[arg-type]
    return None


def kept_runs(reader: TarReader, keys: Keys, counts: Counts, tools: ShardTools) -> Iterator[tuple[int, int]]:
    """The byte ranges of the kept samples, adjacent ones merged, decided a batch at a time.

    A range's bytes stay readable through ``reader`` until the generator is resumed: the
    batch is released only after its last range was taken. ``counts`` is kept up to date.
    """
    batch: list[Sample] = []
    for sample in reader.samples(meta=keys.meta, oversized=keys.oversized):
        batch.append(sample)
        if len(batch) >= BATCH_SAMPLES or reader.held_bytes >= BATCH_BYTES:
            yield from _decide(batch, keys, reader, counts, tools)
            batch = []
    if batch:
        yield from _decide(batch, keys, reader, counts, tools)


def _decide(
    batch: list[Sample], keys: Keys, reader: TarReader, counts: Counts, tools: ShardTools
) -> Iterator[tuple[int, int]]:
    tools.check_cancelled(reader.name)
    reader.verify()  # decide nothing on a corrupt header
    keep, unkeyed = keys.decide(batch)
    rows_before = counts.rows_in
    run: tuple[int, int] | None = None
    for sample, kept in zip(batch, keep.tolist(), strict=True):
        counts.members_in += sample.members  # type: ignore[operator]
        if not sample.structural:
            counts.rows_in += 1
            counts.rows_out += kept
        if not kept:
            continue
        counts.members_out += sample.members  # type: ignore[operator]
        if run is not None and run[1] == sample.start:
            run = (run[0], sample.end)
        else:
            if run is not None:
                yield run
            run = (sample.start, sample.end)
    if run is not None:
        yield run
    counts.unkeyed += unkeyed  # type: ignore[operator]
    tools.progress.add(counts.rows_in - rows_before, batch[-1].end - batch[0].start)
    reader.release(batch[-1].end)
