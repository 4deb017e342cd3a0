"""The local executor: shards in this process, with bounded concurrency, on anyio."""

from __future__ import annotations

import threading

import anyio
from anyio.from_thread import BlockingPortal

from ..concurrency import usable_cpus
from ..engine import RunContext, listed_receipts, process_shard, shard_report
from ..ledger import ShardReport
from ..pipelines import Filter, ShardTools
from ..plan import Shard
from ..progress import Progress
from ..sets import ExactKeySet
from ..spec import JobSpec
from ..store import Stores

#: Shards in flight per CPU slot once the scan shows a sparse run: scans and copies wait on the store.
#: Measured on the sparse benchmark (128 shards, loopback S3): 2x and 4x both took 5.7 s, 4x peaked at
#: 514 MiB against 372 MiB. A dense run (every shard a hit) stays at 1x: there the extra scans in
#: flight only held memory (peak 644 MiB, against 562-574 MiB before the fan-out).
SCAN_FANOUT = 2
#: After the grace period, how long the shards in flight get to give up cleanly (a decoder stops at its next
#: row group) before every wait they still have is cancelled; their uploads are then aborted.
GIVE_UP_SECONDS = 2.0
STOPPED = "stopped by a signal before it was finished (nothing of it was committed); rerun to finish"
#: Scanned shards seen before the fan-out is decided, and the share of clean ones that widens it.
FANOUT_AFTER, FANOUT_CLEAN_SHARE = 4, 0.5


async def run_shards(
    spec: JobSpec,
    shards: list[Shard],
    key_set: ExactKeySet,
    output_root: str | None,
    progress: Progress,
    stop: anyio.Event,
    verbose: bool = False,
) -> list[ShardReport]:
    """Run ``shards`` at most ``spec.concurrency`` at a time; one report per shard, in order."""
    in_flight = min(spec.concurrency, len(shards))
    tools = ShardTools(
        Filter(spec.key, key_set, spec.mode),
        progress,
        decode_threads=in_flight < usable_cpus(),
        cancelled=threading.Event(),
        on_unkeyed=spec.on_unkeyed,
        sidecar=spec.sidecar,
    )
    reports = [shard_report(s) for s in shards]
    # Scans and copies are waits on the store, not CPU: on a sparse run more shards may be at that
    # stage than decode and encode at once (the CPU slots in RunContext keep those at spec.concurrency).
    limiter = anyio.CapacityLimiter(spec.concurrency)
    scanned = [0, 0]  # shards scanned, of which clean

    def on_scanned(clean: bool) -> None:
        scanned[0] += 1
        scanned[1] += clean
        if scanned[0] >= FANOUT_AFTER and scanned[1] >= FANOUT_CLEAN_SHARE * scanned[0]:
            limiter.total_tokens = spec.concurrency * SCAN_FANOUT
        elif scanned[0] >= FANOUT_AFTER:
            limiter.total_tokens = spec.concurrency

    stores = Stores(spec.stores, on_retry=progress.count_retry)
    try:
        async with BlockingPortal() as portal, anyio.create_task_group() as tg:
            ctx = RunContext(
                spec, stores, portal, tools, key_set.digest, verbose, output_root,
                anyio.CapacityLimiter(spec.concurrency),
                receipts=await listed_receipts(output_root, spec, stores, len(shards)),
                on_scanned=on_scanned,
            )  # fmt: skip

            async def run_one(index: int) -> None:
                async with limiter:
                    if stop.is_set():
                        reports[index].error = "not started: the run was stopped by a signal; rerun to finish"
                        progress.shard_finished(reports[index])
                        return
                    try:
                        reports[index] = await process_shard(shards[index], ctx)
                    except anyio.get_cancelled_exc_class():
                        reports[index].error = STOPPED
                        progress.shard_finished(reports[index])
                        raise

            async with anyio.create_task_group() as shard_group:

                async def cancel_after_grace() -> None:
                    await stop.wait()
                    await anyio.sleep(spec.grace_seconds)
                    tools.cancelled.set()  # the decoders stop at their next row group ...
                    await anyio.sleep(GIVE_UP_SECONDS)
                    shard_group.cancel_scope.cancel()  # ... and whatever still waits (on a store) is cancelled

                tg.start_soon(cancel_after_grace)
                for index in range(len(shards)):
                    shard_group.start_soon(run_one, index)
            tg.cancel_scope.cancel()  # every shard is finished: the grace timer is not needed
    finally:
        await stores.aclose()
    return reports
