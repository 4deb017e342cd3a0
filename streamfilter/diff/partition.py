"""Phase one of a diff: one input shard's keys, fingerprinted and routed to partitions, spilled.

A partition is the top bits of the fingerprint's first half, so equal keys of the
two sides always meet in the same partition, and each partition can be resolved
on its own, on any machine. Keys are buffered per partition and written out when
the buffer passes ``flush_bytes``: one spill object per partition per flush, so
memory per shard stays bounded whatever its size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import pyarrow as pa

from ..errors import ShardError
from ..formats.parquet import ParquetShard, row_group_span
from ..keys import KeySpec, require_columns
from .fingerprint import side_keys
from .spill import spill_name, to_ipc

FINGERPRINT_SCHEMA = pa.schema([("hi", pa.uint64()), ("lo", pa.uint64())])
#: The derivative's spill also says where each key is: its row in the shard, which the spill object's
#: name names. The keys themselves are read again only for the rows the diff lists (see job.merge_phase).
LOCATED_SCHEMA = pa.schema([("hi", pa.uint64()), ("lo", pa.uint64()), ("row", pa.uint32())])
#: What a partition's resolve leaves: the derivative's rows the reference lacks, by shard and row.
REMOVALS_SCHEMA = pa.schema([("hi", pa.uint64()), ("lo", pa.uint64()), ("chunk", pa.string()), ("row", pa.uint32())])


def partition_of(hi: np.ndarray, partitions: int) -> np.ndarray:
    """The partition of each fingerprint: the top log2(partitions) bits of its first half.

    As uint16 (there are at most 65,536 partitions): numpy's stable sort of 16-bit
    integers is a radix sort, 5x faster than of int64 (measured on 1 M rows).
    """
    if partitions == 1:
        return np.zeros(len(hi), dtype=np.uint16)
    shift = np.uint64(64 - (partitions.bit_length() - 1))
    return (hi >> shift).astype(np.uint16)


@dataclass
class _Buffers:
    partitions: int
    located: bool
    pieces: dict[int, list[pa.Table]] = field(default_factory=dict)
    nbytes: int = 0

    def add(self, fingerprints: np.ndarray, rows: np.ndarray) -> None:
        """Route fingerprints (and, when ``located``, their rows in the shard) to their partitions."""
        if self.partitions == 1:  # nothing to route
            counts = np.array([len(fingerprints)])
            columns = {"hi": fingerprints[:, 0], "lo": fingerprints[:, 1]}
        else:
            part = partition_of(fingerprints[:, 0], self.partitions)
            order = np.argsort(part, kind="stable")
            counts = np.bincount(part, minlength=self.partitions)
            columns = {"hi": fingerprints[order, 0], "lo": fingerprints[order, 1]}
            rows = rows[order]
        if self.located:
            columns["row"] = rows.astype(np.uint32)
        table = pa.table(columns, schema=LOCATED_SCHEMA if self.located else FINGERPRINT_SCHEMA)
        start = 0
        for p in np.flatnonzero(counts).tolist():
            n = int(counts[p])
            self.pieces.setdefault(p, []).append(table.slice(start, n))
            start += n
        self.nbytes += table.nbytes

    def take(self) -> dict[int, pa.Table]:
        tables = {p: pa.concat_tables(pieces) for p, pieces in sorted(self.pieces.items())}
        self.pieces, self.nbytes = {}, 0
        return tables


@dataclass
class ShardSpill:
    """What one shard's spill produced, as its marker records it."""

    rows: int = 0
    nulls: int = 0
    stored_bytes: int = 0
    #: 64 if any comparison value was a 64-bit hash or integer, else 128.
    bits: int = 128
    #: partition -> [[object name, rows, stored bytes, bytes in memory], ...]
    files: dict[int, list[list]] = field(default_factory=dict)


def spill_shard(
    file: BinaryIO,
    name: str,
    *,
    side: str,
    key: KeySpec,
    chunk: str,
    partitions: int,
    flush_bytes: int,
    put: Callable[[str, bytes], None],
    on_rows: Callable[[int, int], None],
) -> ShardSpill:
    """Read the key columns of one Parquet shard and spill its fingerprints (with rows on the derivative side).

    ``put(name, data)`` writes one spill object (a name relative to the spill root);
    ``on_rows(rows, stored_bytes)`` reports progress. Runs in a worker thread.
    """
    shard = ParquetShard(file, name)
    require_columns(shard.schema, key, name)
    columns = list(key.columns)
    located = side == "derivative"
    if located and shard.metadata.num_rows >= 2**32:
        raise ShardError(f"{name} has {shard.metadata.num_rows:,} rows, over 2**32; split it into smaller shards")
    buffers = _Buffers(partitions, located)
    result = ShardSpill()
    seq = 0

    def flush() -> None:
        nonlocal seq
        for p, table in buffers.take().items():
            object_name = spill_name(side, p, chunk, seq)
            data = to_ipc(table, compress=False)  # fingerprints are random; rows too few bytes to matter
            put(object_name, data)
            result.files.setdefault(p, []).append([object_name, table.num_rows, len(data), table.nbytes])
        seq += 1

    first_row = 0
    for i, table in enumerate(shard.row_groups(columns, use_threads=False)):
        keys = side_keys(table, key, name)
        result.rows += len(keys.fingerprints)
        result.nulls += keys.nulls
        result.bits = min(result.bits, keys.bits)
        start, end = row_group_span(shard.metadata, i, columns)
        result.stored_bytes += end - start
        on_rows(table.num_rows, end - start)
        buffers.add(keys.fingerprints, keys.rows + first_row)
        first_row += table.num_rows
        del table, keys
        if buffers.nbytes >= flush_bytes:
            flush()
    if buffers.pieces:
        flush()
    if result.rows + result.nulls != shard.metadata.num_rows:
        raise ShardError(
            f"{name}: read {result.rows + result.nulls:,} rows but its footer declares "
            f"{shard.metadata.num_rows:,}; the file is corrupt, check the object"
        )
    return result
