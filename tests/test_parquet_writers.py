"""Parquet that pyarrow did not write keeps its footer through a rewrite, or is refused with one line.

Inputs come from the real writers (Polars, DuckDB, fastparquet, DataFusion's parquet-rs, pyarrow with
its legacy options); a few layouts no installable writer produces (a two-level list, a logical type
pyarrow does not know, key-value pairs on a column chunk) are made by editing a pyarrow file's footer
with fastparquet's Thrift codec. Expectations come from pyarrow's reading of the input's footer and
from pyarrow or DuckDB filtering the input's rows, never from streamfilter.
"""

from __future__ import annotations

import datetime
import json
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import assert_same_table, files_under, reference_filter, reference_row_group_counts, write_list

import streamfilter
from streamfilter import cli

# ---------------------------------------------------------------------------------------------
# The footer, as pyarrow reads it


#: How a logical type was stored (as a logical type, or only as a legacy converted type) is not
#: the annotation; pyarrow writes both forms (README: "Parquet written by other tools").
_STORED_AS = re.compile(r", is_from_converted_type=\w+, force_set_converted_type=\w+")
#: A signed integer annotation of the physical type's own width (DuckDB's) says nothing more than the type.
_OWN_WIDTH = {("INT64", "Int(bitWidth=64, isSigned=true)"), ("INT32", "Int(bitWidth=32, isSigned=true)")}


def _plain(line: str) -> str:
    """A schema line without a signed integer annotation of its physical type's own width."""
    for width in (64, 32):
        annotation = f" (Int(bitWidth={width}, isSigned=true))"
        if f" int{width} " in line and line.endswith(annotation + ";"):
            return line.replace(annotation, "")
    return line


def tree(pf: pq.ParquetFile) -> list[str]:
    """The Parquet schema tree below the root (whose name pyarrow always writes as ``schema``)."""
    return [_plain(_STORED_AS.sub("", line)) for line in str(pf.schema).splitlines()[2:]]


def leaves(pf: pq.ParquetFile) -> list[tuple]:
    """Per leaf column: path, physical type, logical and converted annotations, levels, width."""
    out = []
    for i in range(len(pf.schema)):
        c = pf.schema.column(i)
        logical = _STORED_AS.sub("", str(c.logical_type))
        converted = c.converted_type
        if (c.physical_type, logical) in _OWN_WIDTH:
            logical, converted = "None", "NONE"
        length = c.length if c.physical_type == "FIXED_LEN_BYTE_ARRAY" else None
        out.append(
            (c.path, c.physical_type, logical, converted, c.max_definition_level, c.max_repetition_level, length)
        )
    return out


def codecs(md: pq.FileMetaData, i: int) -> dict[str, str]:
    rg = md.row_group(i)
    return {rg.column(j).path_in_schema: rg.column(j).compression for j in range(rg.num_columns)}


def assert_footer_kept(src: Path, out: Path, listed: list[str], version: str | None = None) -> None:
    """Key-value pairs, Parquet schema, codecs, row groups, version (``version``: the documented raise)."""
    a, b = pq.ParquetFile(src), pq.ParquetFile(out)
    assert (b.metadata.metadata or {}) == (a.metadata.metadata or {})
    assert tree(b) == tree(a)
    assert leaves(b) == leaves(a)
    assert b.schema.to_arrow_schema().equals(a.schema.to_arrow_schema(), check_metadata=True)
    assert b.schema_arrow.equals(a.schema_arrow, check_metadata=True)
    assert b.metadata.format_version == (version or a.metadata.format_version)
    expected_rows = reference_row_group_counts(src, listed)  # row groups emptied by the removal are left out
    assert [b.metadata.row_group(i).num_rows for i in range(b.metadata.num_row_groups)] == expected_rows
    for i in range(b.metadata.num_row_groups):
        assert codecs(b.metadata, i) == codecs(a.metadata, 0)


