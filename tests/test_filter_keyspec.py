"""`run --filter FILE` takes the key spec the file records (issue 14, item 7).

build-filter writes how its keys were made (columns, separator, normalization, hash, entries) into
the file's header. A run with the file uses that spec; flags the user passes must agree with it, and
flags left out (argparse gives None for them) are no contradiction. Expected rows come from pyarrow
(``helpers.reference_filter``) over the listed keys; the filters are fingerprint sets, which match
exactly but for 64-bit collisions (about 1e-16 per row here).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import (
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
def shard(tmp_path: Path):
    table = shard_table(2000, seed=71)
    return table, write_shard(tmp_path / "in" / "00000.parquet", table, row_group_size=500)


def build(tmp_path: Path, keys: list[str], *flags: str) -> Path:
    """A fingerprint-set filter from ``keys``, built as a user would (build-filter's default hash)."""
    listed = write_list(tmp_path / "lists" / "listed.txt", keys)
    out = tmp_path / "lists" / "listed.sfm"
    assert cli.main(["build-filter", str(listed), "--kind", "fingerprints", "--out", str(out), *flags]) == 0
    return out


def test_run_with_the_filter_and_only_the_key_column(tmp_path: Path, shard, capsys) -> None:
    """The issue's case: a filter built with defaults (xxh3_64) and `run --filter f --key url`."""
    table, src = shard
    listed = sample(table["url"], 9)
    sfm = build(tmp_path, listed)
    report_file = tmp_path / "report.json"
    capsys.readouterr()

    code = cli.main(["run", str(src), "--output", str(tmp_path / "out"), "--filter", str(sfm), "--key", "url",
                     "--report", str(report_file)])  # fmt: skip

    assert code == 0, capsys.readouterr().err
    assert_same_table(read_parquet(tmp_path / "out" / "00000.parquet"), reference_filter(table, listed))
    key_spec = json.loads(report_file.read_text())["key_spec"]
    assert key_spec == {"columns": ["url"], "separator": "\t", "normalize": "none", "hash": "xxh3_64",
                        "entries": "raw"}  # fmt: skip


def test_a_run_without_key_flags_uses_every_part_of_the_recorded_spec(tmp_path: Path, shard) -> None:
    """Two key columns, a separator and a hash of the file's choosing; the run names none of them."""
    table, src = shard
    pairs = zip(table["url"].to_pylist(), table["caption"].to_pylist(), strict=True)
    listed = [f"{url}|{caption}" for url, caption in list(pairs)[::7] if url is not None and caption is not None]
    sfm = build(tmp_path, listed, "--key", "url,caption", "--key-separator", "|", "--key-hash", "xxh64")

    report = streamfilter.run(str(src), output=str(tmp_path / "out"), filter=str(sfm), quiet=True)

    assert report.ok and report.totals["rows_removed"] == len(listed)
    expected = reference_filter(table, listed, columns=("url", "caption"), separator="|")
    assert_same_table(read_parquet(tmp_path / "out" / "00000.parquet"), expected)
    assert report.key_spec["columns"] == ["url", "caption"] and report.key_spec["hash"] == "xxh64"


def test_flags_that_agree_with_the_file_are_accepted(tmp_path: Path, shard) -> None:
    table, src = shard
    listed = sample(table["url"], 11)
    sfm = build(tmp_path, listed)

    code = cli.main(["run", str(src), "--output", str(tmp_path / "out"), "--filter", str(sfm),
                     "--key-hash", "xxh3_64", "--normalize", "none", "--blocklist-hash", "raw"])  # fmt: skip

    assert code == 0
    assert_same_table(read_parquet(tmp_path / "out" / "00000.parquet"), reference_filter(table, listed))


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--key-hash", "mmh3_64"], "--key-hash 'xxh3_64' (this run: 'mmh3_64')"),
        (["--normalize", "url"], "--normalize 'none' (this run: 'url')"),
        (["--key", "url,caption"], "1 key column(s) (this run: 2)"),
        (["--blocklist-hash", "hex"], "--blocklist-hash 'raw' (this run: 'hex')"),
    ],
)
def test_flags_that_contradict_the_file_are_refused(tmp_path: Path, shard, capsys, flags, named) -> None:
    _, src = shard
    sfm = build(tmp_path, ["https://nowhere.example/1.jpg"])
    capsys.readouterr()

    code = cli.main(["run", str(src), "--output", str(tmp_path / "out"), "--filter", str(sfm), *flags])

    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert named in err and "listed.sfm" in err
    assert files_under(tmp_path / "out") == []


def test_a_config_file_value_counts_as_chosen(tmp_path: Path, shard, capsys) -> None:
    """A key option written in the TOML config was chosen as much as a flag: it is checked too."""
    _, src = shard
    sfm = build(tmp_path, ["https://nowhere.example/1.jpg"])
    config = tmp_path / "job.toml"
    config.write_text(f'filter = {json.dumps(str(sfm))}\nkey_hash = "xxh64"\n')
    capsys.readouterr()

    code = cli.main(["run", str(src), "--output", str(tmp_path / "out"), "--config", str(config)])

    assert code == 2
    assert "--key-hash 'xxh3_64' (this run: 'xxh64')" in capsys.readouterr().err
    assert files_under(tmp_path / "out") == []


def test_a_rerun_with_the_filter_skips_what_the_first_run_did(tmp_path: Path, shard) -> None:
    """The receipts record the key spec taken from the file, so the same command finds them valid."""
    table, src = shard
    sfm = build(tmp_path, sample(table["url"], 5))
    args = ["run", str(src), "--output", str(tmp_path / "out"), "--filter", str(sfm), "--key", "url"]
    assert cli.main(args) == 0

    again = streamfilter.run(str(src), output=str(tmp_path / "out"), filter=str(sfm), key="url", quiet=True)

    assert [s.resumed for s in again.shards] == [True]
