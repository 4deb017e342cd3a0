"""The I/O every kind of shard does alike: open its inputs, rewrite into an output, copy what is clean.

The engine runs a shard; a pipeline that handles a shard set of several objects
(img2dataset) uses the same pieces, so every output of every format is written,
committed and counted the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import BinaryIO

import anyio
import anyio.to_thread
from anyio.from_thread import BlockingPortal

from .errors import ShardError, StreamfilterError, redact_uri
from .ledger import ReceiptBook, ShardReport
from .pipelines import Counts, Pipeline, ShardFiles, ShardTools
from .plan import Shard
from .spec import JobSpec
from .store import ObjectInfo, PartSink, Stores
from .store.uris import sibling

#: Shards that may hold what they prefetched for their scan (see RunContext.prefetch_slots).
PREFETCHES = 16


@dataclass
class RunContext:
    """What every shard of a run in this process shares."""

    spec: JobSpec
    stores: Stores
    portal: BlockingPortal
    tools: ShardTools
    verbose: bool
    #: Held while a shard decodes and encodes (a rewrite, a dry run): ``spec.concurrency`` of them,
    #: so the CPU-heavy work stays at the tuned level while more shards scan and copy.
    cpu_slots: anyio.CapacityLimiter
    #: Held from a shard's scan to the end of its rewrite's decoding (not its commit: see :class:`Slots`), or
    #: through a set's processing: while it holds decoded data. Its receipt lookup, a clean shard's copy and
    #: its receipt wait on the store outside it, so on a sparse run many shards are at those waits at once
    #: (see engine.STORE_WAITS).
    decode_slots: anyio.CapacityLimiter
    #: Whether the run is stopping: a shard that got its decode slot after the stop does not start.
    stopping: Callable[[], bool] = lambda: False
    #: The run's resume decisions and receipts; None for a dry run, which writes none.
    receipts: ReceiptBook | None = None
    #: Told after each scan whether the shard was clean (the executor widens its fan-out on sparse runs).
    on_scanned: Callable[[bool], None] | None = None
    #: Asked before a scan whether it is likely to pay: on a dense run a scan only decodes the key columns
    #: a second time before the rewrite that follows it.
    scan_pays: Callable[[], bool] = lambda: True
    #: Whether the run's scans have been finding clean shards (not a dense run), without counting a probe
    #: as ``scan_pays`` does: a shard then prefetches what its scan reads first while it waits for its slot.
    scan_likely: Callable[[], bool] = lambda: True
    #: Held from a shard's prefetch to the end of its decoding part: bounds the prefetched bytes held by
    #: shards waiting for a decode slot (a footer and at most pipelines.parquet.PREFETCH_BYTES each).
    prefetch_slots: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(PREFETCHES))
    #: Held by a rewritten shard from the end of its decoding to its output's commit, which it waits on outside
    #: the decode and CPU slots (see :class:`Slots`): ``spec.concurrency`` of them, each holding at most its
    #: upload's parts in flight and its last part.
    commit_slots: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(1))


class Slots:
    """The limiter tokens one shard holds while it holds decoded data, given back together: as soon as its
    decoding is over (a rewrite, before its output's commit: waiting on the last parts, the completion and
    its check is a wait on the store, as long as a round trip or an fsync) or at the latest when its
    decoding part ends. Taken and given back by the shard's own task, as anyio's limiters require."""

    def __init__(self) -> None:
        self._held: list[anyio.CapacityLimiter] = []

    async def take(self, limiter: anyio.CapacityLimiter) -> None:
        await limiter.acquire()
        self._held.append(limiter)

    def give_back(self) -> None:
        while self._held:
            self._held.pop().release()

    async def trade_for(self, limiter: anyio.CapacityLimiter) -> None:
        """Take ``limiter``, then give back the others: the shard waits for it still holding its slots."""
        await limiter.acquire()
        self.give_back()
        self._held.append(limiter)


@dataclass(frozen=True)
class FoundClean:
    """What a shard's (or set's) scan returns when no row goes: each input object with its output, to
    copy (or, in place, leave) once the shard has given back its decode slot: the copy only waits on the
    store."""

    objects: list[tuple[ObjectInfo, str]]


class OpenedFiles:
    """Every input object a shard opened, so they are closed and their bytes counted once."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.files: list = []

    def open(self, info: ObjectInfo) -> BinaryIO:
        file = self.ctx.stores.for_uri(info.uri).open_input(info, self.ctx.portal)
        self.files.append(file)
        return file

    def sibling_opener(self, uri: str) -> Callable[[str], BinaryIO]:
        def open_sibling(extension: str) -> BinaryIO:
            # Runs in the pipeline's worker thread: the stat goes through the event loop.
            target = sibling(uri, extension)
            info = self.ctx.portal.call(self.ctx.stores.for_uri(target).stat, target)
            return self.open(info)

        return open_sibling

    def close(self) -> int:
        for file in self.files:
            file.close()
        return sum(file.bytes_read for file in self.files)


async def rewrite(
    shard: Shard,
    ctx: RunContext,
    pipeline: Pipeline,
    files: ShardFiles,
    tools: ShardTools | None = None,
    before_commit: Callable[[], Awaitable[None]] | None = None,
) -> tuple[Counts, ObjectInfo]:
    """Filter into the output object and commit it; returns what the pipeline counted and the output.
    ``before_commit`` runs once the pipeline is done, before the commit is waited on."""
    assert shard.output is not None
    out_store = ctx.stores.for_uri(shard.output)
    async with out_store.open_write(shard.output) as upload:
        files.sink = sink = PartSink(upload, out_store.part_size, ctx.portal, out_store.single_request_bytes)
        counts = await anyio.to_thread.run_sync((tools or ctx.tools).run, pipeline, files)
        if before_commit is not None:
            await before_commit()
        written = await upload.commit(sink.remainder())
    if written.size != sink.bytes_written:
        raise ShardError(
            f"{redact_uri(shard.output)} holds {written.size} bytes after commit, {sink.bytes_written} were "
            "written; the store lost data, run again"
        )
    return counts, written


async def keep_unchanged(
    shard: Shard, ctx: RunContext, objects: list[tuple[ObjectInfo, str]], report: ShardReport
) -> ObjectInfo:
    """The outputs of a shard found clean: in place the inputs themselves, else copies of their bytes.

    ``objects`` pairs each input with its output, the shard's own first (an img2dataset set has
    three); the copies, each a wait on the store, run at once. Returns the first output.
    """
    if shard.output == shard.input:
        report.output_via = "unchanged"
        return objects[0][0]
    results: list[tuple[ObjectInfo, bool]] = []
    failures: list[StreamfilterError] = []

    async def copy(src: ObjectInfo, dst: str) -> None:
        try:
            written, streamed = await ctx.stores.copy(src, dst)
        except StreamfilterError as exc:  # kept, so the shard fails with this one line, not a group
            failures.append(exc)
            return
        results.append((written, streamed))
        report.bytes_written += written.size
        if streamed:
            report.bytes_read += src.size  # counted apart from the opened files: the copy reads on its own

    async with anyio.create_task_group() as tg:
        for src, dst in objects:
            tg.start_soon(copy, src, dst)
    if failures:
        raise failures[0]
    report.output_via = "byte_copy" if any(streamed for _, streamed in results) else "server_copy"
    return next(written for written, _ in results if written.uri == objects[0][1])