def run(src: Path, listed: list[str], tmp_path: Path) -> Path:
    out = tmp_path / "out"
    report = streamfilter.run(
        [str(src)], output=str(out), blocklist=[str(write_list(tmp_path / "list.txt", listed))], quiet=True
    )
    assert report.ok, report.shards[0].error
    assert report.shards[0].output_via == "rewrite"
    return out / src.name


def assert_rows(src: Path, out: Path, listed: list[str], **read) -> None:
    """The output's rows are the input's without the listed ones (pyarrow reads both alike)."""
    expected = reference_filter(pq.ParquetFile(src, **read).read(), listed)
    assert expected.num_rows < pq.ParquetFile(src).metadata.num_rows
    assert_same_table(pq.ParquetFile(out, **read).read(), expected)


def assert_duckdb_agrees(src: Path, out: Path, listed: list[str]) -> None:
    """DuckDB, reading both files itself, finds the output equal to the input minus the listed rows."""
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    con.execute("CREATE TABLE listed AS SELECT unnest(?::VARCHAR[]) AS url", [listed])
    expected = "SELECT * FROM read_parquet($src) WHERE url IS NULL OR url NOT IN (SELECT url FROM listed)"
    actual = "SELECT * FROM read_parquet($out)"
    paths = {"src": str(src), "out": str(out)}
    for left, right in ((expected, actual), (actual, expected)):
        assert con.execute(f"SELECT count(*) FROM (({left}) EXCEPT ALL ({right}))", paths).fetchone() == (0,)
    count = f"SELECT (SELECT count(*) FROM ({actual})) = (SELECT count(*) FROM ({expected}))"
    assert con.execute(count, paths).fetchone() == (True,)


def urls(n: int, start: int = 0) -> list[str]:
    return [f"https://img.example/{i}.jpg" for i in range(start, start + n)]


# ---------------------------------------------------------------------------------------------
# Real writers


@pytest.mark.parametrize("unsigned", [False, True])
def test_polars(tmp_path: Path, unsigned: bool) -> None:
    pl = pytest.importorskip("polars")
    n = 3000
    columns = {
        "url": urls(n),
        "n": list(range(n)),
        "when": [datetime.datetime(2021, 1, 1) + datetime.timedelta(seconds=i, microseconds=i) for i in range(n)],
        "tags": [[f"t{i % 7}", "x"] for i in range(n)],
        "size": [{"w": i, "h": i * 2} for i in range(n)],
    }
    if unsigned:
        columns["u32"] = pl.Series(range(n), dtype=pl.UInt32)
    src = tmp_path / "in" / "polars.parquet"
    src.parent.mkdir()
    pl.DataFrame(columns).write_parquet(
        src, compression="zstd", row_group_size=1000, metadata={"origin": "polars-test", "writer.model.name": "x"}
    )
    a = pq.ParquetFile(src)
    assert a.metadata.created_by.startswith("Polars")
    assert set(a.metadata.metadata) == {b"origin", b"writer.model.name", b"ARROW:schema"}
    assert a.metadata.row_group(0).column(0).has_offset_index
    listed = columns["url"][1000:2000] + columns["url"][::97]  # row group 1 loses every row

    out = run(src, listed, tmp_path)

    # A version-1 file with a UINT32 column is written as version 2: pyarrow's version 1 widens it to INT64.
    assert_footer_kept(src, out, listed, version="2.6" if unsigned else None)
    assert pq.ParquetFile(out).metadata.num_row_groups == 2
    assert pq.ParquetFile(out).metadata.row_group(0).column(0).has_offset_index  # page index kept
    assert_rows(src, out, listed)


