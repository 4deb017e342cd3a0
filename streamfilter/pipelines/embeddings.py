"""CLIP embedding sets as one unit: ``metadata_N.parquet`` with ``img_emb_N.npy`` and ``text_emb_N.npy``.

Row i of the metadata describes row i of each .npy, so a removal that cleans the
metadata alone leaves the removed images findable in every kNN index built from
the vectors. The metadata decides, with the same rule as any Parquet shard; the
same rows leave it and every .npy beside it.

A .npy row is a fixed number of bytes, so the vectors are never decoded: the
metadata's decision gives the byte ranges to keep. On one S3 endpoint each .npy
output is assembled from server-side copies of those ranges, with its rewritten
header uploaded as the first piece; between local files the kernel copies the
ranges after the new header (``copy_file_range``, whatever their number); elsewhere
(or when the endpoint refuses UploadPartCopy, or the cuts are too dense for copies
to pay) it is streamed in bounded chunks of whole rows. A set without a match is copied, or in place left
alone; its vectors are never read.

Outputs are written vectors first, metadata last, then the engine's receipt: a set
cut short is redone whole by the next run, with the same result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import numpy as np
import pyarrow as pa

from ..concurrency import gather_limited
from ..errors import ShardError, StreamfilterError, redact_uri
from ..formats.embedding_set import KINDS, is_member, kind_folder, member
from ..formats.npy import FIRST_BYTES, NpyHeader, header_length, kept_byte_ranges, parse_header, rewritten_header
from ..formats.parquet import ParquetShard
from ..keys import require_columns
from ..ledger import ShardReport
from ..removed_ids import attach
from ..sets.arrays import as_mask, from_numpy
from ..shard_io import FoundClean, OpenedFiles, RunContext, rewrite
from ..store import Refused
from . import Counts, Filter, ShardFiles, ShardTools, pipeline_for
from .npy_stream import stream_rows

if TYPE_CHECKING:
    from ..plan import Shard
    from ..store import ObjectInfo, Stores

T = TypeVar("T")

#: S3's minimum part: a rewritten header costs one such piece, every kept range shorter than it is fetched.
ASSEMBLY_PART = 5 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Vectors:
    """One .npy of a set: its kind, the object, and its parsed header."""

    kind: str
    info: ObjectInfo
    header: NpyHeader


def decide(files: ShardFiles, tools: ShardTools) -> np.ndarray:
    """The metadata's keep mask (True: the row stays), from its key columns only."""
    name = files.name
    shard = ParquetShard(files.source, name)
    require_columns(shard.schema, tools.rule.key, name)
    masks = [np.zeros(0, bool)]
    for table in shard.row_groups(list(tools.rule.key.columns), use_threads=False):
        tools.check_cancelled(name)
        masks.append(as_mask(tools.rule.keep_mask(table, name)))
        tools.progress.add(table.num_rows, 0)
    return np.concatenate(masks)


@dataclasses.dataclass(frozen=True)
class Decided(Filter):
    """The metadata's rewrite keeps the rows :func:`decide` kept, the mask handed out a row group at a time:
    the keys are not matched twice, and the metadata loses exactly the rows every .npy loses."""

    keep: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))
    #: Rows handed out so far (a list: the dataclass is frozen, as Filter is).
    cursor: list[int] = dataclasses.field(default_factory=lambda: [0])

    def keep_mask(self, table: pa.Table, source: str) -> pa.Array:
        start = self.cursor[0]
        part = self.keep[start : start + table.num_rows]
        if len(part) != table.num_rows:
            raise ShardError(f"{source} changed while it was filtered; rerun")
        self.cursor[0] = start + table.num_rows
        return from_numpy(part)


def filter_shard(files: ShardFiles, tools: ShardTools) -> Counts:
    """A dry run counts the metadata's matches (``run`` processes sets through :func:`process_set`)."""
    keep = decide(files, tools)
    return Counts(rows_in=len(keep), rows_out=int(keep.sum()))


