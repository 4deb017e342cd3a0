"""numpy arrays as Arrow arrays through their buffers.

``pa.array`` on any Python or numpy value makes pyarrow import pandas first, where it is
installed, to ask whether the value is a pandas object: 0.16-0.2 s, once a process, which a run
that never converts a value never pays. These wrap the buffers instead (zero-copy but for bits).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_TYPES = {
    np.dtype(np.int32): pa.int32(),
    np.dtype(np.int64): pa.int64(),
    np.dtype(np.uint32): pa.uint32(),
    np.dtype(np.uint64): pa.uint64(),
}


def from_numpy(values: np.ndarray) -> pa.Array:
    """A one-dimensional numpy array of int32/int64/uint32/uint64 or bool as an Arrow array without nulls."""
    if values.dtype == np.bool_:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    kind = _TYPES[values.dtype]
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(np.ascontiguousarray(values))])


def as_mask(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow array as numpy booleans, nulls as False (``to_numpy`` on booleans imports pandas)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    bits = np.unpackbits(np.frombuffer(values.buffers()[1], np.uint8), bitorder="little")
    mask = bits[values.offset : values.offset + len(values)].astype(bool)
    if values.null_count:
        valid = np.frombuffer(values.buffers()[0], np.uint8)
        mask &= np.unpackbits(valid, bitorder="little")[values.offset : values.offset + len(values)].astype(bool)
    return mask


def numbers(values: pa.Array) -> np.ndarray:
    """A numeric Arrow array without nulls as a numpy view of its buffer (``to_numpy`` imports pandas)."""
    assert values.null_count == 0
    dtype = np.dtype(values.type.to_pandas_dtype())
    return np.frombuffer(values.buffers()[1], dtype, len(values), values.offset * dtype.itemsize)


#: A false boolean scalar, built from a buffer (``pa.scalar(False)`` imports pandas).
FALSE = from_numpy(np.zeros(1, dtype=bool))[0]
