"""The command line: config files, dry runs, the report file, the demo and the installed script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    REPORT_SHARD_FIELDS,
    assert_same_table,
    files_under,
    read_parquet,
    reference_filter,
    sample,
    shard_table,
    write_list,
    write_shard,
)

import streamfilter
from streamfilter import cli


@pytest.fixture
def shards(tmp_path: Path):
    tables = {f"{i:05d}.parquet": shard_table(1500, start=i * 1500, seed=26) for i in range(3)}
    for name, table in tables.items():
        write_shard(tmp_path / "in" / name, table, row_group_size=500)
    listed = [u for t in tables.values() for u in sample(t["url"], 13)]
    return tables, listed, write_list(tmp_path / "list.txt", listed)


def toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def test_config_supplies_options_and_flags_override(tmp_path: Path, shards, capsys) -> None:
    tables, listed, blocklist = shards
    other = sample(next(iter(tables.values()))["url"], 100)
    other_list = write_list(tmp_path / "other.txt", other)
    config = tmp_path / "job.toml"
    config.write_text(
        "# a job\n"
        f"inputs = [{toml_str(str(tmp_path / 'in' / '*.parquet'))}]\n"
        f"output = {toml_str(str(tmp_path / 'from-config'))}\n"
        f"blocklist = [{toml_str(str(blocklist))}]\n"
        'key = "url"\n'
        'mode = "deny"\n'
        "concurrency = 2\n"
        f"report = {toml_str(str(tmp_path / 'config-report.json'))}\n"
        "output-inside-input = false\n"
    )

    assert cli.main(["run", "--config", str(config)]) == 0
    for name, table in tables.items():
        assert_same_table(read_parquet(tmp_path / "from-config" / name), reference_filter(table, listed))
    saved = json.loads((tmp_path / "config-report.json").read_text())
    assert saved["mode"] == "deny" and saved["totals"]["shards"] == 3

    # Flags win over the file: another mode, output, list and a single input.
    code = cli.main(
        [
            "run",
            str(tmp_path / "in" / "00000.parquet"),
            "--config",
            str(config),
            "--mode",
            "allow",
            "--output",
            str(tmp_path / "from-flags"),
            "--blocklist",
            str(other_list),
            "--report",
            str(tmp_path / "flag-report.json"),
        ]
    )

    assert code == 0
    assert files_under(tmp_path / "from-flags") == ["00000.parquet"]
    assert_same_table(
        read_parquet(tmp_path / "from-flags" / "00000.parquet"),
        reference_filter(tables["00000.parquet"], other, mode="allow"),
    )
    saved = json.loads((tmp_path / "flag-report.json").read_text())
    assert saved["mode"] == "allow" and saved["totals"]["rows_out"] == 15
    capsys.readouterr()


def test_config_with_multi_column_key_and_dry_run(tmp_path: Path, shards) -> None:
    tables, _, _ = shards
    table = tables["00001.parquet"]
    pairs = [f"{u}|{c}" for u, c in zip(table["url"].to_pylist(), table["caption"].to_pylist(), strict=True) if c][::50]
    listed = write_list(tmp_path / "pairs.txt", pairs)
    config = tmp_path / "job.toml"
    config.write_text(
        f"inputs = [{toml_str(str(tmp_path / 'in' / '00001.parquet'))}]\n"
        f"blocklist = {toml_str(str(listed))}\n"
        'key = ["url", "caption"]\n'
        'key-separator = "|"\n'
        "dry-run = true\n"
        f"report = {toml_str(str(tmp_path / 'r.json'))}\n"
    )

    assert cli.main(["run", "--config", str(config)]) == 0
    saved = json.loads((tmp_path / "r.json").read_text())
    expected = reference_filter(table, pairs, columns=["url", "caption"], separator="|")
    assert saved["dry_run"] is True
    assert saved["key_spec"] == {
        "columns": ["url", "caption"],
        "separator": "|",
        "normalize": "none",
        "hash": "none",
        "entries": "raw",
    }
    assert saved["totals"]["rows_removed"] == 1500 - expected.num_rows == len(pairs)
    written = ["in/00000.parquet", "in/00001.parquet", "in/00002.parquet", "job.toml", "list.txt", "pairs.txt"]
    assert files_under(tmp_path) == [*written, "r.json"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "file not found"),
        ("output = [unclosed", "not valid TOML"),
        ('colour = "red"\n', "unknown option 'colour'"),
        ('mode = "sometimes"\n', "--mode 'sometimes'"),
        ("concurrency = 'many'\n", "expected a whole number"),
    ],
)
def test_bad_config_exits_2(tmp_path: Path, shards, capsys, content: str | None, message: str) -> None:
    _, _, blocklist = shards
    config = tmp_path / "job.toml"
    if content is not None:
        config.write_text(content)
    argv = ["run", str(tmp_path / "in" / "*.parquet"), "--output", str(tmp_path / "out"), "--blocklist", str(blocklist)]
    assert cli.main([*argv, "--config", str(config)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_dry_run_writes_only_the_report(tmp_path: Path, shards, capsys) -> None:
    tables, listed, blocklist = shards
    before = files_under(tmp_path)

    code = cli.main(
        [
            "run",
            str(tmp_path / "in" / "*.parquet"),
            "--output",
            str(tmp_path / "out"),
            "--blocklist",
            str(blocklist),
            "--dry-run",
            "--report",
            str(tmp_path / "dry.json"),
        ]
    )

    assert code == 0
    assert files_under(tmp_path) == sorted([*before, "dry.json"])
    report = json.loads((tmp_path / "dry.json").read_text())
    assert report["dry_run"] is True
    for shard, (name, table) in zip(report["shards"], sorted(tables.items()), strict=True):
        expected_kept = reference_filter(table, listed).num_rows
        assert shard["input"] == str(tmp_path / "in" / name)
        assert shard["output"] is None
        assert (shard["rows_in"], shard["rows_out"], shard["rows_removed"]) == (
            1500,
            expected_kept,
            1500 - expected_kept,
        )
        assert shard["bytes_written"] == 0
    assert report["totals"]["rows_removed"] == len(listed)
    assert f"would remove {len(listed)} of 4,500 rows" in capsys.readouterr().out


def test_local_report_fields_and_totals(tmp_path: Path, shards) -> None:
    _tables, listed, blocklist = shards
    (tmp_path / "in" / "00003.parquet").write_bytes(b"broken")

    report = streamfilter.run(
        [str(tmp_path / "in" / "*.parquet")],
        output=str(tmp_path / "out"),
        blocklist=[str(blocklist)],
        report=str(tmp_path / "reports" / "run.json"),
        quiet=True,
    )

    saved = json.loads((tmp_path / "reports" / "run.json").read_text())
    assert saved == json.loads(report.to_json())
    assert {"shards", "totals", "key_spec", "set_digest"} <= set(saved)
    assert len(saved["shards"]) == 4
    for shard in saved["shards"]:
        assert set(shard) == REPORT_SHARD_FIELDS
        assert shard["rows_in"] == shard["rows_out"] + shard["rows_removed"]
        assert shard["seconds"] >= 0
    done = [s for s in saved["shards"] if s["status"] == "done"]
    assert len(done) == 3
    for shard in done:
        assert shard["bytes_written"] == (tmp_path / "out" / Path(shard["input"]).name).stat().st_size
    totals = saved["totals"]
    assert (totals["shards"], totals["done"], totals["failed"]) == (4, 3, 1)
    for name in ("rows_in", "rows_out", "rows_removed", "bytes_written"):
        assert totals[name] == sum(s[name] for s in done)
    assert totals["bytes_read"] == sum(s["bytes_read"] for s in saved["shards"])
    assert totals["rows_in"] == 4500 and totals["rows_removed"] == len(listed)
    assert saved["set_digest"] == report.set_digest
    assert not report.ok


def test_report_to_unwritable_place_is_a_usage_error(tmp_path: Path, shards, capsys) -> None:
    _, _, blocklist = shards
    code = cli.main(
        [
            "run",
            str(tmp_path / "in" / "00000.parquet"),
            "--output",
            str(tmp_path / "out"),
            "--blocklist",
            str(blocklist),
            "--report",
            "http://127.0.0.1:9/report.json",
        ]
    )
    assert code == 2
    assert "--report" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_console_module_in_a_subprocess(tmp_path: Path, shards) -> None:
    tables, listed, blocklist = shards
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamfilter.cli",
            "run",
            str(tmp_path / "in" / "{00000..00002}.parquet"),
            "-o",  # as users of other tools type it
            str(tmp_path / "out"),
            "--blocklist",
            str(blocklist),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"3/3 shards done, 0 failed; removed {len(listed)} of 4,500 rows" in proc.stdout
    for name, table in tables.items():
        assert_same_table(read_parquet(tmp_path / "out" / name), reference_filter(table, listed))

    failing = subprocess.run(
        [sys.executable, "-m", "streamfilter.cli", "run", str(tmp_path / "in" / "00000.parquet"), "--output", "x"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert failing.returncode == 2
    assert failing.stderr.startswith("streamfilter: error: no membership list")


def test_installed_console_script() -> None:
    script = Path(sys.executable).parent / "streamfilter"
    assert script.exists(), "the package declares a 'streamfilter' console script"
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"streamfilter {streamfilter.__version__}"


def test_demo_end_to_end(tmp_path: Path, capsys) -> None:
    root = tmp_path / "demo"

    assert cli.main(["demo", str(root)]) == 0

    out = capsys.readouterr().out
    assert "0 listed URLs remain" in out
    lines = (root / "blocklist.txt").read_text(encoding="utf-8").splitlines()
    listed = [line for line in lines if line and not line.startswith("#")]
    assert len(listed) > 100
    shard_files = sorted((root / "shards").glob("*.parquet"))
    assert len(shard_files) == 4
    assert files_under(root / "clean") == [p.name for p in shard_files]
    removed = 0
    for path in shard_files:
        source = read_parquet(path)
        expected = reference_filter(source, listed)
        assert_same_table(read_parquet(root / "clean" / path.name), expected)
        removed += source.num_rows - expected.num_rows
    assert removed == len(listed)
    report = json.loads((root / "report.json").read_text())
    assert report["totals"]["rows_removed"] == removed
    assert report["totals"]["done"] == 4
