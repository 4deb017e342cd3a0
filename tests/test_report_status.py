"""`streamfilter report OUTPUT`: "complete" only when every planned shard's output is there as recorded.

A receipt says a shard was committed once; the output it describes can be deleted or
replaced afterwards. The report checks each receipt's output against one listing of the
prefix (its size), and, without INPUT, takes the planned shards from the worker reports.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import put_table, s3_keys, sample, shard_table, write_list, write_shard

from streamfilter import cli
from streamfilter.store.local import LocalStore

NAMES = [f"{i:05d}.parquet" for i in range(6)]


def run_all(tmp_path: Path, *extra: str) -> None:
    tables = [shard_table(200, start=i * 200, seed=81) for i in range(len(NAMES))]
    for name, table in zip(NAMES, tables, strict=True):
        if not (tmp_path / "in" / name).exists():
            write_shard(tmp_path / "in" / name, table)
    listed = [u for t in tables for u in sample(t["url"], 9)]
    blocklist = write_list(tmp_path / "list.txt", listed)
    argv = ["run", str(tmp_path / "in" / "*.parquet"), "--blocklist", str(blocklist), *extra]
    assert cli.main([*argv, "--output", str(tmp_path / "out")]) == 0


def report(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["report", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_deleted_output_makes_the_run_incomplete_with_or_without_inputs(tmp_path: Path, capsys) -> None:
    run_all(tmp_path)
    out, inputs = str(tmp_path / "out"), str(tmp_path / "in" / "*.parquet")
    code, stdout, _ = report(capsys, out)
    assert code == 0 and stdout.startswith("complete: 6 done, 0 failed, 0 not done of 6 shards")

    # The output goes, its receipt stays: the shard is not done.
    (tmp_path / "out" / NAMES[2]).unlink()
    for args in ([out], [out, inputs]):
        code, stdout, err = report(capsys, *args)
        assert code == 1, stdout
        assert stdout.startswith("incomplete: 5 done, 0 failed, 1 not done of 6 shards"), stdout
        assert f"not done {NAMES[2]}: its output is missing" in err

    # The receipt goes too, no INPUT: the worker report still names the shard as planned.
    (tmp_path / "out" / "_streamfilter" / "receipts" / f"{NAMES[2]}.json").unlink()
    code, stdout, err = report(capsys, out, "--report", str(tmp_path / "merged.json"))
    assert code == 1
    assert stdout.startswith("incomplete: 5 done, 0 failed, 1 not done of 6 shards"), stdout
    assert err.strip() == f"not done {NAMES[2]}"
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["complete"] is False and merged["not_done"] == [NAMES[2]]
    assert merged["done"] == [n for n in NAMES if n != NAMES[2]]

    # A rerun redoes that shard: complete again.
    run_all(tmp_path)
    code, stdout, _ = report(capsys, out)
    assert code == 0 and stdout.startswith("complete: 6 done"), stdout


def test_an_output_of_another_size_than_its_receipt_records_is_not_done(tmp_path: Path, capsys) -> None:
    run_all(tmp_path)
    output = tmp_path / "out" / NAMES[4]
    output.write_bytes(output.read_bytes()[:-10])
    code, stdout, err = report(capsys, str(tmp_path / "out"))
    assert code == 1 and stdout.startswith("incomplete: 5 done, 0 failed, 1 not done of 6 shards"), stdout
    recorded = json.loads((tmp_path / "out" / "_streamfilter" / "receipts" / f"{NAMES[4]}.json").read_text())
    size = recorded["output_size"]
    assert f"its output holds {size - 10:,} bytes, its receipt records {size:,}" in err


def test_the_outputs_are_checked_by_one_listing_not_a_request_each(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_all(tmp_path)
    calls = {"list": 0}
    listing = LocalStore.list

    async def counted_list(self, prefix: str):
        calls["list"] += 1
        return await listing(self, prefix)

    async def no_stat(self, uri: str):
        raise AssertionError(f"a request for {uri}: the listing said all")

    monkeypatch.setattr(LocalStore, "list", counted_list)
    monkeypatch.setattr(LocalStore, "stat", no_stat)
    code, stdout, _ = report(capsys, str(tmp_path / "out"))
    assert code == 0 and stdout.startswith("complete: 6 done"), stdout
    assert calls["list"] == 1


def test_an_output_deleted_on_s3_is_not_done(s3_endpoint, s3_client, bucket, tmp_path: Path, capsys) -> None:
    tables = [shard_table(150, start=i * 150, seed=82) for i in range(3)]
    for i, table in enumerate(tables):
        put_table(s3_client, bucket, f"in/{i}.parquet", table)
    blocklist = write_list(tmp_path / "list.txt", [u for t in tables for u in sample(t["url"], 5)])
    common = ["--s3-endpoint-url", s3_endpoint]
    assert cli.main(["run", f"s3://{bucket}/in/*.parquet", "--output", f"s3://{bucket}/out/",
                     "--blocklist", str(blocklist), *common]) == 0  # fmt: skip
    code, stdout, _ = report(capsys, f"s3://{bucket}/out/", *common)
    assert code == 0 and stdout.startswith("complete: 3 done"), stdout

    s3_client.delete_object(Bucket=bucket, Key="out/1.parquet")
    assert "out/_streamfilter/receipts/1.parquet.json" in s3_keys(s3_client, bucket, "out/", receipts=True)
    code, stdout, err = report(capsys, f"s3://{bucket}/out/", *common)
    assert code == 1 and stdout.startswith("incomplete: 2 done, 0 failed, 1 not done of 3 shards"), stdout
    assert "not done 1.parquet: its output is missing" in err
