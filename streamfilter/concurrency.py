"""A bounded concurrent map for async I/O: many small requests at once, errors as themselves."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import anyio

T = TypeVar("T")
R = TypeVar("R")


async def gather_limited(items: Sequence[T], fn: Callable[[T], Awaitable[R]], limit: int) -> list[R]:
    """``fn`` over ``items``, at most ``limit`` at a time, results in order; the first failure is re-raised.

    A task group would wrap the failure in an ExceptionGroup, which the CLI's one-line error
    handling does not catch; the other calls finish first (they are short requests).
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

    async with anyio.create_task_group() as tg:
        for i in range(len(items)):
            tg.start_soon(one, i)
    if errors:
        raise errors[0]
    return results
