"""The benchmarks' fast S3 stand-in: s3rver (npm, pinned) with the suffix-range fix of
benchmarks/s3rver_serve.js, started the way benchmarks/harness.py starts it.

s3rver 3.7.1 answers ``Range: bytes=-N`` (the last N bytes) with the object's first N+1 bytes;
object_store, under Polars, reads Parquet footers that way. The fix must give S3's answer for
suffix ranges, leave every other range alone, and let Polars read a Parquet file back. Expected
bytes come from the uploaded object itself; the Parquet read is checked against pyarrow.
Skipped where Node.js or npm is missing or s3rver cannot be installed.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from harness import S3rverServer, request_mix


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3rverServer]:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("the s3rver stand-in needs Node.js and npm, which this machine lacks")
    root = tmp_path_factory.mktemp("bench-s3rver")
    try:
        srv = S3rverServer(root / "s3rver.log", "bench", root / "store")
    except Exception as exc:
        pytest.skip(f"s3rver could not be installed or started ({type(exc).__name__}: {exc})")
    try:
        srv.client.create_bucket(Bucket="bench")
        yield srv
    finally:
        srv.stop()


def ranged(server: S3rverServer, key: str, spec: str) -> tuple[bytes, str]:
    got = server.client.get_object(Bucket="bench", Key=key, Range=spec)
    return got["Body"].read(), got.get("ContentRange", "")


def test_suffix_ranges_are_the_last_bytes(server: S3rverServer) -> None:
    blob = os.urandom(100_000)
    server.client.put_object(Bucket="bench", Key="blob", Body=blob)
    body, content_range = ranged(server, "blob", "bytes=-1000")
    assert body == blob[-1000:]
    assert content_range == "bytes 99000-99999/100000"
    assert ranged(server, "blob", "bytes=-1")[0] == blob[-1:]
    assert ranged(server, "blob", "bytes=-250000")[0] == blob  # longer than the object: all of it, as S3
    # Every other form of range is untouched.
    assert ranged(server, "blob", "bytes=0-999")[0] == blob[:1000]
    assert ranged(server, "blob", "bytes=5000-5009")[0] == blob[5000:5010]
    assert ranged(server, "blob", "bytes=99990-")[0] == blob[99990:]
    assert server.get("blob") == blob


def test_polars_reads_parquet_through_it(server: S3rverServer) -> None:
    pl = pytest.importorskip("polars")
    table = pa.table({"url": [f"https://example.com/{i}.jpg" for i in range(20_000)], "n": list(range(20_000))})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=5_000, compression="zstd")
    server.client.put_object(Bucket="bench", Key="t.parquet", Body=buf.getvalue())
    options = {
        "aws_endpoint_url": server.endpoint,
        "aws_allow_http": "true",
        "aws_access_key_id": server.key_id,
        "aws_secret_access_key": server.secret,
        "aws_region": "us-east-1",
    }
    got = pl.read_parquet("s3://bench/t.parquet", storage_options=options).to_arrow()
    assert got.column("url").to_pylist() == table.column("url").to_pylist()
    assert got.column("n").to_pylist() == table.column("n").to_pylist()


def test_request_log_counts_operations(server: S3rverServer) -> None:
    offset = server.log_offset()
    server.client.put_object(Bucket="bench", Key="a", Body=b"x" * 10)
    server.client.copy_object(Bucket="bench", Key="b", CopySource={"Bucket": "bench", "Key": "a"})
    server.client.get_object(Bucket="bench", Key="b", Range="bytes=0-4")["Body"].read()
    requests, _ = server.requests_since(offset)
    mix = request_mix(requests)
    assert mix["PutObject"]["requests"] == 1 and mix["PutObject"]["bytes_in"] == 10
    assert mix["CopyObject"]["requests"] == 1
    assert mix["GetObject (ranged)"] == {"requests": 1, "bytes_out": 5, "bytes_in": 0}
