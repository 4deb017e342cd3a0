"""Writing a Parquet shard back as its source was written.

The writer reproduces the source's footer wherever pyarrow's writer can: its
key-value metadata as it is, its Parquet schema (checked on an empty file written
with the chosen options before any row group is read), each column's codec, page
indexes, Bloom filters and sorting columns. A source it cannot reproduce is
refused with one line rather than written differently.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import ShardError
from .parquet import ParquetShard

_VERSIONS = {"1.0", "2.4", "2.6"}
#: Codecs as pyarrow's metadata names them -> pyarrow's writer names. Missing: LZO, and the legacy
#: (Hadoop) LZ4 that pyarrow reads but reports as UNKNOWN and cannot write (its "lz4" is LZ4_RAW).
_CODECS = {
    "UNCOMPRESSED": "none",
    "SNAPPY": "snappy",
    "GZIP": "gzip",
    "BROTLI": "brotli",
    "LZ4": "lz4",
    "LZ4_RAW": "lz4",
    "ZSTD": "zstd",
}


class _GeoArrowWkb(pa.ExtensionType):
    """GeoArrow's WKB type, which pyarrow's writer turns into Parquet's GEOMETRY or GEOGRAPHY.

    Not registered (that would change how every reader in the process decodes such
    columns): we wrap a decoded binary column in it only to write it back annotated.
    """

    def __init__(self, storage_type: pa.DataType, metadata: bytes) -> None:
        self._metadata = metadata
        super().__init__(storage_type, "geoarrow.wkb")

    def __arrow_ext_serialize__(self) -> bytes:
        return self._metadata

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> _GeoArrowWkb:
        return cls(storage_type, serialized)


def _geoarrow_metadata(logical_type: pq.ParquetLogicalType) -> bytes:
    """GeoArrow metadata for a GEOMETRY or GEOGRAPHY annotation: its CRS string (pyarrow writes it
    back as it is, ``projjson:KEY`` references to the footer included) and a geography's edges."""
    described = json.loads(logical_type.to_json())
    metadata = {"crs": described["crs"]} if described.get("crs") else {}
    if logical_type.type == "GEOGRAPHY":
        metadata["edges"] = str(described.get("algorithm", "spherical")).lower()
    return json.dumps(metadata).encode()


@dataclass
class WritePlan:
    """How to write a shard back: the writer's schema and options, and the footer's key-value pairs."""

    schema: pa.Schema
    options: dict
    key_value: dict[bytes, bytes] | None
    #: Column index -> the extension type its decoded storage is wrapped in before writing.
    wrap: dict[int, pa.DataType] = field(default_factory=dict)
    #: Indexes of INT96 columns, whose Arrow unit is the one their first written row group decoded at.
    int96: list[int] = field(default_factory=list)


#: pyarrow's description of a logical type carries how it was stored (as a logical type or only as
#: a legacy converted type); the annotation is the same either way, and pyarrow writes both.
_STORED_AS = re.compile(r", is_from_converted_type=\w+, force_set_converted_type=\w+")
#: A signed integer annotation of the physical type's own width says what the type already says
#: (DuckDB writes it); pyarrow writes no annotation there.
_OWN_WIDTH_INT = re.compile(r"^(\s*\w+ int(64|32) .*?) \(Int\(bitWidth=\2, isSigned=true\)\)")
_OWN_WIDTH_CONVERTED = {("INT64", "INT_64"), ("INT32", "INT_32")}


#: The name in a line of pyarrow's printed schema, after the field id and before the annotation.
_NODE_NAME = re.compile(r"field_id=-?\d+ (.+?)(?: \(.*\))?$")


def _schema_lines(schema: pq.ParquetSchema) -> list[tuple[str, str]]:
    """The Parquet schema tree as pyarrow prints it (repetition, physical type, field id, name,
    logical type; groups and their layout), each line with its node's path. The root is left out
    (pyarrow always names it ``schema``), and annotations that say the same are written one way."""
    lines, path = [], []
    for raw in str(schema).splitlines()[2:]:  # the object's repr, then the root group
        line = _OWN_WIDTH_INT.sub(r"\1", _STORED_AS.sub("", raw)).strip(" ;{")
        if line == "}":
            path = path[:-1]
            continue
        name = _NODE_NAME.search(line)
        node = [*path, name.group(1) if name else line]
        lines.append((".".join(node), line))
        if raw.endswith("{"):
            path = node
    return lines


def _converted_types(schema: pq.ParquetSchema) -> list[tuple[str, str]]:
    """Each leaf's path and legacy converted type (the printed tree shows the logical type only)."""
    leaves = []
    for i in range(len(schema)):
        column = schema.column(i)
        converted = column.converted_type
        if (column.physical_type, converted) in _OWN_WIDTH_CONVERTED:
            converted = "NONE"
        leaves.append((column.path, converted))
    return leaves


