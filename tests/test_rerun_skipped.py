"""A rerun says what it skipped (issue 14, item 8).

Shards whose receipts show them done are not read again; the log must say so rather than repeat the
first run's `done … removed` lines, and the summary counts them. The shard the rerun does redo is
checked against pyarrow's filter.
"""

from __future__ import annotations

from pathlib import Path

from helpers import assert_same_table, read_parquet, reference_filter, sample, shard_table, write_list, write_shard

from streamfilter import cli

NAMES = [f"{i:05d}.parquet" for i in range(3)]


def test_a_rerun_says_which_shards_it_skipped_and_counts_them(tmp_path: Path, capsys) -> None:
    tables = {name: shard_table(600, start=i * 600, seed=88) for i, name in enumerate(NAMES)}
    for name, table in tables.items():
        write_shard(tmp_path / "in" / name, table, row_group_size=200)
    listed = [u for table in tables.values() for u in sample(table["url"], 17)]
    blocklist = write_list(tmp_path / "list.txt", listed)
    inputs = [str(tmp_path / "in" / name) for name in NAMES]
    args = ["run", *inputs, "--output", str(tmp_path / "out"), "--blocklist", str(blocklist), "--concurrency", "1"]

    assert cli.main(args) == 0
    first = capsys.readouterr()
    assert sorted(line.split(":")[0] for line in first.err.splitlines()) == [f"done {i}" for i in inputs]
    assert "skipped" not in first.err + first.out

    # One output lost: the rerun redoes that shard and skips the two others.
    (tmp_path / "out" / NAMES[1]).unlink()
    assert cli.main(args) == 0
    again = capsys.readouterr()

    lines = sorted(again.err.splitlines())
    assert len(lines) == 3, again.err
    assert lines[0].startswith(f"done {inputs[1]}: 600 rows in, ")
    assert lines[1].startswith(f"skipped {inputs[0]} (done by an earlier run) (")
    assert lines[2].startswith(f"skipped {inputs[2]} (done by an earlier run) (")
    assert again.out.startswith("3/3 shards done (2 skipped: done by an earlier run), 0 failed; ")
    assert_same_table(read_parquet(tmp_path / "out" / NAMES[1]), reference_filter(tables[NAMES[1]], listed))
