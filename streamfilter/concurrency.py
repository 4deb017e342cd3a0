"""How much runs at once: the CPUs this process may use, and a bounded concurrent map for async I/O."""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import anyio

#: cgroup v2's CPU limit of this container: "max 100000" (none) or "<quota> <period>".
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process may use: its affinity, capped by a container's CPU limit.

    ``os.cpu_count()`` counts the host's CPUs; in a pod limited to 2 of 64 it would
    plan for 64.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity outside Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 file here, or one we do not understand
        pass
    return cpus


class Cores:
    """The CPUs a run may use, and how many of its shards' pipelines run on them right now.

    Parallel work inside one shard (its columns decoded at once, a row group encoded beside the
    decoding of the next) pays only on spare cores: at the end of a run, or while fewer shards than
    cores are in flight. With every core busy it only adds switching (measured: 3 shards on 2 cores
    took 1.26x Polars' wall time with parallel decoding, 1.12x without). Pipeline threads read
    :meth:`spare` as they go, so a shard left alone at the end of a run widens at its next row group.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self._busy = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Counts one shard's pipeline as running for the length of the block."""
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1

    def spare(self) -> bool:
        """Whether a core is left over after one for each running pipeline."""
        return self._busy < self.total


T = TypeVar("T")
R = TypeVar("R")


async def gather_limited(
    items: Sequence[T], fn: Callable[[T], Awaitable[R]], limit: int, *, cancel_rest: bool = False
) -> list[R]:
    """``fn`` over ``items``, at most ``limit`` at a time, results in order; the first failure is re-raised.

    A task group would wrap the failure in an ExceptionGroup, which the CLI's one-line error
    handling does not catch. The other calls finish first (they are short requests), or with
    ``cancel_rest`` are cancelled at the first failure.
    """
    results: list = [None] * len(items)
    errors: list[Exception] = []
    limiter = anyio.CapacityLimiter(limit)

    async def one(i: int) -> None:
        async with limiter:
            try:
                results[i] = await fn(items[i])
            except Exception as exc:
                errors.append(exc)
                if cancel_rest:
                    tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        for i in range(len(items)):
            tg.start_soon(one, i)
    if errors:
        raise errors[0]
    return results