def schema_difference(source: pq.ParquetSchema, written: pq.ParquetSchema) -> str | None:
    """The first difference between two Parquet schemas, said for a user, or None if they match."""
    a, b = _schema_lines(source), _schema_lines(written)
    for (path, x), (_, y) in zip(a, b, strict=False):
        if x != y:
            return f"column '{path}': '{x}' would be written as '{y}'"
    if len(a) != len(b):
        return f"{len(a)} schema nodes would be written as {len(b)}"
    for (path, x), (_, y) in zip(_converted_types(source), _converted_types(written), strict=True):
        if x != y:
            return f"column '{path}' with converted type {x} would be written with {y}"
    return None


@dataclass
class _Chunks:
    """What the source's column chunks declare, gathered in one pass over its footer."""

    codecs: dict[str, set[str]] = field(default_factory=dict)
    bloom: set[str] = field(default_factory=set)
    page_index: bool = False
    chunk_key_value: str | None = None
    sorting: set[tuple] = field(default_factory=set)
    most_rows: int = 0


def _chunks(metadata: pq.FileMetaData) -> _Chunks:
    found = _Chunks()
    for i in range(metadata.num_row_groups):
        rg = metadata.row_group(i)
        found.sorting.add(tuple(rg.sorting_columns))
        found.most_rows = max(found.most_rows, rg.num_rows)
        for j in range(rg.num_columns):
            column = rg.column(j)
            path = column.path_in_schema
            found.codecs.setdefault(path, set()).add(column.compression)
            if getattr(column, "bloom_filter_offset", None) is not None:  # pyarrow >= 25 tells
                found.bloom.add(path)
            found.page_index = found.page_index or column.has_offset_index or column.has_column_index
            if found.chunk_key_value is None and getattr(column, "metadata", None):
                found.chunk_key_value = path
    return found


def _compression(name: str, codecs: dict[str, set[str]]) -> dict[str, str]:
    """The writer's codec per column path; refuses what pyarrow cannot write as the source has it."""
    chosen = {}
    for path, used in codecs.items():
        if len(used) > 1:
            raise ShardError(
                f"{name}: column '{path}' is compressed with {' and '.join(sorted(used))} in different row "
                "groups, and pyarrow writes one codec a column; the shard was not rewritten: recompress it "
                "with one codec a column and run again"
            )
        (codec,) = used
        writer_name = _CODECS.get(codec)
        if writer_name is None or (writer_name != "none" and not pa.Codec.is_available(writer_name)):
            what = "the legacy (Hadoop) LZ4 codec or one pyarrow does not know" if codec == "UNKNOWN" else codec
            raise ShardError(
                f"{name}: column '{path}' is compressed with {what}, which pyarrow cannot write; the shard "
                "was not rewritten: recompress it (for example with ZSTD or LZ4_RAW) and run again"
            )
        chosen[path] = writer_name
    return chosen


def _written_schema(schema: pa.Schema, options: dict) -> pq.ParquetSchema:
    """The Parquet schema pyarrow writes for ``schema`` with ``options``: an empty file, in memory."""
    buffer = io.BytesIO()
    with pq.ParquetWriter(buffer, schema, **options):
        pass
    return pq.ParquetFile(pa.BufferReader(buffer.getvalue())).schema


def writer_plan(shard: ParquetShard) -> WritePlan:
    """Writer settings that reproduce the source's footer, or a ShardError saying what cannot be.

    Tried with the source's format version, then (for a version-1 file holding types
    that pyarrow writes only as version 2: UINT32, nanosecond timestamps) with 2.6.
    """
    name, metadata, source = shard.name, shard.metadata, shard.parquet_schema
    chunks = _chunks(metadata)
    if chunks.chunk_key_value is not None:
        raise ShardError(
            f"{name}: column '{chunks.chunk_key_value}' has key-value metadata in its column chunks, which "
            "pyarrow cannot write; the shard was not rewritten: move those pairs to the file's key-value "
            "metadata and run again"
        )
    leaves = [source.column(i) for i in range(len(source))]
    options: dict = {
        "store_schema": False,  # an input's ARROW:schema, if it has one, comes back with its other pairs
        "use_compliant_nested_type": False,  # lists keep their element's name (element, item, …)
        "compression": _compression(name, chunks.codecs),
    }
    # Options past pyarrow's defaults only where the source needs them (older pyarrows lack some).
    if shard.int96:
        options["use_deprecated_int96_timestamps"] = True
    if any(c.logical_type.type == "DECIMAL" and c.physical_type in ("INT32", "INT64") for c in leaves):
        options["store_decimal_as_integer"] = True
    if chunks.page_index:
        options["write_page_index"] = True
    if chunks.bloom:
        # Rebuilt from the kept rows, so a removed value leaves no trace; sized for a whole row group.
        options["bloom_filter_options"] = {path: {"ndv": max(chunks.most_rows, 1)} for path in sorted(chunks.bloom)}
    if len(chunks.sorting) == 1 and (sorting := next(iter(chunks.sorting))):
        options["sorting_columns"] = sorting
    schema = shard.schema.remove_metadata()
    wrap = {}
    geometry = {c.path: c.logical_type for c in leaves if c.logical_type.type in ("GEOMETRY", "GEOGRAPHY")}
    for j, column in enumerate(schema):
        if column.name in geometry:
            wrap[j] = _GeoArrowWkb(column.type, _geoarrow_metadata(geometry[column.name]))
            schema = schema.set(j, column.with_type(wrap[j]))
    int96 = [j for j, column in enumerate(schema) if column.name in shard.int96]
    difference = "no version to try"
    for version in dict.fromkeys([metadata.format_version, "2.6"]):
        if version not in _VERSIONS:
            continue
        try:
            written = _written_schema(schema, {**options, "version": version})
        except (pa.ArrowException, ValueError) as exc:
            difference = f"pyarrow cannot write it: {exc}"
            continue
        difference = schema_difference(source, written)
        if difference is None:
            return WritePlan(schema, {**options, "version": version}, metadata.metadata, wrap, int96)
    raise ShardError(
        f"{name}: pyarrow cannot write its Parquet schema back as it is ({difference}); the shard was not "
        "rewritten: rewrite it in a layout pyarrow reproduces (for example with pyarrow.parquet.write_table) "
        "and run again"
    )


