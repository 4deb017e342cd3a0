"""Parquet shards: read row group by row group, write with the source's properties.

The reader knows nothing of keys or stores: it takes a seekable binary file and,
when the file offers ``prefetch``, asks for the next row group's bytes while the
current one is decoded, so network time hides behind CPU time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import ShardError

PARQUET_MAGIC = b"PAR1"
#: The magic of a Parquet file whose footer is encrypted (we cannot read those, but say so plainly).
_ENCRYPTED_MAGIC = b"PARE"

#: Largest footer (file metadata) we let pyarrow parse. The footer describes every column chunk of
#: every row group: a LAION-style shard's is a few KiB, the widest real files reach a few MiB. A
#: hostile length field would otherwise make us fetch and parse that much before any check.
MAX_FOOTER_BYTES = 64 * 1024 * 1024
#: Largest row group we decode, by the uncompressed size its metadata declares. Decoded memory per
#: shard in flight is about this much (plus the filtered copy), so the cap bounds what one shard can
#: claim; LAION metadata shards have row groups of 10-100 MiB.
MAX_ROW_GROUP_BYTES = 2 * 1024**3
_VERSIONS = {"1.0", "2.4", "2.6"}
_CODECS = {"UNCOMPRESSED": "none"}


def row_group_span(metadata: pq.FileMetaData, index: int, columns: list[str] | None = None) -> tuple[int, int]:
    """The byte range holding the column chunks of one row group (of ``columns`` only, if given)."""
    rg = metadata.row_group(index)
    starts, ends = [], []
    for j in range(rg.num_columns):
        col = rg.column(j)
        if columns is not None and col.path_in_schema.split(".", 1)[0] not in columns:
            continue
        start = col.data_page_offset
        if col.has_dictionary_page and col.dictionary_page_offset:
            start = min(start, col.dictionary_page_offset)
        starts.append(start)
        ends.append(start + col.total_compressed_size)
    return (min(starts), max(ends)) if starts else (0, 0)


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n:,} bytes"


def row_group_bytes(metadata: pq.FileMetaData, index: int, columns: list[str] | None = None) -> int:
    """The uncompressed size the metadata declares for one row group (of ``columns`` only, if given)."""
    rg = metadata.row_group(index)
    chunks = [rg.column(j) for j in range(rg.num_columns)]
    if columns is not None:
        return sum(c.total_uncompressed_size for c in chunks if c.path_in_schema.split(".", 1)[0] in columns)
    # total_byte_size is the sum over the chunks, but some writers fill in only one of the two.
    return max(rg.total_byte_size, sum(c.total_uncompressed_size for c in chunks))


def footer_length(file: BinaryIO, name: str) -> int:
    """The footer size recorded in the last 8 bytes, checked before pyarrow reads that many."""
    size = file.seek(0, 2)
    if size < 12:  # leading magic, footer length, trailing magic
        raise ShardError(f"{name} is not a readable Parquet file (only {size} bytes); check the object")
    file.seek(size - 8)
    tail = bytes(file.read(8))
    file.seek(0)
    if tail[4:] == _ENCRYPTED_MAGIC:
        raise ShardError(f"{name} is not a readable Parquet file (its footer is encrypted); decrypt it first")
    if tail[4:] != PARQUET_MAGIC:
        raise ShardError(f"{name} is not a readable Parquet file (no PAR1 magic at its end); check the object")
    length = int.from_bytes(tail[:4], "little")
    if length > MAX_FOOTER_BYTES:
        raise ShardError(
            f"{name}: its Parquet footer claims {length:,} bytes, over the {_size(MAX_FOOTER_BYTES)} limit; "
            "the file is corrupt or hostile, check the object"
        )
    if length > size - 12:
        raise ShardError(
            f"{name} is not a readable Parquet file (its footer claims {length:,} bytes of a {size:,}-byte "
            "file; truncated?); check the object"
        )
    return length


class ParquetShard:
    """A Parquet file opened for streaming: footer read, row groups decoded on demand."""

    def __init__(self, file: BinaryIO, name: str) -> None:
        self.name = name
        self._file = file
        prefetch = getattr(file, "prefetch", None)
        if prefetch is not None:
            size = file.seek(0, 2)
            prefetch([(max(0, size - 64 * 1024), size)])  # the footer, in one request
        footer_length(file, name)
        try:
            # pre_buffer off: we prefetch whole row groups ourselves, one ahead.
            self._pf = pq.ParquetFile(file, pre_buffer=False)
        except (pa.ArrowException, OSError) as exc:
            raise ShardError(f"{name} is not a readable Parquet file ({exc}); check the object") from None
        self.metadata: pq.FileMetaData = self._pf.metadata
        self.schema: pa.Schema = self._pf.schema_arrow

    @property
    def num_row_groups(self) -> int:
        return self.metadata.num_row_groups

    def check_row_groups(self, columns: list[str] | None = None) -> None:
        """Refuse the shard before any row group is fetched if one would decode past the cap."""
        for i in range(self.num_row_groups):
            declared = row_group_bytes(self.metadata, i, columns)
            if declared > MAX_ROW_GROUP_BYTES:
                raise ShardError(
                    f"{self.name}: row group {i} would decode to {declared:,} bytes, over the "
                    f"{_size(MAX_ROW_GROUP_BYTES)} limit; rewrite the shard with smaller row groups"
                )

    def row_group(self, index: int, columns: list[str] | None = None) -> pa.Table:
        """One row group, decoded on its own (no look-ahead): for readers that need only a few."""
        if row_group_bytes(self.metadata, index, columns) > MAX_ROW_GROUP_BYTES:
            self.check_row_groups(columns)  # raises, naming the row group and the limit
        return self.read(index, columns, use_threads=False)

    def read(self, index: int, columns: list[str] | None = None, use_threads: bool = False) -> pa.Table:
        """Decode (columns of) one row group; a decoding error fails the shard, naming the row group."""
        try:
            return self._pf.read_row_group(index, columns=columns, use_threads=use_threads)
        except (pa.ArrowException, OSError) as exc:
            raise ShardError(f"{self.name}: row group {index} cannot be decoded ({exc}); the file is corrupt") from None

    def fetched(self, columns: list[str] | None = None, first_alone: bool = False) -> Iterator[int]:
        """Row-group indexes in order, each one's bytes requested (and the next one's) before it is yielded.

        ``first_alone`` fetches the first row group without the second, for a reader that
        is likely to stop after it (a scan that meets a hit at once).
        """
        self.check_row_groups(columns)
        prefetch = getattr(self._file, "prefetch", None)
        n = self.num_row_groups
        for i in range(n):
            if prefetch is not None:
                ahead = [row_group_span(self.metadata, j, columns) for j in (i, i + 1) if j < n]
                if first_alone and i <= 1:
                    prefetch(ahead[:1] if i == 0 else ahead)
                else:
                    prefetch(ahead if i == 0 else ahead[1:])
            yield i

    def row_groups(
        self, columns: list[str] | None = None, use_threads: bool = True, first_alone: bool = False
    ) -> Iterator[pa.Table]:
        """Decoded row groups in order, with the next one's bytes fetched in the background.

        ``use_threads`` decodes columns in parallel: right when this shard is alone on
        the machine, wasteful when other shards already keep every core busy.
        """
        for i in self.fetched(columns, first_alone):
            yield self.read(i, columns, use_threads)

    def kept_rows(self, index: int, keep: pa.Array | None, decoded: pa.Table, use_threads: bool = False) -> pa.Table:
        """Row group ``index`` with only the rows ``keep`` marks (all if None), decoded a column at a time.

        ``decoded`` holds columns already read (the keys). Each other column is decoded,
        filtered and its decoded copy dropped before the next: the peak is the kept rows
        plus one column's decoding, where decoding the whole row group first peaked at
        about three times its size (a column's buffers grow by doubling as it decodes).
        """
        names = self.schema.names
        if len(set(names)) < len(names):  # a column cannot be picked by a name it shares
            table = self.read(index, None, use_threads)
            return table if keep is None else table.filter(keep)
        parts = []
        for name in names:
            column = decoded.column(name) if name in decoded.column_names else self.read(index, [name]).column(0)
            parts.append(column if keep is None else column.filter(keep))
            del column
        return pa.Table.from_arrays(parts, schema=self.schema)


def writer_options(metadata: pq.FileMetaData) -> dict:
    """Writer settings that reproduce the source's codec per column and format version."""
    options: dict = {}
    if metadata.num_row_groups:
        rg = metadata.row_group(0)
        codecs = {rg.column(j).path_in_schema: rg.column(j).compression for j in range(rg.num_columns)}
        # Parquet metadata says UNCOMPRESSED where pyarrow's writer expects "none".
        options["compression"] = {path: _CODECS.get(codec, codec.lower()) for path, codec in codecs.items()}
    if metadata.format_version in _VERSIONS:
        options["version"] = metadata.format_version
    return options


#: Rows sampled per column to decide whether dictionary encoding pays.
DICTIONARY_SAMPLE = 8192


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
            distinct = pc.count_distinct(column).as_py()
        except pa.ArrowNotImplementedError:  # dictionary, null, extension, view types: pyarrow's default
            distinct = 0
        if distinct <= len(column) // 2:
            chosen.append(name)
    return chosen


class ParquetOutput:
    """Writes filtered row groups as row groups of the output, one for one.

    The writer opens on the first row group, whose values decide which columns
    are dictionary-encoded; an output with no rows is still a valid file.
    """

    def __init__(self, sink: BinaryIO, schema: pa.Schema, source: pq.FileMetaData) -> None:
        self._sink, self._schema, self._options = sink, schema, writer_options(source)
        self._writer: pq.ParquetWriter | None = None

    def _open(self, first: pa.Table | None) -> pq.ParquetWriter:
        options = dict(self._options)
        if first is not None:
            options["use_dictionary"] = dictionary_columns(first)
        return pq.ParquetWriter(self._sink, self._schema, **options)

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            if self._writer is None:
                self._writer = self._open(table)
            self._writer.write_table(table, row_group_size=table.num_rows)

    def close(self) -> None:
        if self._writer is None:
            self._writer = self._open(None)
        self._writer.close()
