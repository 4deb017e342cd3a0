"""CLIP embedding sets as clip-retrieval writes them (np.save, pyarrow), and the reference they are checked against.

The reference is NumPy boolean indexing of the input arrays and pyarrow filtering of
the input metadata; nothing here calls streamfilter.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from helpers import shard_table

KINDS = ("img_emb", "text_emb")


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def make_set_files(
    index: int, rows: int, dim: int = 16, dtype: str = "float16", text: bool = True, width: int = 4
) -> dict[str, bytes]:
    """One set's objects by path relative to its root: metadata Parquet and the .npy files."""
    n = f"{index:0{width}d}"
    rng = np.random.default_rng(index)
    files = {f"metadata/metadata_{n}.parquet": _parquet(shard_table(rows, start=index * 100_000, seed=index))}
    for kind in KINDS if text else KINDS[:1]:
        files[f"{kind}/{kind}_{n}.npy"] = npy_bytes(rng.standard_normal((rows, dim)).astype(dtype))
    return files


def _parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=max(1, table.num_rows // 3))
    return buffer.getvalue()


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def metadata_of(files: dict[str, bytes]) -> pa.Table:
    return pq.read_table(pa.BufferReader(next(v for k, v in files.items() if k.startswith("metadata/"))))


def listed_of(sets: list[dict[str, bytes]], picks: dict[int, list[int]]) -> set[str]:
    """URLs of the chosen rows of chosen sets."""
    out = set()
    for index, rows in picks.items():
        urls = metadata_of(sets[index])["url"].to_pylist()
        out |= {urls[r] for r in rows}
    return out


def keep_mask(table: pa.Table, listed: set[str]) -> np.ndarray:
    return ~pc.is_in(table["url"], pa.array(sorted(listed))).to_numpy(zero_copy_only=False)


def expected_outputs(files: dict[str, bytes], listed: set[str]) -> dict[str, object]:
    """What each object of a set must become: a filtered table, or an array."""
    table = metadata_of(files)
    keep = keep_mask(table, listed)
    out: dict[str, object] = {}
    for rel, data in files.items():
        if rel.endswith(".parquet"):
            out[rel] = table.filter(pa.array(keep))
        else:
            out[rel] = np.load(io.BytesIO(data))[keep]
    return out


def check_output(rel: str, data: bytes, expected: object, path: Path | None = None) -> None:
    """``data`` (or the file at ``path``) is what ``expected`` says: same table, or same array, dtype and order."""
    if rel.endswith(".parquet"):
        actual = pq.read_table(pa.BufferReader(data))
        assert actual.equals(expected), rel
        return
    assert isinstance(expected, np.ndarray)
    array = np.load(io.BytesIO(data), allow_pickle=False)
    assert array.dtype == expected.dtype and array.shape == expected.shape, rel
    assert array.flags.c_contiguous
    np.testing.assert_array_equal(array, expected)
    if path is not None:
        mapped = np.load(path, mmap_mode="r")
        np.testing.assert_array_equal(mapped, expected)
