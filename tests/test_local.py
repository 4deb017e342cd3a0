"""Correctness and preservation on local files, against the pyarrow reference."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import (
    assert_read_once,
    assert_same_table,
    files_under,
    parquet_file,
    read_parquet,
    reference_filter,
    reference_row_group_counts,
    row_group_rows,
    sample,
    sha256_tree,
    shard_table,
    write_list,
    write_shard,
)

import streamfilter
from streamfilter.formats import parquet as parquet_format


@pytest.mark.parametrize("mode", ["deny", "allow"])
def test_several_shards_concurrently_match_reference(tmp_path: Path, mode: str) -> None:
    src = tmp_path / "in"
    tables = [shard_table(3000, start=i * 3000, seed=7) for i in range(5)]
    paths = [write_shard(src / f"part-{i:05d}.parquet", t, row_group_size=1000) for i, t in enumerate(tables)]
    listed = [u for t in tables for u in sample(t["url"], 37, offset=3)]
    listed += ["https://not.in.any.shard/x.jpg", "completely unrelated"]
    blocklist = write_list(tmp_path / "list.txt", listed)
    before = sha256_tree(src)

    report = streamfilter.run(
        [str(p) for p in paths],
        output=str(tmp_path / "out"),
        blocklist=[str(blocklist)],
        mode=mode,
        concurrency=3,
        quiet=True,
    )

    assert report.ok
    assert [s.status for s in report.shards] == ["done"] * 5
    assert sha256_tree(src) == before
    total_kept = 0
    for path, shard in zip(paths, report.shards, strict=True):
        expected = reference_filter(read_parquet(path), listed, mode=mode)
        out = tmp_path / "out" / path.name
        assert shard.input == str(path)
        assert shard.output == str(out)
        assert_same_table(read_parquet(out), expected)
        assert (shard.rows_in, shard.rows_out, shard.rows_removed) == (
            3000,
            expected.num_rows,
            3000 - expected.num_rows,
        )
        assert shard.bytes_written == out.stat().st_size
        assert_read_once(shard.bytes_read, path)
        total_kept += expected.num_rows
    # Both modes must have done real work: some rows removed, some kept.
    assert 0 < total_kept < 15000
    assert report.totals["rows_out"] == total_kept
    assert report.totals["rows_removed"] == 15000 - total_kept
    assert files_under(tmp_path / "out") == sorted(p.name for p in paths)


def test_row_groups_are_kept_one_for_one(tmp_path: Path) -> None:
    table = shard_table(10_000, seed=3)
    src = write_shard(tmp_path / "in" / "a.parquet", table, row_group_size=2_500)
    # Row group 2 (rows 5000..7499) loses every row; the others lose a few.
    listed = table["url"].to_pylist()[5000:7500] + sample(table["url"], 101)
    blocklist = write_list(tmp_path / "list.txt", listed)

    report = streamfilter.run([str(src)], output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True)

    assert report.ok
    out = tmp_path / "out" / "a.parquet"
    expected_counts = reference_row_group_counts(src, listed)
    assert len(expected_counts) == 3
    assert row_group_rows(out) == expected_counts
    assert_same_table(read_parquet(out), reference_filter(read_parquet(src), listed))


def test_shard_with_every_row_removed_is_a_valid_empty_parquet(tmp_path: Path) -> None:
    table = shard_table(1200, seed=5).replace_schema_metadata({"origin": "test"})
    src = write_shard(tmp_path / "in" / "all.parquet", table, row_group_size=500)
    blocklist = write_list(tmp_path / "list.txt", table["url"].to_pylist())

    report = streamfilter.run([str(src)], output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True)

    assert report.ok
    assert (report.shards[0].rows_in, report.shards[0].rows_out, report.shards[0].rows_removed) == (1200, 0, 1200)
    out = tmp_path / "out" / "all.parquet"
    result = read_parquet(out)
    assert result.num_rows == 0
    assert result.schema.equals(read_parquet(src).schema, check_metadata=True)
    assert result.schema.metadata[b"origin"] == b"test"
    assert_same_table(result, reference_filter(read_parquet(src), table["url"].to_pylist()))


@pytest.mark.parametrize("mode", ["deny", "allow"])
def test_null_keys_never_match(tmp_path: Path, mode: str) -> None:
    urls = ["https://a/1", None, "https://a/2", None, "", "https://a/3", "null", "None"]
    table = pa.table({"url": pa.array(urls, pa.string()), "n": pa.array(range(len(urls)), pa.int64())})
    src = write_shard(tmp_path / "in" / "nulls.parquet", table)
    # "null", "None" and "" are listed as text; the null rows must still not match.
    listed = ["https://a/2", "null", "None", "https://a/3"]
    blocklist = write_list(tmp_path / "list.txt", listed)

    report = streamfilter.run(
        [str(src)], output=str(tmp_path / "out"), blocklist=[str(blocklist)], mode=mode, quiet=True
    )

    assert report.ok
    result = read_parquet(tmp_path / "out" / "nulls.parquet")
    expected = reference_filter(read_parquet(src), listed, mode=mode)
    assert_same_table(result, expected)
    kept = result["n"].to_pylist()
    if mode == "deny":
        assert kept == [0, 1, 3, 4]  # both null rows kept
    else:
        assert kept == [2, 5, 6, 7]  # both null rows dropped


def test_unicode_urls_match_by_exact_bytes(tmp_path: Path) -> None:
    nfc = "https://bilder.beispiel.de/müsli/é.jpg"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    urls = [
        nfc,
        nfd,
        "https://写真.例え.jp/画像/1.jpg",
        "https://example.com/😀/🐈‍⬛.png",
        "https://example.com/%E2%9C%93.png",
        "https://example.com/✓.png",
        "https://пример.рф/фото.jpg",
    ]
    table = pa.table({"url": urls, "i": list(range(len(urls)))})
    src = write_shard(tmp_path / "in" / "u.parquet", table)
    listed = [nfc, "https://写真.例え.jp/画像/1.jpg", "https://example.com/😀/🐈‍⬛.png", "https://пример.рф/фото.jpg"]
    blocklist = write_list(tmp_path / "list.txt", listed)

    report = streamfilter.run([str(src)], output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True)

    assert report.ok
    result = read_parquet(tmp_path / "out" / "u.parquet")
    assert_same_table(result, reference_filter(read_parquet(src), listed))
    # The NFD spelling and the percent-encoded one are different keys and stay.
    assert result["i"].to_pylist() == [1, 4, 5]


def test_laion_style_unicode_hosts_are_removed(tmp_path: Path) -> None:
    table = shard_table(4000, seed=11)
    non_ascii = [u for u in table["url"].to_pylist() if not u.isascii()]
    assert len(non_ascii) > 100
    listed = non_ascii[::3]
    src = write_shard(tmp_path / "in" / "s.parquet", table, row_group_size=1500)
    blocklist = write_list(tmp_path / "list.txt", listed)

    report = streamfilter.run([str(src)], output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True)

    assert report.shards[0].rows_removed == len(listed)
    assert_same_table(read_parquet(tmp_path / "out" / "s.parquet"), reference_filter(read_parquet(src), listed))


def test_integer_key_column(tmp_path: Path) -> None:
    ids = pa.array([5, 17, 42, None, 1000000007, -3, 17, 0], pa.int64())
    table = pa.table({"id": ids, "v": pa.array(list("abcdefgh"))})
    src = write_shard(tmp_path / "in" / "ints.parquet", table)
    # "017" and "42.0" are other strings than the decimal rendering and must not match.
    listed = ["17", "1000000007", "-3", "017", "42.0", "0"]
    blocklist = write_list(tmp_path / "list.txt", listed)

    report = streamfilter.run(
        [str(src)], output=str(tmp_path / "out"), blocklist=[str(blocklist)], key="id", quiet=True
    )

    assert report.ok
    result = read_parquet(tmp_path / "out" / "ints.parquet")
    assert_same_table(result, reference_filter(read_parquet(src), listed, columns=["id"]))
    assert result["v"].to_pylist() == ["a", "c", "d"]


@pytest.mark.parametrize("separator", [None, "|"])
def test_multi_column_key(tmp_path: Path, separator: str | None) -> None:
    table = shard_table(3000, seed=13)
    sep = separator or "\t"
    urls, captions = table["url"].to_pylist(), table["caption"].to_pylist()
    listed = [f"{u}{sep}{c}" for u, c in zip(urls, captions, strict=True) if c is not None][::17]
    # Right URL with the wrong caption, and a URL alone, must not match.
    listed += [f"{urls[1]}{sep}wrong caption", urls[2], f"{urls[3]}{'|' if sep == chr(9) else chr(9)}{captions[3]}"]
    # A row with a null caption has a null key: even listing "url<sep>" cannot reach it.
    null_row = captions.index(None)
    listed.append(f"{urls[null_row]}{sep}")
    src = write_shard(tmp_path / "in" / "m.parquet", table, row_group_size=1000)
    blocklist = write_list(tmp_path / "list.txt", listed)
    options = {"key_separator": separator} if separator else {}

    report = streamfilter.run(
        [str(src)], output=str(tmp_path / "out"), blocklist=[str(blocklist)], key="url,caption", quiet=True, **options
    )

    assert report.ok
    expected = reference_filter(read_parquet(src), listed, columns=["url", "caption"], separator=sep)
    assert report.shards[0].rows_removed == 3000 - expected.num_rows
    assert 3000 - expected.num_rows == len([c for c in captions if c is not None][::17])
    assert_same_table(read_parquet(tmp_path / "out" / "m.parquet"), expected)


def test_normalize_strip(tmp_path: Path) -> None:
    urls = ["  https://a/1", "https://a/2\t", "https://a/3", " https://a/4 ", "https://a/5", "\u3000https://a/6"]
    table = pa.table({"url": urls, "i": list(range(len(urls)))})
    src = write_shard(tmp_path / "in" / "ws.parquet", table)
    listed = ["https://a/1", "https://a/2", "https://a/4", "https://a/6"]
    blocklist = write_list(tmp_path / "list.txt", listed)

    plain = streamfilter.run([str(src)], output=str(tmp_path / "plain"), blocklist=[str(blocklist)], quiet=True)
    strip = streamfilter.run(
        [str(src)], output=str(tmp_path / "strip"), blocklist=[str(blocklist)], normalize="strip", quiet=True
    )

    assert plain.ok and strip.ok
    source = read_parquet(src)
    assert_same_table(read_parquet(tmp_path / "plain" / "ws.parquet"), reference_filter(source, listed))
    assert_same_table(
        read_parquet(tmp_path / "strip" / "ws.parquet"), reference_filter(source, listed, normalize="strip")
    )
    assert read_parquet(tmp_path / "plain" / "ws.parquet")["i"].to_pylist() == [0, 1, 2, 3, 4, 5]
    # The output keeps the original, unstripped values of the rows it keeps.
    assert read_parquet(tmp_path / "strip" / "ws.parquet")["url"].to_pylist() == ["https://a/3", "https://a/5"]


def test_normalize_strip_applies_to_parquet_list_keys(tmp_path: Path) -> None:
    table = pa.table({"url": ["https://a/1", "https://a/2", "https://a/3"]})
    src = write_shard(tmp_path / "in" / "a.parquet", table)
    listed = [" https://a/1", "https://a/3  "]
    list_file = write_shard(tmp_path / "list.parquet", pa.table({"u": listed}))

    report = streamfilter.run(
        [str(src)],
        output=str(tmp_path / "out"),
        blocklist=[f"{list_file}:u"],
        normalize="strip",
        quiet=True,
    )

    assert report.ok
    assert read_parquet(tmp_path / "out" / "a.parquet")["url"].to_pylist() == ["https://a/2"]


# --- preservation -------------------------------------------------------------------------------


def rich_table(n: int) -> pa.Table:
    base = shard_table(n, seed=21)
    tags = pa.array([[f"t{i % 5}", f"u{i % 3}"] if i % 7 else None for i in range(n)], pa.list_(pa.string()))
    when = pa.array(range(n), pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    table = pa.table(
        {
            # Deliberately not alphabetical, key column in the middle.
            "sha256": base["sha256"],
            "width": base["width"],
            "url": base["url"],
            "caption": base["caption"],
            "tags": tags,
            "when": when,
            "punsafe": base["punsafe"],
        }
    )
    fields = [f.with_metadata({"doc": f"about {f.name}"}) if f.name == "url" else f for f in table.schema]
    schema = pa.schema(fields, metadata={"dataset": "laion-test", "license": "CC-BY-4.0", "rows": str(n)})
    return table.cast(schema).replace_schema_metadata(schema.metadata)


CODECS = {
    "sha256": "zstd",
    "width": "snappy",
    "url": "zstd",
    "caption": "snappy",
    "tags.list.element": "gzip",
    "when": "none",
    "punsafe": "lz4",
}


@pytest.mark.parametrize("version", ["1.0", "2.4", "2.6"])
def test_schema_metadata_codecs_and_version_are_preserved(tmp_path: Path, version: str) -> None:
    table = rich_table(4000)
    src = write_shard(tmp_path / "in" / "rich.parquet", table, row_group_size=1000, compression=CODECS, version=version)
    listed = sample(table["url"], 9)
    blocklist = write_list(tmp_path / "list.txt", listed)

    report = streamfilter.run([str(src)], output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True)

    assert report.ok, report.shards[0].error
    out = tmp_path / "out" / "rich.parquet"
    result = read_parquet(out)
    assert_same_table(result, reference_filter(read_parquet(src), listed))
    assert result.column_names == ["sha256", "width", "url", "caption", "tags", "when", "punsafe"]
    assert result.schema.metadata[b"dataset"] == b"laion-test"
    assert result.schema.metadata[b"license"] == b"CC-BY-4.0"
    assert result.schema.field("url").metadata == {b"doc": b"about url"}

    src_md, out_md = parquet_file(src).metadata, parquet_file(out).metadata
    # Parquet metadata records only 1 or 2; pyarrow reports every version-2 file as "2.6".
    assert src_md.format_version == ("1.0" if version == "1.0" else "2.6")
    assert out_md.format_version == src_md.format_version
    assert out_md.num_row_groups == src_md.num_row_groups == 4
    assert parquet_file(out).schema.equals(parquet_file(src).schema)  # the Parquet schema, incl. logical types
    for i in range(out_md.num_row_groups):
        src_codecs = {
            src_md.row_group(0).column(j).path_in_schema: src_md.row_group(0).column(j).compression
            for j in range(src_md.num_columns)
        }
        out_codecs = {
            out_md.row_group(i).column(j).path_in_schema: out_md.row_group(i).column(j).compression
            for j in range(out_md.num_columns)
        }
        assert out_codecs == src_codecs
    assert out_codecs["url"] == "ZSTD"
    assert out_codecs["caption"] == "SNAPPY"
    assert out_codecs["when"] == "UNCOMPRESSED"
    assert out_codecs["tags.list.element"] == "GZIP"


def test_uncompressed_shard_is_written_uncompressed(tmp_path: Path) -> None:
    table = shard_table(2000, seed=2)
    src = write_shard(tmp_path / "in" / "plain.parquet", table, compression="none")
    listed = sample(table["url"], 10)
    blocklist = write_list(tmp_path / "list.txt", listed)

    report = streamfilter.run([str(src)], output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True)

    assert report.ok, report.shards[0].error
    out = tmp_path / "out" / "plain.parquet"
    md = parquet_file(out).metadata
    assert {md.row_group(0).column(j).compression for j in range(md.num_columns)} == {"UNCOMPRESSED"}
    assert_same_table(read_parquet(out), reference_filter(read_parquet(src), listed))


def test_dictionary_typed_key_column(tmp_path: Path) -> None:
    urls = pa.array(["https://a/1", "https://a/2", "https://a/1", None, "https://a/3"] * 20)
    table = pa.table({"url": pc.dictionary_encode(urls), "i": pa.array(range(100), pa.int32())})
    src = write_shard(tmp_path / "in" / "d.parquet", table)
    listed = ["https://a/1"]
    blocklist = write_list(tmp_path / "list.txt", listed)

    report = streamfilter.run([str(src)], output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True)

    assert report.ok, report.shards[0].error
    result = read_parquet(tmp_path / "out" / "d.parquet")
    assert pa.types.is_dictionary(result.schema.field("url").type)
    assert_same_table(result, reference_filter(read_parquet(src), listed))
    assert result.num_rows == 60


def test_reference_agrees_with_duckdb(tmp_path: Path) -> None:
    """The same run checked with a second, independent engine: DuckDB's anti-join."""
    import duckdb

    table = shard_table(5000, seed=31)
    src = write_shard(tmp_path / "in" / "a.parquet", table, row_group_size=2000)
    listed = sample(table["url"], 13, offset=5)
    blocklist = write_list(tmp_path / "list.txt", listed)

    report = streamfilter.run([str(src)], output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True)

    assert report.ok
    con = duckdb.connect()
    con.execute("CREATE TABLE listed AS SELECT * FROM (SELECT unnest(?::VARCHAR[]) AS k)", [listed])
    expected_keys = [
        row[0]
        for row in con.execute(
            "SELECT key FROM read_parquet(?, file_row_number = true) AS t "
            "WHERE t.url IS NULL OR NOT EXISTS (SELECT 1 FROM listed WHERE listed.k = t.url) "
            "ORDER BY file_row_number",
            [str(src)],
        ).fetchall()
    ]
    assert len(expected_keys) == 5000 - len(listed)
    assert read_parquet(tmp_path / "out" / "a.parquet")["key"].to_pylist() == expected_keys