async def read_header(stores: Stores, info: ObjectInfo, report: ShardReport) -> NpyHeader:
    """Parse a .npy header from its first bytes (one ranged read for what np.save writes)."""
    name = redact_uri(info.uri)
    store = stores.for_uri(info.uri)
    head = await store.read_range(info.uri, 0, min(info.size, FIRST_BYTES))
    if len(head) >= 12 and header_length(head, name) > len(head):
        head += await store.read_range(info.uri, len(head), min(info.size, header_length(head, name)))
    report.bytes_read += len(head)
    return parse_header(head, info.size, name)


async def find_vectors(stores: Stores, metadata: str, report: ShardReport) -> list[Vectors]:
    """The set's .npy files, with their headers (the kinds looked up at once). A kind may be absent from
    the whole root, never from one set."""
    label = redact_uri(metadata)
    kinds = await gather([lambda kind=kind: find_kind(stores, metadata, kind, report) for kind in KINDS])
    found = [v for v in kinds if v is not None]
    if not found:
        raise ShardError(
            f"{label}: no {' or '.join(f'{k}/{k}_N.npy' for k in KINDS)} beside it; an embedding set needs its vectors "
            "(for metadata alone pass --format parquet)"
        )
    return found


async def find_kind(stores: Stores, metadata: str, kind: str, report: ShardReport) -> Vectors | None:
    """The set's ``kind`` .npy and its header; None when no file of that kind lies in its folder."""
    uri = member(metadata, kind)
    try:
        info = await stores.for_uri(uri).stat(uri)
    except StreamfilterError as exc:
        folder = kind_folder(metadata, kind)
        try:
            others = [o for o in await stores.for_uri(folder).list(folder) if is_member(o.uri)]
        except StreamfilterError:
            others = []
        if others:
            raise ShardError(
                f"{redact_uri(uri)} is missing ({exc}) while {len(others)} other {kind} files lie beside it; "
                f"restore it, or the vectors of {redact_uri(metadata)} stay uncleaned"
            ) from None
        return None
    return Vectors(kind, info, await read_header(stores, info, report))


async def vectors_problem(stores: Stores, metadata: str, rows: int) -> str | None:
    """What is wrong with the .npy files of a committed set whose metadata has ``rows`` rows (``verify``):
    one missing where others of its kind lie, a header that does not parse or is refused, a size its
    header does not account for, or a row count other than the metadata's. None when all is well, or
    when no vectors lie beside the metadata at all (it was filtered as Parquet alone)."""
    scratch = ShardReport(metadata, None)
    try:
        found = await gather([lambda kind=kind: find_kind(stores, metadata, kind, scratch) for kind in KINDS])
    except StreamfilterError as exc:
        return str(exc)
    for v in found:
        if v is not None and v.header.rows != rows:
            return f"{redact_uri(v.info.uri)} has {v.header.rows} rows, its metadata {rows}"
    return None


