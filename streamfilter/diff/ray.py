"""A diff's steps as Ray tasks: one task per input shard to spill, then one per partition to resolve.

Each task runs the local code for its one step in its own process, with its own
store connections, and writes the same spill objects and markers; the driver only
waits and reports. The spill prefix must therefore be reachable from every node
(object storage, or a shared file system).
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any

import anyio
import anyio.to_thread
from anyio.from_thread import BlockingPortal

from ..errors import UsageError, redact_uri
from ..executors.ray import FORWARDED_ENV, POLL_SECONDS, _connect, _one_line
from ..store import ObjectInfo, Stores
from .progress import DiffProgress
from .spec import DiffSpec

#: Besides what the shard executor forwards: the Hugging Face token and endpoint for hf:// references.
_ENV = (*FORWARDED_ENV, "HF_")


async def _in_task(spec: DiffSpec, partitions: int, step: Any) -> dict:
    from .job import Context

    stores = Stores(spec.store)
    try:
        async with BlockingPortal() as portal:
            ctx = Context(spec, stores, portal, partitions, DiffProgress(io.StringIO(), live=False))
            return await step(ctx)
    finally:
        await stores.aclose()


def spill_task(spec: DiffSpec, partitions: int, side_name: str, info: ObjectInfo) -> dict:
    from .job import spill_input

    side = spec.reference if side_name == "reference" else spec.derivative
    return anyio.run(_in_task, spec, partitions, lambda ctx: spill_input(ctx, side, info))


def resolve_task(spec: DiffSpec, partitions: int, work: Any) -> dict:
    from .job import resolve_one

    return anyio.run(_in_task, spec, partitions, lambda ctx: resolve_one(ctx, work))


async def _run(ctx: Any, fn: Any, items: list[tuple[str, tuple]]) -> None:
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'streamfilter[ray]'") from None
    if not items:
        return
    started_here = _connect(ray, ctx.spec.ray_address)
    try:
        env = {k: v for k, v in os.environ.items() if k.startswith(_ENV)}  # passed on, never logged
        # One step per task, each with the whole budget: a task is one process on some node.
        spec = dataclasses.replace(ctx.spec, concurrency=1, executor="local")
        task = ray.remote(fn).options(num_cpus=1, max_retries=0, runtime_env={"env_vars": env})
        pending = {task.remote(spec, ctx.partitions, *args): what for what, args in items}
        while pending:
            ready, _ = await anyio.to_thread.run_sync(
                lambda: ray.wait(list(pending), num_returns=len(pending), timeout=POLL_SECONDS)
            )
            for ref in ready:
                what = pending.pop(ref)
                try:
                    marker = await anyio.to_thread.run_sync(ray.get, ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                    ctx.failures.append(f"{what}: {_one_line(cause)}")
                    ctx.progress.step(what, _one_line(cause), failed=True)
                    continue
                except ray.exceptions.RayError as exc:
                    ctx.failures.append(f"{what}: its Ray worker died ({type(exc).__name__}); rerun to retry it")
                    ctx.progress.step(what, "its Ray worker died", failed=True)
                    continue
                ctx.written += sum(e[2] for entries in marker.get("files", {}).values() for e in entries)
                ctx.written += marker.get("bytes", 0)
                ctx.progress.step(what, "done")
    finally:
        if started_here:
            ray.shutdown()


async def spill_on_ray(ctx: Any, todo: list) -> None:
    await _run(ctx, spill_task, [(redact_uri(info.uri), (side.name, info)) for side, info in todo])


async def resolve_on_ray(ctx: Any, todo: list) -> None:
    await _run(ctx, resolve_task, [(f"partition {w.partition}", (w,)) for w in todo])
