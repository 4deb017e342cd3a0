"""S3 inputs and outputs against a moto server on loopback, checked with boto3 and pyarrow."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    FOOTER_WINDOW,
    REPORT_SHARD_FIELDS,
    assert_read_once,
    assert_same_table,
    corrupt_row_group,
    parquet_bytes,
    parquet_file,
    put_table,
    random_strings,
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
)

import streamfilter
from streamfilter import cli
from streamfilter.store.s3 import S3Store


def etags(client, bucket: str, prefix: str = "") -> dict[str, str]:
    resp = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {obj["Key"]: obj["ETag"] for obj in resp.get("Contents", [])}


@pytest.mark.parametrize("mode", ["deny", "allow"])
def test_s3_glob_to_s3_matches_reference(s3_endpoint, s3_client, bucket, tmp_path: Path, mode: str) -> None:
    inputs = {}
    for i in range(4):
        table = shard_table(2500, start=i * 2500, seed=4)
        inputs[f"laion/part-{i:05d}.parquet"] = put_table(
            s3_client, bucket, f"laion/part-{i:05d}.parquet", table, row_group_size=1000, compression="zstd"
        )
    # Neither may be taken by the glob: another extension, and one level deeper.
    s3_client.put_object(Bucket=bucket, Key="laion/README.txt", Body=b"not a shard")
    put_table(s3_client, bucket, "laion/old/part-00000.parquet", shard_table(10))
    listed = [u for data in inputs.values() for u in sample(read_parquet(data)["url"], 29, offset=1)]
    blocklist = write_list(tmp_path / "list.txt", listed)
    before = etags(s3_client, bucket, "laion/")

    report = streamfilter.run(
        [f"s3://{bucket}/laion/*.parquet"],
        output=f"s3://{bucket}/clean/",
        blocklist=[str(blocklist)],
        mode=mode,
        concurrency=3,
        s3_endpoint_url=s3_endpoint,
        quiet=True,
    )

    assert report.ok
    assert [s.input for s in report.shards] == [f"s3://{bucket}/{k}" for k in sorted(inputs)]
    assert s3_keys(s3_client, bucket, "clean/") == [k.replace("laion/", "clean/") for k in sorted(inputs)]
    for shard, (key, data) in zip(report.shards, sorted(inputs.items()), strict=True):
        expected = reference_filter(read_parquet(data), listed, mode=mode)
        out = s3_get(s3_client, bucket, key.replace("laion/", "clean/"))
        assert shard.output == f"s3://{bucket}/{key.replace('laion/', 'clean/')}"
        assert_same_table(read_parquet(out), expected)
        assert row_group_rows(out) == reference_row_group_counts(data, listed, mode=mode)
        assert shard.rows_out == expected.num_rows
        assert shard.bytes_written == len(out)
        assert_read_once(shard.bytes_read, data)
    assert 0 < report.totals["rows_out"] < 10_000
    assert etags(s3_client, bucket, "laion/") == before
    assert s3_pending_uploads(s3_client, bucket) == []


@pytest.fixture(scope="module")
def big_table() -> pa.Table:
    """~11 MiB of incompressible strings: more than one 8 MiB part when written uncompressed, less than two."""
    n = 150_000
    return pa.table({"url": random_strings(n, 32, seed=99), "id": pa.array(range(n), pa.int64())})


@pytest.mark.parametrize(
    ("part_mib", "single_request_mib", "parts"),
    [
        (None, None, 0),  # the defaults: about 11 MiB out is more than a part, less than two: one PutObject
        (5, 0, 3),  # every output over a part in parts: 5 MiB, 5 MiB, the rest
        (5, 7, 2),  # a first part of 7 MiB, then the rest (under 5 MiB) as the last
    ],
)
def test_an_output_goes_in_one_put_under_two_parts_else_in_parts(
    s3_endpoint,
    s3_client,
    bucket,
    tmp_path: Path,
    big_table: pa.Table,
    monkeypatch,
    part_mib,
    single_request_mib,
    parts,
) -> None:
    if part_mib is not None:
        monkeypatch.setattr(S3Store, "part_size", part_mib * 1024 * 1024)
        monkeypatch.setattr(S3Store, "single_request_bytes", single_request_mib * 1024 * 1024)
    data = put_table(
        s3_client, bucket, "in/big.parquet", big_table, compression="none", use_dictionary=False, row_group_size=50_000
    )
    listed = sample(big_table["url"], 1000)
    blocklist = write_list(tmp_path / "list.txt", listed)

    report = streamfilter.run(
        [f"s3://{bucket}/in/big.parquet"],
        output=f"s3://{bucket}/out/",
        blocklist=[str(blocklist)],
        s3_endpoint_url=s3_endpoint,
        quiet=True,
    )

    assert report.ok, report.shards[0].error
    head = s3_client.head_object(Bucket=bucket, Key="out/big.parquet")
    size = head["ContentLength"]
    assert size > S3Store.part_size
    if parts:  # S3 names a multipart object's ETag by its number of parts
        assert head["ETag"].strip('"').endswith(f"-{parts}")
    else:
        assert size < S3Store.single_request_bytes
        assert "-" not in head["ETag"]
    assert report.shards[0].bytes_written == size
    assert s3_pending_uploads(s3_client, bucket) == []
    out = s3_get(s3_client, bucket, "out/big.parquet")
    assert_same_table(read_parquet(out), reference_filter(read_parquet(data), listed))
    assert report.shards[0].rows_removed == 150


def test_failure_mid_multipart_upload_aborts_it(
    s3_endpoint, s3_client, bucket, tmp_path: Path, big_table: pa.Table, monkeypatch: pytest.MonkeyPatch
) -> None:
    part_size = 5 * 1024 * 1024
    monkeypatch.setattr(S3Store, "part_size", part_size)
    monkeypatch.setattr(S3Store, "single_request_bytes", 0)
    options = {"compression": "none", "use_dictionary": False, "row_group_size": 50_000}
    good = parquet_bytes(big_table, **options)
    # The first two row groups alone make more than a part: a part is uploaded before the failure.
    assert len(parquet_bytes(big_table.slice(0, 100_000), **options)) > part_size
    bad = corrupt_row_group(good, 2)
    s3_client.put_object(Bucket=bucket, Key="in/bad.parquet", Body=bad)
    s3_client.put_object(Bucket=bucket, Key="in/good.parquet", Body=good)
    blocklist = write_list(tmp_path / "list.txt", sample(big_table["url"], 5000))

    code = cli.main(
        [
            "run",
            f"s3://{bucket}/in/bad.parquet",
            f"s3://{bucket}/in/good.parquet",
            "--output",
            f"s3://{bucket}/out/",
            "--blocklist",
            str(blocklist),
            "--s3-endpoint-url",
            s3_endpoint,
            "--concurrency",
            "2",
            "--report",
            str(tmp_path / "report.json"),
        ]
    )

    assert code == 1
    report = json.loads((tmp_path / "report.json").read_text())
    bad_report, good_report = report["shards"]
    assert bad_report["status"] == "failed"
    assert "bad.parquet" in bad_report["error"] and "row group 2" in bad_report["error"]
    assert "\n" not in bad_report["error"]
    assert good_report["status"] == "done"
    assert s3_keys(s3_client, bucket, "out/") == ["out/good.parquet"]
    assert s3_pending_uploads(s3_client, bucket) == []
    # The good shard, written with 5 MiB parts, is whole.
    head = s3_client.head_object(Bucket=bucket, Key="out/good.parquet")
    assert head["ETag"].strip('"').endswith(f"-{math.ceil(head['ContentLength'] / part_size)}")
    expected = reference_filter(read_parquet(good), sample(big_table["url"], 5000))
    assert expected.num_rows == 150_000 - 30
    assert_same_table(read_parquet(s3_get(s3_client, bucket, "out/good.parquet")), expected)
    assert good_report["rows_removed"] == 30
    assert s3_get(s3_client, bucket, "in/bad.parquet") == bad


def test_bytes_read_is_about_the_object_size(s3_endpoint, s3_client, bucket, tmp_path: Path) -> None:
    table = shard_table(40_000, seed=8)
    data = put_table(s3_client, bucket, "in/a.parquet", table, row_group_size=5_000, compression="zstd")
    assert len(data) > 16 * FOOTER_WINDOW  # so that the footer window is a small part of the file
    blocklist = write_list(tmp_path / "list.txt", sample(table["url"], 400))

    report = streamfilter.run(
        [f"s3://{bucket}/in/a.parquet"],
        output=f"s3://{bucket}/out/",
        blocklist=[str(blocklist)],
        s3_endpoint_url=s3_endpoint,
        quiet=True,
    )

    assert report.ok
    assert parquet_file(data).metadata.num_row_groups == 8
    assert_read_once(report.shards[0].bytes_read, data)


def test_dry_run_over_s3_reads_only_the_key_column(s3_endpoint, s3_client, bucket, tmp_path: Path) -> None:
    table = shard_table(40_000, seed=8)
    data = put_table(s3_client, bucket, "in/a.parquet", table, row_group_size=10_000, compression="zstd")
    listed = sample(table["url"], 77)
    blocklist = write_list(tmp_path / "list.txt", listed)
    md = parquet_file(data).metadata
    url_bytes = sum(
        md.row_group(i).column(j).total_compressed_size
        for i in range(md.num_row_groups)
        for j in range(md.num_columns)
        if md.row_group(i).column(j).path_in_schema == "url"
    )
    assert url_bytes < len(data) / 3
    before = s3_keys(s3_client, bucket)

    report = streamfilter.run(
        [f"s3://{bucket}/in/a.parquet"],
        output=f"s3://{bucket}/out/",
        blocklist=[str(blocklist)],
        dry_run=True,
        report=f"s3://{bucket}/reports/dry.json",
        s3_endpoint_url=s3_endpoint,
        quiet=True,
    )

    assert report.ok and report.dry_run
    (shard,) = report.shards
    assert shard.output is None
    assert (shard.rows_in, shard.rows_removed, shard.rows_out) == (40_000, len(listed), 40_000 - len(listed))
    assert shard.bytes_written == 0
    assert url_bytes <= shard.bytes_read <= url_bytes + FOOTER_WINDOW
    assert shard.bytes_read < len(data) / 2
    assert s3_keys(s3_client, bucket) == sorted([*before, "reports/dry.json"])
    saved = json.loads(s3_get(s3_client, bucket, "reports/dry.json"))
    assert saved["dry_run"] is True
    assert saved["totals"]["rows_removed"] == len(listed)


def test_report_on_s3_has_documented_fields(s3_endpoint, s3_client, bucket, tmp_path: Path) -> None:
    tables = [shard_table(1000, start=i * 1000) for i in range(3)]
    for i, table in enumerate(tables):
        put_table(s3_client, bucket, f"in/{i}.parquet", table)
    listed = [u for t in tables for u in sample(t["url"], 40)]
    s3_client.put_object(Bucket=bucket, Key="lists/block.txt", Body="\n".join(listed).encode())

    code = cli.main(
        [
            "run",
            f"s3://{bucket}/in/{{0..2}}.parquet",
            "--output",
            f"s3://{bucket}/out",
            "--blocklist",
            f"s3://{bucket}/lists/block.txt",
            "--report",
            f"s3://{bucket}/reports/run.json",
            "--s3-endpoint-url",
            s3_endpoint,
        ]
    )

    assert code == 0
    report = json.loads(s3_get(s3_client, bucket, "reports/run.json"))
    assert {"shards", "totals", "key_spec", "set_digest"} <= set(report)
    assert len(report["shards"]) == 3
    for i, shard in enumerate(report["shards"]):
        assert set(shard) == REPORT_SHARD_FIELDS
        assert shard["input"] == f"s3://{bucket}/in/{i}.parquet"
        assert shard["output"] == f"s3://{bucket}/out/{i}.parquet"
        assert shard["status"] == "done" and shard["error"] is None
        assert shard["rows_in"] == 1000 and shard["rows_removed"] == 25
        assert shard["rows_in"] == shard["rows_out"] + shard["rows_removed"]
        head = s3_client.head_object(Bucket=bucket, Key=f"out/{i}.parquet")
        assert shard["bytes_written"] == head["ContentLength"]
    totals = report["totals"]
    for name in ("rows_in", "rows_out", "rows_removed", "bytes_read", "bytes_written"):
        assert totals[name] == sum(s[name] for s in report["shards"])
    assert (totals["shards"], totals["done"], totals["failed"]) == (3, 3, 0)
    assert totals["rows_removed"] == 75
    assert report["key_spec"] == {
        "columns": ["url"],
        "separator": "\t",
        "normalize": "none",
        "hash": "none",
        "entries": "raw",
    }
    assert report["set_digest"].startswith("sha256:")
    # Blocklist keys never appear in the report.
    text = s3_get(s3_client, bucket, "reports/run.json").decode()
    assert not any(url in text for url in listed)


def test_s3_bad_inputs_fail_alone(s3_endpoint, s3_client, bucket, tmp_path: Path, capsys) -> None:
    table = shard_table(3000, seed=12)
    good = put_table(s3_client, bucket, "in/good.parquet", table, row_group_size=1000)
    s3_client.put_object(Bucket=bucket, Key="in/corrupt.parquet", Body=b"PAR1" + b"\x00garbage" * 500 + b"PAR1")
    s3_client.put_object(Bucket=bucket, Key="in/truncated.parquet", Body=good[: len(good) // 2])
    put_table(s3_client, bucket, "in/nokey.parquet", table.drop_columns(["url"]))
    listed = sample(table["url"], 10)
    blocklist = write_list(tmp_path / "list.txt", listed)
    before = {k: hashlib.sha256(s3_get(s3_client, bucket, k)).hexdigest() for k in s3_keys(s3_client, bucket)}
    names = ["corrupt", "good", "missing", "nokey", "truncated"]

    code = cli.main(
        [
            "run",
            *(f"s3://{bucket}/in/{n}.parquet" for n in names),
            "--output",
            f"s3://{bucket}/out/",
            "--blocklist",
            str(blocklist),
            "--s3-endpoint-url",
            s3_endpoint,
            "--report",
            str(tmp_path / "report.json"),
        ]
    )

    assert code == 1
    report = json.loads((tmp_path / "report.json").read_text())
    status = {Path(s["input"]).stem: s for s in report["shards"]}
    assert {n: s["status"] for n, s in status.items()} == {
        "corrupt": "failed",
        "good": "done",
        "missing": "failed",
        "nokey": "failed",
        "truncated": "failed",
    }
    for name in ("corrupt", "missing", "nokey", "truncated"):
        error = status[name]["error"]
        assert f"s3://{bucket}/in/{name}.parquet" in error
        assert "\n" not in error
    assert "not found" in status["missing"]["error"]
    assert "'url'" in status["nokey"]["error"]
    assert report["totals"]["failed"] == 4 and report["totals"]["done"] == 1
    assert report["totals"]["rows_in"] == 3000
    assert s3_keys(s3_client, bucket, "out/") == ["out/good.parquet"]
    assert s3_pending_uploads(s3_client, bucket) == []
    assert_same_table(read_parquet(s3_get(s3_client, bucket, "out/good.parquet")), reference_filter(table, listed))
    after = {k: hashlib.sha256(s3_get(s3_client, bucket, k)).hexdigest() for k in before}
    assert after == before
    err = capsys.readouterr().err
    assert "failed s3://" in err and "missing.parquet" in err


def test_s3_output_inside_input_prefix(s3_endpoint, s3_client, bucket, tmp_path: Path, capsys) -> None:
    table = shard_table(500)
    data = put_table(s3_client, bucket, "data/0.parquet", table)
    blocklist = write_list(tmp_path / "list.txt", sample(table["url"], 10))
    argv = [
        "run",
        f"s3://{bucket}/data/**.parquet",  # recursive: a rerun would match data/clean/0.parquet
        "--output",
        f"s3://{bucket}/data/clean",
        "--blocklist",
        str(blocklist),
        "--s3-endpoint-url",
        s3_endpoint,
    ]

    assert cli.main(argv) == 2
    assert "inside the input prefix" in capsys.readouterr().err
    assert s3_keys(s3_client, bucket) == ["data/0.parquet"]

    assert cli.main([*argv, "--output-inside-input"]) == 0
    assert s3_keys(s3_client, bucket) == ["data/0.parquet", "data/clean/0.parquet"]
    out = read_parquet(s3_get(s3_client, bucket, "data/clean/0.parquet"))
    assert_same_table(out, reference_filter(read_parquet(data), sample(table["url"], 10)))


def test_s3_glob_matching_nothing_is_a_usage_error(s3_endpoint, s3_client, bucket, tmp_path: Path, capsys) -> None:
    put_table(s3_client, bucket, "data/0.parquet", shard_table(10))
    blocklist = write_list(tmp_path / "list.txt", ["x"])
    code = cli.main(
        [
            "run",
            f"s3://{bucket}/nothing/*.parquet",
            "--output",
            f"s3://{bucket}/out/",
            "--blocklist",
            str(blocklist),
            "--s3-endpoint-url",
            s3_endpoint,
        ]
    )
    assert code == 2
    assert "no object matches" in capsys.readouterr().err
    assert s3_keys(s3_client, bucket) == ["data/0.parquet"]


def test_s3_to_local_and_local_to_s3(s3_endpoint, s3_client, bucket, tmp_path: Path) -> None:
    table = shard_table(2000, seed=40)
    data = put_table(s3_client, bucket, "in/a.parquet", table, row_group_size=700)
    local = tmp_path / "local" / "b.parquet"
    local.parent.mkdir()
    pq.write_table(table, local, row_group_size=700)
    listed = sample(table["url"], 11)
    blocklist = write_list(tmp_path / "list.txt", listed)

    down = streamfilter.run(
        [f"s3://{bucket}/in/a.parquet"],
        output=str(tmp_path / "down"),
        blocklist=[str(blocklist)],
        s3_endpoint_url=s3_endpoint,
        quiet=True,
    )
    up = streamfilter.run(
        [str(local)], output=f"s3://{bucket}/up/", blocklist=[str(blocklist)], s3_endpoint_url=s3_endpoint, quiet=True
    )

    assert down.ok and up.ok
    expected = reference_filter(read_parquet(data), listed)
    assert_same_table(read_parquet(tmp_path / "down" / "a.parquet"), expected)
    assert_same_table(read_parquet(s3_get(s3_client, bucket, "up/b.parquet")), expected)


def test_s3_keys_with_spaces_and_non_ascii(s3_endpoint, s3_client, bucket, tmp_path: Path) -> None:
    table = shard_table(700, seed=52)
    data = put_table(s3_client, bucket, "raw data/año=2024/part 0 ü.parquet", table)
    listed = sample(table["url"], 7)
    blocklist = write_list(tmp_path / "list.txt", listed)

    report = streamfilter.run(
        [f"s3://{bucket}/raw data/año=2024/*.parquet"],
        output=f"s3://{bucket}/clean é/",
        blocklist=[str(blocklist)],
        s3_endpoint_url=s3_endpoint,
        quiet=True,
    )

    assert report.ok, report.shards[0].error
    assert s3_keys(s3_client, bucket, "clean") == ["clean é/part 0 ü.parquet"]
    out = s3_get(s3_client, bucket, "clean é/part 0 ü.parquet")
    assert_same_table(read_parquet(out), reference_filter(read_parquet(data), listed))


def test_a_run_makes_one_s3_client(s3_endpoint, s3_client, bucket, tmp_path: Path, monkeypatch) -> None:
    # Each botocore client costs its own session, service model and connection pool (about 0.06 CPU s):
    # the planning (listing, receipts) and the shards share one.
    from aiobotocore.session import AioSession

    made = []
    real = AioSession.create_client

    def counted(self, *args, **kwargs):
        made.append(args[:1])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AioSession, "create_client", counted)
    listed = []
    for i in range(3):
        data = put_table(s3_client, bucket, f"one/part-{i}.parquet", shard_table(300, start=i * 300, seed=2))
        listed += sample(read_parquet(data)["url"], 7)
    report = streamfilter.run(
        [f"s3://{bucket}/one/*.parquet"],
        output=f"s3://{bucket}/one-clean/",
        blocklist=[str(write_list(tmp_path / "list.txt", listed))],
        concurrency=2,
        s3_endpoint_url=s3_endpoint,
        quiet=True,
    )
    assert report.ok and report.totals["rows_removed"] > 0
    assert made == [("s3",)]


@pytest.mark.parametrize(
    "value",
    [
        "Sat, 05 Dec 2026 13:10:00 GMT",  # a Last-Modified header
        "Tue, 01 Jan 1980 00:00:01 GMT",
        "2026-12-05T13:10:00.000Z",  # a listing's LastModified
        "2026-12-05T13:10:00Z",
        "2026-12-05T13:10:00.123456+00:00",
        "2026-12-05T15:10:00+02:00",
        "1733404200",  # epoch seconds: botocore's own parser
        "2026-12-05T13:10:00",  # no zone: botocore's own parser
        "Sat, 05 Dec 2026 13:10:00 -0000",
    ],
)
def test_s3_timestamps_read_as_botocore_reads_them(value: str) -> None:
    from botocore.utils import parse_timestamp as botocore_parse

    from streamfilter.store.s3 import parse_timestamp

    ours, theirs = parse_timestamp(value), botocore_parse(value)
    assert (ours.tzinfo is None) == (theirs.tzinfo is None)
    assert ours == theirs  # the same instant (aware), or the same wall time (naive, as botocore leaves it)


def test_listed_and_stated_times_are_the_stores(s3_endpoint, s3_client, bucket, monkeypatch) -> None:
    import anyio

    from streamfilter.store import s3 as s3_module

    parsed: list[str] = []
    real = s3_module.parse_timestamp
    monkeypatch.setattr(s3_module, "parse_timestamp", lambda value: parsed.append(value) or real(value))
    for i in range(3):
        s3_client.put_object(Bucket=bucket, Key=f"t/{i}.bin", Body=b"x" * i)
    expected = {
        f"s3://{bucket}/{o['Key']}": o["LastModified"].timestamp()
        for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="t/")["Contents"]
    }

    async def listed_and_stated() -> tuple[dict, dict]:
        store = S3Store(s3_endpoint)
        try:
            listed = {info.uri: info.mtime for info in await store.list(f"s3://{bucket}/t/")}
            stated = {uri: (await store.stat(uri)).mtime for uri in expected}
        finally:
            await store.aclose()
        return listed, stated

    listed, stated = anyio.run(listed_and_stated)
    assert listed == expected
    assert stated == {uri: int(t) for uri, t in expected.items()}  # Last-Modified has whole seconds
    assert len(parsed) >= 6  # the client reads its replies' times with streamfilter's parser, not dateutil


@pytest.mark.parametrize(
    ("app_id", "shown"), [(None, None), ("relaion-cleanup", "app/relaion-cleanup"), ("team a\n", "app/team-a-")]
)
def test_requests_name_streamfilter_in_their_user_agent(
    monkeypatch: pytest.MonkeyPatch, app_id: str | None, shown: str | None
) -> None:
    """Every S3 request says it is streamfilter's (a bucket's access log then shows the removal's
    requests), with an AWS_SDK_UA_APP_ID kept; seen by a real HTTP server, as botocore sent it."""
    import anyio
    from aiohttp import web
    from helpers import serve

    from streamfilter._version import __version__
    from streamfilter.errors import ShardError

    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    if app_id is None:
        monkeypatch.delenv("AWS_SDK_UA_APP_ID", raising=False)
    else:
        monkeypatch.setenv("AWS_SDK_UA_APP_ID", app_id)
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("User-Agent", ""))
        return web.Response(status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)

    async def stat() -> None:
        store = S3Store(url)
        try:
            with pytest.raises(ShardError):
                await store.stat("s3://bucket/key.parquet")
        finally:
            await store.aclose()

    with serve(app) as url:
        anyio.run(stat)
    assert seen, "no request reached the server"
    for agent in seen:
        assert agent.startswith(f"streamfilter/{__version__} aiobotocore/"), agent
        assert f" {shown} " in f"{agent} " if shown else "app/" not in agent, agent