def test_api_returns_report_fields(tmp_path: Path) -> None:
    table = shard_table(500)
    src = write_shard(tmp_path / "in" / "a.parquet", table)
    blocklist = write_list(tmp_path / "list.txt", sample(table["url"], 50))

    report = streamfilter.run(str(src), output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True)

    assert isinstance(report, streamfilter.Report)
    (shard,) = report.shards
    assert isinstance(shard, streamfilter.ShardReport)
    assert shard.status == "done" and shard.error is None
    assert shard.rows_removed == 10
    assert shard.seconds >= 0
    assert report.key_spec == {
        "columns": ["url"],
        "separator": "\t",
        "normalize": "none",
        "hash": "none",
        "entries": "raw",
    }
    assert report.set_size == 10
    assert report.set_digest.startswith("sha256:") and len(report.set_digest) == len("sha256:") + 64
    assert report.totals == {
        "shards": 1,
        "done": 1,
        "resumed": 0,
        "failed": 0,
        "rows_in": 500,
        "rows_out": 490,
        "rows_removed": 10,
        "bytes_read": shard.bytes_read,
        "bytes_written": shard.bytes_written,
        "earlier_bytes_written": 0,
        "bytes_saved": src.stat().st_size - shard.bytes_written,
        "seconds": report.totals["seconds"],
    }
    # A list named twice is the same set: same keys, same digest.
    again = streamfilter.run(
        str(src), output=str(tmp_path / "out2"), blocklist=[str(blocklist), str(blocklist)], quiet=True
    )
    assert again.set_digest == report.set_digest


