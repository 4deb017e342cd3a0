"""The 128-bit fingerprint each side of a diff compares, and the raw key a removal list names.

Each side has its own key spec (columns, separator, normalization, hash), so the
original LAION's ``URL`` can be compared with Re-LAION's ``url``. What is compared is
the side's *comparison value*: the normalized key's UTF-8 bytes, or its digest, or,
for a 64-bit hash (or a key that is one integer column, like LAION's ``hash``), its
64 bits as 8 little-endian bytes, so ``--key-hash mmh3_64`` of ``url + caption`` on
one side meets an int64 ``hash`` column on the other. The fingerprint is
MurmurHash3_x64_128 of that value: two different values share one with probability
2**-128, which keeps a diff of billions of keys exact (see ``collision_bound``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..keys import KeySpec, extract_keys, hash_keys, normalize, require_columns

#: The fingerprint's algorithm, recorded in the job and the report.
ALGORITHM = "mmh3_x64_128"


@dataclass
class SideKeys:
    """The non-null keys of one batch: fingerprints as (n, 2) uint64 halves, and where they are."""

    fingerprints: np.ndarray
    #: The batch's row number of each fingerprint (rows with a null key have none).
    rows: np.ndarray
    nulls: int
    #: Bits of information in a comparison value: 64 for a 64-bit hash or integer key, else 128 (the fingerprint).
    bits: int = 128


def _as_eight_bytes(values: np.ndarray) -> pa.Array:
    """uint64 values as 8-byte little-endian binary strings, without a copy per row."""
    data = values.astype("<u8", copy=False)
    offsets = np.arange(0, 8 * (len(values) + 1), 8, dtype=np.int64)
    return pa.Array.from_buffers(pa.large_binary(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _integer_column(table: pa.Table | pa.RecordBatch, key: KeySpec) -> pa.Array | None:
    """The key column if the key is one integer column compared as itself (LAION's ``hash``)."""
    if len(key.columns) != 1 or key.hash != "none":
        return None
    column = table.column(key.columns[0])
    if not pa.types.is_integer(column.type):
        return None
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.cast(pa.int64() if pa.types.is_signed_integer(column.type) else pa.uint64())


def comparison_values(table: pa.Table | pa.RecordBatch, key: KeySpec, source: str) -> tuple[pa.Array, pa.Array, int]:
    """(raw keys, comparison values as binary, bits a value carries), with nulls where the key is null."""
    require_columns(table.schema, key, source)
    raw = extract_keys(table, dataclasses.replace(key, normalize="none"), source)
    integers = _integer_column(table, key)
    if integers is not None:
        bits = integers.fill_null(0).to_numpy(zero_copy_only=False).view(np.uint64)
        return raw, _with_nulls(_as_eight_bytes(bits), integers), 64
    hashed = hash_keys(normalize(raw, key.normalize), dataclasses.replace(key, entries="raw"))
    if pa.types.is_uint64(hashed.type):
        return raw, _with_nulls(_as_eight_bytes(hashed.fill_null(0).to_numpy()), hashed), 64
    if pa.types.is_large_string(hashed.type):
        hashed = hashed.view(pa.large_binary())
    return raw, hashed, 128


def _with_nulls(values: pa.Array, like: pa.Array) -> pa.Array:
    if not like.null_count:
        return values
    return pc.if_else(pc.is_valid(like), values, pa.scalar(None, values.type))


def side_keys(table: pa.Table | pa.RecordBatch, key: KeySpec, source: str) -> SideKeys:
    """Fingerprints of the rows whose key is not null (null keys never match), and their row numbers."""
    from ..hashing import hash128  # numba: imported by the processes that fingerprint only

    _, values, bits = comparison_values(table, key, source)
    nulls = values.null_count
    rows = np.arange(len(values), dtype=np.int64)
    if nulls:
        valid = pc.is_valid(values)
        values, rows = values.filter(valid), rows[valid.to_numpy(zero_copy_only=False)]
    return SideKeys(hash128(values), rows, nulls, bits)


def raw_keys(table: pa.Table | pa.RecordBatch, key: KeySpec, source: str) -> pa.Array:
    """The keys as the shard holds them (columns joined, not normalized): what a removal list names."""
    raw = extract_keys(table, dataclasses.replace(key, normalize="none"), source)
    return raw.view(pa.large_binary()) if pa.types.is_large_string(raw.type) else raw.cast(pa.large_binary())


def collision_bound(reference_keys: int, derivative_keys: int, bits: int = 128) -> float:
    """Upper bound on the expected number of derivative keys that wrongly match a reference key.

    A false match needs two different values with one fingerprint: at most
    ``reference_keys * derivative_keys`` pairs, each colliding with probability 2**-bits.
    ``bits`` is 64 when a side compares 64-bit hashes or integers: then two different
    keys whose hashes collide look the same, and the bound is 2**64 times larger.
    """
    return reference_keys * derivative_keys / 2.0**bits
