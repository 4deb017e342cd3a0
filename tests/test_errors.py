"""Bad shards fail alone, leave nothing half-written and never touch the inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from helpers import (
    assert_same_table,
    corrupt_row_group,
    files_under,
    parquet_bytes,
    read_parquet,
    reference_filter,
    sample,
    sha256_tree,
    shard_table,
    write_list,
)

import streamfilter
from streamfilter import cli


def test_bad_local_shards_fail_alone(tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    tables = {name: shard_table(2000, start=i * 2000, seed=24) for i, name in enumerate(["good1", "good2"])}
    for name, table in tables.items():
        (src / f"{name}.parquet").write_bytes(parquet_bytes(table, row_group_size=500))
    whole = parquet_bytes(shard_table(2000, seed=25), row_group_size=500)
    (src / "corrupt.parquet").write_bytes(b"\x00\x01 definitely not parquet " * 100)
    (src / "empty.parquet").write_bytes(b"")
    (src / "truncated.parquet").write_bytes(whole[: len(whole) // 2])
    (src / "no-footer.parquet").write_bytes(whole[:-100])
    # Footer intact, third row group damaged: two row groups are written before the failure.
    (src / "bad-row-group.parquet").write_bytes(corrupt_row_group(whole, 2))
    (src / "nokey.parquet").write_bytes(parquet_bytes(pa.table({"link": ["a"], "n": [1]})))
    listed = [u for t in tables.values() for u in sample(t["url"], 20)]
    blocklist = write_list(tmp_path / "list.txt", listed)
    before = sha256_tree(src)
    names = ["bad-row-group", "corrupt", "empty", "good1", "good2", "missing", "no-footer", "nokey", "truncated"]

    code = cli.main(
        [
            "run",
            *(str(src / f"{n}.parquet") for n in names),
            "--output",
            str(tmp_path / "out"),
            "--blocklist",
            str(blocklist),
            "--concurrency",
            "3",
            "--report",
            str(tmp_path / "report.json"),
        ]
    )

    assert code == 1
    captured = capsys.readouterr()
    report = json.loads((tmp_path / "report.json").read_text())
    by_name = {Path(s["input"]).stem: s for s in report["shards"]}
    assert sorted(by_name) == sorted(names)
    failed = sorted(n for n, s in by_name.items() if s["status"] == "failed")
    assert failed == sorted(set(names) - {"good1", "good2"})
    for name in failed:
        shard = by_name[name]
        assert str(src / f"{name}.parquet") in shard["error"], shard["error"]
        assert "\n" not in shard["error"]
        assert shard["rows_out"] == 0 and shard["bytes_written"] == 0
        assert f"failed {src / name}.parquet: " in captured.err
    assert "not found: " in by_name["missing"]["error"]
    assert "no column 'url'" in by_name["nokey"]["error"] and "link, n" in by_name["nokey"]["error"]
    assert "row group 2" in by_name["bad-row-group"]["error"]
    assert "not a readable Parquet file" in by_name["truncated"]["error"]
    assert report["totals"] == {
        **report["totals"],
        "shards": 9,
        "done": 2,
        "failed": 7,
        "rows_in": 4000,
        "rows_removed": len(listed),
    }
    assert "2/9 shards done, 7 failed" in captured.out
    # Only the good shards' outputs exist; no temporary file is left behind.
    assert files_under(tmp_path / "out") == ["good1.parquet", "good2.parquet"]
    assert not list((tmp_path / "out").glob(".*"))
    for name, table in tables.items():
        assert_same_table(read_parquet(tmp_path / "out" / f"{name}.parquet"), reference_filter(table, listed))
    assert sha256_tree(src) == before


def test_unknown_extension_is_a_usage_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rows.csv").write_text("url\nx\n")
    blocklist = write_list(tmp_path / "list.txt", ["x"])
    code = cli.main(
        ["run", str(tmp_path / "in" / "rows.csv"), "--output", str(tmp_path / "out"), "--blocklist", str(blocklist)]
    )
    assert code == 2
    assert "--format parquet" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_format_flag_reads_shards_without_extension(tmp_path: Path) -> None:
    table = shard_table(300)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "shard-0").write_bytes(parquet_bytes(table))
    listed = sample(table["url"], 10)
    blocklist = write_list(tmp_path / "list.txt", listed)
    code = cli.main(
        [
            "run",
            str(tmp_path / "in" / "shard-0"),
            "--format",
            "parquet",
            "--output",
            str(tmp_path / "out"),
            "--blocklist",
            str(blocklist),
        ]
    )
    assert code == 0
    assert_same_table(read_parquet(tmp_path / "out" / "shard-0"), reference_filter(table, listed))


def test_usage_errors_exit_2(cwd_tmp: Path, capsys) -> None:
    blocklist = write_list(cwd_tmp / "list.txt", ["x"])
    cases = [
        (["run", "a.parquet", "--blocklist", str(blocklist)], "no output"),
        (["run", "a.parquet", "--output", "o"], "no membership list"),
        (["run", "--output", "o", "--blocklist", str(blocklist)], "no input"),
        (["run", "a.parquet", "--output", "o", "--blocklist", str(blocklist), "--mode", "keep"], "invalid choice"),
        (["run", "a.parquet", "--output", "o", "--blocklist", str(blocklist), "--concurrency", "x"], "invalid int"),
        (["run", "a.parquet", "--output", "o", "--blocklist", str(blocklist), "--concurrency", "0"], "between 1"),
        (["run", "a.parquet", "--output", "o", "--blocklist", str(blocklist), "--key", ","], "--key"),
        (["run", "a.parquet", "--output", "ftp://h/o", "--blocklist", str(blocklist)], "unsupported URI scheme"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert err.startswith("streamfilter: error: ")
    assert files_under(cwd_tmp) == ["list.txt"]


def test_failed_shard_leaves_no_empty_output_directory(tmp_path: Path) -> None:
    """The only shard of a nested directory fails: not even its directory is left in the output."""
    src = tmp_path / "in"
    good = shard_table(500, seed=26)
    write_dir = src / "ok"
    write_dir.mkdir(parents=True)
    (write_dir / "a.parquet").write_bytes(parquet_bytes(good))
    (src / "sub").mkdir()
    (src / "sub" / "b.parquet").write_bytes(b"not parquet at all" * 10)
    blocklist = write_list(tmp_path / "list.txt", sample(good["url"], 5))

    report = streamfilter.run(
        [f"{src}/**/*.parquet"], output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True
    )

    assert [s.status for s in report.shards] == ["done", "failed"]
    out = tmp_path / "out"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if "_streamfilter" not in p.parts) == [
        "ok",
        "ok/a.parquet",
    ]
