"""Membership lists: text (plain, .gz, .zst), Parquet and CSV columns, from local disk, S3 and HTTP."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import zstandard
from helpers import (
    assert_same_table,
    files_under,
    read_parquet,
    reference_filter,
    s3_keys,
    sample,
    shard_table,
    write_shard,
)

import streamfilter
from streamfilter import cli


@pytest.fixture
def shard(tmp_path: Path):
    table = shard_table(3000, seed=23)
    return write_shard(tmp_path / "in" / "s.parquet", table, row_group_size=1000), table


def text_with_noise(keys: list[str]) -> str:
    """Keys among comments, blank lines, stray whitespace and CRLF line ends."""
    lines = ["# removal list v2", "", "   "]
    for i, key in enumerate(keys):
        if i % 5 == 0:
            lines.append(f"  {key}\t")
        elif i % 5 == 1:
            lines.append(f"{key}\r")
        else:
            lines.append(key)
        if i % 7 == 0:
            lines += ["", "# a comment between keys"]
    return "\n".join(lines) + "\n"


def run_local(src: Path, out: Path, *blocklists: str, **options) -> streamfilter.Report:
    return streamfilter.run([str(src)], output=str(out), blocklist=list(blocklists), quiet=True, **options)


def test_text_list_with_comments_blanks_and_whitespace(shard, tmp_path: Path) -> None:
    src, table = shard
    listed = sample(table["url"], 40)
    path = tmp_path / "list.txt"
    path.write_text(text_with_noise(listed), encoding="utf-8")

    report = run_local(src, tmp_path / "out", str(path))

    assert report.ok
    assert report.set_size == len(listed)
    assert report.shards[0].rows_removed == len(listed)
    assert_same_table(read_parquet(tmp_path / "out" / "s.parquet"), reference_filter(table, listed))


@pytest.mark.parametrize("codec", ["gz", "zst", "zst-stream"])
def test_compressed_text_lists(shard, tmp_path: Path, codec: str) -> None:
    src, table = shard
    listed = sample(table["url"], 30, offset=4)
    raw = text_with_noise(listed).encode()
    if codec == "gz":
        path, data = tmp_path / "list.txt.gz", gzip.compress(raw)
    elif codec == "zst":
        path, data = tmp_path / "list.txt.zst", zstandard.ZstdCompressor().compress(raw)
    else:  # a streamed frame does not record its content size
        buf = io.BytesIO()
        with zstandard.ZstdCompressor().stream_writer(buf, closefd=False) as writer:
            writer.write(raw)
        path, data = tmp_path / "list.txt.zst", buf.getvalue()
    path.write_bytes(data)

    report = run_local(src, tmp_path / "out", str(path))

    assert report.ok
    assert report.set_size == len(listed)
    assert_same_table(read_parquet(tmp_path / "out" / "s.parquet"), reference_filter(table, listed))


def test_parquet_and_csv_columns(shard, tmp_path: Path) -> None:
    src, table = shard
    from_parquet = sample(table["url"], 60)
    from_csv = sample(table["url"], 60, offset=9)
    from_csv_gz = sample(table["url"], 60, offset=21)
    pq.write_table(pa.table({"id": range(len(from_parquet)), "link": from_parquet}), tmp_path / "removed.parquet")
    pacsv.write_csv(pa.table({"link": from_csv, "why": ["x"] * len(from_csv)}), tmp_path / "removed.csv")
    buf = io.BytesIO()
    pacsv.write_csv(pa.table({"u": from_csv_gz}), buf)
    (tmp_path / "more.csv.gz").write_bytes(gzip.compress(buf.getvalue()))

    report = run_local(
        src,
        tmp_path / "out",
        f"{tmp_path}/removed.parquet:link",
        f"{tmp_path}/removed.csv:link",
        f"{tmp_path}/more.csv.gz:u",
    )

    assert report.ok, report.shards[0].error
    listed = from_parquet + from_csv + from_csv_gz
    assert report.set_size == len(set(listed))
    assert_same_table(read_parquet(tmp_path / "out" / "s.parquet"), reference_filter(table, listed))


def test_parquet_list_with_nulls_and_duplicates(shard, tmp_path: Path) -> None:
    src, table = shard
    urls = sample(table["url"], 100)
    column = pa.array([*urls, None, None, *urls[:10]], pa.string())
    pq.write_table(pa.table({"url": column}), tmp_path / "l.parquet")

    report = run_local(src, tmp_path / "out", f"{tmp_path}/l.parquet:url")

    assert report.set_size == len(urls)
    assert_same_table(read_parquet(tmp_path / "out" / "s.parquet"), reference_filter(table, urls))


def test_several_lists_combined_on_the_cli(shard, tmp_path: Path, s3_endpoint, s3_client, bucket) -> None:
    src, table = shard
    a, b, c = sample(table["url"], 90), sample(table["url"], 90, offset=30), sample(table["url"], 90, offset=60)
    (tmp_path / "a.txt").write_text("\n".join(a))
    s3_client.put_object(
        Bucket=bucket, Key="lists/b.txt.zst", Body=zstandard.ZstdCompressor().compress("\n".join(b).encode())
    )
    buf = io.BytesIO()
    pq.write_table(pa.table({"url": c}), buf)
    s3_client.put_object(Bucket=bucket, Key="lists/c.parquet", Body=buf.getvalue())

    code = cli.main(
        [
            "run",
            str(src),
            "--output",
            str(tmp_path / "out"),
            "--blocklist",
            str(tmp_path / "a.txt"),
            "--blocklist",
            f"s3://{bucket}/lists/b.txt.zst",
            "--blocklist",
            f"s3://{bucket}/lists/c.parquet:url",
            "--s3-endpoint-url",
            s3_endpoint,
        ]
    )

    assert code == 0
    assert_same_table(read_parquet(tmp_path / "out" / "s.parquet"), reference_filter(table, a + b + c))


def test_a_one_column_parquet_list_needs_no_column_name(shard, tmp_path: Path) -> None:
    """The form `diff --out removals.parquet` writes: `--blocklist removals.parquet` reads its one column."""
    src, table = shard
    listed = sample(table["url"], 25)
    pq.write_table(pa.table({"key": listed}), tmp_path / "removals.parquet")
    report = run_local(src, tmp_path / "out", str(tmp_path / "removals.parquet"))
    assert report.shards[0].rows_removed == len(listed)
    assert_same_table(read_parquet(tmp_path / "out" / "s.parquet"), reference_filter(table, listed))


def test_list_overlapping_keys_of_other_columns_does_not_match(shard, tmp_path: Path) -> None:
    src, table = shard
    # Values of other columns of the shard, listed as keys: no url equals them.
    listed = sample(table["caption"], 10) + sample(table["key"], 10) + sample(table["sha256"], 10)
    (tmp_path / "l.txt").write_text("\n".join(listed))
    report = run_local(src, tmp_path / "out", str(tmp_path / "l.txt"))
    assert report.shards[0].rows_removed == 0
    assert_same_table(read_parquet(tmp_path / "out" / "s.parquet"), read_parquet(src))


# --- lists that cannot be used: exit 2, nothing written ----------------------------------------


def broken_lists(tmp_path: Path) -> dict[str, tuple[str, str]]:
    (tmp_path / "bad.txt.gz").write_bytes(b"this is not gzip data")
    (tmp_path / "bad.txt.zst").write_bytes(b"\x28\xb5\x2f\xfd garbage")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    pq.write_table(pa.table({"link": ["x"]}), tmp_path / "cols.parquet")
    pq.write_table(pa.table({"link": ["x"], "caption": ["y"]}), tmp_path / "two-cols.parquet")
    (tmp_path / "cols.csv").write_text("link\nx\n")
    (tmp_path / "not-parquet.parquet").write_bytes(b"nope")
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "comments-only.txt").write_text("# nothing listed yet\n\n   \n")
    return {
        "missing": (str(tmp_path / "missing.txt"), "missing.txt"),
        "directory": (str(tmp_path / "a-directory"), "a-directory"),
        "bad-gzip": (str(tmp_path / "bad.txt.gz"), "bad.txt.gz"),
        "bad-zstd": (str(tmp_path / "bad.txt.zst"), "bad.txt.zst"),
        "not-utf8": (str(tmp_path / "latin1.txt"), "latin1.txt"),
        "parquet-column-missing": (f"{tmp_path}/cols.parquet:url", "has no column 'url'"),
        "csv-column-missing": (f"{tmp_path}/cols.csv:url", "has no column 'url'"),
        "parquet-without-column": (str(tmp_path / "two-cols.parquet"), "has 2 columns (link, caption); name the key"),
        "not-parquet": (f"{tmp_path}/not-parquet.parquet:url", "not-parquet.parquet"),
        "no-keys": (str(tmp_path / "comments-only.txt"), "comments-only.txt holds no keys"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "directory",
        "bad-gzip",
        "bad-zstd",
        "not-utf8",
        "parquet-column-missing",
        "csv-column-missing",
        "parquet-without-column",
        "not-parquet",
        "no-keys",
    ],
)
def test_unusable_list_exits_2_and_writes_nothing(shard, tmp_path: Path, capsys, case: str) -> None:
    src, table = shard
    good = tmp_path / "good.txt"
    good.write_text("\n".join(sample(table["url"], 10)))
    source, expected_in_message = broken_lists(tmp_path)[case]

    code = cli.main(
        [
            "run",
            str(src),
            "--output",
            str(tmp_path / "out"),
            "--blocklist",
            str(good),
            "--blocklist",
            source,
            "--report",
            str(tmp_path / "report.json"),
        ]
    )

    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("streamfilter: error: ")
    assert len(err.strip().splitlines()) == 1
    assert expected_in_message in err
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "report.json").exists()


def test_missing_s3_list_exits_2(shard, tmp_path: Path, s3_endpoint, s3_client, bucket, capsys) -> None:
    src, _ = shard
    code = cli.main(
        [
            "run",
            str(src),
            "--output",
            f"s3://{bucket}/out/",
            "--blocklist",
            f"s3://{bucket}/lists/none.txt",
            "--s3-endpoint-url",
            s3_endpoint,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot read --blocklist" in err and f"s3://{bucket}/lists/none.txt" in err
    assert s3_keys(s3_client, bucket) == []
    assert files_under(tmp_path) == ["in/s.parquet"]


def test_blocklist_keys_never_appear_in_messages(tmp_path: Path, capsys) -> None:
    secret_key = "https://very.secret.example/listed-image.jpg"
    table = pa.table({"url": [secret_key, "https://ok/1"]})
    src = write_shard(tmp_path / "in" / "a.parquet", table)
    write_shard(tmp_path / "in" / "b.parquet", pa.table({"other": [1]}))
    (tmp_path / "l.txt").write_text(secret_key + "\n")

    code = cli.main(
        [
            "run",
            str(src),
            str(tmp_path / "in" / "b.parquet"),
            "--output",
            str(tmp_path / "out"),
            "--blocklist",
            str(tmp_path / "l.txt"),
            "--report",
            str(tmp_path / "r.json"),
        ]
    )

    assert code == 1
    captured = capsys.readouterr()
    for text in (captured.out, captured.err, (tmp_path / "r.json").read_text()):
        assert secret_key not in text
    assert read_parquet(tmp_path / "out" / "a.parquet")["url"].to_pylist() == ["https://ok/1"]
