"""The typed public surface: run()/arun() take options or a JobSpec, diff()/adiff() options or a DiffSpec,
and every membership set answers to the KeySet protocol. Results are checked against pyarrow."""

from __future__ import annotations

import importlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import assert_same_table, read_parquet, reference_filter, sample, shard_table, write_list, write_shard

import streamfilter
from streamfilter.sets import ExactKeySet
from streamfilter.sets.hashed import HashedKeySet
from streamfilter.spec import build_spec


def test_run_takes_a_job_spec(tmp_path: Path) -> None:
    table = shard_table(400, seed=91)
    write_shard(tmp_path / "in" / "a.parquet", table)
    listed = sample(table["url"], 7)
    blocklist = write_list(tmp_path / "list.txt", listed)
    spec = build_spec({"inputs": [str(tmp_path / "in" / "a.parquet")], "output": str(tmp_path / "out"),
                       "blocklist": [str(blocklist)]})  # fmt: skip

    report = streamfilter.run(spec, quiet=True)

    assert report.ok and isinstance(report.shards[0], streamfilter.ShardReport)
    assert_same_table(read_parquet(tmp_path / "out" / "a.parquet"), reference_filter(table, listed))
    with pytest.raises(streamfilter.UsageError, match="beside a JobSpec"):
        streamfilter.run(spec, output=str(tmp_path / "elsewhere"))


def test_diff_takes_options_and_writes_the_keys_the_reference_lacks(tmp_path: Path) -> None:
    # Importing the subpackage's modules (as any diff run does) must not shadow the function by the package.
    importlib.import_module("streamfilter.diff.job")
    assert callable(streamfilter.diff) and callable(streamfilter.adiff)
    derivative = pa.table({"url": [f"https://d.example/{i}" for i in range(300)]})
    reference = derivative.filter(pa.array([i % 10 != 3 for i in range(300)]))
    pq.write_table(derivative, tmp_path / "der.parquet")
    pq.write_table(reference, tmp_path / "ref.parquet")

    report = streamfilter.diff(reference=[str(tmp_path / "ref.parquet")], derivative=[str(tmp_path / "der.parquet")],
                               out=str(tmp_path / "removed.parquet"), key="url", quiet=True)  # fmt: skip

    assert report["ok"]
    expected = sorted(set(derivative["url"].to_pylist()) - set(reference["url"].to_pylist()))
    assert sorted(pq.read_table(tmp_path / "removed.parquet")["key"].to_pylist()) == expected
    with pytest.raises(streamfilter.UsageError):
        streamfilter.diff(not_an_option=1)


@pytest.mark.parametrize(
    "key_set",
    [ExactKeySet(pa.array(["a", "b", None])), HashedKeySet.from_values(pa.array([1, 2, 3], pa.uint64()))],
    ids=["exact", "fingerprints"],
)
def test_every_key_set_answers_to_the_protocol(key_set: streamfilter.KeySet) -> None:
    assert key_set.kind in ("exact", "fingerprints", "bloom")
    assert key_set.digest.startswith("sha256:") and key_set.size == 2 + (key_set.kind != "exact")
    assert 0.0 <= key_set.false_match_rate() < 1e-9
    probe = pa.array(["a", "z", None]) if key_set.kind == "exact" else pa.array([1, 9, None], pa.uint64())
    assert key_set.contains(probe).to_pylist() == [True, False, False]
