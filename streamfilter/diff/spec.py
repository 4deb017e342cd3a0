"""DiffSpec: what one ``streamfilter diff`` compares and where it keeps its state, validated once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..keys import KeySpec
from ..store import StoreOptions, expand_header

#: Memory a diff may use for its keys, by default (the issue's bound: at most 2 GiB).
DEFAULT_MEMORY_BUDGET = 2 * 1024**3
#: Input shards spilled, or partitions resolved, at once.
DEFAULT_CONCURRENCY = 2
PHASES = ("all", "partition", "resolve", "merge")
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Side:
    """One side of the diff: its shards and how their keys are read."""

    name: str
    inputs: tuple[str, ...]
    key: KeySpec


@dataclass(frozen=True)
class DiffSpec:
    reference: Side
    derivative: Side
    #: The removal list (``.parquet``, or text); not needed by the partition and resolve phases.
    out: str | None
    #: Prefix for spill objects and markers, local or s3:// (default: ``OUT.spill/``).
    spill: str
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    #: A power of two; None: chosen from the input sizes and the budget, then kept in job.json.
    partitions: int | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    phase: str = "all"
    #: Static sharding (Kubernetes Indexed Jobs): shards and partitions are split over the workers.
    num_workers: int = 1
    worker_index: int = 0
    #: Redo spilled shards and resolved partitions even when their markers show them done.
    overwrite: bool = False
    report: str | None = None
    executor: str = "local"
    ray_address: str | None = None
    store: StoreOptions = field(default_factory=StoreOptions)

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise UsageError(f"--phase {self.phase!r}: choose one of {', '.join(PHASES)}")
        if self.executor not in EXECUTORS:
            raise UsageError(f"--executor {self.executor!r}: choose one of {', '.join(EXECUTORS)}")
        if self.phase in ("all", "merge") and not self.out:
            raise UsageError("diff: name the removal list with --out FILE (.parquet, or text)")
        if self.memory_budget < 64 * 1024**2:
            raise UsageError(f"--memory-budget {self.memory_budget:,} bytes: give at least 64 MiB")
        if self.partitions is not None and (self.partitions < 1 or self.partitions & (self.partitions - 1)):
            raise UsageError(f"--partitions {self.partitions}: expected a power of two (1, 2, 4, ... 65536)")
        if self.partitions is not None and self.partitions > 65536:
            raise UsageError(f"--partitions {self.partitions}: at most 65536")
        if self.concurrency < 1:
            raise UsageError(f"--concurrency {self.concurrency}: expected 1 or more")
        if self.num_workers < 1 or not 0 <= self.worker_index < self.num_workers:
            raise UsageError(
                f"--worker-index {self.worker_index} with --num-workers {self.num_workers}: "
                "expected 0 <= index < workers"
            )
        if self.num_workers > 1 and self.phase == "all":
            raise UsageError(
                "diff with --num-workers: run each phase as its own job (--phase partition, then --phase resolve, "
                "then one --phase merge), so no worker resolves before every shard is spilled"
            )
        for side in (self.reference, self.derivative):
            if not side.inputs:
                raise UsageError(f"diff: give the {side.name} shards (--{side.name} URI, repeatable)")


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str | int) -> int:
    """``2GiB``, ``512M``, ``1g`` or a plain number of bytes."""
    if isinstance(text, int):
        return text
    raw = str(text).strip().lower().removesuffix("ib").removesuffix("b")
    unit = raw[-1:] if raw[-1:] in _SIZE_UNITS and raw[-1:] else ""
    try:
        return int(float(raw[: len(raw) - len(unit)]) * _SIZE_UNITS[unit])
    except ValueError:
        raise UsageError(f"--memory-budget {text!r}: expected a size such as 2GiB or 512MiB") from None


def _given(value: Any, default: Any) -> Any:
    """``value`` unless it is unset: an empty separator or a zero is a choice, not a default."""
    return default if value is None else value


def _key(opts: dict[str, Any], default_column: str) -> KeySpec:
    # A diff reads keys from shards on both sides: list-entry forms (blocklist_hash) do not apply.
    return KeySpec.from_options({**opts, "blocklist_hash": None}, default_column)


def _as_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


#: Option names accepted from flags, TOML and the API.
OPTIONS = (
    "reference", "derivative", "out", "key", "key_separator", "normalize", "key_hash", "reference_key",
    "reference_key_separator", "reference_normalize", "reference_key_hash", "spill", "memory_budget", "partitions",
    "concurrency", "phase", "num_workers", "worker_index", "overwrite", "report", "executor", "ray_address",
    "s3_endpoint_url", "http_header", "retries", "retry_max_seconds",
)  # fmt: skip


def build_diff_spec(opts: dict[str, Any]) -> DiffSpec:
    """A DiffSpec from CLI/TOML options; the reference's key options fall back to the derivative's."""
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise UsageError(f"diff: unknown option {unknown[0]!r}; known options: {', '.join(OPTIONS)}")
    derivative_key = _key(opts, "url")
    reference_opts = {
        name: opts.get(f"reference_{name}") if opts.get(f"reference_{name}") is not None else opts.get(name)
        for name in ("key", "key_separator", "normalize", "key_hash")
    }
    reference_key = _key(reference_opts, "url")
    out = opts.get("out")
    spill = opts.get("spill") or (f"{out}.spill/" if out else None)
    if not spill:
        raise UsageError("diff: name where to spill with --spill PREFIX (or give --out)")
    headers = dict(expand_header(h) for h in _as_list(opts.get("http_header")))
    store = StoreOptions(
        opts.get("s3_endpoint_url"),
        headers,
        **{k: opts[k] for k in ("retries", "retry_max_seconds") if opts.get(k) is not None},
    )
    worker_index = opts.get("worker_index")
    if worker_index is None:
        worker_index = int(os.environ.get("JOB_COMPLETION_INDEX", 0))
    return DiffSpec(
        reference=Side("reference", _as_list(opts.get("reference")), reference_key),
        derivative=Side("derivative", _as_list(opts.get("derivative")), derivative_key),
        out=out,
        spill=spill,
        memory_budget=parse_size(_given(opts.get("memory_budget"), DEFAULT_MEMORY_BUDGET)),
        partitions=opts.get("partitions"),
        concurrency=_given(opts.get("concurrency"), DEFAULT_CONCURRENCY),
        phase=_given(opts.get("phase"), "all"),
        num_workers=_given(opts.get("num_workers"), 1),
        worker_index=worker_index,
        overwrite=bool(opts.get("overwrite")),
        report=opts.get("report"),
        executor=opts.get("executor") or "local",
        ray_address=opts.get("ray_address"),
        store=store,
    )
