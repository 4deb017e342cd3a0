"""numpy <-> Arrow through buffers (sets/arrays.py): the same values as pyarrow's own conversions."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from streamfilter.sets.arrays import FALSE, as_mask, from_numpy, numbers


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32, np.uint64, np.bool_])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1000])
def test_from_numpy_as_pyarrow_converts(dtype: type, n: int) -> None:
    values = (np.arange(n) * 7919 % 13).astype(dtype) if dtype is not np.bool_ else np.arange(n) % 3 == 1
    got = from_numpy(values)
    assert got.equals(pa.array(values))
    assert got.null_count == 0
    if dtype is not np.bool_:
        assert np.array_equal(numbers(got), values)
        assert np.array_equal(numbers(got.slice(min(n, 3))), values[3:])


@pytest.mark.parametrize("offset", [0, 1, 5, 8, 13])
def test_as_mask_of_sliced_arrays_with_nulls(offset: int) -> None:
    values = pa.array([True, None, False, True, None, True, True, False, None, True, False, True] * 3)
    sliced = values.slice(offset)
    want = [bool(v) for v in sliced.to_pylist()]  # nulls as False
    assert as_mask(sliced).tolist() == want
    assert as_mask(pa.chunked_array([sliced, values])).tolist() == want + [bool(v) for v in values.to_pylist()]


def test_false_scalar() -> None:
    assert FALSE.equals(pa.scalar(False))


def test_the_helpers_import_no_pandas() -> None:
    code = (
        "import sys, numpy as np, pyarrow.compute as pc\n"
        "from streamfilter.sets.arrays import FALSE, as_mask, from_numpy, numbers\n"
        "a = from_numpy(np.arange(9, dtype=np.uint64)); m = pc.equal(a, a)\n"
        "as_mask(m); numbers(a); pc.fill_null(m, FALSE); from_numpy(np.ones(3, bool))\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
