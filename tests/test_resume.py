"""Receipts, resume, --overwrite and SIGTERM: a run is safe to interrupt and to repeat."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import (
    assert_same_table,
    files_under,
    parquet_bytes,
    put_table,
    random_strings,
    read_parquet,
    reference_filter,
    s3_get,
    s3_keys,
    s3_pending_uploads,
    sample,
    sha256_tree,
    shard_table,
    write_list,
    write_shard,
)

import streamfilter
from streamfilter import cli


@pytest.fixture
def shard_set(tmp_path: Path):
    tables = {f"{i:05d}.parquet": shard_table(1200, start=i * 1200, seed=61) for i in range(4)}
    for name, table in tables.items():
        write_shard(tmp_path / "in" / name, table, row_group_size=400)
    listed = [u for t in tables.values() for u in sample(t["url"], 11)]
    return tables, listed, write_list(tmp_path / "list.txt", listed)


def outputs_and_receipts(root: Path) -> dict[str, str]:
    """Digests of what a rerun must leave alone (the worker report is rewritten by every run)."""
    return {k: v for k, v in sha256_tree(root).items() if not k.startswith("_streamfilter/reports/")}


def run(tmp_path: Path, blocklist: Path, *extra: str) -> streamfilter.Report:
    return streamfilter.run(
        [str(tmp_path / "in" / "*.parquet")], output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True,
        **dict(e.split("=", 1) for e in extra),  # type: ignore[arg-type]
    )  # fmt: skip


def test_receipts_record_each_committed_shard(tmp_path: Path, shard_set) -> None:
    tables, listed, blocklist = shard_set
    report = run(tmp_path, blocklist)

    assert report.ok
    listed_files = files_under(tmp_path / "out", receipts=True)
    receipts = sorted(p for p in listed_files if p.startswith("_streamfilter/receipts/"))
    assert "_streamfilter/reports/worker-00000-of-00001.json" in listed_files
    assert receipts == [f"_streamfilter/receipts/{name}.json" for name in sorted(tables)]
    for name, table in tables.items():
        receipt = json.loads((tmp_path / "out" / "_streamfilter" / "receipts" / f"{name}.json").read_text())
        expected = reference_filter(table, listed)
        out = tmp_path / "out" / name
        assert receipt["input"] == str(tmp_path / "in" / name)
        assert receipt["input_identity"]["size"] == (tmp_path / "in" / name).stat().st_size
        assert receipt["input_identity"]["mtime"] == (tmp_path / "in" / name).stat().st_mtime
        assert receipt["output_size"] == out.stat().st_size
        assert (receipt["rows_in"], receipt["rows_out"]) == (table.num_rows, expected.num_rows)
        assert receipt["rows_removed"] == table.num_rows - expected.num_rows
        assert receipt["set_digest"] == report.set_digest and receipt["mode"] == "deny"
        assert receipt["key_spec"] == {
            "columns": ["url"],
            "separator": "\t",
            "normalize": "none",
            "hash": "none",
            "entries": "raw",
        }
        assert receipt["version"] == streamfilter.__version__
        # Receipts carry counts, never keys.
        assert not any(url in json.dumps(receipt) for url in listed)


def test_rerun_skips_done_shards_and_redoes_changed_ones(tmp_path: Path, shard_set) -> None:
    tables, listed, blocklist = shard_set
    first = run(tmp_path, blocklist)
    before = outputs_and_receipts(tmp_path / "out")

    again = run(tmp_path, blocklist)
    assert again.ok and all(s.resumed for s in again.shards)
    assert [s.rows_removed for s in again.shards] == [s.rows_removed for s in first.shards]
    assert again.totals["resumed"] == 4 and again.totals["bytes_read"] == 0
    # Nothing was written by this run; what the earlier one wrote is told apart, shard by shard.
    assert again.totals["bytes_written"] == 0 and [s.bytes_written for s in again.shards] == [0] * 4
    assert [s.earlier_bytes_written for s in again.shards] == [s.bytes_written for s in first.shards]
    assert outputs_and_receipts(tmp_path / "out") == before

    # A changed input, a deleted output and a corrupt receipt are redone; the rest is skipped.
    changed = shard_table(900, start=50_000, seed=62)
    write_shard(tmp_path / "in" / "00001.parquet", changed, row_group_size=300)
    os.utime(tmp_path / "in" / "00001.parquet", (time.time() + 5, time.time() + 5))
    (tmp_path / "out" / "00002.parquet").unlink()
    (tmp_path / "out" / "_streamfilter" / "receipts" / "00003.parquet.json").write_text("{not json")
    third = run(tmp_path, blocklist)

    assert third.ok
    assert {Path(s.input).name: s.resumed for s in third.shards} == {
        "00000.parquet": True,
        "00001.parquet": False,
        "00002.parquet": False,
        "00003.parquet": False,
    }
    tables["00001.parquet"] = changed
    for name, table in tables.items():
        assert_same_table(read_parquet(tmp_path / "out" / name), reference_filter(table, listed))


def test_another_list_key_or_mode_redoes_everything(tmp_path: Path, shard_set) -> None:
    tables, listed, blocklist = shard_set
    run(tmp_path, blocklist)
    other = write_list(tmp_path / "other.txt", listed[:5])

    with_other_list = run(tmp_path, other)
    assert not any(s.resumed for s in with_other_list.shards)
    assert not any(s.resumed for s in run(tmp_path, other, "mode=allow").shards)
    assert not any(s.resumed for s in run(tmp_path, other, "mode=allow", "normalize=strip").shards)
    for name, table in tables.items():
        expected = reference_filter(table, listed[:5], mode="allow", normalize="strip")
        assert_same_table(read_parquet(tmp_path / "out" / name), expected)


def test_overwrite_redoes_shards_with_receipts(tmp_path: Path, shard_set) -> None:
    _tables, _listed, blocklist = shard_set
    run(tmp_path, blocklist)
    code = cli.main(
        ["run", str(tmp_path / "in" / "*.parquet"), "--output", str(tmp_path / "out"), "--blocklist", str(blocklist),
         "--overwrite", "--report", str(tmp_path / "report.json")]
    )  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [s["resumed"] for s in report["shards"]] == [False] * 4
    assert all(s["bytes_read"] > 0 for s in report["shards"])


def test_dry_run_ignores_and_writes_no_receipts(tmp_path: Path, shard_set) -> None:
    _tables, _listed, blocklist = shard_set
    run(tmp_path, blocklist)
    before = outputs_and_receipts(tmp_path / "out")
    report = streamfilter.run(
        [str(tmp_path / "in" / "*.parquet")], blocklist=[str(blocklist)], dry_run=True, quiet=True
    )
    assert report.ok and not any(s.resumed for s in report.shards)
    assert outputs_and_receipts(tmp_path / "out") == before


def test_s3_receipts_and_resume(s3_endpoint, s3_client, bucket, tmp_path: Path) -> None:
    table = shard_table(1000, seed=63)
    for i in range(2):
        s3_client.put_object(Bucket=bucket, Key=f"in/{i}.parquet", Body=parquet_bytes(table))
    blocklist = write_list(tmp_path / "list.txt", sample(table["url"], 9))
    options = dict(output=f"s3://{bucket}/out/", blocklist=[str(blocklist)], s3_endpoint_url=s3_endpoint, quiet=True)

    first = streamfilter.run([f"s3://{bucket}/in/*.parquet"], **options)
    second = streamfilter.run([f"s3://{bucket}/in/*.parquet"], **options)

    assert first.ok and second.ok
    assert s3_keys(s3_client, bucket, "out/", receipts=True) == [
        "out/0.parquet",
        "out/1.parquet",
        "out/_streamfilter/receipts/0.parquet.json",
        "out/_streamfilter/receipts/1.parquet.json",
        "out/_streamfilter/reports/worker-00000-of-00001.json",
    ]
    receipt_key = "out/_streamfilter/receipts/0.parquet.json"
    receipt = json.loads(s3_client.get_object(Bucket=bucket, Key=receipt_key)["Body"].read())
    head = s3_client.head_object(Bucket=bucket, Key="out/0.parquet")
    assert receipt["output_etag"] == head["ETag"] and receipt["output_size"] == head["ContentLength"]
    assert receipt["input_identity"]["etag"] == s3_client.head_object(Bucket=bucket, Key="in/0.parquet")["ETag"]
    assert all(s.resumed for s in second.shards)
    # A resumed shard reports the committed output's ETag, as a fresh one does (--manifest-out needs it).
    assert [s.output_etag for s in second.shards] == [s.output_etag for s in first.shards]
    assert first.shards[0].output_etag == head["ETag"]
    assert s3_pending_uploads(s3_client, bucket) == []


def _start_cli(tmp_path: Path, blocklist: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "streamfilter.cli", "run", str(tmp_path / "in" / "*.parquet"), "--output",
         str(tmp_path / "out"), "--blocklist", str(blocklist), "--report", str(tmp_path / "report.json"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.fixture
def slow_set(tmp_path: Path):
    """Enough row groups that a run is still going when the signal arrives."""
    tables = {f"{i:05d}.parquet": shard_table(40_000, start=i * 40_000, seed=64) for i in range(6)}
    for name, table in tables.items():
        write_shard(tmp_path / "in" / name, table, row_group_size=500)
    listed = [u for t in tables.values() for u in sample(t["url"], 50)]
    return tables, listed, write_list(tmp_path / "list.txt", listed)


def _wait_for_first_receipt(tmp_path: Path, proc: subprocess.Popen) -> None:
    receipts = tmp_path / "out" / "_streamfilter" / "receipts"
    deadline = time.monotonic() + 60
    while not (receipts.exists() and any(receipts.iterdir())) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)


def test_sigterm_stops_cleanly_and_a_rerun_finishes(tmp_path: Path, slow_set) -> None:
    tables, listed, blocklist = slow_set
    proc = _start_cli(tmp_path, blocklist, "--concurrency", "1", "--grace-seconds", "0")
    _wait_for_first_receipt(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)

    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by a signal" in err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["interrupted"] is True
    done = {Path(s["input"]).name for s in report["shards"] if s["status"] == "done"}
    assert 1 <= len(done) < len(tables)
    # Only whole, committed outputs are visible; no temporary files remain.
    assert files_under(tmp_path / "out") == sorted(done)
    assert not [p for p in (tmp_path / "out").rglob("*.partial")]

    code = cli.main(["run", str(tmp_path / "in" / "*.parquet"), "--output", str(tmp_path / "out"),
                     "--blocklist", str(blocklist), "--report", str(tmp_path / "report.json")])  # fmt: skip
    assert code == 0
    rerun = json.loads((tmp_path / "report.json").read_text())
    resumed = {Path(s["input"]).name for s in rerun["shards"] if s["resumed"]}
    assert resumed == done
    for name, table in tables.items():
        assert_same_table(read_parquet(tmp_path / "out" / name), reference_filter(table, listed))


@pytest.mark.parametrize("when", [0.05, 0.3, 0.8])
def test_sigkill_then_rerun_gives_the_uninterrupted_output(tmp_path: Path, slow_set, when: float) -> None:
    tables, listed, blocklist = slow_set
    proc = _start_cli(tmp_path, blocklist)
    time.sleep(when)
    proc.kill()
    proc.communicate(timeout=60)

    assert cli.main(["run", str(tmp_path / "in" / "*.parquet"), "--output", str(tmp_path / "out"),
                     "--blocklist", str(blocklist)]) == 0  # fmt: skip
    assert files_under(tmp_path / "out") == sorted(tables)
    for name, table in tables.items():
        assert_same_table(read_parquet(tmp_path / "out" / name), reference_filter(table, listed))
    # Byte for byte what one uninterrupted run writes.
    assert cli.main(["run", str(tmp_path / "in" / "*.parquet"), "--output", str(tmp_path / "ref"),
                     "--blocklist", str(blocklist)]) == 0  # fmt: skip
    assert data_digests(tmp_path / "out") == data_digests(tmp_path / "ref")


def data_digests(root: Path) -> dict[str, str]:
    return {k: v for k, v in sha256_tree(root).items() if not k.startswith("_streamfilter")}


def test_output_committed_without_receipt_is_redone_identically(tmp_path: Path, shard_set) -> None:
    """The state a kill between commit and receipt leaves: the rerun redoes that shard, same bytes."""
    _tables, _listed, blocklist = shard_set
    assert run(tmp_path, blocklist).ok
    before = data_digests(tmp_path / "out")
    (tmp_path / "out" / "_streamfilter" / "receipts" / "00002.parquet.json").unlink()

    again = run(tmp_path, blocklist)

    assert {Path(s.input).name for s in again.shards if not s.resumed} == {"00002.parquet"}
    assert data_digests(tmp_path / "out") == before
    assert (tmp_path / "out" / "_streamfilter" / "receipts" / "00002.parquet.json").exists()


def _verify(tmp_path: Path, blocklist: Path, *extra: str) -> int:
    return cli.main(["verify", str(tmp_path / "out"), "--blocklist", str(blocklist), *extra])


def test_verify_confirms_a_clean_run_and_catches_tampering(tmp_path: Path, shard_set, capsys) -> None:
    tables, listed, blocklist = shard_set
    assert run(tmp_path, blocklist).ok
    capsys.readouterr()

    assert _verify(tmp_path, blocklist) == 0
    out = capsys.readouterr().out
    total = sum(reference_filter(t, listed).num_rows for t in tables.values())
    assert f"verified 4 outputs, {total:,} rows: 4 clean, 0 failed" in out

    # An output with a listed row put back, and one with a row dropped, both fail.
    tampered = read_parquet(tmp_path / "in" / "00001.parquet")
    write_shard(tmp_path / "out" / "00001.parquet", tampered, row_group_size=400)
    shorter = read_parquet(tmp_path / "out" / "00002.parquet").slice(1)
    write_shard(tmp_path / "out" / "00002.parquet", shorter, row_group_size=400)
    assert _verify(tmp_path, blocklist) == 1
    captured = capsys.readouterr()
    assert "2 clean, 2 failed" in captured.out
    err = captured.err.splitlines()
    assert len(err) == 2
    assert any("00001.parquet" in line and "listed keys remain" in line for line in err)
    assert any("00002.parquet" in line and "the receipt says" in line for line in err)
    assert not any(url in captured.err + captured.out for url in listed)


def test_verify_an_allow_run_and_a_missing_receipt_dir(tmp_path: Path, shard_set, capsys) -> None:
    _tables, _listed, blocklist = shard_set
    assert _verify(tmp_path, blocklist) == 2
    assert "no receipts under" in capsys.readouterr().err
    assert run(tmp_path, blocklist, "mode=allow").ok
    assert _verify(tmp_path, blocklist, "--mode", "allow") == 0
    assert _verify(tmp_path, blocklist) == 1  # checked as deny: every kept row is listed


def test_in_place_replaces_each_input_and_keeps_a_backup(tmp_path: Path, shard_set) -> None:
    tables, listed, blocklist = shard_set
    originals = sha256_tree(tmp_path / "in")
    options = dict(blocklist=[str(blocklist)], in_place=True, backup=str(tmp_path / "backup"), quiet=True)

    report = streamfilter.run([str(tmp_path / "in" / "*.parquet")], **options)

    assert report.ok
    for name, table in tables.items():
        assert_same_table(read_parquet(tmp_path / "in" / name), reference_filter(table, listed))
    assert sha256_tree(tmp_path / "backup") == originals
    assert not [p for p in (tmp_path / "in").rglob("*.partial")]
    # A rerun finds each object is already the cleaned rewrite its receipt describes.
    cleaned = {k: v for k, v in sha256_tree(tmp_path / "in").items() if not k.startswith("_streamfilter")}
    again = streamfilter.run([str(tmp_path / "in" / "*.parquet")], **options)
    assert again.ok and all(s.resumed for s in again.shards)
    assert {k: v for k, v in sha256_tree(tmp_path / "in").items() if not k.startswith("_streamfilter")} == cleaned


def test_in_place_on_s3_with_server_side_backup(s3_endpoint, s3_client, bucket, tmp_path: Path) -> None:
    table = shard_table(900, seed=65)
    original = parquet_bytes(table)
    s3_client.put_object(Bucket=bucket, Key="data/0.parquet", Body=original)
    listed = sample(table["url"], 8)
    blocklist = write_list(tmp_path / "list.txt", listed)

    report = streamfilter.run(
        [f"s3://{bucket}/data/*.parquet"],
        blocklist=[str(blocklist)],
        in_place=True,
        backup=f"s3://{bucket}/backup/",
        s3_endpoint_url=s3_endpoint,
        quiet=True,
    )

    assert report.ok, report.shards[0].error
    assert s3_client.get_object(Bucket=bucket, Key="backup/0.parquet")["Body"].read() == original
    cleaned = s3_client.get_object(Bucket=bucket, Key="data/0.parquet")["Body"].read()
    assert_same_table(read_parquet(cleaned), reference_filter(table, listed))
    assert s3_pending_uploads(s3_client, bucket) == []


def test_in_place_refusals(tmp_path: Path, shard_set, http_server, capsys) -> None:
    _tables, _listed, blocklist = shard_set
    base = ["run", str(tmp_path / "in" / "*.parquet"), "--blocklist", str(blocklist)]
    before = sha256_tree(tmp_path / "in")
    assert cli.main([*base, "--in-place", "--output", str(tmp_path / "out")]) == 2
    assert "leave out --output" in capsys.readouterr().err
    assert cli.main([*base, "--output", str(tmp_path / "out"), "--backup", str(tmp_path / "b")]) == 2
    assert "--backup goes with --in-place" in capsys.readouterr().err
    assert cli.main([*base, "--in-place", "--backup", "s3://bucket/backup/"]) == 2
    assert "same kind of store" in capsys.readouterr().err
    assert cli.main(["run", f"{http_server.url}/any.parquet", "--blocklist", str(blocklist), "--in-place"]) == 2
    assert "read-only" in capsys.readouterr().err
    assert sha256_tree(tmp_path / "in") == before


def test_s3_run_killed_mid_upload_leaves_nothing_after_the_rerun(
    s3_endpoint, s3_client, bucket, tmp_path: Path
) -> None:
    """SIGKILL while a multipart upload is open; the rerun aborts the orphan and writes the same bytes."""
    n = 300_000
    table = pa.table({"url": random_strings(n, 32, seed=66), "id": pa.array(range(n), pa.int64())})
    put_table(
        s3_client, bucket, "in/big.parquet", table, compression="none", use_dictionary=False, row_group_size=20_000
    )
    listed = sample(table["url"], 500)
    blocklist = write_list(tmp_path / "list.txt", listed)
    argv = ["run", f"s3://{bucket}/in/big.parquet", "--blocklist", str(blocklist), "--s3-endpoint-url", s3_endpoint]

    proc = subprocess.Popen(
        [sys.executable, "-m", "streamfilter.cli", *argv, "--output", f"s3://{bucket}/out/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not s3_pending_uploads(s3_client, bucket) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed_mid_upload = proc.poll() is None
    proc.kill()
    proc.wait(timeout=30)

    assert killed_mid_upload, "the run ended before its upload could be interrupted"
    assert s3_keys(s3_client, bucket, "out/") == []  # nothing visible from the killed run
    assert len(s3_pending_uploads(s3_client, bucket)) == 1

    assert cli.main([*argv, "--output", f"s3://{bucket}/out/"]) == 0
    assert cli.main([*argv, "--output", f"s3://{bucket}/ref/"]) == 0

    assert s3_pending_uploads(s3_client, bucket) == []
    out = s3_get(s3_client, bucket, "out/big.parquet")
    assert out == s3_get(s3_client, bucket, "ref/big.parquet")
    assert_same_table(read_parquet(out), reference_filter(table, listed))


def test_a_large_run_finds_its_receipts_by_one_listing(tmp_path: Path) -> None:
    # From 32 shards on, receipts are listed once instead of looked up per shard: the
    # resume decisions must be the same.
    from streamfilter.ledger import LIST_RECEIPTS_FROM

    n = LIST_RECEIPTS_FROM + 2
    paths = [write_shard(tmp_path / "in" / f"{i:03d}.parquet", shard_table(30, start=30 * i, seed=i)) for i in range(n)]
    listed = [read_parquet(p)["url"][0].as_py() for p in paths[::5]]
    blocklist = write_list(tmp_path / "list.txt", listed)
    args = dict(output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True)

    first = streamfilter.run(str(tmp_path / "in" / "*.parquet"), **args)
    (tmp_path / "out" / "007.parquet").unlink()  # its receipt stays, its output is gone: redo it
    second = streamfilter.run(str(tmp_path / "in" / "*.parquet"), **args)

    assert first.ok and second.ok
    assert [s.resumed for s in first.shards] == [False] * n
    assert [s.resumed for s in second.shards] == [i != 7 for i in range(n)]
    assert (tmp_path / "out" / "007.parquet").exists()