def test_bad_api_options_raise_usage_error(tmp_path: Path) -> None:
    src = write_shard(tmp_path / "in" / "a.parquet", shard_table(10))
    blocklist = write_list(tmp_path / "list.txt", ["x"])
    with pytest.raises(streamfilter.UsageError, match="unknown option 'colour'"):
        streamfilter.run(str(src), output=str(tmp_path / "o"), blocklist=[str(blocklist)], colour="red")
    with pytest.raises(streamfilter.UsageError, match="--mode"):
        streamfilter.run(str(src), output=str(tmp_path / "o"), blocklist=[str(blocklist)], mode="keep")
    with pytest.raises(streamfilter.UsageError, match="no output"):
        streamfilter.run(str(src), blocklist=[str(blocklist)])
    with pytest.raises(streamfilter.UsageError, match="no membership list"):
        streamfilter.run(str(src), output=str(tmp_path / "o"))
    with pytest.raises(streamfilter.UsageError, match="--concurrency 0"):
        streamfilter.run(str(src), output=str(tmp_path / "o"), blocklist=[str(blocklist)], concurrency=0)
    assert not (tmp_path / "o").exists()


def test_unusual_column_types_survive(tmp_path: Path) -> None:
    import datetime
    import decimal

    import numpy as np

    n = 600
    urls = [f"https://t/{i}" for i in range(n)]
    table = pa.table(
        {
            "url": urls,
            "nothing": pa.nulls(n),
            "category": pc.dictionary_encode(pa.array([f"c{i % 4}" for i in range(n)])),
            "price": pa.array([decimal.Decimal(i) / 100 for i in range(n)], pa.decimal128(12, 2)),
            "half": pa.array(np.arange(n, dtype=np.float16)),
            "day": pa.array([datetime.date(2020, 1, 1) + datetime.timedelta(days=i) for i in range(n)]),
            "digest": pa.array([bytes([i % 256]) * 16 for i in range(n)], pa.binary(16)),
            "ident": pa.array([bytes([i % 256, 7]) * 8 for i in range(n)], pa.uuid()),
            "meta": pa.array(
                [{"w": i, "h": None} for i in range(n)], pa.struct([("w", pa.int32()), ("h", pa.int32())])
            ),
            "attrs": pa.array([[("k", str(i))] for i in range(n)], pa.map_(pa.string(), pa.string())),
            "flag": pa.array([i % 3 == 0 for i in range(n)]),
        }
    )
    src = write_shard(tmp_path / "in" / "types.parquet", table, row_group_size=250)
    listed = urls[::7]
    blocklist = write_list(tmp_path / "list.txt", listed)

    report = streamfilter.run([str(src)], output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True)

    assert report.ok, report.shards[0].error
    result = read_parquet(tmp_path / "out" / "types.parquet")
    assert_same_table(result, reference_filter(read_parquet(src), listed))
    assert result.schema.field("ident").type == pa.uuid()
    assert pa.types.is_dictionary(result.schema.field("category").type)
    assert result.num_rows == n - len(listed)