def test_duckdb(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    src = tmp_path / "in" / "duck.parquet"
    src.parent.mkdir()
    target = str(src).replace("'", "''")
    # A connection of its own: a statement on duckdb's module-level default connection leaves its
    # result there, and the next test to use that connection (test_diff's reference) was refused.
    con = duckdb.connect()
    con.execute(
        f"""COPY (SELECT 'https://img.example/' || i || '.jpg' AS url, 'c' || (i % 20) AS category,
                        i::BIGINT AS n, i::INTEGER AS i32, i::UINTEGER AS u32, (i / 7)::DECIMAL(10, 2) AS price,
                        TIMESTAMP '2020-01-01' + INTERVAL (i) SECOND AS ts, [('t' || (i % 5)), 'x'] AS tags,
                        MAP {{'k': i}} AS attrs, {{'a': i, 'b': 's'}} AS st
                 FROM range(5000) t(i))
           TO '{target}' (FORMAT parquet, ROW_GROUP_SIZE 2048, COMPRESSION zstd)"""
    )
    a = pq.ParquetFile(src)
    assert a.metadata.created_by.startswith("DuckDB")
    assert "Int(bitWidth=64, isSigned=true)" in str(a.schema)  # DuckDB annotates its BIGINTs
    bloom = {
        a.metadata.row_group(0).column(j).path_in_schema
        for j in range(a.metadata.num_columns)
        if a.metadata.row_group(0).column(j).bloom_filter_offset is not None
    }
    assert "category" in bloom
    table = a.read()
    # Every row of category c7 goes, and a few others.
    gone = pc.equal(table["category"], "c7")
    listed = table["url"].filter(gone).to_pylist() + table["url"].to_pylist()[::53]

    out = run(src, listed, tmp_path)

    assert_footer_kept(src, out, listed, version="2.6")  # UINTEGER: see test_polars
    b = pq.ParquetFile(out)
    for i in range(b.metadata.num_row_groups):
        rg = b.metadata.row_group(i)
        assert {rg.column(j).path_in_schema for j in range(rg.num_columns) if rg.column(j).bloom_filter_offset} == bloom
    # The Bloom filters are rebuilt from the kept rows: c7 is gone from them, the kept values are in.
    probe = "SELECT bool_and(bloom_filter_excludes) FROM parquet_bloom_probe($path, 'category', $value)"
    assert con.execute(probe, {"path": str(out), "value": "c7"}).fetchone() == (True,)
    present = "SELECT bool_or(bloom_filter_excludes) FROM parquet_bloom_probe($path, 'category', $value)"
    for value in ("c0", "c6", "c8", "c19"):
        assert con.execute(present, {"path": str(out), "value": value}).fetchone() == (False,)
    assert_rows(src, out, listed)
    assert_duckdb_agrees(src, out, listed)


def test_fastparquet_int96_at_nanoseconds(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    fastparquet = pytest.importorskip("fastparquet")
    n = 1200
    when = pd.Series(pd.date_range("2020-01-01", periods=n, freq="1s").astype("datetime64[ns]"))
    when = when + pd.to_timedelta([i * 1001 for i in range(n)], unit="ns")  # sub-microsecond parts
    frame = pd.DataFrame({"url": urls(n), "n": range(n), "when": when, "f": [i / 3 for i in range(n)]})
    src = tmp_path / "in" / "fast.parquet"
    src.parent.mkdir()
    fastparquet.write(str(src), frame, row_group_offsets=400, compression="GZIP", times="int96")
    a = pq.ParquetFile(src)
    assert a.metadata.created_by.startswith("fastparquet")
    assert a.schema.column(2).physical_type == "INT96"
    assert b"pandas" in a.metadata.metadata and b"ARROW:schema" not in a.metadata.metadata
    listed = urls(n)[::11]

    out = run(src, listed, tmp_path)

    assert_footer_kept(src, out, listed)
    assert_rows(src, out, listed)
    kept = pq.read_table(out)["when"]
    assert (kept.cast(pa.int64()).to_numpy() % 1000 != 0).any()  # the nanoseconds survived
    assert_duckdb_agrees(src, out, listed)


def datafusion_file(path: Path, select: str, options: dict[str, str]) -> None:
    datafusion = pytest.importorskip("datafusion")
    ctx = datafusion.SessionContext()
    quoted = ", ".join(f"'{k}' '{v}'" for k, v in options.items())
    target = str(path).replace("'", "''")
    ctx.sql(f"COPY ({select}) TO '{target}' STORED AS PARQUET OPTIONS ({quoted})").collect()


def test_datafusion_parquet_rs(tmp_path: Path) -> None:
    src = tmp_path / "in" / "rs.parquet"
    src.parent.mkdir()
    avro = json.dumps({"type": "record", "name": "row", "fields": [{"name": "url", "type": "string"}]})
    datafusion_file(
        src,
        "SELECT 'https://img.example/' || value || '.jpg' AS url, value AS n, CAST(value AS INT UNSIGNED) AS u32, "
        "arrow_cast(value * 1000000001, 'Timestamp(Nanosecond, None)') AS ts, "
        "make_array('t' || (value % 3), 'x') AS tags, named_struct('a', value, 'b', 'z') AS st "
        "FROM generate_series(1, 3000)",
        {
            "format.skip_arrow_metadata": "true",
            "format.metadata::parquet.avro.schema": avro.replace("'", "''"),
            "format.metadata::writer.model.name": "avro",
            "format.bloom_filter_on_write": "true",
            "format.compression": "snappy",
            "format.max_row_group_size": "1000",
        },
    )
    a = pq.ParquetFile(src)
    assert a.metadata.created_by.startswith("datafusion")
    assert a.metadata.metadata == {b"parquet.avro.schema": avro.encode(), b"writer.model.name": b"avro"}
    assert a.metadata.row_group(0).column(0).bloom_filter_offset is not None
    assert "timeUnit=nanoseconds" in str(a.schema) and "list" in str(a.schema)
    listed = urls(3000, 1)[::13]

    out = run(src, listed, tmp_path)

    # Version 1 with nanosecond timestamps and UINT32: written as version 2 (pyarrow's 1 would coerce both).
    assert_footer_kept(src, out, listed, version="2.6")
    b = pq.ParquetFile(out)
    assert b"ARROW:schema" not in b.metadata.metadata
    assert b.metadata.row_group(0).column(0).bloom_filter_offset is not None
    assert b.metadata.row_group(0).column(0).has_column_index == a.metadata.row_group(0).column(0).has_column_index
    assert_rows(src, out, listed)


@pytest.mark.parametrize("store_schema", [False, True])
def test_pyarrow_legacy_options(tmp_path: Path, store_schema: bool) -> None:
    n = 2400
    # INT96 values Spark writes as placeholders lie outside what int64 nanoseconds hold (1677-2262).
    when = [datetime.datetime(2020, 1, 1) + datetime.timedelta(seconds=i, microseconds=i) for i in range(n)]
    when[5], when[1000] = datetime.datetime(1, 1, 1), datetime.datetime(9999, 12, 31, 23, 59, 59, 999999)
    fields = [
        pa.field("url", pa.string(), metadata={"PARQUET:field_id": "1", "doc": "the image's address"}),
        pa.field("when", pa.timestamp("us"), metadata={"PARQUET:field_id": "2"}),
        pa.field("tags", pa.list_(pa.string()), metadata={"PARQUET:field_id": "3"}),
        pa.field("attrs", pa.map_(pa.string(), pa.int64()), metadata={"PARQUET:field_id": "4"}),
        pa.field("score", pa.float32(), metadata={"PARQUET:field_id": "5"}),
    ]
    table = pa.table(
        [
            urls(n),
            pa.array(when, pa.timestamp("us")),
            [[f"t{i % 5}"] * (i % 3) for i in range(n)],
            pa.array([[("k", i)] for i in range(n)], pa.map_(pa.string(), pa.int64())),
            pa.array([i / 7 for i in range(n)], pa.float32()),
        ],
        schema=pa.schema(fields, metadata={"dataset": "legacy", "origin": "pyarrow"}),
    )
    src = tmp_path / "in" / "legacy.parquet"
    src.parent.mkdir()
    pq.write_table(
        table,
        src,
        row_group_size=800,
        version="1.0",
        use_compliant_nested_type=False,
        use_deprecated_int96_timestamps=True,
        store_schema=store_schema,
        compression={
            "url": "zstd",
            "when": "none",
            "tags.list.item": "brotli",
            "attrs.key_value.key": "gzip",
            "attrs.key_value.value": "lz4",
            "score": "snappy",
        },
        write_page_index=True,
        bloom_filter_options={"url": {"ndv": 800, "fpp": 0.01}},
        sorting_columns=[pq.SortingColumn(0)],
    )
    a = pq.ParquetFile(src, coerce_int96_timestamp_unit="us")
    assert "tags.list.item" in [a.schema.column(i).path for i in range(len(a.schema))]
    assert (b"ARROW:schema" in (a.metadata.metadata or {})) == store_schema
    listed = urls(n)[::9] + urls(n)[1600:2400]  # the last row group goes whole

    out = run(src, listed, tmp_path)

    assert_footer_kept(src, out, listed)
    b = pq.ParquetFile(out)
    assert [b.schema.column(i).physical_type for i in range(len(b.schema))][1] == "INT96"
    for i in range(b.metadata.num_row_groups):
        rg = b.metadata.row_group(i)
        assert rg.sorting_columns == (pq.SortingColumn(0),)
        assert rg.column(0).has_offset_index and rg.column(0).bloom_filter_offset is not None
    # Read at microseconds, the placeholders are exact; both files decode alike at any unit.
    assert_rows(src, out, listed, coerce_int96_timestamp_unit="us")
    assert_rows(src, out, listed)
    kept = pq.ParquetFile(out, coerce_int96_timestamp_unit="us").read()["when"].to_pylist()
    assert kept[4] == when[5] and when[1000] in kept  # rows 0 and 9 were removed
    assert kept[-1] == when[1599]
    if store_schema:
        assert b.schema_arrow.field("url").metadata[b"doc"] == b"the image's address"
    assert_duckdb_agrees(src, out, listed)


class GeoArrowWkb(pa.ExtensionType):
    """GeoArrow WKB, as a geospatial library would declare it; pyarrow writes it as GEOMETRY/GEOGRAPHY."""

    def __init__(self, metadata: dict) -> None:
        self._metadata = json.dumps(metadata).encode()
        super().__init__(pa.binary(), "geoarrow.wkb")

    def __arrow_ext_serialize__(self) -> bytes:
        return self._metadata

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> GeoArrowWkb:
        return cls(json.loads(serialized))


@pytest.mark.skipif(
    int(pa.__version__.split(".")[0]) < 26, reason="pyarrow < 26 cannot write GEOMETRY/GEOGRAPHY (it refuses the shard)"
)
def test_geometry_and_geography(tmp_path: Path) -> None:
    n = 900
    point = bytes.fromhex("0101000000000000000000f03f0000000000000040")
    projjson = {"type": "ProjectedCRS", "name": "NAD83 / Conus Albers", "id": {"authority": "EPSG", "code": 5070}}
    albers = GeoArrowWkb({"crs": "projjson:projjson_epsg_5070"})
    table = pa.table(
        {
            "url": urls(n),
            "geom": pa.ExtensionArray.from_storage(albers, pa.array([point] * n)),
            "area": pa.ExtensionArray.from_storage(GeoArrowWkb({"edges": "spherical"}), pa.array([point] * n)),
            "inline": pa.ExtensionArray.from_storage(GeoArrowWkb({"crs": json.dumps(projjson)}), pa.array([point] * n)),
        }
    )
    src = tmp_path / "in" / "geo.parquet"
    src.parent.mkdir()
    with pq.ParquetWriter(src, table.schema, store_schema=False) as writer:
        writer.write_table(table, row_group_size=300)
        writer.add_key_value_metadata({"projjson_epsg_5070": json.dumps(projjson), "geo": "{}"})
    a = pq.ParquetFile(src)
    assert "Geometry(crs=projjson:projjson_epsg_5070)" in str(a.schema) and "Geography" in str(a.schema)
    listed = urls(n)[::4]

    out = run(src, listed, tmp_path)

    assert_footer_kept(src, out, listed)
    assert_rows(src, out, listed)


# ---------------------------------------------------------------------------------------------
# What pyarrow cannot write back: refused, one line each, the other shards done


def patch_footer(path: Path, edit: Callable[[dict], None]) -> None:
    """Rewrite the Thrift footer of ``path`` after ``edit`` changed it (fastparquet's codec: field ids)."""
    from fastparquet.cencoding import ThriftObject, from_buffer

    data = path.read_bytes()
    (length,) = struct.unpack("<i", data[-8:-4])
    footer = from_buffer(data[-8 - length : -8])
    edit(footer)
    encoded = bytes(ThriftObject("FileMetaData", footer).to_bytes())
    path.write_bytes(data[: -8 - length] + encoded + struct.pack("<i", len(encoded)) + b"PAR1")


def two_level_list(footer: dict) -> None:
    """``tags (LIST) { repeated group list { required binary element } }`` -> ``{ repeated binary array }``:
    parquet-mr's legacy layout, with the same levels, so the pages stay valid."""
    schema = footer[2]
    names = [e.get(4) for e in schema]
    middle = names.index(b"list")
    leaf = schema.pop(middle + 1)
    leaf[4], leaf[3] = b"array", 2  # name, REPEATED
    schema[middle] = leaf
    for rg in footer[4]:
        for chunk in rg[1]:
            if chunk[3][3][:2] == [b"tags", b"list"]:
                chunk[3][3] = [b"tags", b"array"]


def unknown_logical_type(footer: dict) -> None:
    """Column ``n`` annotated with a logical type from a future format (union member 30)."""
    (n,) = [e for e in footer[2] if e.get(4) == b"n"]
    n[10] = {30: {}}


def column_chunk_pairs(footer: dict) -> None:
    for rg in footer[4]:
        rg[1][1][3][8] = [{1: b"written.by", 2: b"a column writer"}]


def int96_pattern(when: datetime.datetime) -> bytes:
    """The 12 bytes of one INT96 timestamp: nanoseconds into the day, then the Julian day."""
    micros = (when - datetime.datetime(1970, 1, 1)) // datetime.timedelta(microseconds=1)
    days, rest = divmod(micros, 86_400_000_000)
    return struct.pack("<qi", rest * 1000, days + 2_440_588)


def int96_table(values: list[datetime.datetime]) -> pa.Table:
    return pa.table({"url": urls(len(values)), "n": range(len(values)), "when": pa.array(values, pa.timestamp("us"))})


def add_nanosecond(path: Path, when: datetime.datetime) -> None:
    """Give one stored INT96 value (plain-encoded, uncompressed) a nanosecond no microsecond unit holds."""
    data = path.read_bytes()
    old = int96_pattern(when)
    assert data.count(old) == 1
    nanos, day = struct.unpack("<qi", old)
    path.write_bytes(data.replace(old, struct.pack("<qi", nanos + 1, day)))


def test_refused_shards_fail_alone_with_one_line(tmp_path: Path, capsys) -> None:
    pd = pytest.importorskip("pandas")
    fastparquet = pytest.importorskip("fastparquet")
    src = tmp_path / "in"
    src.mkdir()
    n = 600
    base = pa.table(
        {
            "url": urls(n),
            "n": pa.array(range(n), pa.int64()),
            "tags": pa.array([["a", "b"]] * n, pa.list_(pa.field("element", pa.string(), nullable=False))),
        }
    )
    pq.write_table(base, src / "good.parquet", row_group_size=200)
    # Legacy (Hadoop-era) LZ4, codec 5: fastparquet still writes it; pyarrow reads it but cannot write it.
    frame = pd.DataFrame({"url": urls(n), "n": range(n)})
    fastparquet.write(str(src / "lz4.parquet"), frame, compression="LZ4", row_group_offsets=200)
    assert pq.ParquetFile(src / "lz4.parquet").metadata.row_group(0).column(0).compression == "UNKNOWN"
    edits = {"twolevel": two_level_list, "unknown": unknown_logical_type, "chunkkv": column_chunk_pairs}
    for name, edit in edits.items():
        pq.write_table(base, src / f"{name}.parquet", row_group_size=200, store_schema=False)
        patch_footer(src / f"{name}.parquet", edit)
    # INT96 with nanoseconds on a date before 1677, and INT96 that needs nanoseconds in one row
    # group and dates outside 1677-2262 in another: no one Arrow timestamp type holds either.
    plain = {"use_deprecated_int96_timestamps": True, "use_dictionary": False, "compression": "none"}
    early = datetime.datetime(1, 1, 1, 0, 0, 0, 1)
    later = [datetime.datetime(2020, 1, 1) + datetime.timedelta(seconds=i) for i in range(n)]
    pq.write_table(int96_table([later[0], early, *later[2:]]), src / "int96.parquet", row_group_size=200, **plain)
    add_nanosecond(src / "int96.parquet", early)
    mixed = [*later[:301], early, *later[302:]]  # rows 1 and 301 are not listed: they stay
    pq.write_table(int96_table(mixed), src / "int96mixed.parquet", row_group_size=300, **plain)
    add_nanosecond(src / "int96mixed.parquet", later[3])
    datafusion_file(
        src / "rsmap.parquet",
        "SELECT 'https://img.example/' || value || '.jpg' AS url, MAP(['k'], [value]) AS attrs "
        "FROM generate_series(0, 599)",
        {"format.compression": "zstd(3)"},
    )
    assert pq.ParquetFile(src / "twolevel.parquet").schema_arrow.field("tags").type.value_field.name == "array"
    assert "(UNKNOWN)" in str(pq.ParquetFile(src / "unknown.parquet").schema)
    assert pq.ParquetFile(src / "chunkkv.parquet").metadata.row_group(0).column(1).metadata == {
        b"written.by": b"a column writer"
    }
    names = ["good", "lz4", "twolevel", "unknown", "chunkkv", "int96", "int96mixed", "rsmap"]
    listed = urls(n)[::50]  # a hit in every shard: none is copied untouched

    code = cli.main(
        [
            "run",
            *(str(src / f"{name}.parquet") for name in names),
            "--output",
            str(tmp_path / "out"),
            "--blocklist",
            str(write_list(tmp_path / "list.txt", listed)),
            "--report",
            str(tmp_path / "report.json"),
        ]
    )

    assert code == 1
    err = capsys.readouterr().err
    report = json.loads((tmp_path / "report.json").read_text())
    by_name = {Path(s["input"]).stem: s for s in report["shards"]}
    assert by_name["good"]["status"] == "done"
    assert_same_table(pq.read_table(tmp_path / "out" / "good.parquet"), reference_filter(base, listed))
    assert files_under(tmp_path / "out") == ["good.parquet"]
    expected = {
        "lz4": ("column 'url'", "legacy (Hadoop) LZ4", "recompress it"),
        "twolevel": ("column 'tags.array'", "repeated binary field_id=-1 array", "run again"),
        "unknown": ("column 'n'", "field_id=-1 n (UNKNOWN)", "run again"),
        "chunkkv": ("column 'n'", "key-value metadata in its column chunks", "run again"),
        "int96": ("column 'when'", "row group 0", "INT96", "microsecond precision"),
        "int96mixed": ("column 'when'", "INT96", "some row groups", "microsecond precision"),
        "rsmap": ("column 'attrs.entries'", "key_value", "run again"),
    }
    for name, words in expected.items():
        error = by_name[name]["error"]
        assert by_name[name]["status"] == "failed", name
        assert "\n" not in error and error.startswith(str(src / f"{name}.parquet")), error
        assert "unexpected" not in error, error
        for word in words:
            assert word in error, (name, word, error)
        assert f"failed {src / name}.parquet: " in err
