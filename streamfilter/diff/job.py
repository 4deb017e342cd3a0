"""A diff from start to finish: list both sides, spill them by partition, resolve each partition, merge.

Every step leaves a marker (see :mod:`.spill`), so a rerun of the same command
skips the shards already spilled and the partitions already resolved, and static
workers (``--phase``, ``--worker-index``) or Ray tasks can share the steps.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import io
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from anyio.from_thread import BlockingPortal

from .._version import __version__
from ..concurrency import gather_limited
from ..errors import ShardError, StreamfilterError, UsageError, redact_uri
from ..executors import Limits, run_units
from ..formats.parquet import ParquetShard
from ..ledger import json_objects
from ..plan import Shard, expand_input, worker_of
from ..store import ObjectInfo, Stores
from . import spill
from .fingerprint import ALGORITHM, collision_bound, raw_keys, side_keys
from .partition import REMOVALS_SCHEMA, spill_shard
from .progress import DiffProgress
from .removals import encode_removals
from .resolve import PartitionCounts, resolve_bytes, resolve_partition, rounds_for
from .spec import DiffSpec, Side

#: Shards per side whose footers are read to estimate its rows and key bytes, for the partition count.
SAMPLE_SHARDS = 8
#: Bytes a row when no footer could be read: pessimistic (a URL column alone compresses to about
#: 30 bytes a row), and a partition that turns out larger than its share is resolved in rounds.
FALLBACK_BYTES_PER_ROW = 16
MAX_PARTITIONS = 65536
#: Concurrent small requests (stats, markers) when listing what is done.
_META_CONCURRENCY = 32


@dataclass
class Context:
    spec: DiffSpec
    stores: Stores
    portal: BlockingPortal
    partitions: int
    progress: DiffProgress
    #: Spill bytes this process wrote.
    written: int = 0
    failures: list[str] = field(default_factory=list)
    #: Each side's shard markers by chunk, read once and kept up to date by this process's spills, so a
    #: run of both phases does not read every marker twice.
    chunk_markers: dict[str, dict[str, dict]] = field(default_factory=dict)

    @property
    def root(self) -> str:
        return self.spec.spill

    def side_digest(self, side: Side) -> str:
        """What one side's spill depends on besides its inputs: a marker with another digest is stale."""
        depends = {"layout": spill.LAYOUT_VERSION, "fingerprint": ALGORITHM, "partitions": self.partitions}
        return spill.digest({**depends, "side": side.name, "key": side.key.to_dict()})

    async def put(self, uri: str, data: bytes) -> None:
        await self.stores.for_uri(uri).put(uri, data, confirm=False)
        self.written += len(data)


def choose_partitions(reference_rows: int, derivative_rows: int, budget: int) -> int:
    """The smallest power of two whose partitions should each resolve in one round within ``budget``."""
    need = resolve_bytes(reference_rows, derivative_rows)
    partitions = 1
    while partitions < MAX_PARTITIONS and need > partitions * budget:
        partitions *= 2
    return partitions