async def gather(steps: list[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run ``steps`` at once; their results in order, or the first failure as itself (not a group), so the
    set fails with that one line, the others cancelled."""
    return await gather_limited(steps, lambda step: step(), max(len(steps), 1), cancel_rest=True)


async def process_set(
    shard: Shard, ctx: RunContext, info: ObjectInfo, report: ShardReport, opened: OpenedFiles
) -> ObjectInfo | FoundClean:
    """Filter one embedding set; returns the metadata output (what the receipt records), or, for a set
    without a match, what to copy."""
    assert shard.output is not None
    label = redact_uri(shard.input)
    files = ShardFiles(opened.open(info), None, label, _no_sibling)
    vectors, keep = await gather(  # the vectors' headers are fetched while the metadata decides
        [
            lambda: find_vectors(ctx.stores, shard.input, report),
            lambda: anyio.to_thread.run_sync(ctx.tools.run, decide, files),
        ]
    )
    for v in vectors:
        if v.header.rows != len(keep):
            raise ShardError(
                f"{redact_uri(v.info.uri)} has {v.header.rows} rows, its metadata {label} has {len(keep)}; the set is "
                "not row-aligned, so no row can be removed safely: regenerate or fix the set"
            )
    kept = int(keep.sum())
    report.rows_in, report.rows_out = len(keep), kept
    attach(report, np.flatnonzero(~keep))
    if ctx.on_scanned is not None:
        ctx.on_scanned(kept == len(keep))
    outputs = [(v.info, member(shard.output, v.kind)) for v in vectors]
    if kept == len(keep) and ctx.spec.scan:
        return FoundClean([(info, shard.output), *outputs])
    results = await gather(
        [
            lambda v=v, dst=dst: write_vectors(ctx, v, keep, dst, report)
            for v, (_, dst) in zip(vectors, outputs, strict=True)
        ]
    )
    written_sizes = [written.size for written, _ in results]
    vias = {via for _, via in results}
    decided = Decided(ctx.tools.rule.key, ctx.tools.rule.key_set, ctx.tools.rule.mode, keep, [0])
    async with ctx.cpu_slots:
        files = ShardFiles(opened.open(info), None, label, _no_sibling)
        tools = dataclasses.replace(ctx.tools, rule=decided)
        counts, written = await rewrite(shard, ctx, pipeline_for("parquet"), files, tools)
    if (counts.rows_in, counts.rows_out, decided.cursor[0]) != (len(keep), kept, len(keep)):
        raise ShardError(f"{label} changed while it was filtered; rerun")
    report.output_via = "assembled" if vias == {"assembled"} else "rewrite"
    report.bytes_written = written.size + sum(written_sizes)
    report.bytes_saved = info.size + sum(v.info.size for v in vectors) - report.bytes_written
    return written


async def write_vectors(
    ctx: RunContext, vectors: Vectors, keep: np.ndarray, dst: str, report: ShardReport
) -> tuple[ObjectInfo, str]:
    """One .npy output: assembled from server-side copies where that pays, else streamed; and how."""
    src, header = vectors.info, vectors.header
    head = rewritten_header(header, int(keep.sum()))
    source, target = ctx.stores.for_uri(src.uri), ctx.stores.for_uri(dst)
    ranges = kept_byte_ranges(header, keep)
    if source is target and target.kernel_copy:  # local files: the kernel copies any ranges
        written, fetched = await target.assemble(src, ranges, b"", dst, head=head)
        report.bytes_read += fetched
        return written, "assembled"
    if source is target and target.ranged_copy and assembly_pays(ranges, len(head)):
        try:
            written, fetched = await target.assemble(src, ranges, b"", dst, head=head)
        except Refused:  # the store has learned it: this file and the next are streamed
            pass
        else:
            report.bytes_read += fetched
            return written, "assembled"
    written, fetched = await stream_rows(source, src, header, keep, head, target, dst)
    report.bytes_read += fetched
    return written, "rewrite"


def assembly_pays(ranges: list[tuple[int, int]], head: int) -> bool:
    """Copies pay when the bytes they leave to fetch (and upload) are under 3/4 of what streaming would
    move: short of that, the requests they add (a part a range) cost more than the bytes they save.

    S3 takes parts of 5 MiB or more but the last, so the new header starts a piece that
    the first range fills up to a part, and a range left shorter than a part after a cut
    is fetched too: the same walk as ``S3Store.assemble``, over the ranges (one step a cut).
    """
    kept = sum(end - start for start, end in ranges)
    return fetched_by_assembly(ranges, head) < kept * 0.75


def fetched_by_assembly(ranges: list[tuple[int, int]], head: int) -> int:
    """Bytes an assembly of ``ranges`` after a ``head`` of that many bytes reads and uploads itself."""
    piece = head
    fetched = 0
    for i, (start, end) in enumerate(ranges):
        last = i == len(ranges) - 1
        pos = start
        while pos < end:
            if not piece and (end - pos >= ASSEMBLY_PART or last):
                break  # the rest of the range is copied server-side (the object's last part may be short)
            take = min(end - pos, ASSEMBLY_PART - piece)
            if 0 < end - pos - take < ASSEMBLY_PART and not last:  # a rest too short to copy joins the piece
                take = end - pos
            fetched, piece, pos = fetched + take, piece + take, pos + take
            if piece >= ASSEMBLY_PART:
                piece = 0
    return fetched


def _no_sibling(extension: str) -> Any:
    raise ShardError(f"no {extension} beside the metadata of an embedding set")
