"""The Ray executor: one Ray task per unit, each running the local executor on its one unit.

The work (with what it carries: a run's membership set) goes into the object store
once and every task reads it from there. What a unit does is the work's, so a
shard's output is the same bytes whichever executor wrote it.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from ..errors import UsageError, redact_text
from . import NOT_STARTED, STOPPED, Limits, Work
from .local import GIVE_UP_SECONDS, run_local

U = TypeVar("U")
R = TypeVar("R")

#: What the tasks need from the driver's environment: S3 credentials and endpoint, the Hugging Face
#: token and endpoint, pyarrow's allocator setting. Passed on, never logged.
FORWARDED_ENV = ("AWS_", "HF_", "MIMALLOC_PURGE_DELAY")
#: How often the driver collects finished tasks and a task asks whether the run is stopping.
POLL_SECONDS = 0.5


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


def run_task(work: Work[U, R], index: int, unit: U, grace_seconds: float, gate: Any) -> R:
    """The body of one Ray task: the local executor on unit number ``index``."""
    import ray

    if not ray.get(gate.start.remote(index)):
        return work.not_run(unit, NOT_STARTED)
    return anyio.run(_run_until_stopped, work, unit, grace_seconds, gate)


async def _run_until_stopped(work: Work[U, R], unit: U, grace_seconds: float, gate: Any) -> R:
    # The driver's stop reaches the unit as the local executor's stop event, so the
    # grace period and the clean give-up between row groups are the local ones.
    stop = anyio.Event()

    async def watch() -> None:
        while not await gate.stopped.remote():
            await anyio.sleep(POLL_SECONDS)
        stop.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        [result] = await run_local([unit], work, Limits(1, grace_seconds), stop, lambda result, remote: None)
        tg.cancel_scope.cancel()
    return result


async def run_on_ray(
    units: Sequence[U], work: Work[U, R], limits: Limits, stop: anyio.Event, on_result: Callable[[R, bool], None]
) -> list[R]:
    """Run each unit as a Ray task; one result per unit, in order."""
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'streamfilter[ray]'") from None
    if not units or stop.is_set():  # nothing to run, or stopped before anything started: no Ray needed
        results = [work.not_run(unit, NOT_STARTED) for unit in units]
        for result in results:
            on_result(result, False)
        return results
    started_here = connect(ray, limits.ray_address)
    gate = None
    try:
        gate = ray.remote(num_cpus=0)(Gate).remote()
        return await _run(ray, gate, units, work, limits, stop, on_result)
    finally:
        # Also when the caller gave up early: a task still running then finds the gate
        # gone, and its unit stops as it would on a signal, committing nothing.
        if gate is not None:
            ray.kill(gate)
        if started_here:
            ray.shutdown()


def connect(ray: Any, address: str | None) -> bool:
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
            raise UsageError(f"cannot join the Ray cluster at {address}: {one_line(exc)}") from None
        raise UsageError(f"cannot start a local Ray instance: {one_line(exc)}; or pass --ray-address") from None
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
    units: Sequence[U],
    work: Work[U, R],
    limits: Limits,
    stop: anyio.Event,
    on_result: Callable[[R, bool], None],
) -> list[R]:
    # Ray workers do not inherit the driver's environment; these values are passed on, never logged.
    env = {name: value for name, value in os.environ.items() if name.startswith(FORWARDED_ENV)}
    task = ray.remote(run_task).options(
        num_cpus=limits.task_cpus,
        # A rerun resumes from receipts or markers; a unit that crashed its worker would likely crash it again.
        max_retries=0,
        runtime_env={"env_vars": env},
    )
    work_ref = ray.put(work.detached())  # once: every task reads this one copy from the object store
    pending = {
        task.remote(work_ref, index, unit, limits.grace_seconds, gate): index for index, unit in enumerate(units)
    }
    results: dict[int, R] = {}
    started: set[int] | None = None  # known once the run is stopping
    interrupted = False  # True once tasks in flight were cancelled after the grace period
    interrupt_at = kill_at = math.inf
    while pending:
        if stop.is_set() and started is None:
            started = await anyio.to_thread.run_sync(ray.get, gate.stop.remote())
            for ref, index in pending.items():
                if index not in started:
                    ray.cancel(ref)
            interrupt_at = time.monotonic() + limits.grace_seconds + GIVE_UP_SECONDS
            kill_at = interrupt_at + GIVE_UP_SECONDS
        now = time.monotonic()
        if now >= interrupt_at:  # past the grace period: interrupt what still runs, later kill it
            for ref in pending:
                ray.cancel(ref, force=now >= kill_at)
            interrupt_at, interrupted = (kill_at if now < kill_at else math.inf), True
        for ref, outcome in await anyio.to_thread.run_sync(_finished, ray, list(pending)):
            index = pending.pop(ref)
            if isinstance(outcome, Exception):
                why = _why_failed(ray, outcome, index, started, interrupted)
                results[index] = work.not_run(units[index], why)
                on_result(results[index], False)
            else:
                results[index] = outcome
                on_result(outcome, True)
    return [results[index] for index in range(len(units))]


def _finished(ray: Any, refs: list[Any]) -> list[tuple[Any, Any]]:
    """The tasks that finish within one poll, each with its result or what ended it."""
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=POLL_SECONDS)
    outcomes: list[tuple[Any, Any]] = []
    for ref in ready:
        try:
            outcomes.append((ref, ray.get(ref)))
        except ray.exceptions.RayError as exc:
            outcomes.append((ref, exc))
    return outcomes


def _why_failed(ray: Any, exc: Exception, index: int, started: set[int] | None, interrupted: bool) -> str:
    """Why a task ended without a result: cancelled, stopped, or its worker died."""
    if started is not None and index not in started:
        return NOT_STARTED
    if interrupted:
        return STOPPED
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, BaseException):
        cause = exc.cause
        return f"its Ray task raised {type(cause).__name__}: {one_line(cause)}; rerun to retry it"
    return f"its Ray worker died ({type(exc).__name__}); rerun to retry it"


def one_line(exc: BaseException) -> str:
    """A library's message as one redacted line of bounded length (Ray's span many lines)."""
    text = redact_text(" ".join(str(exc).split()))
    return text if len(text) <= 300 else text[:299] + "…"