async def estimate_rows(infos: list[ObjectInfo], stores: Stores, portal: BlockingPortal) -> int:
    """The rows of a side, extrapolated by size from the footers of a few of its shards.

    One ranged read per sampled shard, before any key is read; a wrong guess costs only rounds.
    """
    step = max(1, len(infos) // SAMPLE_SHARDS)
    picks = infos[::step][:SAMPLE_SHARDS]

    def footer(info: ObjectInfo) -> tuple[int, int] | None:
        file = stores.for_uri(info.uri).open_input(info, portal)
        try:
            metadata = ParquetShard(file, redact_uri(info.uri)).metadata
        except StreamfilterError:
            return None  # the partition phase will name it; the estimate goes on without it
        finally:
            file.close()
        return metadata.num_rows, info.size

    found = [f for f in await gather_limited(picks, lambda i: anyio.to_thread.run_sync(footer, i), SAMPLE_SHARDS) if f]
    total = sum(i.size for i in infos)
    sampled = sum(f[1] for f in found)
    if not sampled:
        return total // FALLBACK_BYTES_PER_ROW
    return int(sum(f[0] for f in found) * total / sampled)


async def list_side(side: Side, stores: Stores) -> list[ObjectInfo]:
    """Every Parquet shard of one side, with size and version identity."""
    known: dict[str, ObjectInfo] = {}
    uris: list[str] = []
    for expr in side.inputs:
        uris += await expand_input(expr, stores, known)
    uris = list(dict.fromkeys(uris))
    for uri in uris:
        if not uri.split("?", 1)[0].lower().endswith((".parquet", ".pq")):
            raise UsageError(f"--{side.name} {redact_uri(uri)}: diff reads Parquet shards (.parquet, .pq)")

    async def info(uri: str) -> ObjectInfo:
        return known.get(uri) or await stores.for_uri(uri).stat(uri)

    try:
        return await gather_limited(uris, info, _META_CONCURRENCY)
    except ShardError as exc:
        raise UsageError(f"--{side.name}: {exc}") from None


def _parse(data: bytes) -> dict | None:
    try:
        return json.loads(data)
    except ValueError:
        return None  # a torn or foreign object under our prefix: the work is redone


async def _read_json(stores: Stores, uri: str) -> dict | None:
    try:
        return _parse(await stores.for_uri(uri).read_all(uri))
    except ShardError:
        return None


async def _markers(stores: Stores, prefix: str) -> dict[str, dict]:
    """Every marker under ``prefix``, by file name without ``.json``; none if they cannot be read (redone)."""
    try:
        found = await json_objects(prefix, stores)
    except ShardError:
        return {}
    parsed = {name.rsplit("/", 1)[-1][:-5]: _parse(data) for name, data in found.items()}
    return {name: marker for name, marker in parsed.items() if marker is not None}


async def open_job(spec: DiffSpec, stores: Stores, portal: BlockingPortal, infos: dict[str, list[ObjectInfo]]) -> int:
    """The partition count: given, or kept from an earlier run's job.json, or chosen now; job.json records it."""
    uri = spill.job_uri(spec.spill)
    existing = await _read_json(stores, uri)
    partitions = spec.partitions or (existing or {}).get("partitions")
    if not partitions:
        if spec.phase in ("resolve", "merge"):
            raise UsageError(f"no diff spilled under {redact_uri(spec.spill)}: run the partition phase first")
        ref_rows = await estimate_rows(infos["reference"], stores, portal)
        der_rows = await estimate_rows(infos["derivative"], stores, portal)
        # Partitions are resolved `concurrency` at a time, each within its share of the budget.
        partitions = choose_partitions(ref_rows, der_rows, spec.memory_budget // spec.concurrency)
    job = {
        "layout": spill.LAYOUT_VERSION, "fingerprint": ALGORITHM, "partitions": partitions,
        "reference_key": spec.reference.key.to_dict(), "derivative_key": spec.derivative.key.to_dict(),
    }  # fmt: skip
    if existing != job and spec.phase in ("all", "partition"):
        await stores.for_uri(uri).put(uri, json.dumps(job, indent=2).encode(), confirm=False)
    return partitions


# --------------------------------------------------------------------------- phase one


async def spill_input(ctx: Context, side: Side, info: ObjectInfo) -> dict:
    """Spill one shard and write its marker; returns the marker."""
    chunk = spill.chunk_id(info.uri)
    name = redact_uri(info.uri)
    file = ctx.stores.for_uri(info.uri).open_input(info, ctx.portal)
    budget = ctx.spec.memory_budget

    def put(object_name: str, data: bytes) -> None:
        ctx.portal.call(ctx.put, spill.spill_uri(ctx.root, object_name), data)

    def run() -> object:
        return spill_shard(
            file, name, side=side.name, key=side.key, chunk=chunk, partitions=ctx.partitions,
            # A quarter of the budget per shard in flight: the buffers, the decoded row group, their copies.
            flush_bytes=max(16 * 1024**2, budget // (4 * ctx.spec.concurrency)),
            put=put, on_rows=lambda rows, _: ctx.progress.add_keys(rows),
        )  # fmt: skip

    try:
        result = await anyio.to_thread.run_sync(run)
    finally:
        file.close()
    marker = {
        "input": spill.input_identity(info), "side_digest": ctx.side_digest(side), "rows": result.rows,
        "nulls": result.nulls, "stored_bytes": result.stored_bytes, "bits": result.bits,
        "files": {str(p): files for p, files in result.files.items()},
    }  # fmt: skip
    await ctx.put(spill.chunk_marker_uri(ctx.root, side.name, chunk), json.dumps(marker).encode())
    return marker


def _valid(marker: dict | None, info: ObjectInfo, digest: str) -> bool:
    return bool(marker) and marker.get("side_digest") == digest and marker.get("input") == spill.input_identity(info)


async def side_markers(ctx: Context, side: Side, infos: list[ObjectInfo]) -> dict[str, dict | None]:
    """Each input's marker if it describes this version of the input and this job, else None."""
    found = ctx.chunk_markers.get(side.name)
    if found is None:
        found = ctx.chunk_markers[side.name] = await _markers(ctx.stores, spill.chunk_prefix(ctx.root, side.name))
    digest = ctx.side_digest(side)
    out: dict[str, dict | None] = {}
    for info in infos:
        marker = found.get(spill.chunk_id(info.uri))
        out[info.uri] = marker if _valid(marker, info, digest) else None
    return out


def _mine(uri: str, spec: DiffSpec) -> bool:
    return worker_of(Shard(uri, None, uri), spec.num_workers) == spec.worker_index


async def partition_phase(ctx: Context, infos: dict[str, list[ObjectInfo]]) -> dict[str, int]:
    """Spill every shard of both sides (this worker's share) that has no valid marker; counts resumed ones."""
    todo: list[tuple[Side, ObjectInfo]] = []
    resumed = {}
    for side in (ctx.spec.reference, ctx.spec.derivative):
        markers = await side_markers(ctx, side, infos[side.name])
        mine = [i for i in infos[side.name] if _mine(i.uri, ctx.spec)]
        fresh = [i for i in mine if ctx.spec.overwrite or markers[i.uri] is None]
        resumed[side.name] = len(mine) - len(fresh)
        todo += [(side, i) for i in fresh]
    ctx.progress.start("partition", len(todo))
    await run_steps(ctx, "spill", [(side.name, info) for side, info in todo])
    ctx.progress.close()
    return resumed


# --------------------------------------------------------------------------- steps on an executor


@dataclass(frozen=True)
class StepResult:
    """What one step (a shard spilled, a partition resolved) left: its marker, or why it failed."""

    unit: Any
    what: str
    marker: dict | None = None
    error: str | None = None


@dataclass(frozen=True)
class DiffSteps:
    """The diff's steps of one kind as an executor's work: ``spill`` takes (side name, input) units,
    ``resolve`` takes :class:`PartitionWork` units. Run here, the steps share the driver's context;
    shipped to a Ray task, each opens its own."""

    spec: DiffSpec
    partitions: int
    kind: str
    ctx: Context | None = field(default=None, compare=False)

    def what(self, unit: Any) -> str:
        return redact_uri(unit[1].uri) if self.kind == "spill" else f"partition {unit.partition}"

    def not_run(self, unit: Any, why: str) -> StepResult:
        return StepResult(unit, self.what(unit), error=why)

    def detached(self) -> DiffSteps:
        # A task is one process on some node: one step at a time, with the whole memory budget.
        return dataclasses.replace(self, ctx=None, spec=dataclasses.replace(self.spec, concurrency=1, executor="local"))

    @contextlib.asynccontextmanager
    async def session(self, stop: anyio.Event, concurrency: int) -> AsyncIterator[DiffStepSession]:
        if self.ctx is not None:
            yield DiffStepSession(self, self.ctx)
            return
        stores = Stores(self.spec.store)
        try:
            async with BlockingPortal() as portal:
                progress = DiffProgress(io.StringIO(), live=False)
                yield DiffStepSession(self, Context(self.spec, stores, portal, self.partitions, progress))
        finally:
            await stores.aclose()


class DiffStepSession:
    def __init__(self, steps: DiffSteps, ctx: Context) -> None:
        self.steps, self.ctx = steps, ctx

    async def run(self, unit: Any) -> StepResult:
        what = self.steps.what(unit)
        try:
            if self.steps.kind == "spill":
                side_name, info = unit
                side = self.ctx.spec.reference if side_name == "reference" else self.ctx.spec.derivative
                return StepResult(unit, what, await spill_input(self.ctx, side, info))
            return StepResult(unit, what, await resolve_one(self.ctx, unit))
        except StreamfilterError as exc:
            return StepResult(unit, what, error=str(exc))

    def give_up(self) -> None:
        """The diff takes no signal of its own: a step runs to its end."""


async def run_steps(ctx: Context, kind: str, units: list) -> None:
    """Run the steps on the spec's executor; failures, progress and markers are gathered into ``ctx``."""

    def on_result(result: StepResult, remote: bool) -> None:
        if result.error is not None:
            prefix = f"{result.unit[0]} " if kind == "spill" else ""
            ctx.failures.append(f"{prefix}{result.what}: {result.error}")
            ctx.progress.step(result.what, result.error, failed=True)
            return
        marker = result.marker or {}
        if remote:  # written in another process: counted here from its marker
            ctx.written += sum(e[2] for entries in marker.get("files", {}).values() for e in entries)
            ctx.written += marker.get("bytes", 0)
        if kind == "spill":
            side, info = result.unit
            ctx.chunk_markers.setdefault(side, {})[spill.chunk_id(info.uri)] = marker
            ctx.progress.step(result.what, f"{side}, {marker['rows']:,} keys")
        else:
            ctx.progress.step(result.what, f"{marker['counts']['removal_rows']:,} rows to remove")

    steps = DiffSteps(ctx.spec, ctx.partitions, kind, ctx)
    limits = Limits(ctx.spec.concurrency, ray_address=ctx.spec.ray_address, task_cpus=1)
    await run_units(ctx.spec.executor, units, steps, limits, anyio.Event(), on_result)


# --------------------------------------------------------------------------- phase two


@dataclass
class PartitionWork:
    partition: int
    reference: list[list]
    derivative: list[list]
    digest: str


async def partition_work(ctx: Context, infos: dict[str, list[ObjectInfo]]) -> tuple[list[PartitionWork], dict]:
    """What each partition's resolve reads, from the markers of both sides; every input must be spilled."""
    files: dict[str, dict[int, list[list]]] = {}
    sides: dict[str, dict] = {}
    identities: list[dict | None] = []
    for side in (ctx.spec.reference, ctx.spec.derivative):
        markers = await side_markers(ctx, side, infos[side.name])
        missing = [uri for uri, m in markers.items() if m is None]
        if missing:
            raise UsageError(
                f"{len(missing)} {side.name} shard(s) are not spilled yet (first: {redact_uri(missing[0])}); "
                "run the partition phase for every worker first"
            )
        identities += markers.values()
        per: dict[int, list[list]] = {}
        for marker in markers.values():
            for p, entries in marker["files"].items():  # type: ignore[union-attr]
                per.setdefault(int(p), []).extend(entries)
        files[side.name] = per
        sides[side.name] = {
            "shards": len(markers),
            "rows": sum(m["rows"] for m in markers.values()),  # type: ignore[index]
            "null_keys": sum(m["nulls"] for m in markers.values()),  # type: ignore[index]
            "stored_key_bytes": sum(m["stored_bytes"] for m in markers.values()),  # type: ignore[index]
            "spill_bytes": sum(e[2] for entries in per.values() for e in entries),
            "bits": min((m.get("bits", 128) for m in markers.values()), default=128),  # type: ignore[union-attr]
        }
    # What every partition depends on: both key specs and the version of every input (a shard
    # rewritten with as many rows spills objects of the same names and sizes, so names are not enough).
    versions = [ctx.side_digest(ctx.spec.reference), ctx.side_digest(ctx.spec.derivative)]
    versions += sorted(json.dumps(m["input"], sort_keys=True) for m in identities)  # type: ignore[index]
    job = spill.digest(versions)
    work = []
    for p in range(ctx.partitions):
        ref = sorted(files["reference"].get(p, []))
        der = sorted(files["derivative"].get(p, []))
        work.append(PartitionWork(p, ref, der, spill.digest([job, ref, der])))
    return work, sides


async def resolve_one(ctx: Context, work: PartitionWork) -> dict:
    """Resolve one partition, write its removals and then its marker; returns the marker."""
    budget = ctx.spec.memory_budget // ctx.spec.concurrency
    rounds = rounds_for(sum(e[1] for e in work.reference), sum(e[1] for e in work.derivative), budget)
    sizes = {e[0]: e[2] for e in work.reference + work.derivative}

    def get(name: str) -> bytes:
        uri = spill.spill_uri(ctx.root, name)
        return ctx.portal.call(ctx.stores.for_uri(uri).read_range, uri, 0, sizes[name])

    counts, removals = await anyio.to_thread.run_sync(
        resolve_partition, [e[0] for e in work.reference], [e[0] for e in work.derivative], get, rounds
    )
    ctx.progress.add_keys(counts.reference_rows + counts.derivative_rows)
    data = spill.to_ipc(removals, compress=True)
    await ctx.put(spill.result_uri(ctx.root, work.partition), data)
    marker = {"digest": work.digest, "counts": counts.to_dict(), "bytes": len(data)}
    await ctx.put(spill.result_marker_uri(ctx.root, work.partition), json.dumps(marker).encode())
    return marker


async def resolve_phase(ctx: Context, works: list[PartitionWork]) -> int:
    """Resolve this worker's partitions that have no valid marker; returns how many were resumed."""
    done = await _markers(ctx.stores, spill.results_prefix(ctx.root))
    mine = [w for w in works if w.partition % ctx.spec.num_workers == ctx.spec.worker_index]
    todo = [w for w in mine if ctx.spec.overwrite or (done.get(f"p{w.partition:05d}") or {}).get("digest") != w.digest]
    ctx.progress.start("resolve", len(todo))
    await run_steps(ctx, "resolve", todo)
    ctx.progress.close()
    return len(mine) - len(todo)


# --------------------------------------------------------------------------- merge


async def merge_phase(ctx: Context, works: list[PartitionWork], sides: dict, derivative: list[ObjectInfo]) -> dict:
    """Check every partition is resolved, read the listed rows' keys, and total the counts."""
    done = await _markers(ctx.stores, spill.results_prefix(ctx.root))
    markers = []
    for work in works:
        marker = done.get(f"p{work.partition:05d}")
        if not marker or marker.get("digest") != work.digest:
            raise UsageError(
                f"partition {work.partition} of {ctx.partitions} is not resolved yet; "
                "run the resolve phase for every worker first"
            )
        markers.append(marker)

    async def removals(work: PartitionWork) -> pa.Table:
        uri = spill.result_uri(ctx.root, work.partition)
        size = done[f"p{work.partition:05d}"]["bytes"]
        return spill.from_ipc(await ctx.stores.for_uri(uri).read_range(uri, 0, size))

    tables = [t for t in await gather_limited(works, removals, _META_CONCURRENCY) if t.num_rows]
    located = pa.concat_tables(tables) if tables else REMOVALS_SCHEMA.empty_table()
    located = located.sort_by([("chunk", "ascending"), ("row", "ascending")]).combine_chunks()
    # One slice per shard: where the (sorted) chunk column changes.
    chunk_of_row = located.column("chunk").to_numpy(zero_copy_only=False)
    bounds = [0, *(np.flatnonzero(chunk_of_row[1:] != chunk_of_row[:-1]) + 1).tolist(), len(chunk_of_row)]
    per_shard = [located.slice(a, b - a) for a, b in itertools.pairwise(bounds) if b > a]
    shards = {spill.chunk_id(info.uri): info for info in derivative}
    fetched = await gather_limited(
        per_shard, lambda rows: fetch_keys(ctx, shards[rows.column("chunk")[0].as_py()], rows), ctx.spec.concurrency
    )
    keys = pc.unique(pa.concat_arrays(fetched)) if fetched else pa.array([], pa.large_binary())
    keys = keys.take(pc.sort_indices(keys)) if len(keys) else keys
    totals = PartitionCounts(rounds=0)
    for marker in markers:
        for name, value in marker["counts"].items():
            setattr(totals, name, getattr(totals, name) + value)
    return _summary(ctx, sides, totals, keys)


async def fetch_keys(ctx: Context, info: ObjectInfo, rows: pa.Table) -> pa.Array:
    """The keys at ``rows`` (sorted by row, not empty) of one derivative shard, as it holds them.

    Only the row groups holding them are read, key columns only; each key is fingerprinted
    again and must match what was spilled, so a shard changed since the spill fails loudly
    instead of listing another row's key.
    """
    side, name = ctx.spec.derivative, redact_uri(info.uri)
    file = ctx.stores.for_uri(info.uri).open_input(info, ctx.portal)
    changed = ShardError(
        f"{name} changed since the diff spilled it (its rows no longer hold the keys found); "
        "rerun the diff to spill it again"
    )

    def read() -> pa.Array:
        shard = ParquetShard(file, name)
        sizes = [shard.metadata.row_group(i).num_rows for i in range(shard.num_row_groups)]
        starts = np.cumsum([0, *sizes])
        wanted = rows.column("row").to_numpy().astype(np.int64)  # sorted
        if wanted[-1] >= starts[-1]:
            raise changed
        group_of = np.searchsorted(starts, wanted, side="right") - 1
        keys, found = [], []
        for group in np.unique(group_of).tolist():
            here = group_of == group
            table = shard.row_group(group, list(side.key.columns)).take(pa.array(wanted[here] - starts[group]))
            keys.append(raw_keys(table, side.key, name))
            found.append(side_keys(table, side.key, name).fingerprints)
        spilled = np.stack([rows.column("hi").to_numpy(), rows.column("lo").to_numpy()], axis=1)
        if not np.array_equal(np.concatenate(found), spilled):
            raise changed
        return pa.concat_arrays(keys)

    try:
        return await anyio.to_thread.run_sync(read)
    finally:
        file.close()


def _summary(ctx: Context, sides: dict, totals: PartitionCounts, keys: pa.Array) -> dict:
    ref, der = sides["reference"], sides["derivative"]
    ref.update(distinct=totals.reference_distinct, duplicates=totals.reference_rows - totals.reference_distinct)
    der.update(distinct=totals.derivative_distinct, duplicates=totals.derivative_rows - totals.derivative_distinct)
    bits = min(ref.pop("bits"), der.pop("bits"))
    return {
        "reference": ref,
        "derivative": der,
        "comparison_bits": bits,
        "removals": {"keys": len(keys), "rows": totals.removal_rows},
        "partitions": ctx.partitions,
        "resolve_rounds": totals.rounds,
        "fingerprint": ALGORITHM,
        "collision_bound": collision_bound(totals.reference_distinct, totals.derivative_distinct, bits),
        "_keys": keys,
    }


# --------------------------------------------------------------------------- the whole diff


def release_memory() -> None:
    """Hand the partition phase's freed memory back before the resolve phase allocates its own.

    Freed blocks stay with the allocators otherwise (Arrow's pool until its purge delay,
    glibc's per-thread arenas indefinitely), and the resolve's peak would stack on them:
    measured on the 100 M-key benchmark, one process peaked 0.6 GiB above its phases run apart.
    """
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


async def adiff(spec: DiffSpec, progress: DiffProgress | None = None) -> dict:
    """Run the diff's phases that ``spec.phase`` names; returns the report (a JSON-ready dict)."""
    stores = Stores(spec.store)
    started = time.monotonic()
    failure: StreamfilterError | None = None
    try:
        infos = {side.name: await list_side(side, stores) for side in (spec.reference, spec.derivative)}
        async with BlockingPortal() as portal:
            try:
                partitions = await open_job(spec, stores, portal, infos)
                ctx = Context(spec, stores, portal, partitions, progress or DiffProgress())
                report = await _phases(ctx, infos)
            except StreamfilterError as exc:
                failure = exc  # raised outside the portal's task group, which would wrap it in an ExceptionGroup
        if failure is not None:
            raise failure
        report["spill_bytes_written"] = ctx.written
        report["seconds"]["total"] = round(time.monotonic() - started, 3)
        report["ok"] = not ctx.failures
        if ctx.failures:
            report["failures"] = ctx.failures
        await _write_report(spec, stores, report)
        return report
    finally:
        await stores.aclose()


async def _phases(ctx: Context, infos: dict[str, list[ObjectInfo]]) -> dict:
    """The phases ``--phase`` names, in order; stops after one with failures (the rest would be wrong)."""
    spec = ctx.spec
    report: dict = {
        "version": __version__, "phase": spec.phase, "partitions": ctx.partitions,
        "reference_key": spec.reference.key.to_dict(), "derivative_key": spec.derivative.key.to_dict(),
        "fingerprint": ALGORITHM, "seconds": {},
    }  # fmt: skip
    if spec.phase in ("all", "partition"):
        t = time.monotonic()
        report["shards_resumed"] = await partition_phase(ctx, infos)
        report["seconds"]["partition"] = round(time.monotonic() - t, 3)
        release_memory()
    if ctx.failures or spec.phase == "partition":
        return report
    works, sides = await partition_work(ctx, infos)
    if spec.phase != "merge":
        t = time.monotonic()
        report["partitions_resumed"] = await resolve_phase(ctx, works)
        report["seconds"]["resolve"] = round(time.monotonic() - t, 3)
    if ctx.failures or spec.phase == "resolve":
        return report
    t = time.monotonic()
    summary = await merge_phase(ctx, works, sides, infos["derivative"])
    keys = summary.pop("_keys")
    report.update(summary)
    metadata = {k: report[k] for k in ("reference_key", "derivative_key", "fingerprint", "removals")}
    out: str = spec.out  # type: ignore[assignment]
    data = encode_removals(keys, out, spec.spill, metadata)
    await ctx.stores.for_uri(out).put(out, data)
    report["out"] = redact_uri(out)
    report["seconds"]["merge"] = round(time.monotonic() - t, 3)
    return report


async def _write_report(spec: DiffSpec, stores: Stores, report: dict) -> None:
    if spec.report:
        await stores.for_uri(spec.report).put(spec.report, (json.dumps(report, indent=2) + "\n").encode())


def diff(spec: DiffSpec, progress: DiffProgress | None = None) -> dict:
    """Blocking form of :func:`adiff`."""
    return anyio.run(adiff, spec, progress)
