"""The local executor: units run in order, a bounded number at once, with memory that does not grow per unit."""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import AsyncIterator

import anyio

from streamfilter.executors import NOT_STARTED, Limits
from streamfilter.executors.local import run_local


class Doubling:
    """A unit is a number; its result is twice it. Records the most units running at once."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.running = self.most = self.started = 0
        self.stop_after = stop_after
        self.stop: anyio.Event | None = None

    @contextlib.asynccontextmanager
    async def session(self, stop: anyio.Event, concurrency: int) -> AsyncIterator[Doubling]:
        self.stop = stop
        yield self

    async def run(self, unit: int) -> int | str:
        self.started += 1
        if self.stop_after is not None and self.started == self.stop_after:
            assert self.stop is not None
            self.stop.set()
        self.running += 1
        self.most = max(self.most, self.running)
        await anyio.sleep(0)
        self.running -= 1
        return unit * 2

    def give_up(self) -> None:
        pass

    def not_run(self, unit: int, why: str) -> str:
        return why

    def detached(self) -> Doubling:
        return self


def run(units: list[int], work: Doubling, concurrency: int) -> list[int | str]:
    seen: list[int | str] = []

    async def main() -> list[int | str]:
        return await run_local(units, work, Limits(concurrency), anyio.Event(), lambda r, _: seen.append(r))

    results = anyio.run(main)
    assert sorted(map(str, seen)) == sorted(map(str, results))  # every result was told, once
    return results


def test_units_run_in_order_and_bounded() -> None:
    work = Doubling()
    assert run(list(range(50)), work, concurrency=4) == [2 * u for u in range(50)]
    assert work.most == 4


def test_many_units_do_not_cost_a_task_each() -> None:
    """A task a unit, all started at once, held about 6 KiB a unit (200,000: 1.2 GB) before the first ran."""
    units = list(range(20_000))
    tracemalloc.start()
    try:
        results = run(units, Doubling(), concurrency=32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert results == [2 * u for u in units]
    # The results list and the told results are about 1.5 MiB; a task a unit was over 100 MiB.
    assert peak < 16 * 1024 * 1024, peak


def test_a_stop_leaves_the_rest_not_started() -> None:
    work = Doubling(stop_after=10)
    results = run(list(range(100)), work, concurrency=4)
    done = [r for r in results if r != NOT_STARTED]
    assert done == [2 * u for u in range(len(done))]  # the units started before the stop, in order
    assert 10 <= len(done) < 14  # those already taken by the four runners finish
    assert results[len(done) :] == [NOT_STARTED] * (100 - len(done))
