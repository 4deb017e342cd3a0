"""Parquet shards: read row group by row group, write with the source's properties.

The reader knows nothing of keys or stores: it takes a seekable binary file and,
when the file offers ``prefetch``, asks for the next row group's bytes while the
current one is decoded, so network time hides behind CPU time.

The writer, which reproduces the source's footer, is in :mod:`.parquet_writer`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import pyarrow as pa
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


def _timestamp_leaves(values: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """The int64 values of every timestamp inside ``values`` (nested or not), nulls as 0."""
    if isinstance(values, pa.ChunkedArray):
        return [leaf for chunk in values.chunks for leaf in _timestamp_leaves(chunk)]
    kind = values.type
    if pa.types.is_timestamp(kind):
        return [values.cast(pa.int64()).fill_null(0).to_numpy()]
    if pa.types.is_map(kind):
        return _timestamp_leaves(values.keys) + _timestamp_leaves(values.items)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _timestamp_leaves(values.flatten())
    if pa.types.is_struct(kind):
        return [leaf for child in values.flatten() for leaf in _timestamp_leaves(child)]
    return []


def _same_instants(fine: pa.ChunkedArray, coarse: pa.ChunkedArray, factor: int) -> bool:
    """Whether ``fine`` (one unit) floors to ``coarse`` (a unit ``factor`` times coarser) everywhere."""
    pairs = zip(_timestamp_leaves(fine), _timestamp_leaves(coarse), strict=True)
    return all(np.array_equal(np.floor_divide(f, factor), c) for f, c in pairs)


def _whole_microseconds(ns: pa.ChunkedArray, us: pa.ChunkedArray) -> bool:
    """Whether no value has a sub-microsecond part, from nanoseconds that may have wrapped around.

    Both decodings are the same day-and-nanoseconds sum modulo 2**64, so their
    wrapping difference is exactly the sub-microsecond part.
    """
    with np.errstate(over="ignore"):
        pairs = zip(_timestamp_leaves(ns), _timestamp_leaves(us), strict=True)
        return all(not np.any(n - u * 1000) for n, u in pairs)


#: Whole row groups are requested in blocks of consecutive row groups up to this many stored bytes (see
#: ParquetShard.fetched): 50 row groups of 140 KiB a shard took 50 ranged GETs, one a row group. Two blocks
#: are held at a time (the one decoded and the next), so this bounds the prefetched bytes per shard.
FETCH_BLOCK_BYTES = 4 * 1024 * 1024
#: Bytes between two row groups that a block still reads through rather than starting a new one.
FETCH_GAP_BYTES = 64 * 1024

#: Row groups whose other columns declare at most this many uncompressed bytes are decoded in one call
#: rather than a column at a time: the peak of a whole decode (about 3x, see kept_rows) stays small.
DECODE_TOGETHER_BYTES = 8 * 1024 * 1024


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
        self.parquet_schema: pq.ParquetSchema = self._pf.schema
        #: Top-level columns holding INT96 timestamps, which pyarrow decodes to nanoseconds by default.
        self.int96 = {
            column.path.split(".", 1)[0]
            for column in (self.parquet_schema.column(i) for i in range(len(self.parquet_schema)))
            if column.physical_type == "INT96"
        }
        self._at_unit: dict[str, pq.ParquetFile] = {}

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

        Whole row groups (``columns`` None) are requested in blocks of consecutive row groups of up to
        :data:`FETCH_BLOCK_BYTES`, so a shard of many small row groups costs a few requests, not one
        a row group. ``first_alone`` fetches the first row group without the second, for a reader that
        is likely to stop after it (a scan that meets a hit at once).
        """
        self.check_row_groups(columns)
        prefetch = getattr(self._file, "prefetch", None)
        n = self.num_row_groups
        if prefetch is not None and columns is None and not first_alone:
            blocks = self._blocks()
            for b, (first, last) in enumerate(blocks):
                ahead = [self._span(blocks[c]) for c in (b, b + 1) if c < len(blocks)]
                prefetch(ahead if b == 0 else ahead[1:])
                yield from range(first, last)
            return
        for i in range(n):
            if prefetch is not None:
                ahead = [row_group_span(self.metadata, j, columns) for j in (i, i + 1) if j < n]
                if first_alone and i <= 1:
                    prefetch(ahead[:1] if i == 0 else ahead)
                else:
                    prefetch(ahead if i == 0 else ahead[1:])
            yield i

    def fetched_runs(self, apart: int | None = None) -> Iterator[list[int]]:
        """Every row group in order, as :meth:`fetched` (whole row groups) requests them, in runs to decode
        in one call: consecutive small row groups of one fetch block that together declare at most
        :data:`DECODE_TOGETHER_BYTES`, and every other row group (and ``apart``) alone.

        A shard of many small row groups then costs a few decoding calls and key lookups rather than one
        of each a row group (measured, 8 shards of 50 row groups of 4,000 rows: 1.78 CPU s a run instead
        of 1.93). A run stays within a fetch block, so no more than two blocks are held (see :meth:`fetched`).
        """
        if self.int96 or len(set(self.schema.names)) < len(self.schema.names):
            yield from ([i] for i in self.fetched())  # decoded a row group at a time (see whole, kept_rows)
            return
        block_end = [last for first, last in self._blocks() for _ in range(first, last)]
        sizes = [row_group_bytes(self.metadata, i) for i in range(self.num_row_groups)]
        run: list[int] = []
        size = 0
        for i in self.fetched():
            run.append(i)
            size += sizes[i]
            j = i + 1
            if (
                j < block_end[i]
                and j != apart
                and i != apart
                and size + sizes[j] <= DECODE_TOGETHER_BYTES
                and sizes[i] <= DECODE_TOGETHER_BYTES
            ):
                continue  # the next row group joins this run
            yield run
            run, size = [], 0

    def read_run(self, run: list[int], use_threads: bool = False) -> pa.Table:
        """Every column of consecutive row groups ``run`` (from :meth:`fetched_runs`) as one table."""
        if len(run) == 1:
            return self.whole(run[0], use_threads)
        try:
            table = self._pf.read_row_groups(run, use_threads=use_threads)
        except (pa.ArrowException, OSError) as exc:
            for i in run:  # the message names the row group that fails (as a row group at a time would)
                self.read(i)
            raise ShardError(
                f"{self.name}: row groups {run[0]}-{run[-1]} cannot be decoded ({exc}); the file is corrupt"
            ) from None
        declared = sum(self.metadata.row_group(i).num_rows for i in run)
        if table.num_rows != declared:
            raise ShardError(
                f"{self.name}: row groups {run[0]}-{run[-1]} decode to {table.num_rows:,} rows where the footer "
                f"declares {declared:,}; the file is corrupt"
            )
        return table

    def _blocks(self) -> list[tuple[int, int]]:
        """Consecutive row groups [first, last) whose bytes together span at most FETCH_BLOCK_BYTES (a larger
        row group alone), each starting at most FETCH_GAP_BYTES past the one before: one request each."""
        if not self.num_row_groups:
            return []
        blocks: list[tuple[int, int]] = []
        first, (start, end) = 0, row_group_span(self.metadata, 0)
        for i in range(1, self.num_row_groups):
            s, e = row_group_span(self.metadata, i)
            if not end <= s <= end + FETCH_GAP_BYTES or e - start > FETCH_BLOCK_BYTES:
                blocks.append((first, i))
                first, start = i, s
            end = e
        blocks.append((first, self.num_row_groups))
        return blocks

    def _span(self, block: tuple[int, int]) -> tuple[int, int]:
        return row_group_span(self.metadata, block[0])[0], row_group_span(self.metadata, block[1] - 1)[1]

    def row_groups(
        self, columns: list[str] | None = None, use_threads: bool = True, first_alone: bool = False
    ) -> Iterator[pa.Table]:
        """Decoded row groups in order, with the next one's bytes fetched in the background.

        ``use_threads`` decodes columns in parallel: right when this shard is alone on
        the machine, wasteful when other shards already keep every core busy.
        """
        for i in self.fetched(columns, first_alone):
            yield self.read(i, columns, use_threads)

    def small(self, index: int) -> bool:
        """Whether row group ``index`` is decoded whole in one call (see :meth:`whole`)."""
        return row_group_bytes(self.metadata, index) <= DECODE_TOGETHER_BYTES

    def whole(self, index: int, use_threads: bool = False) -> pa.Table:
        """Every column of row group ``index`` in one call, INT96 columns checked: for small row groups,
        where a call per column, or one for the keys and one for the rest, costs more than the decoding
        (measured, 50 row groups of 4,000 rows a shard: two calls 0.2 ms a row group more than one)."""
        table = self.read(index, None, use_threads)
        return self.exact_int96(index, None, table) if self.int96 else table

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
            if self.int96:
                table = self.exact_int96(index, None, table)
            return table if keep is None else table.filter(keep)
        rest = [n for n in names if n not in decoded.column_names and n not in self.int96]
        together = None
        if rest and row_group_bytes(self.metadata, index, rest) <= DECODE_TOGETHER_BYTES:
            # A small row group's columns in one call: a call per column costs more than their decoding
            # (measured: 50 row groups of 4,000 rows a shard took 5x the time of 5 row groups of 40,000).
            together = self.read(index, rest, use_threads)
        parts = []
        for name in names:
            if name in self.int96:
                column = self.exact_int96(index, [name], self.read(index, [name])).column(0)
            elif name in decoded.column_names:
                column = decoded.column(name)
            elif together is not None:
                column = together.column(name)
            else:
                column = self.read(index, [name]).column(0)
            parts.append(column if keep is None else column.filter(keep))
            del column
        schema = self.schema
        if self.int96:  # an INT96 column may have been decoded at microseconds instead (see exact_int96)
            schema = pa.schema(
                [f.with_type(p.type) for f, p in zip(schema, parts, strict=True)], metadata=schema.metadata
            )
        return pa.Table.from_arrays(parts, schema=schema)

    def _read_at(self, unit: str, index: int, columns: list[str] | None) -> pa.Table:
        """Columns of one row group with INT96 decoded at ``unit``, through a second reader of the same file."""
        pf = self._at_unit.get(unit)
        if pf is None:
            pf = self._at_unit[unit] = pq.ParquetFile(
                self._file, pre_buffer=False, metadata=self.metadata, coerce_int96_timestamp_unit=unit
            )
        try:
            return pf.read_row_group(index, columns=columns, use_threads=False)
        except (pa.ArrowException, OSError) as exc:
            raise ShardError(f"{self.name}: row group {index} cannot be decoded ({exc}); the file is corrupt") from None

    def exact_int96(self, index: int, columns: list[str] | None, table: pa.Table) -> pa.Table:
        """``table`` (decoded at pyarrow's default, nanoseconds) with its INT96 columns checked.

        An INT96 value is a day and the nanoseconds into it. Decoded to int64 nanoseconds,
        a date outside 1677-2262 (Spark's 0001-01-01 and 9999-12-31 placeholders) wraps
        around silently. Milliseconds hold every INT96 date, so a column whose nanoseconds
        agree with its milliseconds is exact; one that does not is decoded at microseconds,
        used if no value has a sub-microsecond part, and refused otherwise.
        """
        reads: dict[str, pa.Table] = {}

        def at(unit: str) -> pa.Table:
            if unit not in reads:
                reads[unit] = self._read_at(unit, index, columns)
            return reads[unit]

        for j, name in enumerate(table.column_names):
            if name not in self.int96:
                continue
            ns = table.column(j)
            ms = at("ms").column(j)
            if _same_instants(ns, ms, 10**6):
                continue
            us = at("us").column(j)
            if not (_same_instants(us, ms, 1000) and _whole_microseconds(ns, us)):
                raise ShardError(
                    f"{self.name}: column '{name}' of row group {index} holds INT96 timestamps that no Arrow "
                    "timestamp holds exactly (nanoseconds on a date outside 1677-2262, or a date past ±290,000 "
                    "years); the shard was not rewritten: store that column at microsecond precision and run again"
                )
            table = table.set_column(j, table.schema.field(j).with_type(us.type), us)
        return table