#: Rows sampled per column to decide whether dictionary encoding pays.
DICTIONARY_SAMPLE = 8192


def _distinct(column: pa.ChunkedArray) -> int:
    """The distinct non-null values of ``column``, as ``pc.count_distinct`` counts them.

    Through ``pc.unique`` where the type is a plain one (half the time of count_distinct's hash
    aggregate: 2.7 ms a shard of 8 LAION-style columns against 1.2); other types as before.
    """
    kind = column.type
    if (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    ):
        return len(pc.unique(column)) - (1 if column.null_count else 0)
    return pc.count_distinct(column).as_py()


def dictionary_columns(table: pa.Table) -> list[str]:
    """Columns worth dictionary-encoding: those with repeated values in a sample.

    pyarrow tries a dictionary for every column and falls back to plain encoding
    once the dictionary outgrows its page; for unique-valued columns (URLs,
    hashes, random floats) that attempt cost 40% of the encode time and made the
    output larger, in a measurement on LAION-style shards.
    """
    sample = table.slice(0, DICTIONARY_SAMPLE)
    chosen = []
    for name, column in zip(sample.column_names, sample.columns, strict=True):
        if pa.types.is_nested(column.type) or len(column) == 0:
            chosen.append(name)  # nested leaves are named by path; leave pyarrow's default
            continue
        try:
            distinct = _distinct(column)
        except pa.ArrowNotImplementedError:  # dictionary, null, extension, view types: pyarrow's default
            distinct = 0
        if distinct <= len(column) // 2:
            chosen.append(name)
    return chosen


class ParquetOutput:
    """Writes filtered row groups as row groups of the output, one for one.

    The plan is made, and checked, when the output is created: a shard that cannot be
    written back as it is fails before any row group is read. The writer opens on the
    first row group, whose values decide which columns are dictionary-encoded; an
    output with no rows is still a valid file.
    """

    def __init__(self, sink: BinaryIO, shard: ParquetShard) -> None:
        self._sink, self._name, self._plan = sink, shard.name, writer_plan(shard)
        self._schema = self._plan.schema
        self._writer: pq.ParquetWriter | None = None

    def _open(self, first: pa.Table | None) -> pq.ParquetWriter:
        options = dict(self._plan.options)
        if first is not None:
            options["use_dictionary"] = dictionary_columns(first)
            for j in self._plan.int96:  # the unit the first row group decoded at (see ParquetShard.exact_int96)
                self._schema = self._schema.set(j, self._schema.field(j).with_type(first.schema.field(j).type))
        writer = pq.ParquetWriter(self._sink, self._schema, **options)
        if self._plan.key_value:
            writer.add_key_value_metadata(self._plan.key_value)
        return writer

    def _conform(self, table: pa.Table) -> pa.Table:
        """``table`` in the writer's types: geometry wrapped, INT96 columns at the writer's unit."""
        for j, kind in self._plan.wrap.items():
            column = table.column(j)
            chunks = [pa.ExtensionArray.from_storage(kind, chunk) for chunk in column.chunks]
            table = table.set_column(j, self._schema.field(j), pa.chunked_array(chunks, kind))
        for j in self._plan.int96:
            target = self._schema.field(j)
            if table.schema.field(j).type != target.type:
                try:
                    table = table.set_column(j, target, table.column(j).cast(target.type))
                except pa.ArrowInvalid:
                    raise ShardError(
                        f"{self._name}: column '{target.name}' holds INT96 timestamps with nanoseconds in some "
                        "row groups and dates outside 1677-2262 in others, which no one Arrow type holds; the "
                        "shard was not rewritten: store that column at microsecond precision and run again"
                    ) from None
        return table

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            if self._plan.wrap or self._plan.int96:
                if self._writer is None:
                    self._writer = self._open(table)
                table = self._conform(table)
            if self._writer is None:
                self._writer = self._open(table)
            self._writer.write_table(table, row_group_size=table.num_rows)

    def close(self) -> None:
        if self._writer is None:
            self._writer = self._open(None)
        self._writer.close()