def test_async_api(tmp_path: Path) -> None:
    import anyio

    table = shard_table(800, seed=50)
    src = write_shard(tmp_path / "in" / "a.parquet", table)
    listed = sample(table["url"], 40)
    blocklist = write_list(tmp_path / "list.txt", listed)

    async def main() -> streamfilter.Report:
        return await streamfilter.arun(
            [str(src)], output=str(tmp_path / "out"), blocklist=[str(blocklist)], mode="allow", quiet=True
        )

    report = anyio.run(main)
    assert report.ok and report.mode == "allow"
    assert_same_table(read_parquet(tmp_path / "out" / "a.parquet"), reference_filter(table, listed, mode="allow"))
    assert report.shards[0].rows_out == len(listed)


@pytest.mark.parametrize("row_groups", [0, 1])
def test_shard_without_rows(tmp_path: Path, row_groups: int) -> None:
    table = shard_table(10).slice(0, 0).replace_schema_metadata({"empty": "yes"})
    src = tmp_path / "in" / "empty.parquet"
    src.parent.mkdir()
    with pq.ParquetWriter(src, table.schema) as writer:
        if row_groups:
            writer.write_table(table)
    assert parquet_file(src).metadata.num_row_groups == row_groups
    blocklist = write_list(tmp_path / "list.txt", ["https://x/1"])

    report = streamfilter.run([str(src)], output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True)

    assert report.ok, report.shards[0].error
    assert (report.shards[0].rows_in, report.shards[0].rows_out) == (0, 0)
    assert_same_table(read_parquet(tmp_path / "out" / "empty.parquet"), read_parquet(src))


