"""Consecutive small row groups are decoded and matched in one call, and still written one for one.

Expected outputs come from pyarrow's own filter, row group for row group (helpers.reference_*).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    assert_same_table,
    corrupt_row_group,
    read_parquet,
    reference_filter,
    reference_row_group_counts,
    row_group_rows,
    sample,
    shard_table,
    write_list,
    write_shard,
)

import streamfilter
from streamfilter.formats import parquet as pqfmt


def test_runs_cover_every_row_group_once_within_blocks_and_budget(tmp_path: Path, monkeypatch) -> None:
    src = write_shard(tmp_path / "r.parquet", shard_table(5000, seed=6), row_group_size=90)
    size = src.stat().st_size
    for block, budget, apart in ((size // 5, 10**9, None), (10 * size, 200_000, 7), (1, 10**9, 0), (size, 1, None)):
        monkeypatch.setattr(pqfmt, "FETCH_BLOCK_BYTES", block)
        monkeypatch.setattr(pqfmt, "DECODE_TOGETHER_BYTES", budget)
        with src.open("rb") as f:
            shard = pqfmt.ParquetShard(f, "r")
            runs = list(shard.fetched_runs(apart=apart))
            blocks = shard._blocks()
            md = shard.metadata
            assert [i for run in runs for i in run] == list(range(shard.num_row_groups))
            block_of = {i: b for b, (first, last) in enumerate(blocks) for i in range(first, last)}
            for run in runs:
                assert run == list(range(run[0], run[-1] + 1))
                if len(run) > 1:
                    assert len({block_of[i] for i in run}) == 1
                    assert sum(pqfmt.row_group_bytes(md, i) for i in run) <= budget
                    assert apart not in run
                    table = shard.read_run(run)
                    expected = pq.ParquetFile(src).read_row_groups(run)
                    assert table.equals(expected)
        if budget == 1:
            assert all(len(run) == 1 for run in runs)
        if block == 10 * size and budget == 10**9:
            assert len(runs) < shard.num_row_groups


@pytest.mark.parametrize("scan", [True, False])
def test_many_small_row_groups_rewritten_one_for_one(tmp_path: Path, scan: bool) -> None:
    table = shard_table(6000, seed=8)
    src = write_shard(tmp_path / "in" / "a.parquet", table, row_group_size=120)  # 50 row groups
    assert pq.ParquetFile(src).metadata.num_row_groups == 50
    # Listed: every 37th url, and every url of row groups 10 and 11 (removed whole: no output row group).
    urls = table["url"]
    listed = sample(urls, 37, offset=5) + urls.slice(10 * 120, 240).to_pylist()
    blocklist = write_list(tmp_path / "list.txt", listed)
    report = streamfilter.run([str(src)], output=str(tmp_path / "out"), blocklist=[str(blocklist)], scan=scan,
                              quiet=True)  # fmt: skip
    assert report.ok, [s.error for s in report.shards]
    out = tmp_path / "out" / "a.parquet"
    assert_same_table(read_parquet(out), reference_filter(read_parquet(src), listed))
    assert row_group_rows(out) == reference_row_group_counts(src, listed)
    assert report.shards[0].rows_in == 6000
    assert report.shards[0].rows_out == read_parquet(out).num_rows
    source, written = pq.ParquetFile(src).metadata, pq.ParquetFile(out).metadata
    codecs = {source.row_group(0).column(j).compression for j in range(source.num_columns)}
    assert codecs == {written.row_group(i).column(j).compression for i in range(written.num_row_groups)
                      for j in range(written.num_columns)}  # fmt: skip


def test_a_run_whose_rows_disagree_with_the_footer_fails_the_shard(tmp_path: Path, monkeypatch) -> None:
    src = write_shard(tmp_path / "c.parquet", shard_table(1000, seed=9), row_group_size=100)
    with src.open("rb") as f:
        shard = pqfmt.ParquetShard(f, "c")
        real = shard._pf.read_row_groups
        monkeypatch.setattr(shard._pf, "read_row_groups", lambda run, **kw: real(run, **kw).slice(1))
        with pytest.raises(streamfilter.ShardError, match="row groups 0-2 decode to 299 rows"):
            shard.read_run([0, 1, 2])
    assert pa.types.is_string(shard.schema.field("url").type)


def test_a_corrupt_row_group_in_a_run_is_named(tmp_path: Path) -> None:
    src = write_shard(tmp_path / "d.parquet", shard_table(1000, seed=10), row_group_size=100)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(corrupt_row_group(src.read_bytes(), 6))
    with bad.open("rb") as f:
        shard = pqfmt.ParquetShard(f, "bad")
        runs = list(shard.fetched_runs())
        assert any(6 in run and len(run) > 1 for run in runs)
        with pytest.raises(streamfilter.ShardError, match="bad: row group 6 cannot be decoded"):
            for run in runs:
                shard.read_run(run)


def test_a_stop_takes_effect_at_the_next_row_group_of_a_run(tmp_path: Path) -> None:
    """Row groups decoded together are still written one at a time, and a stop (the grace period over)
    takes effect before the next one is written, not at the end of the run: the shard fails, unwritten."""
    import io
    import threading

    from streamfilter.concurrency import Cores
    from streamfilter.errors import ShardError
    from streamfilter.keys import KeySpec
    from streamfilter.pipelines import Filter, ShardFiles, ShardTools
    from streamfilter.pipelines.parquet import filter_shard
    from streamfilter.progress import Progress
    from streamfilter.sets import ExactKeySet

    src = write_shard(tmp_path / "r.parquet", shard_table(4000, seed=9), row_group_size=100)
    with src.open("rb") as f:
        shard = pqfmt.ParquetShard(f, "r")
        assert max(len(run) for run in shard.fetched_runs()) > 1  # else the test tests nothing
    cancelled = threading.Event()

    class StopAfterFirst(Progress):
        def add(self, rows: int, nbytes: int) -> None:  # told after each row group written
            cancelled.set()

    rule = Filter(KeySpec(("url",)), ExactKeySet(pa.array(["https://nowhere.example/x.jpg"])), "deny")
    tools = ShardTools(rule, StopAfterFirst.silent(), cores=Cores(1), cancelled=cancelled)
    sink = io.BytesIO()
    with src.open("rb") as f, pytest.raises(ShardError, match="stopped by a signal"):
        filter_shard(ShardFiles(f, sink, "r.parquet", lambda _: f), tools)
