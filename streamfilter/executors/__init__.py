"""Where units of work run: in this process (local) or as Ray tasks (ray). One seam for ``run`` and ``diff``.

An executor gets the units, a :class:`Work` that knows how to run one, its
:class:`Limits` and the run's stop event, and returns one result per unit, in
order. It decides only where and how many at once; what a unit does (reading,
matching, writing, receipts, markers) is the work's, the same everywhere. So an
executor imports nothing from the engine or the diff.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import anyio

U = TypeVar("U")
R = TypeVar("R")
U_contra = TypeVar("U_contra", contravariant=True)

NOT_STARTED = "not started: the run was stopped by a signal; rerun to finish"
STOPPED = "stopped by a signal before it was finished (nothing of it was committed); rerun to finish"


class Session(Protocol[U_contra, R]):
    """What the units of one process share (store connections, a thread portal), open while they run."""

    async def run(self, unit: U_contra) -> R:
        """Run one unit; its failure is in the result it returns, never raised."""
        ...

    def give_up(self) -> None:
        """The grace period after a stop is over: CPU work stops at its next boundary (a row group)."""
        ...


class Work(Protocol[U, R]):
    """Runs units of one kind; must pickle (:meth:`detached`) to run as Ray tasks."""

    def session(self, stop: anyio.Event, concurrency: int) -> AbstractAsyncContextManager[Session[U, R]]:
        """Open a session for up to ``concurrency`` units at once; ``stop`` is set on SIGTERM."""
        ...

    def not_run(self, unit: U, why: str) -> R:
        """The result of a unit that did not run, or was stopped: ``why`` is one line."""
        ...

    def detached(self) -> Work[U, R]:
        """A copy fit to send to another process (nothing live of this one: no progress line)."""
        ...


@dataclass(frozen=True)
class Limits:
    """How much runs at once, and how a stop is handled."""

    #: Units in flight in one process.
    concurrency: int
    #: After a stop, how long the units in flight get to finish before they give up.
    grace_seconds: float = 20.0
    #: Ray only: the cluster to join (None: $RAY_ADDRESS, or a local instance), and CPUs per task.
    ray_address: str | None = None
    task_cpus: float = 1.0


#: Told of each result as it comes; ``remote`` when it came from another process (its live counts did not).
OnResult = Callable[[R, bool], None]


async def run_units(
    executor: str,
    units: Sequence[U],
    work: Work[U, R],
    limits: Limits,
    stop: anyio.Event,
    on_result: Callable[[R, bool], None] | None = None,
) -> list[R]:
    """Run ``units`` on ``executor`` (``local`` or ``ray``); one result per unit, in order."""
    told = on_result or (lambda result, remote: None)
    if executor == "ray":
        from .ray import run_on_ray

        return await run_on_ray(units, work, limits, stop, told)
    from .local import run_local

    return await run_local(units, work, limits, stop, told)
