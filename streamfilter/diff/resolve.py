"""Phase two of a diff: one partition's anti-join, exact on 128-bit fingerprints.

The derivative's fingerprints the reference lacks are found by Arrow's Acero hash
join as a *right anti* join: its hash table is built on the derivative (usually the
smaller side) and the reference only streams through it, as DuckDB plans the same
query. On 12.5 M reference x 2.5 M derivative fingerprints that took 0.56 s, where
building on the reference (a left anti join) took 1.9 s (measured on this project's
2-core VM).

Distinct counts (for the duplicates the report gives) come from a numpy sort of each
side's first 64 bits, which is 10x faster than a hash aggregation of both halves:
values whose first halves differ are distinct, and only the few rows whose first half
repeats (duplicate keys, or a 64-bit collision) are counted exactly on both halves.

A partition larger than its memory share is resolved in rounds: round ``r`` of
``k`` keeps the fingerprints whose second half is ``r`` modulo ``k``, on both
sides, so equal keys still meet and every round fits. Its spill objects are then
read ``k`` times; the partition count chosen up front makes that rare.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .partition import LOCATED_SCHEMA, REMOVALS_SCHEMA
from .spill import chunk_of, from_ipc

#: Peak bytes a partition's resolve holds per reference fingerprint (the spill object as read, its
#: table, the sorted copy of the first halves, the rounds' filtered copies) and per derivative row
#: (its table with row and spill object, the sorted copy, the join's probe and hash tables).
#: Calibrated on the 100 M-key benchmark: with 48 and 128 it made 8 partitions of 12.5 M + 2.5 M rows,
#: and one process (two partitions in flight beside the partition phase's leftovers) peaked at 2,190 MiB
#: (2.14 GiB) against a 2 GiB budget; these values give it twice the partitions (peak 1,287 MiB).
REFERENCE_BYTES_PER_ROW = 64
DERIVATIVE_BYTES_PER_ROW = 160


@dataclass
class PartitionCounts:
    reference_rows: int = 0
    reference_distinct: int = 0
    derivative_rows: int = 0
    derivative_distinct: int = 0
    #: Derivative rows whose fingerprint the reference lacks (their distinct keys are counted at the merge).
    removal_rows: int = 0
    rounds: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_bytes(reference_rows: int, derivative_rows: int) -> int:
    """Peak memory of resolving these keys in one go."""
    return reference_rows * REFERENCE_BYTES_PER_ROW + derivative_rows * DERIVATIVE_BYTES_PER_ROW


def rounds_for(reference_rows: int, derivative_rows: int, budget: int) -> int:
    """How many rounds keep one partition's resolve within ``budget`` bytes."""
    return max(1, -(-resolve_bytes(reference_rows, derivative_rows) // max(budget, 1)))


def distinct_pairs(hi: np.ndarray, lo: np.ndarray) -> int:
    """How many distinct (hi, lo) pairs there are, exactly."""
    if len(hi) < 2:
        return len(hi)
    ordered = np.sort(hi)
    repeats = ordered[1:] == ordered[:-1]
    distinct_hi = len(hi) - int(np.count_nonzero(repeats))
    if distinct_hi == len(hi):
        return distinct_hi
    repeated = np.unique(ordered[1:][repeats])
    at = np.searchsorted(repeated, hi)
    at[at == len(repeated)] = 0
    rows = repeated[at] == hi
    pairs = pa.table({"hi": hi[rows], "lo": lo[rows]}).group_by(["hi", "lo"]).aggregate([]).num_rows
    return distinct_hi - len(repeated) + pairs


def _load(names: list[str], get: Callable[[str], bytes], rounds: int, r: int, schema: pa.Schema) -> pa.Table:
    """The spill objects of one side, as one table; a located side's rows also say which object (``file``)."""
    tables = []
    for i, name in enumerate(names):
        table = from_ipc(get(name))
        if rounds > 1:
            lo = table.column("lo").to_numpy()
            table = table.filter(pa.array(lo % np.uint64(rounds) == np.uint64(r)))
        if "row" in table.column_names:
            table = table.append_column("file", pa.array(np.full(table.num_rows, i, dtype=np.uint32)))
        tables.append(table)
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables).combine_chunks()


def _halves(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    return table.column("hi").to_numpy(), table.column("lo").to_numpy()


def resolve_partition(
    reference: list[str], derivative: list[str], get: Callable[[str], bytes], rounds: int = 1
) -> tuple[PartitionCounts, pa.Table]:
    """One partition's counts and removals: the derivative's rows (hi, lo, chunk, row) the reference lacks."""
    counts = PartitionCounts(rounds=rounds)
    removals = []
    ref_schema = pa.schema([LOCATED_SCHEMA.field("hi"), LOCATED_SCHEMA.field("lo")])
    der_schema = LOCATED_SCHEMA.append(pa.field("file", pa.uint32()))
    chunks = pa.array([chunk_of(name) for name in derivative], pa.string())
    for r in range(rounds):
        ref = _load(reference, get, rounds, r, ref_schema)
        counts.reference_rows += ref.num_rows
        counts.reference_distinct += distinct_pairs(*_halves(ref))
        der = _load(derivative, get, rounds, r, der_schema)
        counts.derivative_rows += der.num_rows
        counts.derivative_distinct += distinct_pairs(*_halves(der))
        # The join carries one row number; payload columns would make the build side wider.
        index = pa.array(np.arange(der.num_rows, dtype=np.int64))
        probe = der.select(["hi", "lo"]).append_column("index", index)
        absent = ref.join(probe, keys=["hi", "lo"], join_type="right anti") if ref.num_rows else probe
        missing = der.take(absent.column("index"))
        del ref, der, probe, absent
        counts.removal_rows += missing.num_rows
        chunk = pc.take(chunks, missing.column("file"))
        removals.append(pa.table([missing["hi"], missing["lo"], chunk, missing["row"]], schema=REMOVALS_SCHEMA))
    table = pa.concat_tables(removals) if removals else REMOVALS_SCHEMA.empty_table()
    return counts, table.sort_by([("chunk", "ascending"), ("row", "ascending")]) if table.num_rows else table
