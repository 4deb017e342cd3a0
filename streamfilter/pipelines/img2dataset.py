"""img2dataset shard sets as one unit: ``00000.tar``, ``00000.parquet`` and ``00000_stats.json`` together.

The Parquet decides: it holds every input row (failed downloads too), and the
rule is applied to its key columns. The rows it matches leave the Parquet, the
samples whose ``key`` they name leave the tar, and ``_stats.json`` has its counts
lowered by what left, its other fields kept. A set without a match is copied
(server-side when it can be) or, in place, left alone: its tar is never read.

A tar with matches is rewritten by streaming it (the WebDataset pipeline with the
Parquet as sidecar), or, when input and output are on one S3 endpoint, assembled
from server-side copies of its kept byte ranges, so that only the bytes around
each cut travel (the tar is still read once, to find where its samples lie).

The three outputs are written tar, Parquet, stats, then the receipt. A set cut
short between them is redone whole by the next run: its decision depends on the
input Parquet only, so the result is the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import pyarrow as pa
import pyarrow.compute as pc

from ..concurrency import gather_limited
from ..errors import ShardError, StreamfilterError, redact_uri
from ..formats.parquet import ParquetShard
from ..formats.webdataset import BLOCK, RECORD, TarReader
from ..keys import KeySpec, as_bytes, require_columns
from ..progress import Progress
from ..sets import ExactKeySet
from ..shard_io import FoundClean, OpenedFiles, RunContext, rewrite
from ..store import Refused
from ..store.uris import sibling
from . import Counts, Filter, ShardFiles, ShardTools, pipeline_for
from .tar_images import ImageKeys
from .webdataset import SidecarKeys, kept_runs, sidecar_rows

if TYPE_CHECKING:
    from ..ledger import ShardReport
    from ..plan import Shard
    from ..store import ObjectInfo

STATS_SUFFIX = "_stats.json"
#: S3's minimum part: what assembling a tar from copied ranges may move around each cut.
ASSEMBLY_PART = 5 * 1024 * 1024
#: img2dataset's ``status`` for a row whose image is in the tar.
SUCCESS = "success"


@dataclasses.dataclass
class Decision:
    rows: int
    removed_rows: int
    #: How many removed rows had each status (``success``, ``failed_to_download``, …).
    removed_status: Counter
    #: How many removed rows had each ``status_dict`` key: ``success``, or the failure's error message.
    removed_reasons: Counter
    #: The samples' keys, for the tar (None when the Parquet has no ``key`` column, or nothing goes).
    sidecar: SidecarKeys | None = None


def decide(files: ShardFiles, tools: ShardTools, expected: int | None = None) -> Decision:
    """Match the Parquet's key columns (and read its ``key`` and ``status``); nothing of the tar.

    ``expected``: the rows that must match (decided by images: one a sample that matched)."""
    name = files.name
    shard = ParquetShard(files.source, name)
    require_columns(shard.schema, tools.rule.key, name)
    extra = [c for c in ("key", "status", "error_message") if c in shard.schema.names]
    columns = list(dict.fromkeys([*tools.rule.key.columns, *extra]))
    rows = removed = 0
    status: Counter = Counter()
    reasons: Counter = Counter()
    keyed: list[tuple[pa.Table, pa.Array]] = []  # made into Python sets only if something goes
    for table in shard.row_groups(columns, use_threads=False):
        tools.check_cancelled(name)
        drop = pc.invert(tools.rule.keep_mask(table, name))
        rows += table.num_rows
        tools.progress.add(table.num_rows, 0)
        n = drop.true_count
        removed += n
        if n and "status" in table.column_names:
            status.update(_value_counts(table.column("status").filter(drop)))
            reasons.update(_value_counts(_status_dict_keys(table.filter(drop))))
        if "key" in table.column_names:
            keyed.append((table.select(["key"]), drop))
    if expected is not None and removed != expected:
        raise ShardError(
            f"{name}: {expected:,} samples of its tar matched by image, but {removed:,} Parquet rows have their "
            "keys, so the shard set is inconsistent; regenerate it or check its files"
        )
    sidecar = None
    if removed and "key" in extra:
        known: list[str] = []
        dropped: list[str] = []
        for table, drop in keyed:
            table_known, table_dropped = sidecar_rows(table, drop, name)
            known += table_known
            dropped += table_dropped
        sidecar = SidecarKeys(name, tools, known, dropped, name)
    return Decision(rows, removed, status, reasons, sidecar)


def by_images(files: ShardFiles, tools: ShardTools) -> tuple[ShardTools, dict]:
    """Hash the tar's images; returns tools whose rule removes the Parquet rows of the samples that
    matched (by the ``key`` column, exactly), and the images' tally for the report."""
    keys = ImageKeys(files, tools)
    counts = Counts(members_in=0, members_out=0, unkeyed=0)
    for _ in kept_runs(TarReader(files.source, files.name), keys, counts, tools):
        pass
    removed = ExactKeySet(as_bytes(pa.array(keys.removed_keys, pa.large_string())))
    rule = Filter(KeySpec(("key",)), removed, "deny")
    # The hashing pass counted the set's rows in the live progress; the Parquet's passes would again.
    return dataclasses.replace(tools, rule=rule, progress=Progress.silent()), keys.tally


