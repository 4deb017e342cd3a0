"""Parquet shards: read row group by row group, write with the source's properties.

The reader knows nothing of keys or stores: it takes a seekable binary file and,
when the file offers ``prefetch``, asks for the next row group's bytes while the
current one is decoded, so network time hides behind CPU time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ShardError

PARQUET_MAGIC = b"PAR1"
_VERSIONS = {"1.0", "2.4", "2.6"}


def row_group_span(metadata: pq.FileMetaData, index: int) -> tuple[int, int]:
    """The byte range holding all column chunks of one row group."""
    rg = metadata.row_group(index)
    starts, ends = [], []
    for j in range(rg.num_columns):
        col = rg.column(j)
        start = col.data_page_offset
        if col.has_dictionary_page and col.dictionary_page_offset:
            start = min(start, col.dictionary_page_offset)
        starts.append(start)
        ends.append(start + col.total_compressed_size)
    return (min(starts), max(ends)) if starts else (0, 0)


class ParquetShard:
    """A Parquet file opened for streaming: footer read, row groups decoded on demand."""

    def __init__(self, file: BinaryIO, name: str) -> None:
        self.name = name
        self._file = file
        prefetch = getattr(file, "prefetch", None)
        if prefetch is not None:
            size = file.seek(0, 2)
            prefetch([(max(0, size - 64 * 1024), size)])  # the footer, in one request
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

    def row_groups(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """Decoded row groups in order, with the next one's bytes fetched in the background."""
        prefetch = getattr(self._file, "prefetch", None)
        n = self.num_row_groups
        for i in range(n):
            if prefetch is not None:
                ahead = [row_group_span(self.metadata, j) for j in (i, i + 1) if j < n]
                prefetch(ahead if i == 0 else ahead[1:])
            try:
                yield self._pf.read_row_group(i, columns=columns, use_threads=True)
            except (pa.ArrowException, OSError) as exc:
                raise ShardError(f"{self.name}: row group {i} cannot be decoded ({exc}); the file is corrupt") from None


def writer_options(metadata: pq.FileMetaData) -> dict:
    """Writer settings that reproduce the source's codec per column and format version."""
    options: dict = {}
    if metadata.num_row_groups:
        rg = metadata.row_group(0)
        codecs = {rg.column(j).path_in_schema: rg.column(j).compression for j in range(rg.num_columns)}
        options["compression"] = {path: codec.lower() for path, codec in codecs.items()}
    if metadata.format_version in _VERSIONS:
        options["version"] = metadata.format_version
    return options


class ParquetOutput:
    """Writes filtered row groups as row groups of the output, one for one."""

    def __init__(self, sink: BinaryIO, schema: pa.Schema, source: pq.FileMetaData) -> None:
        self._writer = pq.ParquetWriter(sink, schema, **writer_options(source))

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table, row_group_size=table.num_rows)

    def close(self) -> None:
        self._writer.close()
