"""Resource limits against hostile input: decompression bombs, oversized footers and row groups.

Each limit fails with one line that names the object and says what to do; a list over its
limit stops the run (exit 2, nothing written), a shard over its limit fails alone.
"""

from __future__ import annotations

import gzip
import io
import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from helpers import (
    assert_same_table,
    files_under,
    parquet_bytes,
    read_parquet,
    reference_filter,
    s3_keys,
    s3_pending_uploads,
    sample,
    shard_table,
    write_list,
    write_shard,
)

from streamfilter import cli
from streamfilter.errors import UsageError
from streamfilter.formats import parquet as parquet_format
from streamfilter.sets import load

MiB = 1024 * 1024
#: Zeros compress about 1,000x with gzip and 30,000x with zstd: far past the 200x limit.
BOMB_BYTES = 256 * MiB


def gzip_bomb(size: int = BOMB_BYTES) -> bytes:
    buf = io.BytesIO()
    zeros = bytes(16 * MiB)
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as writer:
        for _ in range(size // len(zeros)):
            writer.write(zeros)
    return buf.getvalue()


def zstd_bomb(size: int = 4 * BOMB_BYTES) -> bytes:
    """One frame that does not record its content size, so only inflating it tells."""
    buf = io.BytesIO()
    zeros = bytes(16 * MiB)
    with zstandard.ZstdCompressor().stream_writer(buf, closefd=False) as writer:
        for _ in range(size // len(zeros)):
            writer.write(zeros)
    return buf.getvalue()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("streamfilter: error: "), err
    assert len(err.strip().splitlines()) == 1, err
    return err


def run_cli(*args: str) -> int:
    return cli.main(["run", *args])


# --- decompression bombs in blocklists: exit 2, nothing written -----------------------------------


@pytest.mark.parametrize("codec", ["gz", "zst"])
def test_compressed_list_bomb_is_refused(tmp_path: Path, capsys, codec: str) -> None:
    src = write_shard(tmp_path / "in" / "s.parquet", shard_table(500, seed=41))
    bomb = gzip_bomb() if codec == "gz" else zstd_bomb()
    assert len(bomb) * load.MAX_INFLATE_RATIO < BOMB_BYTES
    (tmp_path / f"list.txt.{codec}").write_bytes(bomb)

    code = run_cli(
        str(src),
        "--output",
        str(tmp_path / "out"),
        "--blocklist",
        str(tmp_path / f"list.txt.{codec}"),
        "--report",
        str(tmp_path / "report.json"),
    )

    assert code == 2
    err = one_line_error(capsys)
    assert f"list.txt.{codec}" in err and "decompression bomb" in err and "uncompressed" in err
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "report.json").exists()


def test_bomb_behind_a_signed_url_is_refused(http_server, tmp_path: Path, capsys) -> None:
    """The kind of a list is told by its path: a query string neither hides the codec nor shows in the message."""
    served, base = http_server.dir()
    (served / "list.txt.zst").write_bytes(zstd_bomb())
    src = write_shard(tmp_path / "in" / "s.parquet", shard_table(100, seed=40))

    code = run_cli(
        str(src), "--output", str(tmp_path / "out"), "--blocklist", base + "list.txt.zst?X-Amz-Signature=SIG0123"
    )

    assert code == 2
    err = one_line_error(capsys)
    assert f"blocklist {base}list.txt.zst?… inflates past" in err and "SIG0123" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("codec", ["gz", "zst"])
def test_bomb_is_never_inflated_whole(codec: str) -> None:
    bomb = gzip_bomb() if codec == "gz" else zstd_bomb()
    tracemalloc.start()
    try:
        with pytest.raises(UsageError, match="decompression bomb"):
            load.decompress(f"list.txt.{codec}", bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Stopped one step past the 64 MiB threshold: far from the 256 MiB / 1 GiB the bomb holds.
    assert peak < load.INFLATE_FREE_BYTES + 48 * MiB, peak


@pytest.mark.parametrize("codec", ["gz", "zst"])
def test_repetitive_list_under_the_threshold_loads(tmp_path: Path, codec: str) -> None:
    """Ratio alone is not a bomb: a small list of few distinct keys compresses very well."""
    table = shard_table(1000, seed=42)
    listed = sample(table["url"], 100)
    raw = ("\n".join(listed * 5000) + "\n").encode()  # ~2 MiB of 10 keys, compresses far past 200x
    data = gzip.compress(raw) if codec == "gz" else zstandard.ZstdCompressor().compress(raw)
    assert len(raw) > load.MAX_INFLATE_RATIO * len(data)
    src = write_shard(tmp_path / "in" / "s.parquet", table)
    (tmp_path / f"l.txt.{codec}").write_bytes(data)

    code = run_cli(str(src), "--output", str(tmp_path / "out"), "--blocklist", str(tmp_path / f"l.txt.{codec}"))

    assert code == 0
    assert_same_table(read_parquet(tmp_path / "out" / "s.parquet"), reference_filter(table, listed))


def test_multi_frame_zstd_list_loads_every_frame(tmp_path: Path) -> None:
    table = shard_table(1000, seed=43)
    first, second = sample(table["url"], 20), sample(table["url"], 20, offset=7)
    cctx = zstandard.ZstdCompressor()
    data = cctx.compress(("\n".join(first) + "\n").encode()) + cctx.compress(("\n".join(second) + "\n").encode())
    src = write_shard(tmp_path / "in" / "s.parquet", table)
    (tmp_path / "l.txt.zst").write_bytes(data)

    code = run_cli(str(src), "--output", str(tmp_path / "out"), "--blocklist", str(tmp_path / "l.txt.zst"))

    assert code == 0
    assert_same_table(read_parquet(tmp_path / "out" / "s.parquet"), reference_filter(table, first + second))


@pytest.mark.parametrize("codec", ["gz", "zst"])
def test_truncated_compressed_list_is_refused(tmp_path: Path, capsys, codec: str) -> None:
    """A cut-off list must not load as a shorter list: keys past the cut would be missed."""
    table = shard_table(2000, seed=44)
    raw = ("\n".join(sample(table["url"], 2)) + "\n").encode()
    data = gzip.compress(raw) if codec == "gz" else zstandard.ZstdCompressor().compress(raw)
    src = write_shard(tmp_path / "in" / "s.parquet", table)
    (tmp_path / f"l.txt.{codec}").write_bytes(data[: len(data) * 2 // 3])

    code = run_cli(str(src), "--output", str(tmp_path / "out"), "--blocklist", str(tmp_path / f"l.txt.{codec}"))

    assert code == 2
    err = one_line_error(capsys)
    assert f"l.txt.{codec}" in err and "ends early" in err
    assert not (tmp_path / "out").exists()


def test_parquet_list_declaring_a_huge_decoded_size_is_refused(tmp_path: Path, capsys, monkeypatch) -> None:
    # The threshold lowered so the test needs 2 MiB, not 64, of plain-encoded, compressed repetition.
    monkeypatch.setattr(load, "INFLATE_FREE_BYTES", MiB)
    keys = pa.array(["x" * 1000] * 2048)
    pq.write_table(pa.table({"url": keys}), tmp_path / "l.parquet", use_dictionary=False, compression="zstd")
    assert (tmp_path / "l.parquet").stat().st_size * load.MAX_INFLATE_RATIO < 2 * MiB
    src = write_shard(tmp_path / "in" / "s.parquet", shard_table(100))

    code = run_cli(str(src), "--output", str(tmp_path / "out"), "--blocklist", f"{tmp_path}/l.parquet:url")

    assert code == 2
    err = one_line_error(capsys)
    assert "l.parquet" in err and "decompression bomb" in err
    assert not (tmp_path / "out").exists()


# --- Parquet footers over the cap: that shard fails, the others go on -----------------------------


def with_footer_length(data: bytes, length: int) -> bytes:
    """The file with the footer length field (the 4 bytes before the trailing PAR1) replaced."""
    assert data[-4:] == b"PAR1"
    return data[:-8] + length.to_bytes(4, "little") + b"PAR1"


def run_good_and_bad(tmp_path: Path, bad: bytes) -> tuple[int, dict]:
    """A good shard and ``bad`` in one run; the good one must be done and right whatever ``bad`` holds."""
    table = shard_table(1500, seed=45)
    good = write_shard(tmp_path / "in" / "good.parquet", table, row_group_size=500)
    (tmp_path / "in" / "bad.parquet").write_bytes(bad)
    listed = sample(table["url"], 30)
    blocklist = write_list(tmp_path / "list.txt", listed)
    code = run_cli(
        str(good),
        str(tmp_path / "in" / "bad.parquet"),
        "--output",
        str(tmp_path / "out"),
        "--blocklist",
        str(blocklist),
        "--report",
        str(tmp_path / "report.json"),
    )
    report = json.loads((tmp_path / "report.json").read_text())
    by_name = {Path(s["input"]).name: s for s in report["shards"]}
    assert by_name["good.parquet"]["status"] == "done"
    assert_same_table(read_parquet(tmp_path / "out" / "good.parquet"), reference_filter(table, listed))
    return code, by_name["bad.parquet"]


def assert_failed_alone(code: int, shard: dict, tmp_path: Path, capsys) -> str:
    assert code == 1
    assert shard["status"] == "failed"
    assert shard["rows_out"] == 0 and shard["bytes_written"] == 0
    error = shard["error"]
    assert "\n" not in error and str(tmp_path / "in" / "bad.parquet") in error
    assert files_under(tmp_path / "out") == ["good.parquet"]  # no partial file of the bad shard
    assert f"failed {tmp_path / 'in' / 'bad.parquet'}: " in capsys.readouterr().err
    return error


def test_footer_length_claiming_gigabytes_fails_that_shard(tmp_path: Path, capsys) -> None:
    bad = with_footer_length(parquet_bytes(shard_table(300, seed=46)), 0xFFFF_FF00)

    code, shard = run_good_and_bad(tmp_path, bad)

    error = assert_failed_alone(code, shard, tmp_path, capsys)
    assert "footer claims 4,294,967,040 bytes, over the 64 MiB limit" in error
    assert "check the object" in error


def test_footer_over_a_lowered_cap_fails_before_pyarrow_parses_it(tmp_path: Path, monkeypatch) -> None:
    bad = parquet_bytes(shard_table(300, seed=47))
    length = int.from_bytes(bad[-8:-4], "little")
    assert length == pq.ParquetFile(pa.BufferReader(bad)).metadata.serialized_size
    monkeypatch.setattr(parquet_format, "MAX_FOOTER_BYTES", length - 1)
    parsed = []
    real_parquet_file = pq.ParquetFile
    monkeypatch.setattr(pq, "ParquetFile", lambda source, **kw: parsed.append(1) or real_parquet_file(source, **kw))

    table = shard_table(200, seed=48)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.parquet").write_bytes(bad)
    code = run_cli(
        str(tmp_path / "in" / "bad.parquet"),
        "--output",
        str(tmp_path / "out"),
        "--blocklist",
        str(write_list(tmp_path / "list.txt", sample(table["url"], 10))),
        "--report",
        str(tmp_path / "report.json"),
    )

    assert code == 1
    (shard,) = json.loads((tmp_path / "report.json").read_text())["shards"]
    assert f"footer claims {length:,} bytes, over the {length - 1:,} bytes limit" in shard["error"]
    assert parsed == []
    assert files_under(tmp_path / "out") == []


def test_footer_longer_than_the_file_fails_that_shard(tmp_path: Path, capsys) -> None:
    data = parquet_bytes(shard_table(300, seed=49))
    bad = with_footer_length(data, len(data))

    code, shard = run_good_and_bad(tmp_path, bad)

    error = assert_failed_alone(code, shard, tmp_path, capsys)
    assert "not a readable Parquet file" in error and f"of a {len(data):,}-byte file" in error


# --- row groups over the decode cap ------------------------------------------------------------------


def uneven_row_groups(rows: list[int], seed: int = 50) -> tuple[bytes, pa.Table]:
    table = shard_table(sum(rows), seed=seed)
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, table.schema) as writer:
        start = 0
        for n in rows:
            writer.write_table(table.slice(start, n), row_group_size=n)
            start += n
    return buf.getvalue(), table


def test_row_group_over_the_cap_fails_that_shard_before_any_write(
    tmp_path: Path, capsys, monkeypatch, s3_endpoint, s3_client, bucket
) -> None:
    bad, _ = uneven_row_groups([200, 200, 2000])
    md = pq.ParquetFile(pa.BufferReader(bad)).metadata
    sizes = [md.row_group(i).total_byte_size for i in range(md.num_row_groups)]
    cap = (sizes[1] + sizes[2]) // 2  # row groups 0 and 1 fit, row group 2 does not
    monkeypatch.setattr(parquet_format, "MAX_ROW_GROUP_BYTES", cap)
    table = shard_table(1000, seed=51)
    s3_client.put_object(Bucket=bucket, Key="in/good.parquet", Body=parquet_bytes(table, row_group_size=100))
    s3_client.put_object(Bucket=bucket, Key="in/bad.parquet", Body=bad)
    listed = sample(table["url"], 20)
    blocklist = write_list(tmp_path / "list.txt", listed)

    code = run_cli(
        f"s3://{bucket}/in/good.parquet",
        f"s3://{bucket}/in/bad.parquet",
        "--output",
        f"s3://{bucket}/out/",
        "--blocklist",
        str(blocklist),
        "--report",
        str(tmp_path / "report.json"),
        "--s3-endpoint-url",
        s3_endpoint,
    )

    assert code == 1
    shards = {Path(s["input"]).name: s for s in json.loads((tmp_path / "report.json").read_text())["shards"]}
    assert shards["good.parquet"]["status"] == "done"
    bad_shard = shards["bad.parquet"]
    assert bad_shard["status"] == "failed" and bad_shard["rows_out"] == 0 and bad_shard["bytes_written"] == 0
    assert bad_shard["error"] == (
        f"s3://{bucket}/in/bad.parquet: row group 2 would decode to {sizes[2]:,} bytes, over the {cap:,} bytes "
        "limit; rewrite the shard with smaller row groups"
    )
    # Refused from the metadata: row groups 0 and 1 were never written out, not even as upload parts.
    assert s3_keys(s3_client, bucket, "out/") == ["out/good.parquet"]
    assert s3_pending_uploads(s3_client, bucket) == []
    assert f"failed s3://{bucket}/in/bad.parquet: " in capsys.readouterr().err


def test_dry_run_counts_only_the_key_columns_against_the_cap(tmp_path: Path, monkeypatch) -> None:
    data, table = uneven_row_groups([300, 3000], seed=52)
    md = pq.ParquetFile(pa.BufferReader(data)).metadata
    rg = md.row_group(1)
    chunks = [rg.column(j) for j in range(rg.num_columns)]
    url = next(c.total_uncompressed_size for c in chunks if c.path_in_schema == "url")
    assert url < rg.total_byte_size
    monkeypatch.setattr(parquet_format, "MAX_ROW_GROUP_BYTES", (url + rg.total_byte_size) // 2)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s.parquet").write_bytes(data)
    blocklist = write_list(tmp_path / "list.txt", sample(table["url"], 50))

    dry = run_cli(str(tmp_path / "in" / "s.parquet"), "--dry-run", "--blocklist", str(blocklist))
    full = run_cli(str(tmp_path / "in" / "s.parquet"), "--output", str(tmp_path / "out"), "--blocklist", str(blocklist))

    assert (dry, full) == (0, 1)
    assert files_under(tmp_path / "out") == []


def test_default_caps() -> None:
    caps = (parquet_format.MAX_FOOTER_BYTES, parquet_format.MAX_ROW_GROUP_BYTES)
    assert caps == (64 * MiB, 2048 * MiB)
    inflate = (load.MAX_INFLATE_RATIO, load.INFLATE_FREE_BYTES)
    assert inflate == (200, 64 * MiB)
