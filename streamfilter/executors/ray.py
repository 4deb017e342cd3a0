"""The Ray executor: one Ray task per shard, each running the local pipeline on its one shard.

The membership set goes into the object store once and every task reads it from
there. Reading, matching, writing and receipts are the local executor's, so a
shard's output is the same bytes whichever executor wrote it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import socket
import threading
import time
from typing import Any

import anyio
import anyio.to_thread

from ..engine import shard_report
from ..errors import UsageError, redact_text, redact_uri
from ..ledger import ShardReport
from ..plan import Shard
from ..progress import Progress
from ..sets import ExactKeySet
from ..spec import JobSpec
from .local import run_shards

NOT_STARTED = "not started: the run was stopped by a signal; rerun to finish"
STOPPED = "stopped by a signal before it was finished; its Ray task was cancelled, rerun to finish"
#: What the tasks need from the driver's environment: S3 credentials and endpoint, pyarrow's allocator setting.
FORWARDED_ENV = ("AWS_", "MIMALLOC_PURGE_DELAY")
#: How often the driver collects finished tasks and a task asks whether the run is stopping.
POLL_SECONDS = 0.5
#: After the grace period a shard gives up within one row group; it gets this long before its
#: task is interrupted, and as long again before its worker is killed.
GIVE_UP_SECONDS = 3.0


class Gate:
    """Which shards have started, and whether the run is stopping; one small actor per run.

    Ray cannot tell whether a queued task has started. Each task asks here first, so
    on a stop the driver knows exactly which shards are safe to cancel (not started)
    and which get the grace period (in flight).
    """

    def __init__(self) -> None:
        self.started: set[int] = set()
        self.stopping = False

    def start(self, index: int) -> bool:
        if not self.stopping:
            self.started.add(index)
        return not self.stopping

    def stop(self) -> set[int]:
        self.stopping = True
        return self.started

    def stopped(self) -> bool:
        return self.stopping


def filter_shard(
    spec: JobSpec, shard: Shard, key_set: ExactKeySet, output_root: str | None, index: int, gate: Any, verbose: bool
) -> ShardReport:
    """The body of one Ray task: the local pipeline on one shard."""
    import ray

    if not ray.get(gate.start.remote(index)):
        return shard_report(shard, NOT_STARTED)
    return anyio.run(_filter_until_stopped, spec, shard, key_set, output_root, gate, verbose)


async def _filter_until_stopped(
    spec: JobSpec, shard: Shard, key_set: ExactKeySet, output_root: str | None, gate: Any, verbose: bool
) -> ShardReport:
    # The driver's stop reaches the shard as the local executor's stop event, so the
    # grace period and the clean give-up between row groups are the local ones.
    stop = anyio.Event()

    async def watch() -> None:
        while not await gate.stopped.remote():
            await anyio.sleep(POLL_SECONDS)
        stop.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        [report] = await run_shards(spec, [shard], key_set, output_root, Progress.silent(), stop, verbose)
        tg.cancel_scope.cancel()
    return report


async def run_shards_on_ray(
    spec: JobSpec,
    shards: list[Shard],
    key_set: ExactKeySet,
    output_root: str | None,
    progress: Progress,
    stop: anyio.Event,
    verbose: bool = False,
) -> list[ShardReport]:
    """Run each shard as a Ray task; one report per shard, in order."""
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'streamfilter[ray]'") from None
    if not shards or stop.is_set():  # nothing to run, or stopped before anything started: no Ray needed
        reports = [shard_report(shard, NOT_STARTED) for shard in shards]
        for report in reports:
            progress.shard_finished(report)
        return reports
    started_here = _connect(ray, spec.ray_address)
    gate = None
    try:
        gate = ray.remote(num_cpus=0)(Gate).remote()
        return await _run(ray, gate, spec, shards, key_set, output_root, progress, stop, verbose)
    finally:
        # Also when the caller gave up early: a task still running then finds the gate
        # gone, and its shard stops as it would on a signal, committing nothing.
        if gate is not None:
            ray.kill(gate)
        if started_here:
            ray.shutdown()


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), or start a local instance; True if started here."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    # "local" starts a new instance even when `ray start` left one (or a stale record of one) on this machine.
    # No num_cpus: Ray counts the CPUs this container may use, where os.cpu_count() sees the whole host.
    local = {"address": "local", "include_dashboard": False}
    options = {"address": address} if address else local
    if address:
        _check_reachable(address)
    # ray.init replaces the SIGTERM handler with one that exits at once; the caller's (the
    # CLI's graceful stop) must stay. It runs on this thread, not a worker thread, because
    # the processes it starts are killed when the thread that started them ends.
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if on_main else None
    try:
        ray.init(**options, **quiet)
    except Exception as exc:
        if address:
            raise UsageError(f"cannot join the Ray cluster at {address}: {_one_line(exc)}") from None
        raise UsageError(f"cannot start a local Ray instance: {_one_line(exc)}; or pass --ray-address") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return True


def _check_reachable(address: str) -> None:
    """Fail in seconds when nothing answers at ``address``; ray.init would retry for minutes."""
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        return  # "auto" or "local": Ray finds the cluster itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise UsageError(
            f"--ray-address {address}: nothing answers there ({exc.strerror or exc}); "
            "check the address and that the Ray cluster is up"
        ) from None


async def _run(
    ray: Any,
    gate: Any,
    spec: JobSpec,
    shards: list[Shard],
    key_set: ExactKeySet,
    output_root: str | None,
    progress: Progress,
    stop: anyio.Event,
    verbose: bool,
) -> list[ShardReport]:
    # Ray workers do not inherit the driver's environment; these values are passed on, never logged.
    env = {name: value for name, value in os.environ.items() if name.startswith(FORWARDED_ENV)}
    task = ray.remote(filter_shard).options(
        num_cpus=spec.ray_task_cpus,
        # A rerun resumes from receipts; a shard that crashed its worker would likely crash it again.
        max_retries=0,
        runtime_env={"env_vars": env},
    )
    key_ref = ray.put(key_set)  # once: every task reads this one copy from the object store
    one_shard = dataclasses.replace(spec, concurrency=1, executor="local")
    pending = {
        task.remote(one_shard, shard, key_ref, output_root, index, gate, verbose): index
        for index, shard in enumerate(shards)
    }
    reports: dict[int, ShardReport] = {}
    started: set[int] | None = None  # known once the run is stopping
    interrupted = False  # True once tasks in flight were cancelled after the grace period
    interrupt_at = kill_at = math.inf
    while pending:
        if stop.is_set() and started is None:
            started = await anyio.to_thread.run_sync(ray.get, gate.stop.remote())
            for ref, index in pending.items():
                if index not in started:
                    ray.cancel(ref)
            interrupt_at = time.monotonic() + spec.grace_seconds + GIVE_UP_SECONDS
            kill_at = interrupt_at + GIVE_UP_SECONDS
        now = time.monotonic()
        if now >= interrupt_at:  # past the grace period: interrupt what still runs, later kill it
            for ref in pending:
                ray.cancel(ref, force=now >= kill_at)
            interrupt_at, interrupted = (kill_at if now < kill_at else math.inf), True
        for ref, outcome in await anyio.to_thread.run_sync(_finished, ray, list(pending)):
            index = pending.pop(ref)
            if not isinstance(outcome, ShardReport):
                outcome = _failed(ray, shards[index], outcome, index, started, interrupted)
            reports[index] = outcome
            if not outcome.resumed:
                progress.add(outcome.rows_in, outcome.bytes_read)
            progress.shard_finished(outcome)
    return [reports[index] for index in range(len(shards))]


def _finished(ray: Any, refs: list[Any]) -> list[tuple[Any, ShardReport | Exception]]:
    """The tasks that finish within one poll, each with its report or what ended it."""
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=POLL_SECONDS)
    outcomes: list[tuple[Any, ShardReport | Exception]] = []
    for ref in ready:
        try:
            outcomes.append((ref, ray.get(ref)))
        except ray.exceptions.RayError as exc:
            outcomes.append((ref, exc))
    return outcomes


def _failed(
    ray: Any, shard: Shard, exc: Exception, index: int, started: set[int] | None, interrupted: bool
) -> ShardReport:
    """The report of a shard whose task ended without one: cancelled, or its worker died."""
    name = redact_uri(shard.input)
    if started is not None and index not in started:
        error = NOT_STARTED
    elif interrupted:
        error = f"{name}: {STOPPED}"
    elif isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, BaseException):
        cause = exc.cause
        error = f"{name}: its Ray task raised {type(cause).__name__}: {_one_line(cause)}; rerun to retry it"
    else:
        error = f"{name}: its Ray worker died ({type(exc).__name__}); rerun to retry it"
    return shard_report(shard, error)


def _one_line(exc: BaseException) -> str:
    """A library's message as one redacted line of bounded length (Ray's span many lines)."""
    text = redact_text(" ".join(str(exc).split()))
    return text if len(text) <= 300 else text[:299] + "…"
