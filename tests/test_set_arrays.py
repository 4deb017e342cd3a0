"""numpy <-> Arrow through buffers (sets/arrays.py): the same values as pyarrow's own conversions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def imports_pandas(inputs: str, out: Path, blocklist: Path, removed: int, **options: str) -> bool:
    """Whether a ``streamfilter.run`` in a fresh interpreter imported pandas; it must remove ``removed`` rows."""
    extra = "".join(f", {k}={v!r}" for k, v in options.items())
    code = (
        "import sys, streamfilter\n"
        f"r = streamfilter.run([{inputs!r}], output={str(out)!r}, blocklist=[{str(blocklist)!r}], quiet=True{extra})\n"
        f"assert r.ok and r.totals['rows_removed'] == {removed}, r.totals\n"
        "print('pandas' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1] == "True"


def test_a_run_over_a_plain_list_imports_no_pandas(tmp_path: Path) -> None:
    """pyarrow imports pandas (0.2 s) at the first conversion of a Python value; a dense Parquet run over an
    exact list of URLs (a scan, then rewrites) makes none."""
    import pyarrow.parquet as pq
    from helpers import shard_table

    for i in range(3):
        pq.write_table(shard_table(3000, start=3000 * i, seed=i), tmp_path / f"{i}.parquet", row_group_size=1000)
    urls = pq.read_table(tmp_path / "0.parquet", columns=["url"])["url"].to_pylist()[::50]
    (tmp_path / "list.txt").write_text("\n".join(urls) + "\n# a comment\n\n")
    assert not imports_pandas(str(tmp_path / "*.parquet"), tmp_path / "out", tmp_path / "list.txt", 60)


def test_an_embedding_set_run_imports_no_pandas(tmp_path: Path) -> None:
    """The metadata's keep mask goes to numpy and back to Arrow for its rewrite without the conversions
    that import pandas (0.2 s of a local run's start-up, measured)."""
    from emb_helpers import listed_of, make_set_files, write_files

    sets = [make_set_files(i, 300) for i in range(2)]
    for files in sets:
        write_files(tmp_path / "in", files)
    (tmp_path / "list.txt").write_text("\n".join(sorted(listed_of(sets, {0: [1, 5], 1: [7]}))) + "\n")
    assert not imports_pandas(str(tmp_path / "in"), tmp_path / "out", tmp_path / "list.txt", 3, format="embeddings")
