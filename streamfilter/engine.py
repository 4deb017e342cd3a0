"""The per-shard pipeline, and the run around it: plan, key set, executor, report.

One shard is one unit of work: read, filtered, written and committed on its own.
Inside a shard the CPU work (decode, match, encode) runs in one worker thread
while the event loop fetches the next row group and uploads finished parts, so
the I/O of one shard overlaps the CPU of others. The bounded buffers between
stages are the row-group read-ahead (one ahead) and the parts in flight per
upload; a decoded-table queue between decode and encode would triple the
decoded memory per shard for no gain once two shards run at once. How many shards
run at once, and where, is the executor's business (``executors/``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import anyio
import anyio.to_thread
import pyarrow as pa
import pyarrow.compute as pc
from anyio.from_thread import BlockingPortal

from ._version import __version__
from .errors import ShardError, StreamfilterError, UsageError, redact_uri
from .formats import detect_format
from .formats.parquet import ParquetOutput, ParquetShard, row_group_span
from .keys import KeySpec, extract_keys, require_columns
from .ledger import Receipt, Report, ShardReport, input_identity, receipt_uri, worker_report_uri
from .plan import Shard, plan_shards, worker_share
from .progress import Progress
from .sets import ExactKeySet, build_key_set
from .spec import JobSpec
from .store import ObjectInfo, PartSink, Stores, scheme_of

log = logging.getLogger("streamfilter")


@dataclass(frozen=True)
class Filter:
    """What decides, per row, whether it stays."""

    key: KeySpec
    key_set: ExactKeySet
    mode: str

    def keep_mask(self, table: pa.Table, source: str) -> pa.Array:
        hit = self.key_set.contains(extract_keys(table, self.key, source))
        return hit if self.mode == "allow" else pc.invert(hit)


@dataclass(frozen=True)
class ShardTools:
    """What the pipeline thread needs besides its input and output."""

    rule: Filter
    progress: Progress
    #: Parallel column decoding pays only while fewer shards than cores are in flight
    #: (measured: 3 shards on 2 cores ran 1.12x Polars' wall time without it, 1.26x with it).
    decode_threads: bool
    #: Set when the run must stop: checked between row groups, so a shard gives up within one.
    cancelled: threading.Event


def filter_parquet(source: BinaryIO, sink: BinaryIO | None, name: str, tools: ShardTools) -> tuple[int, int]:
    """Filter one Parquet shard row group by row group; ``sink=None`` only counts.

    Returns (rows in, rows out). Runs in a worker thread.
    """
    rule = tools.rule
    shard = ParquetShard(source, name)
    require_columns(shard.schema, rule.key, name)  # also for a shard without row groups
    output = ParquetOutput(sink, shard.schema, shard.metadata) if sink is not None else None
    # A dry run decodes only the key columns.
    columns = list(rule.key.columns) if output is None else None
    rows_in = rows_out = 0
    for i, table in enumerate(shard.row_groups(columns, use_threads=tools.decode_threads)):
        if tools.cancelled.is_set():
            raise ShardError(
                f"{name}: stopped by a signal before it was finished; nothing was written, rerun to finish"
            )
        keep = rule.keep_mask(table, name)
        kept = keep.true_count
        rows_in += table.num_rows
        rows_out += kept
        if output is not None:
            output.write(table if kept == table.num_rows else table.filter(keep))
        start, end = row_group_span(shard.metadata, i, columns)
        tools.progress.add(table.num_rows, end - start)  # stored (compressed) bytes, as read
        del table, keep  # free this row group before the next one is decoded: one, not two, in memory
    if output is not None:
        output.close()
    return rows_in, rows_out


PIPELINES = {"parquet": filter_parquet}


@dataclass
class RunContext:
    spec: JobSpec
    stores: Stores
    portal: BlockingPortal
    tools: ShardTools
    set_digest: str
    verbose: bool
    #: The prefix written under (the output prefix, or the inputs' common prefix in place).
    output_root: str | None


async def read_receipt(shard: Shard, ctx: RunContext, info: ObjectInfo) -> Receipt | None:
    """The receipt of an earlier run that makes this shard's work unnecessary, if any.

    Trusted only when it names the same input version, list, key and mode, and the
    output it describes is still there with the size it recorded.
    """
    if shard.output is None or ctx.spec.overwrite or ctx.output_root is None:
        return None
    uri = receipt_uri(ctx.output_root, shard.name)
    store = ctx.stores.for_uri(uri)
    try:
        receipt = Receipt.from_json(await store.read_all(uri))
        if receipt is None or not receipt.covers(info, ctx.set_digest, ctx.spec.key.to_dict(), ctx.spec.mode):
            return None
        output = await ctx.stores.for_uri(shard.output).stat(shard.output)
    except StreamfilterError:
        return None  # no receipt, or no output: do the work
    return receipt if output.size == receipt.output_size else None


async def rewrite(shard: Shard, ctx: RunContext, pipeline: Callable, source: BinaryIO, label: str) -> tuple:
    """Filter into the output object and commit it; returns (rows in, rows out, output info)."""
    assert shard.output is not None
    out_store = ctx.stores.for_uri(shard.output)
    async with out_store.open_write(shard.output) as upload:
        sink = PartSink(upload, out_store.part_size, ctx.portal)
        rows_in, rows_out = await anyio.to_thread.run_sync(pipeline, source, sink, label, ctx.tools)
        written = await upload.commit(sink.remainder())
    if written.size != sink.bytes_written:
        raise ShardError(
            f"{redact_uri(shard.output)} holds {written.size} bytes after commit, {sink.bytes_written} were "
            "written; the store lost data, run again"
        )
    return rows_in, rows_out, written


def shard_report(shard: Shard, error: str | None = None) -> ShardReport:
    """A report for ``shard`` before (or instead of) running it: failed until it is done; URIs redacted."""
    return ShardReport(redact_uri(shard.input), shard.output and redact_uri(shard.output), error=error)


async def process_shard(shard: Shard, ctx: RunContext) -> ShardReport:
    """Run one shard start to finish; every failure ends up in its report, never raised."""
    report = shard_report(shard)
    start = time.perf_counter()
    source = None
    try:
        pipeline = PIPELINES[detect_format(shard.input, ctx.spec.format)]
        store = ctx.stores.for_uri(shard.input)
        info = await store.stat(shard.input)
        receipt = await read_receipt(shard, ctx, info)
        if receipt is not None:
            report.rows_in, report.rows_out = receipt.rows_in, receipt.rows_out
            report.bytes_written, report.output_etag = receipt.output_size, receipt.output_etag
            report.resumed = True
        else:
            source = store.open_input(info, ctx.portal)
            label = redact_uri(shard.input)
            if shard.output is None:
                report.rows_in, report.rows_out = await anyio.to_thread.run_sync(
                    pipeline, source, None, label, ctx.tools
                )
            else:
                if ctx.spec.backup is not None:
                    backup = f"{ctx.spec.backup.rstrip('/')}/{shard.name}"
                    await ctx.stores.for_uri(backup).copy(info, backup)
                report.rows_in, report.rows_out, written = await rewrite(shard, ctx, pipeline, source, label)
                report.bytes_written, report.output_etag = written.size, written.etag
                await write_receipt(shard, ctx, info, written, report)
        report.rows_removed = report.rows_in - report.rows_out
        report.status = "done"
    except StreamfilterError as exc:
        report.error = str(exc)
        log.debug("shard %s failed", redact_uri(shard.input), exc_info=ctx.verbose)
    except Exception as exc:  # a bug or an unforeseen library error: still only this shard fails
        report.error = " ".join(f"unexpected {type(exc).__name__} on {redact_uri(shard.input)}: {exc}".split())
        log.debug("shard %s failed", redact_uri(shard.input), exc_info=True)
    finally:
        if source is not None:
            source.close()
            report.bytes_read = source.bytes_read
        report.seconds = round(time.perf_counter() - start, 4)
    ctx.tools.progress.shard_finished(report)
    return report


async def write_receipt(
    shard: Shard, ctx: RunContext, info: ObjectInfo, written: ObjectInfo, report: ShardReport
) -> None:
    """Record the committed shard; without a receipt a rerun redoes it, which is safe."""
    assert ctx.output_root is not None and shard.output is not None
    receipt = Receipt(
        input=redact_uri(shard.input),
        input_identity=input_identity(info),
        output=redact_uri(shard.output),
        output_size=written.size,
        output_etag=written.etag,
        output_identity=input_identity(written),
        set_digest=ctx.set_digest,
        key_spec=ctx.spec.key.to_dict(),
        mode=ctx.spec.mode,
        version=__version__,
        rows_in=report.rows_in,
        rows_out=report.rows_out,
        rows_removed=report.rows_in - report.rows_out,
    )
    uri = receipt_uri(ctx.output_root, shard.name)
    try:
        await ctx.stores.for_uri(uri).put(uri, receipt.to_json())
    except StreamfilterError as exc:
        raise ShardError(
            f"output committed but its receipt was not written ({exc}); a rerun redoes this shard"
        ) from exc


def output_manifest(report: Report) -> bytes:
    """JSON lines naming each committed output, for the next stage (and for ``run @FILE``)."""
    lines = [
        json.dumps({"uri": s.output, "rows": s.rows_out, "bytes": s.bytes_written, "etag": s.output_etag})
        for s in report.shards
        if s.status == "done" and s.output is not None
    ]
    return "".join(line + "\n" for line in lines).encode()


async def run_job(
    spec: JobSpec, *, progress: Progress | None = None, verbose: bool = False, stop: anyio.Event | None = None
) -> Report:
    """Plan, filter this worker's shards on the chosen executor, and write the report.

    Raises :class:`UsageError` (nothing written) for bad options, inputs that
    expand to nothing or an unreadable membership list; shard failures are
    reported, not raised. When ``stop`` is set (SIGTERM), no new shard starts, the
    shards in flight get ``spec.grace_seconds`` to commit, then give up cleanly.
    """
    started = time.perf_counter()
    progress = progress or Progress(0)
    stores = Stores(spec.stores, on_retry=progress.count_retry)
    stop = stop or anyio.Event()
    try:
        plan = await plan_shards(
            spec.inputs,
            None if spec.dry_run else spec.output,
            stores,
            output_inside_input=spec.output_inside_input,
            in_place=spec.in_place and not spec.dry_run,
        )
        if spec.backup is not None and {scheme_of(spec.backup)} != {scheme_of(s.input) for s in plan.shards}:
            raise UsageError(f"--backup {redact_uri(spec.backup)}: use the same kind of store as the inputs")
        for shard in plan.shards:
            detect_format(shard.input, spec.format)
        if plan.shards[0].output is not None and not stores.for_uri(plan.shards[0].output).writable:
            raise UsageError(f"cannot write to {redact_uri(spec.output or '')}: write to s3:// or a local path")
        if spec.report and not stores.for_uri(spec.report).writable:
            raise UsageError(f"--report {redact_uri(spec.report)}: cannot write there; use s3:// or a local path")
        shards = worker_share(plan.shards, spec.num_workers, spec.worker_index)
        key_set = await build_key_set(list(spec.blocklists), spec.key, stores)
        progress.total = len(shards)
        if spec.executor == "ray":
            from .executors.ray import run_shards_on_ray as run_shards
        else:
            from .executors.local import run_shards
        reports = await run_shards(spec, shards, key_set, plan.output_root, progress, stop, verbose)
        progress.close()
        report = Report(
            shards=reports,
            key_spec=spec.key.to_dict(),
            set_digest=key_set.digest,
            set_size=key_set.size,
            mode=spec.mode,
            dry_run=spec.dry_run,
            seconds=time.perf_counter() - started,
            version=__version__,
        )
        report.interrupted = stop.is_set()
        if plan.output_root is not None and not spec.dry_run:
            uri = worker_report_uri(plan.output_root, spec.worker_index, spec.num_workers)
            try:
                await stores.for_uri(uri).put(uri, report.to_json().encode())
            except StreamfilterError as exc:
                log.warning("the worker report was not written (%s); `streamfilter report` will miss it", exc)
        if spec.report:
            try:
                await stores.for_uri(spec.report).put(spec.report, report.to_json().encode())
            except StreamfilterError as exc:
                raise StreamfilterError(f"writing the report failed: {exc}") from exc
        if spec.manifest_out:
            try:
                await stores.for_uri(spec.manifest_out).put(spec.manifest_out, output_manifest(report))
            except StreamfilterError as exc:
                raise StreamfilterError(f"writing the output manifest failed: {exc}") from exc
        return report
    finally:
        await stores.aclose()
