"""HTTP inputs (and lists) from an aiohttp static server on loopback with Range support."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest
from conftest import HTTP_TOKEN
from helpers import (
    assert_read_once,
    assert_same_table,
    files_under,
    read_parquet,
    reference_filter,
    reference_row_group_counts,
    row_group_rows,
    s3_get,
    s3_keys,
    s3_pending_uploads,
    sample,
    shard_table,
    write_list,
    write_shard,
)

import streamfilter
from streamfilter import cli


@pytest.mark.parametrize("mode", ["deny", "allow"])
def test_http_brace_range_to_local(http_server, tmp_path: Path, mode: str) -> None:
    served, base = http_server.dir()
    tables = [shard_table(2000, start=i * 2000, seed=15) for i in range(3)]
    for i, table in enumerate(tables):
        write_shard(served / f"{i:05d}.parquet", table, row_group_size=600)
    listed = [u for t in tables for u in sample(t["url"], 23, offset=2)]
    blocklist = write_list(tmp_path / "list.txt", listed)

    report = streamfilter.run(
        [base + "{00000..00002}.parquet"],
        output=str(tmp_path / "out"),
        blocklist=[str(blocklist)],
        mode=mode,
        concurrency=3,
        quiet=True,
    )

    assert report.ok, [s.error for s in report.shards]
    assert [s.input for s in report.shards] == [f"{base}{i:05d}.parquet" for i in range(3)]
    assert files_under(tmp_path / "out") == [f"{i:05d}.parquet" for i in range(3)]
    for i in range(3):
        src = served / f"{i:05d}.parquet"
        out = tmp_path / "out" / f"{i:05d}.parquet"
        assert_same_table(read_parquet(out), reference_filter(read_parquet(src), listed, mode=mode))
        assert row_group_rows(out) == reference_row_group_counts(src, listed, mode=mode)
        assert_read_once(report.shards[i].bytes_read, src)


def test_http_to_s3(http_server, s3_endpoint, s3_client, bucket, tmp_path: Path) -> None:
    served, base = http_server.dir()
    table = shard_table(5000, seed=16)
    src = write_shard(served / "shard.parquet", table, row_group_size=2000, compression="zstd")
    listed = sample(table["url"], 31)
    blocklist = write_list(tmp_path / "list.txt", listed)

    report = streamfilter.run(
        [base + "shard.parquet"],
        output=f"s3://{bucket}/from-http/",
        blocklist=[str(blocklist)],
        s3_endpoint_url=s3_endpoint,
        quiet=True,
    )

    assert report.ok
    assert s3_keys(s3_client, bucket) == ["from-http/shard.parquet"]
    out = s3_get(s3_client, bucket, "from-http/shard.parquet")
    assert_same_table(read_parquet(out), reference_filter(read_parquet(src), listed))
    assert report.shards[0].rows_removed == len(listed)
    assert s3_pending_uploads(s3_client, bucket) == []


def test_http_output_is_a_usage_error(http_server, tmp_path: Path, capsys) -> None:
    served, base = http_server.dir()
    write_shard(served / "a.parquet", shard_table(100))
    blocklist = write_list(tmp_path / "list.txt", ["x"])
    before = files_under(served)

    elsewhere = http_server.url + "/clean/"
    code = cli.main(["run", base + "a.parquet", "--output", elsewhere, "--blocklist", str(blocklist)])

    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("streamfilter: error: cannot write to") and len(err.strip().splitlines()) == 1
    assert files_under(served) == before


def test_http_glob_is_a_usage_error(http_server, tmp_path: Path, capsys) -> None:
    served, base = http_server.dir()
    write_shard(served / "a.parquet", shard_table(100))
    blocklist = write_list(tmp_path / "list.txt", ["x"])

    code = cli.main(["run", base + "*.parquet", "--output", str(tmp_path / "out"), "--blocklist", str(blocklist)])

    assert code == 2
    assert "HTTP has no listing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_http_missing_object_fails_that_shard(http_server, tmp_path: Path) -> None:
    served, base = http_server.dir()
    table = shard_table(300)
    write_shard(served / "a.parquet", table)
    blocklist = write_list(tmp_path / "list.txt", sample(table["url"], 10))

    report = streamfilter.run(
        [base + "a.parquet", base + "gone.parquet"],
        output=str(tmp_path / "out"),
        blocklist=[str(blocklist)],
        quiet=True,
    )

    assert [s.status for s in report.shards] == ["done", "failed"]
    error = report.shards[1].error
    assert f"{base}gone.parquet" in error and "404" in error
    assert files_under(tmp_path / "out") == ["a.parquet"]


def test_blocklists_over_http(http_server, tmp_path: Path) -> None:
    served, base = http_server.dir()
    table = shard_table(2000, seed=17)
    src = write_shard(tmp_path / "in" / "a.parquet", table)
    plain = sample(table["url"], 50)
    zipped = sample(table["url"], 50, offset=7)
    (served / "plain.txt").write_text("# plain\n\n" + "\n".join(plain) + "\n")
    (served / "more.txt.gz").write_bytes(gzip.compress(("\n".join(zipped) + "\n").encode()))

    report = streamfilter.run(
        [str(src)],
        output=str(tmp_path / "out"),
        blocklist=[base + "plain.txt", base + "more.txt.gz"],
        quiet=True,
    )

    assert report.ok
    assert report.set_size == len(set(plain + zipped))
    assert_same_table(read_parquet(tmp_path / "out" / "a.parquet"), reference_filter(table, plain + zipped))


# --- authenticated HTTP ------------------------------------------------------------------------


@pytest.fixture
def private_shard(http_server, tmp_path: Path):
    served, base = http_server.dir(private=True)
    table = shard_table(1500, seed=18)
    src = write_shard(served / "p.parquet", table, row_group_size=500)
    listed = sample(table["url"], 19)
    blocklist = write_list(tmp_path / "list.txt", listed)
    return base + "p.parquet", src, listed, blocklist


def run_private(uri: str, blocklist: Path, out: Path, report: Path, *extra: str) -> int:
    return cli.main(
        [
            "run",
            uri,
            "--output",
            str(out),
            "--blocklist",
            str(blocklist),
            "--report",
            str(report),
            "--http-header",
            "Authorization: Bearer $SF_TEST_TOKEN",
            *extra,
        ]
    )


def test_http_header_with_env_token(private_shard, tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    uri, src, listed, blocklist = private_shard
    monkeypatch.setenv("SF_TEST_TOKEN", HTTP_TOKEN)

    code = run_private(uri, blocklist, tmp_path / "out", tmp_path / "report.json", "--verbose")

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert_same_table(read_parquet(tmp_path / "out" / "p.parquet"), reference_filter(read_parquet(src), listed))
    report_text = (tmp_path / "report.json").read_text()
    assert json.loads(report_text)["shards"][0]["status"] == "done"
    for text in (captured.out, captured.err, report_text, caplog.text):
        assert HTTP_TOKEN not in text


def test_http_header_wrong_token_fails_clearly(private_shard, tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    uri, _src, _listed, blocklist = private_shard
    wrong = "wrong-" + HTTP_TOKEN[::-1]
    monkeypatch.setenv("SF_TEST_TOKEN", wrong)

    code = run_private(uri, blocklist, tmp_path / "out", tmp_path / "report.json", "--verbose")

    captured = capsys.readouterr()
    assert code == 1
    report_text = (tmp_path / "report.json").read_text()
    (shard,) = json.loads(report_text)["shards"]
    assert shard["status"] == "failed"
    assert uri in shard["error"] and "401" in shard["error"] and "--http-header" in shard["error"]
    assert files_under(tmp_path / "out") == []
    for text in (captured.out, captured.err, report_text, caplog.text):
        assert wrong not in text
        assert HTTP_TOKEN not in text


def test_http_without_header_is_refused(private_shard, tmp_path: Path) -> None:
    uri, _src, _listed, blocklist = private_shard
    report = streamfilter.run([uri], output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True)
    assert not report.ok
    assert "401" in report.shards[0].error


def test_http_header_through_the_api(private_shard, tmp_path: Path, monkeypatch) -> None:
    uri, src, listed, blocklist = private_shard
    monkeypatch.setenv("SF_TEST_TOKEN", HTTP_TOKEN)
    report = streamfilter.run(
        [uri],
        output=str(tmp_path / "out"),
        blocklist=[str(blocklist)],
        http_header=["Authorization: Bearer ${SF_TEST_TOKEN}"],
        quiet=True,
    )
    assert report.ok
    assert_same_table(read_parquet(tmp_path / "out" / "p.parquet"), reference_filter(read_parquet(src), listed))
    assert HTTP_TOKEN not in report.to_json()


def test_http_header_with_unset_variable_is_a_usage_error(private_shard, tmp_path: Path, monkeypatch, capsys) -> None:
    uri, _src, _listed, blocklist = private_shard
    monkeypatch.delenv("SF_TEST_TOKEN", raising=False)

    code = run_private(uri, blocklist, tmp_path / "out", tmp_path / "report.json")

    assert code == 2
    assert "SF_TEST_TOKEN is not set" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "report.json").exists()


def test_malformed_http_header_is_a_usage_error(tmp_path: Path, capsys) -> None:
    blocklist = write_list(tmp_path / "list.txt", ["x"])
    code = cli.main(
        ["run", "x.parquet", "--output", str(tmp_path / "o"), "--blocklist", str(blocklist), "--http-header", "NoColon"]
    )
    assert code == 2
    assert "expected 'Name: value'" in capsys.readouterr().err


def test_byte_copies_at_once_are_bounded(http_server, tmp_path: Path) -> None:
    """Copies whose bytes pass through the process (here HTTP to local files) each hold a part read and the
    upload's parts: however many clean shards wait on their copies at once, only BYTE_COPIES stream."""
    import anyio
    from fault_proxy import FaultProxy
    from helpers import serve

    from streamfilter.store import BYTE_COPIES, Stores

    root, base = http_server.dir("byte-copies")
    blobs = {f"{i:02d}.bin": bytes([i]) * (3 * 1024 * 1024 + 17) for i in range(12)}  # 4 parts of 1 MiB each
    for name, data in blobs.items():
        (root / name).write_bytes(data)
    proxy = FaultProxy(http_server.url)
    proxy.hold["GetObject"] = 0.2

    async def copy_all(url: str) -> None:
        stores = Stores()
        try:
            async with anyio.create_task_group() as tg:
                for name in blobs:
                    src = base.replace(http_server.url, url) + name
                    info = await stores.for_uri(src).stat(src)
                    tg.start_soon(stores.copy, info, str(tmp_path / "out" / name))
        finally:
            await stores.aclose()

    with serve(proxy.app()) as proxy.url:
        anyio.run(copy_all, proxy.url)
    for name, data in blobs.items():
        assert (tmp_path / "out" / name).read_bytes() == data
    assert 2 <= proxy.peak["GetObject"] <= BYTE_COPIES, proxy.peak