def test_paths_with_spaces_and_non_ascii(tmp_path: Path) -> None:
    table = shard_table(600, seed=51)
    write_shard(tmp_path / "in put" / "día 1" / "shard #1 ü.parquet", table)
    listed = sample(table["url"], 6)
    blocklist = write_list(tmp_path / "liste ü.txt", listed)

    report = streamfilter.run(
        [str(tmp_path / "in put" / "*" / "*.parquet")],
        output=str(tmp_path / "sortie é"),
        blocklist=[str(blocklist)],
        quiet=True,
    )

    assert report.ok
    # One shard: the common prefix is its own directory, so only its file name is mirrored.
    out = tmp_path / "sortie é" / "shard #1 ü.parquet"
    assert report.shards[0].output == str(out)
    assert_same_table(read_parquet(out), reference_filter(table, listed))


def test_binary_key_column(tmp_path: Path) -> None:
    urls = pa.array([b"\xff\xfe", b"https://a/1", None, b"", "https://é/2".encode(), b"\x00"], pa.binary())
    table = pa.table({"url": urls, "i": pa.array(range(6), pa.int8())})
    src = write_shard(tmp_path / "in" / "bin.parquet", table)
    blocklist = write_list(tmp_path / "list.txt", ["https://a/1", "https://é/2", "\x00"])

    report = streamfilter.run([str(src)], output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True)

    assert report.ok, report.shards[0].error
    result = read_parquet(tmp_path / "out" / "bin.parquet")
    # Text keys match binary values by their UTF-8 bytes.
    assert result["i"].to_pylist() == [0, 2, 3]
    assert_same_table(result, table.filter(pa.array([True, False, True, True, False, False])))


