"""Which columns the writer dictionary-encodes: distinct values counted as pyarrow's count_distinct counts them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from helpers import shard_table

from streamfilter.formats.parquet_writer import DICTIONARY_SAMPLE, _distinct, dictionary_columns

NAN = float("nan")


def test_distinct_counts_as_count_distinct() -> None:
    rng = np.random.default_rng(0)
    columns = [
        pa.chunked_array([pa.array([1.0, NAN, -0.0, 0.0, None, NAN, float("inf"), -NAN])]),
        pa.chunked_array([pa.array([1, 2, None, 2], pa.int8()), pa.array([None, 3], pa.int8())]),
        pa.chunked_array([pa.array(["a", None, "a", "", ""]), pa.array(["b", None])]),
        pa.chunked_array([pa.array([b"a", None, b"\x00", b""], pa.large_binary())]),
        pa.chunked_array([pa.array([None, None], pa.string())]),
        pa.chunked_array([pa.array(rng.random(5000).astype(np.float32))]),
        pa.chunked_array([pa.array(rng.integers(0, 50, 5000), pa.uint64())]),
        pa.chunked_array([pa.array(["x", "y"], pa.large_string()), pa.array([], pa.large_string())]),
        pa.chunked_array([pa.array([True, None, False, True])]),
        pa.chunked_array([pa.array([1, 1, 2], pa.int64()).cast(pa.timestamp("ms"))]),
    ]
    for column in columns:
        assert _distinct(column) == pc.count_distinct(column).as_py(), column


def test_the_same_columns_as_count_distinct_chooses() -> None:
    table = shard_table(20_000, seed=3)
    table = table.append_column("repeats", pa.array(np.arange(20_000) % 7, pa.int32()))
    sample = table.slice(0, DICTIONARY_SAMPLE)
    expected = [n for n in table.column_names if pc.count_distinct(sample[n]).as_py() <= len(sample) // 2]
    assert dictionary_columns(table) == expected
    assert "repeats" in expected
