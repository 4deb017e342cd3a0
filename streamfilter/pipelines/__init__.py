"""Per-format filtering of one shard: the glue between a format's reader/writer and the key set.

Each format has one module here with a ``filter_shard(files, tools) -> Counts``
function, run in a worker thread. The engine opens the objects and commits the
output; a pipeline only reads ``files.source``, decides per row (or sample, or
line) with ``tools.rule`` and writes the kept ones to ``files.sink``.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..concurrency import Cores
from ..errors import ShardError
from ..keys import KeySpec, key_values
from ..progress import Progress
from ..sets import KeySet
from ..sets.arrays import from_numpy


@dataclass(frozen=True)
class Filter:
    """What decides, per row, whether it stays."""

    key: KeySpec
    key_set: KeySet
    mode: str

    def keep_mask(self, table: pa.Table, source: str) -> pa.Array:
        """True for rows that stay; ``table`` holds (at least) the key columns by name."""
        keys = key_values(table, self.key, source)
        classify = getattr(self.key_set, "classify", None)  # a set with rules says which kind matched
        if classify is None:
            hit = self.key_set.contains(keys)
        else:
            found, counts = classify(keys)
            tally = _TALLY.get()
            if tally is not None:
                for kind, n in counts.items():
                    tally[kind] = tally.get(kind, 0) + n
            hit = from_numpy(np.asarray(found, bool))  # pa.array would import pandas
        return hit if self.mode == "allow" else pc.invert(hit)


#: The rows each kind of rule matched in the pass running in this thread (see :func:`_tallied`).
_TALLY: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar("streamfilter_tally", default=None)


def _tallied(fn: Callable[[ShardFiles, ShardTools], Any]) -> Callable[[ShardFiles, ShardTools], Any]:
    """``fn`` with the rows each kind of rule matched in its pass put in its counts: as
    ``removed_by`` in deny mode, ``kept_by`` in allow mode. A pass starts from zero, so a
    scan and the rewrite after it each count their own rows, never both."""

    @functools.wraps(fn)
    def run(files: ShardFiles, tools: ShardTools) -> Counts | None:
        if getattr(tools.rule.key_set, "classify", None) is None:
            return fn(files, tools)
        tally: dict[str, int] = {}
        token = _TALLY.set(tally)
        try:
            counts = fn(files, tools)
        finally:
            _TALLY.reset(token)
        if counts is not None:
            by_kind = {kind: tally.get(kind, 0) for kind in ("exact", "domain", "prefix")}
            if tools.rule.mode == "allow":
                counts.kept_by = by_kind
            else:
                counts.removed_by = by_kind
        return counts

    return run


T = TypeVar("T")


@dataclass(frozen=True)
class ShardTools:
    """What a pipeline thread needs besides its shard's files; shared by every shard of a run."""

    rule: Filter
    progress: Progress
    #: The run's cores and the pipelines running on them: whether a shard may work in parallel inside itself.
    cores: Cores
    #: Set when the run must stop: checked between batches, so a shard gives up within one.
    cancelled: threading.Event
    #: What a sample or line without a usable key does: "fail" the shard, or "keep" it and count it.
    on_unkeyed: str = "fail"
    #: Tars: "parquet" keys samples through the sibling img2dataset Parquet; None reads each sample's .json.
    sidecar: str | None = None
    #: Tars keyed by image hash: a sample whose image does not decode is kept ("keep") or removed ("remove").
    on_undecodable: str = "keep"

    @property
    def decode_threads(self) -> bool:
        """Whether to decode a row group's columns in parallel and encode it beside the next one's decoding:
        only on spare cores (see :class:`~streamfilter.concurrency.Cores`), asked afresh each row group."""
        return self.cores.spare()

    def run(self, pipeline: Callable[[ShardFiles, ShardTools], T], files: ShardFiles) -> T:
        """``pipeline`` on ``files`` in this (worker) thread, counted as running on one of the cores."""
        with self.cores.busy():
            return pipeline(files, self)

    def check_cancelled(self, name: str) -> None:
        if self.cancelled.is_set():
            raise ShardError(
                f"{name}: stopped by a signal before it was finished; nothing was written, rerun to finish"
            )


@dataclass
class ShardFiles:
    """The objects of one shard, opened by the engine."""

    source: BinaryIO
    #: None for a dry run: count only, write nothing.
    sink: BinaryIO | None
    #: The input's URI, redacted: for messages.
    name: str
    #: Opens the object beside the input with another extension (``00000.tar`` -> ``00000.parquet``);
    #: raises ShardError when it is missing. Its bytes count as read by this shard.
    open_sibling: Callable[[str], BinaryIO]
    #: What a scan learned (a parsed footer), for the rewrite of the same shard that follows it.
    state: dict = field(default_factory=dict)


@dataclass
class Counts:
    """What a pipeline saw; members are tar members, None where the format has none."""

    rows_in: int = 0
    rows_out: int = 0
    members_in: int | None = None
    members_out: int | None = None
    #: Samples or lines kept because they had no usable key (``on_unkeyed = "keep"``).
    unkeyed: int | None = None
    #: With domain:/prefix: rules: the rows each kind (exact, domain, prefix) removed (deny) or kept (allow).
    removed_by: dict[str, int] | None = None
    kept_by: dict[str, int] | None = None
    #: Tars keyed by image hash: images hashed, matched, undecodable, and the matches' distances.
    images: dict[str, Any] | None = None


Pipeline = Callable[[ShardFiles, ShardTools], Counts]


Scanner = Callable[[ShardFiles, ShardTools], "Counts | None"]


def pipeline_for(fmt: str) -> Pipeline:
    """The ``filter_shard`` of ``pipelines/<fmt>.py``, imported on first use."""
    return _tallied(importlib.import_module(f"{__name__}.{fmt}").filter_shard)


#: Formats whose unit is a set of objects (a tar with its Parquet and stats; a metadata Parquet with its
#: .npy vectors): their module's ``process_set`` does the whole unit, with the engine's I/O (``shard_io``).
SET_FORMATS = ("img2dataset", "embeddings")


def set_processor_for(fmt: str) -> Callable[..., Any] | None:
    """``process_set`` of a format whose unit is several objects, imported on first use; None for the others."""
    return importlib.import_module(f"{__name__}.{fmt}").process_set if fmt in SET_FORMATS else None


def prefetcher_for(fmt: str) -> Callable[[ShardFiles, ShardTools], None] | None:
    """The format's ``prefetch_scan``, if it has one: run before a shard takes its decode slot, it makes
    the round trips the scan would start with (a Parquet footer) and requests the bytes it reads first."""
    return getattr(importlib.import_module(f"{__name__}.{fmt}"), "prefetch_scan", None)


def scanner_for(fmt: str, tools: ShardTools) -> Scanner | None:
    """The format's cheap first pass, if it has one: ``scan_shard`` returns the counts of a
    shard with nothing to remove, or None as soon as it finds a row that must go."""
    module = importlib.import_module(f"{__name__}.{fmt}")
    scanner = getattr(module, "scan_shard", None)
    wants = getattr(module, "scans", None)  # a format may scan only in some modes (tars: with a sidecar)
    return _tallied(scanner) if scanner is not None and (wants is None or wants(tools)) else None