@pytest.mark.parametrize("together_bytes", [0, parquet_format.DECODE_TOGETHER_BYTES], ids=["one-by-one", "together"])
@pytest.mark.parametrize("duplicate_names", [False, True])
def test_columns_decoded_one_at_a_time_keep_order_and_values(
    tmp_path: Path, duplicate_names: bool, together_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The rewrite decodes the key column first and the others one by one (a large row group) or in one
    # call (a small one); the key column is last here, one row group has no hit (kept whole) and, with a
    # name shared by two columns (which cannot be picked by name), the row group is decoded whole instead.
    monkeypatch.setattr(parquet_format, "DECODE_TOGETHER_BYTES", together_bytes)
    n = 900
    urls = [f"https://d/{i}" for i in range(n)]
    names = ["caption", "caption" if duplicate_names else "alt", "meta", "url"]
    table = pa.Table.from_arrays(
        [
            pa.array([f"c{i}" for i in range(n)]),
            pa.array([i * 0.5 for i in range(n)]),
            pa.array([{"w": i} for i in range(n)], pa.struct([("w", pa.int32())])),
            pa.array(urls),
        ],
        names=names,
    )
    src = write_shard(tmp_path / "in" / "cols.parquet", table, row_group_size=300)
    listed = urls[:300:11] + urls[600::13]  # hits in the first and last row groups, none in the middle one

    report = streamfilter.run(
        [str(src)], output=str(tmp_path / "out"), blocklist=[str(write_list(tmp_path / "l.txt", listed))], quiet=True
    )

    assert report.ok, report.shards[0].error
    out = tmp_path / "out" / "cols.parquet"
    expected = pq.ParquetFile(src).read()  # not read_parquet: datasets refuse duplicate names
    expected = expected.filter(pc.invert(pc.is_in(expected.column(3), pa.array(listed))))
    assert_same_table(pq.ParquetFile(out).read(), expected)
    assert row_group_rows(out) == [300 - len(urls[:300:11]), 300, 300 - len(urls[600::13])]


def test_partials_left_by_a_killed_run_are_removed_and_each_folder_listed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed run leaves ``.NAME.TOKEN.partial`` beside its outputs; a rerun removes those of the outputs
    it writes, and only those (another worker may be writing other outputs there), and lists each output
    folder once, not once an output (that was n^2 entries read for n outputs in one folder)."""
    import os

    src, out = tmp_path / "in", tmp_path / "out"
    tables = {f"{i:02d}.parquet": shard_table(200, start=200 * i, seed=i) for i in range(12)}
    for name, table in tables.items():
        write_shard(src / name, table)
    out.mkdir()
    ours = [out / f".{name}.{i:012x}.partial" for i, name in enumerate(tables)]
    others = [out / ".99.parquet.0123456789ab.partial", out / ".notes.txt"]
    for path in ours + others:
        path.write_bytes(b"half-written")
    listed: list[str] = []
    scandir = os.scandir

    def counting_scandir(path: str | os.PathLike = ".") -> object:
        listed.append(os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    listed_urls = [tables["03.parquet"]["url"][5].as_py()]
    report = streamfilter.run(
        str(src / "*.parquet"), output=str(out), blocklist=[str(write_list(tmp_path / "l.txt", listed_urls))],
        quiet=True,
    )  # fmt: skip
    assert report.ok, [s.error for s in report.shards if s.error]
    assert not [p for p in ours if p.exists()]
    assert all(p.exists() for p in others)
    assert listed.count(str(out)) == 1, listed