def _value_counts(values: pa.ChunkedArray | pa.Array) -> Counter:
    counts = pc.value_counts(values.cast(pa.large_string()).fill_null("")).to_pylist()
    return Counter({c["values"]: c["counts"] for c in counts})


def _status_dict_keys(removed: pa.Table) -> pa.ChunkedArray:
    """The key each row has in ``status_dict``: img2dataset counts a success as ``success`` and a
    failure by its error message (``HTTP Error 404: Not Found``), the row's ``error_message``."""
    status = removed.column("status").cast(pa.large_string())
    if "error_message" not in removed.column_names:
        return status
    message = removed.column("error_message").cast(pa.large_string())
    return pc.if_else(pc.equal(status, SUCCESS), status, pc.coalesce(message, status))


def updated_stats(data: bytes, decision: Decision, name: str) -> bytes:
    """``_stats.json`` with ``count``, ``successes`` and the failure counts lowered by what was removed."""
    try:
        stats: dict[str, Any] = json.loads(data)
        if not isinstance(stats, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise ShardError(f"{name} is not a JSON object ({exc}); check the shard set's stats file") from None
    lowered = {"count": decision.removed_rows, "successes": decision.removed_status.get(SUCCESS, 0)}
    for status in ("failed_to_download", "failed_to_resize"):
        lowered[status] = decision.removed_status.get(status, 0)
    for field, n in lowered.items():
        if isinstance(stats.get(field), int):
            stats[field] -= n
    status_dict = stats.get("status_dict")
    if isinstance(status_dict, dict):
        for reason, n in decision.removed_reasons.items():
            if isinstance(status_dict.get(reason), int):
                status_dict[reason] -= n
                if status_dict[reason] <= 0:  # img2dataset lists only what occurred
                    del status_dict[reason]
    return (json.dumps(stats, indent=4) + "\n").encode()


def kept_spans(files: ShardFiles, tools: ShardTools, keys: SidecarKeys) -> tuple[list[tuple[int, int]], Counts]:
    """Walk the tar's headers and return the byte ranges of its kept samples, merged, and the counts."""
    reader = TarReader(files.source, files.name)
    counts = Counts(members_in=0, members_out=0, unkeyed=0)
    spans: list[tuple[int, int]] = []
    for start, end in kept_runs(reader, keys, counts, tools):
        if spans and spans[-1][1] == start:  # a run cut only by a batch boundary
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans, counts


def tar_tail(length: int) -> bytes:
    """The end-of-archive blocks after ``length`` bytes of members, padded to a whole record."""
    return bytes(2 * BLOCK + (-(length + 2 * BLOCK) % RECORD))


async def process_set(
    shard: Shard, ctx: RunContext, info: ObjectInfo, report: ShardReport, opened: OpenedFiles
) -> ObjectInfo | FoundClean:
    """Filter one shard set; returns the output tar (what the receipt records), or, for a set without a
    match, what to copy."""
    assert shard.output is not None
    label = redact_uri(shard.input)
    stores, tools = ctx.stores, ctx.tools
    # What the listing said of the siblings, or a HEAD of each, both at once.
    suffixes = [".parquet", STATS_SUFFIX]
    parquet_info, stats_info = await gather_limited(suffixes, lambda s: _sibling_info(stores, shard, s, label), 2)
    siblings = [(parquet_info, sibling(shard.output, ".parquet")), (stats_info, sibling(shard.output, STATS_SUFFIX))]
    parquet_files = ShardFiles(opened.open(parquet_info), None, redact_uri(parquet_info.uri), _no_sibling)
    expected = None
    if tools.rule.key.image != "none":  # the images decide: the tar is hashed, and its Parquet follows
        tar_files = ShardFiles(opened.open(info), None, label, opened.sibling_opener(shard.input))
        async with ctx.cpu_slots:
            tools, report.images = await anyio.to_thread.run_sync(by_images, tar_files, tools)
        ctx, expected = dataclasses.replace(ctx, tools=tools), tools.rule.key_set.size
    decision = await anyio.to_thread.run_sync(decide, parquet_files, tools, expected)
    report.rows_in, report.rows_out = decision.rows, decision.rows - decision.removed_rows
    if ctx.on_scanned is not None:
        ctx.on_scanned(decision.removed_rows == 0)
    if decision.removed_rows == 0 and ctx.spec.scan:
        return FoundClean([(info, shard.output), *siblings])
    async with ctx.cpu_slots:
        return await _rewrite_set(shard, ctx, info, report, opened, decision, siblings)


async def _rewrite_set(
    shard: Shard,
    ctx: RunContext,
    info: ObjectInfo,
    report: ShardReport,
    opened: OpenedFiles,
    decision: Decision,
    siblings: list[tuple[ObjectInfo, str]],
) -> ObjectInfo:
    """A set with matches: the tar, then the Parquet, then the stats (``siblings``: their inputs and outputs)."""
    assert shard.output is not None
    label = redact_uri(shard.input)
    stores, tools = ctx.stores, ctx.tools
    (parquet_info, parquet_out), (stats_info, stats_out) = siblings
    parquet_in, stats_in = parquet_info.uri, stats_info.uri
    # The tar: streamed through the WebDataset pipeline, or assembled from copies on one S3 endpoint.
    tar_store, out_store = stores.for_uri(shard.input), stores.for_uri(shard.output)
    tar_files = ShardFiles(opened.open(info), None, label, opened.sibling_opener(shard.input))
    sidecar_tools = dataclasses.replace(tools, sidecar="parquet")
    # The decision read the sample keys already; only a Parquet without them (an error) is read again.
    keys = decision.sidecar or await anyio.to_thread.run_sync(SidecarKeys.read, tar_files, sidecar_tools)
    tar_files.state["sidecar_keys"] = keys
    # Assembly moves up to a part (5 MiB) each way per cut; with cuts denser than that, streaming the
    # tar moves less (measured: 250 cuts in a 21 MiB tar moved 1.6x the bytes of a streamed rewrite).
    cuts = decision.removed_status.get(SUCCESS, decision.removed_rows)
    assembled = walked = None
    if tar_store is out_store and out_store.ranged_copy and cuts * 2 * ASSEMBLY_PART < info.size:
        spans, counts = walked = await anyio.to_thread.run_sync(kept_spans, tar_files, sidecar_tools, keys)
        length = sum(end - start for start, end in spans)
        with contextlib.suppress(Refused):  # the store has learned it: this set and the next are streamed
            assembled = await out_store.assemble(info, spans, tar_tail(length), shard.output)
    if assembled is not None:
        written, fetched = assembled
        report.bytes_read += fetched
        report.output_via = "assembled"
    else:
        if walked is not None:  # the walk for the assembly read the tar: stream it from its start
            tar_files = ShardFiles(opened.open(info), None, label, opened.sibling_opener(shard.input))
            tar_files.state["sidecar_keys"] = keys
        counts, written = await rewrite(shard, ctx, pipeline_for("webdataset"), tar_files, sidecar_tools)
        report.output_via = "rewrite"
    report.members_in, report.members_out, report.unkeyed = counts.members_in, counts.members_out, counts.unkeyed
    # The Parquet: the same rule on the same rows.
    parquet_shard = dataclasses.replace(shard, input=parquet_in, output=parquet_out)
    parquet_files = ShardFiles(opened.open(parquet_info), None, redact_uri(parquet_in), _no_sibling)
    parquet_counts, parquet_written = await _rewrite_parquet(parquet_shard, ctx, parquet_files)
    if (parquet_counts.rows_in, parquet_counts.rows_out) != (report.rows_in, report.rows_out):
        raise ShardError(f"{redact_uri(parquet_in)} changed while it was filtered; rerun")
    report.removed_by, report.kept_by = parquet_counts.removed_by, parquet_counts.kept_by
    stats_data = await stores.for_uri(stats_in).read_range(stats_in, 0, stats_info.size)  # its size is known
    stats_bytes = updated_stats(stats_data, decision, redact_uri(stats_in))
    stats_written = await stores.for_uri(stats_out).put(stats_out, stats_bytes)
    report.bytes_written = written.size + parquet_written.size + stats_written.size
    report.bytes_saved = info.size + parquet_info.size + stats_info.size - report.bytes_written
    return written


async def _rewrite_parquet(shard: Shard, ctx: RunContext, files: ShardFiles) -> tuple[Counts, ObjectInfo]:
    return await rewrite(shard, ctx, pipeline_for("parquet"), files, ctx.tools)


async def _sibling_info(stores: Any, shard: Shard, suffix: str, label: str) -> ObjectInfo:
    if suffix in shard.siblings:
        return shard.siblings[suffix]
    uri = sibling(shard.input, suffix)
    try:
        return await stores.for_uri(uri).stat(uri)
    except StreamfilterError as exc:
        raise ShardError(
            f"{label}: its shard set is incomplete ({exc}); an img2dataset shard needs its .tar, .parquet "
            f"and {STATS_SUFFIX} side by side"
        ) from None


def _no_sibling(extension: str) -> Any:
    raise ShardError(f"no {extension} beside a Parquet of a shard set")


def filter_shard(files: ShardFiles, tools: ShardTools) -> Counts:
    """A dry run of a set counts its Parquet's matches (``run`` processes sets through :func:`process_set`)."""
    parquet = files.open_sibling(".parquet")
    expected, images = None, None
    if tools.rule.key.image != "none":
        tools, images = by_images(files, tools)
        expected = tools.rule.key_set.size
    decision = decide(ShardFiles(parquet, None, files.name, _no_sibling), tools, expected)
    return Counts(rows_in=decision.rows, rows_out=decision.rows - decision.removed_rows, images=images)
