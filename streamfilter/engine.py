"""The per-shard flow, and the run around it: plan, key set, executor, report.

One shard is one unit of work: read, filtered, written and committed on its own.
With the scan on, its key columns are read first (``pipelines/<format>.scan_shard``)
and a shard without hits is copied or left in place; a shard with hits is
rewritten. The format's pipeline does the CPU work (decode, match, encode) in one
worker thread while the event loop fetches the next row group and uploads
finished parts, so the I/O of one shard overlaps the CPU of others. The bounded
buffers between stages are the row-group read-ahead (one ahead) and the parts in
flight per upload; a decoded-table queue between decode and encode would triple
the decoded memory per shard for no gain once two shards run at once. How many
shards run at once, and where, is the executor's business (``executors/``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import anyio.to_thread
from anyio.from_thread import BlockingPortal

from ._version import __version__
from .concurrency import Cores, usable_cpus
from .errors import ShardError, StreamfilterError, UsageError, redact_uri
from .executors import NOT_STARTED, Limits, run_units
from .formats import detect_format
from .formats.embedding_set import KINDS, is_metadata, member
from .ledger import ReceiptBook, Report, ShardReport, worker_report_uri
from .pipelines import (
    Counts,
    Filter,
    ShardFiles,
    ShardTools,
    pipeline_for,
    prefetcher_for,
    scanner_for,
    set_processor_for,
)
from .plan import Shard, check_first_input, plan_shards, source_error, worker_share
from .progress import Progress
from .sets import KeySet, build_key_set
from .sets.load import open_filter
from .shard_io import FoundClean, OpenedFiles, RunContext, Slots, keep_unchanged, rewrite
from .spec import JobSpec
from .store import ObjectInfo, Stores, scheme_of
from .store.uris import sibling

log = logging.getLogger("streamfilter")


#: The formats whose samples have images that --image-hash can match.
IMAGE_FORMATS = ("webdataset", "img2dataset")


def shard_report(shard: Shard, error: str | None = None) -> ShardReport:
    """A report for ``shard`` before (or instead of) running it: failed until it is done; URIs redacted."""
    return ShardReport(redact_uri(shard.input), shard.output and redact_uri(shard.output), error=error)


def _take_counts(report: ShardReport, counts: Counts) -> None:
    report.rows_in, report.rows_out = counts.rows_in, counts.rows_out
    report.members_in, report.members_out, report.unkeyed = counts.members_in, counts.members_out, counts.unkeyed
    report.removed_by, report.kept_by = counts.removed_by, counts.kept_by
    report.images = counts.images


def open_files(shard: Shard, info: ObjectInfo, opened: OpenedFiles) -> ShardFiles:
    return ShardFiles(opened.open(info), None, redact_uri(shard.input), opened.sibling_opener(shard.input))


async def prefetch_scan(
    shard: Shard, ctx: RunContext, info: ObjectInfo, opened: OpenedFiles, fmt: str, slots: Slots
) -> ShardFiles | None:
    """Before the decode slot, on a run whose scans find clean shards: the round trips a scan starts with
    (its footer) made, and the bytes it reads first requested; the files, for the scan to go on with.
    A prefetch slot is taken into ``slots``, given back with the decode slot."""
    prefetch = prefetcher_for(fmt)
    if shard.output is None or not ctx.spec.scan or prefetch is None or not ctx.scan_likely():
        return None
    await slots.take(ctx.prefetch_slots)
    files = open_files(shard, info, opened)
    await anyio.to_thread.run_sync(prefetch, files, ctx.tools)
    return files


async def filter_one(
    shard: Shard,
    ctx: RunContext,
    info: ObjectInfo,
    report: ShardReport,
    opened: OpenedFiles,
    fmt: str,
    slots: Slots,
    files: ShardFiles | None = None,
) -> ObjectInfo | FoundClean | None:
    """One object in, one out, the part that holds decoded data: count it (a dry run; returns None), scan
    it (a clean shard: what to copy) or rewrite it (returns the output). ``files``: opened already by
    :func:`prefetch_scan`. A rewrite gives its ``slots`` back once decoded, before its commit."""
    pipeline = pipeline_for(fmt)
    files = files or open_files(shard, info, opened)
    if shard.output is None:
        async with ctx.cpu_slots:
            _take_counts(report, await anyio.to_thread.run_sync(ctx.tools.run, pipeline, files))
        return None
    scan = scanner_for(fmt, ctx.tools) if ctx.spec.scan and ctx.scan_pays() else None
    clean = await anyio.to_thread.run_sync(ctx.tools.run, scan, files) if scan is not None else None
    if scan is not None and ctx.on_scanned is not None:
        ctx.on_scanned(clean is not None)
    if clean is not None:
        _take_counts(report, clean)
        return FoundClean([(info, shard.output)])
    if ctx.spec.backup is not None:
        backup = f"{ctx.spec.backup.rstrip('/')}/{shard.name}"
        await ctx.stores.for_uri(backup).copy(info, backup)
    await slots.take(ctx.cpu_slots)

    async def decoded() -> None:
        # Nothing decoded is left: the commit waits on the store with the inputs' buffers closed and one of
        # the few commit slots (which bound the parts in flight), while the next shard decodes.
        opened.close()
        await slots.trade_for(ctx.commit_slots)

    counts, written = await rewrite(shard, ctx, pipeline, files, before_commit=decoded)
    _take_counts(report, counts)
    report.bytes_written, report.output_via = written.size, "rewrite"
    return written


async def run_fresh(
    shard: Shard, ctx: RunContext, info: ObjectInfo, report: ShardReport, opened: OpenedFiles, fmt: str
) -> bool:
    """A shard no receipt covers: its decoding part in a decode slot, then (a clean shard's copy and) its
    receipt outside it. False if the run stopped while the shard waited for its slot."""
    process_set = set_processor_for(fmt) if shard.output is not None else None
    slots = Slots()
    try:
        files = None if process_set is not None else await prefetch_scan(shard, ctx, info, opened, fmt, slots)
        await slots.take(ctx.decode_slots)
        if ctx.stopping():
            return False
        if process_set is not None:  # a set of objects as one unit (a dry run counts its deciding object)
            done: ObjectInfo | FoundClean | None = await process_set(shard, ctx, info, report, opened)
        else:
            done = await filter_one(shard, ctx, info, report, opened, fmt, slots, files)
    finally:
        slots.give_back()
    if done is None:  # a dry run
        return True
    if isinstance(done, FoundClean):  # copied (or, in place, left) with the scan's buffers given back
        opened.close()
        done = await keep_unchanged(shard, ctx, done.objects, report)
    report.output_etag = done.etag
    if process_set is None:  # a set's processor counts the bytes of all its objects
        report.bytes_saved = info.size - done.size
    await _record(shard, ctx, info, done, report, fmt)
    return True


async def process_shard(shard: Shard, ctx: RunContext) -> ShardReport:
    """Run one shard start to finish; every failure ends up in its report, never raised."""
    report = shard_report(shard)
    start = time.perf_counter()
    opened = OpenedFiles(ctx)
    try:
        fmt = detect_format(shard.input, ctx.spec.format)
        if ctx.spec.key.image != "none" and fmt not in IMAGE_FORMATS:
            raise ShardError(
                f"{redact_uri(shard.input)} is a {fmt} shard, and --image-hash matches the images in tars; "
                "leave it out of this run or filter it by key in another"
            )
        # The listing that found the shard already said what a HEAD would. Should the object change
        # after that, its reads fail on the length or its copy on CopySourceIfMatch; never silently.
        info = shard.info or await ctx.stores.for_uri(shard.input).stat(shard.input)
        receipt = None
        if ctx.receipts is not None and shard.output is not None:
            receipt = await ctx.receipts.done_earlier(shard.name, shard.output, info)
        if receipt is not None:
            report.rows_in, report.rows_out = receipt.rows_in, receipt.rows_out
            report.earlier_bytes_written, report.output_etag = receipt.output_size, receipt.output_etag
            report.bytes_saved = info.size - receipt.output_size
            report.removed_by, report.kept_by, report.images = receipt.removed_by, receipt.kept_by, receipt.images
            report.resumed = True
        elif not await run_fresh(shard, ctx, info, report, opened, fmt):
            return shard_report(shard, NOT_STARTED)
        report.rows_removed = report.rows_in - report.rows_out
        report.status = "done"
    except StreamfilterError as exc:
        report.error = str(exc)
        log.debug("shard %s failed", redact_uri(shard.input), exc_info=ctx.verbose)
    except Exception as exc:  # a bug or an unforeseen library error: still only this shard fails
        report.error = " ".join(f"unexpected {type(exc).__name__} on {redact_uri(shard.input)}: {exc}".split())
        log.debug("shard %s failed", redact_uri(shard.input), exc_info=True)
    finally:
        report.bytes_read += opened.close()
        report.seconds = round(time.perf_counter() - start, 4)
        report.abandoned_uploads = ctx.stores.abandoned_uploads(_outputs_of(shard))
    return report


#: Shards in flight per CPU slot once the scan shows a sparse run: scans and copies wait on the store.
#: Measured on the sparse benchmark (128 shards, loopback S3): 2x and 4x both took 5.7 s, 4x peaked at
#: 514 MiB against 372 MiB. A dense run (every shard a hit) stays at 1x: there the extra scans in
#: flight only held memory (peak 644 MiB, against 562-574 MiB before the fan-out).
SCAN_FANOUT = 2
#: Shards in flight per CPU slot in all: beyond those scanning or rewriting (the decode slots), the
#: others wait on the store holding no decoded data: the receipt lookup, a clean shard's copy and its
#: receipt. On a real endpoint each is a round trip of tens of milliseconds, and a large CopyObject takes
#: seconds. With 20 ms added to every request of the sparse benchmark (128 shards, s3rver, load 4), a run
#: took 5.9 s against 7.4 s when those waits held a decode slot (medians of 3); without the added
#: latency, 4.2 s against 4.1 s.
STORE_WAITS = 16
#: Scanned shards seen before the fan-out is decided, and the share of clean ones that widens it.
FANOUT_AFTER, FANOUT_CLEAN_SHARE = 4, 0.5


@dataclass(frozen=True)
class ShardWork:
    """What an executor runs for ``streamfilter run``: one shard a unit, its report the result."""

    spec: JobSpec
    key_set: KeySet
    output_root: str | None
    verbose: bool
    #: Shards the executor is given (a Ray task is given one): decides whether receipts are listed.
    shards: int
    #: The run's live progress line; None in another process.
    progress: Progress | None = None
    #: The planning run's stores, reused by a session in the same process: each S3 store makes its own
    #: botocore session and client, about 0.06 CPU s and a connection pool. None in another process.
    stores: Stores | None = dataclasses.field(default=None, compare=False, repr=False)
    #: The CPUs the shards may use: this process's (None), or in a Ray task the ones it reserved.
    cpus: int | None = None

    def not_run(self, shard: Shard, why: str) -> ShardReport:
        return shard_report(shard, why)

    def detached(self) -> ShardWork:
        """This work for a Ray task: one shard, no live progress, its own stores, and the CPUs it reserved
        (``--ray-task-cpus``), not the node's: other tasks run beside it."""
        cpus = max(1, math.ceil(self.spec.ray_task_cpus))
        return dataclasses.replace(self, progress=None, shards=1, stores=None, cpus=cpus)

    @contextlib.asynccontextmanager
    async def session(self, stop: anyio.Event, concurrency: int) -> AsyncIterator[ShardSession]:
        """Store connections, a thread portal and the matching tools for up to ``concurrency`` shards."""
        spec = self.spec
        in_flight = min(spec.concurrency, concurrency)
        tools = ShardTools(
            Filter(spec.key, self.key_set, spec.mode),
            self.progress or Progress.silent(),
            cores=Cores(self.cpus or usable_cpus()),
            cancelled=threading.Event(),
            on_unkeyed=spec.on_unkeyed,
            sidecar=spec.sidecar,
            on_undecodable=spec.on_undecodable,
        )
        stores = self.stores or Stores(spec.stores, on_retry=tools.progress.count_retry)
        try:
            async with BlockingPortal() as portal:
                receipts = None
                if self.output_root is not None and not spec.dry_run:
                    receipts = ReceiptBook(stores, self.output_root, self.key_set.digest, spec.key.to_dict(), spec.mode,
                                           overwrite=spec.overwrite)  # fmt: skip
                    await receipts.list_once(self.shards)
                ctx = RunContext(
                    spec, stores, portal, tools, self.verbose, cpu_slots=anyio.CapacityLimiter(in_flight),
                    decode_slots=anyio.CapacityLimiter(in_flight), commit_slots=anyio.CapacityLimiter(in_flight),
                    stopping=stop.is_set, receipts=receipts,
                )  # fmt: skip
                yield ShardSession(ctx, in_flight, min(concurrency, in_flight * SCAN_FANOUT), stop)
        finally:
            if stores is not self.stores:  # the run's own stores close with the run
                await stores.aclose()


#: The latest scans a dense run is judged by, how many of them it takes, and the share with hits that
#: makes the run dense: then shards go straight to the rewrite, except every PROBE_EVERY-th, still
#: scanned so that a run whose hits thin out (a list that hits the first shards only) turns back.
DENSE_WINDOW, DENSE_AFTER, DENSE_HIT_SHARE, PROBE_EVERY = 8, 4, 0.9, 8


class ScanPolicy:
    """Whether the next shard's scan is likely to pay, from what the run's latest scans found.

    A scan decodes a shard's key columns to find a shard without hits, which is then
    copied instead of decoded whole. On a dense run (a diff against a cleaned release:
    every shard has hits) it finds none, and the rewrite decodes the key columns again.
    """

    def __init__(self) -> None:
        self._latest: collections.deque[bool] = collections.deque(maxlen=DENSE_WINDOW)  # True: clean
        self._skipped = 0

    def seen(self, clean: bool) -> None:
        self._latest.append(clean)

    def dense(self) -> bool:
        hits = sum(not clean for clean in self._latest)
        return len(self._latest) >= DENSE_AFTER and hits >= DENSE_HIT_SHARE * len(self._latest)

    def scan_pays(self) -> bool:
        if not self.dense():
            return True
        self._skipped += 1
        return self._skipped % PROBE_EVERY == 0


class ShardSession:
    """Runs shards in one process, as many at once as the executor starts (``spec.concurrency`` times
    STORE_WAITS). Of those, the ones holding decoded data (a scan, a rewrite) take the context's decode
    slots: ``spec.concurrency`` of them, widened to ``widest`` once the scans show a sparse run, where a
    scan is mostly a wait on the store too. Rewrites also take the CPU slots, which stay at
    ``spec.concurrency``. The rest of a shard (its receipt lookup, a clean shard's copy, its receipt)
    waits on the store outside both."""

    def __init__(self, ctx: RunContext, in_flight: int, widest: int, stop: anyio.Event) -> None:
        self.ctx, self.stop = ctx, stop
        self._in_flight, self._widest = in_flight, widest
        self._scanned = [0, 0]  # shards scanned, of which clean
        self._scan_policy = ScanPolicy()
        ctx.on_scanned, ctx.scan_pays = self._on_scanned, self._scan_policy.scan_pays
        ctx.scan_likely = lambda: not self._scan_policy.dense()

    def _on_scanned(self, clean: bool) -> None:
        self._scan_policy.seen(clean)
        self._scanned[0] += 1
        self._scanned[1] += clean
        seen, clean_ones = self._scanned
        if seen >= FANOUT_AFTER:
            wide = clean_ones >= FANOUT_CLEAN_SHARE * seen
            self.ctx.decode_slots.total_tokens = self._widest if wide else self._in_flight

    async def run(self, shard: Shard) -> ShardReport:
        if self.stop.is_set():
            return shard_report(shard, NOT_STARTED)
        return await process_shard(shard, self.ctx)

    def give_up(self) -> None:
        self.ctx.tools.cancelled.set()


def _outputs_of(shard: Shard) -> set[str]:
    """Every object a shard may write: its output, and an img2dataset or embedding set's siblings of it."""
    if shard.output is None:
        return set()
    vectors = {member(shard.output, kind) for kind in KINDS} if is_metadata(shard.output) else set()
    return {shard.output, sibling(shard.output, ".parquet"), sibling(shard.output, "_stats.json"), *vectors}


async def _record(
    shard: Shard, ctx: RunContext, info: ObjectInfo, written: ObjectInfo, report: ShardReport, fmt: str
) -> None:
    assert ctx.receipts is not None
    await ctx.receipts.record(shard.name, info, written, report, fmt)


def output_manifest(report: Report) -> bytes:
    """JSON lines naming each committed output, for the next stage (and for ``run @FILE``)."""
    lines = [
        json.dumps({"uri": s.output, "rows": s.rows_out, "bytes": s.bytes_written, "etag": s.output_etag})
        for s in report.shards
        if s.status == "done" and s.output is not None
    ]
    return "".join(line + "\n" for line in lines).encode()


async def membership(spec: JobSpec, stores: Stores) -> tuple[JobSpec, KeySet]:
    """The run's key set, checked before any shard is touched, and the spec to run it with
    (a filter file supplies the key spec it was built with, where the user chose none).

    Allow mode keeps the rows whose key matches; a Bloom filter's false positive would
    then keep a row that should go, so it needs the user's explicit acceptance.
    """
    if spec.filter is None:
        return spec, await build_key_set(list(spec.blocklists), spec.key, stores)
    key, key_set = await open_filter(spec.filter, spec.key, stores, spec.key_given)
    spec = dataclasses.replace(spec, key=key)
    if spec.mode == "allow" and key_set.kind == "bloom" and not spec.accept_false_positives:
        raise UsageError(
            f"--mode allow with the Bloom filter {redact_uri(spec.filter)} would keep about "
            f"{key_set.false_match_rate():.2%} of the rows that should go (its false-positive rate); use an exact "
            "list or a fingerprint set, or pass --accept-false-positives to take that risk"
        )
    return spec, key_set


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
            fmt=spec.format,
        )
        if spec.backup is not None and {scheme_of(spec.backup)} != {scheme_of(s.input) for s in plan.shards}:
            raise UsageError(f"--backup {redact_uri(spec.backup)}: use the same kind of store as the inputs")
        if plan.shards[0].output is not None and not stores.for_uri(plan.shards[0].output).writable:
            raise UsageError(f"cannot write to {redact_uri(spec.output or '')}: write to s3:// or a local path")
        if spec.report and not stores.for_uri(spec.report).writable:
            raise UsageError(f"--report {redact_uri(spec.report)}: cannot write there; use s3:// or a local path")
        plan = await check_first_input(plan, stores)  # a sole input that is not there: "not found", not its format
        for shard in plan.shards:
            detect_format(shard.input, spec.format)
        shards = worker_share(plan.shards, spec.num_workers, spec.worker_index)
        try:
            spec, key_set = await membership(spec, stores)
        except StreamfilterError as exc:
            flag, sources = ("--filter", [spec.filter]) if spec.filter else ("--blocklist", list(spec.blocklists))
            raise source_error(exc, flag, sources) from None
        progress.total = len(shards)
        work = ShardWork(spec, key_set, plan.output_root, verbose, len(shards), progress, stores)
        limits = Limits(spec.concurrency * STORE_WAITS, spec.grace_seconds, spec.ray_address, spec.ray_task_cpus)

        def on_result(report: ShardReport, remote: bool) -> None:
            if remote and not report.resumed:  # its rows and bytes were counted in another process
                progress.add(report.rows_in, report.bytes_read)
            progress.shard_finished(report)

        reports = await run_units(spec.executor, shards, work, limits, stop, on_result)
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
        report.set_kind = key_set.kind
        if spec.mode == "allow" and report.set_kind != "exact":
            # Allow mode keeps what matches: a false match keeps a row that should have gone.
            rate = key_set.false_match_rate()
            report.false_matches_bound = rate * report.totals["rows_in"]
        worker_report = plan.output_root is not None and not spec.dry_run
        # Built once for both copies, and only if one is written: for many shards it is large.
        text = report.to_json().encode() if worker_report or spec.report else b""
        if worker_report:
            uri = worker_report_uri(plan.output_root, spec.worker_index, spec.num_workers)
            try:
                await stores.for_uri(uri).put(uri, text)
            except StreamfilterError as exc:
                log.warning("the worker report was not written (%s); `streamfilter report` will miss it", exc)
        if spec.report:
            try:
                await stores.for_uri(spec.report).put(spec.report, text)
            except StreamfilterError as exc:
                raise StreamfilterError(f"writing the report failed: {exc}") from exc
        if spec.manifest_out:
            try:
                await stores.for_uri(spec.manifest_out).put(spec.manifest_out, output_manifest(report))
            except StreamfilterError as exc:
                raise StreamfilterError(f"writing the output manifest failed: {exc}") from exc
        if spec.removed_ids_out:
            from .removed_ids import write_removed_ids

            await write_removed_ids(report.shards, spec.removed_ids_out, stores)
        return report
    finally:
        await stores.aclose()
