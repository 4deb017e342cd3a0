"""Loading key lists from any store: text (optionally .gz/.zst), Parquet or CSV columns.

The list is read once per run, before any shard is touched; a list that cannot be
read or parsed stops the run with exit code 2 and nothing written.
"""

from __future__ import annotations

import gzip
import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import zstandard

from ..errors import StreamfilterError, UsageError, redact_uri
from ..keys import KeySpec, as_bytes, as_text, normalize
from ..store import Stores
from .exact import ExactKeySet

TABLE_SUFFIXES = (".parquet", ".csv", ".csv.gz", ".csv.zst")


def parse_source(source: str) -> tuple[str, str | None]:
    """Split ``FILE.parquet:COLUMN`` into the object and the column; text lists have none."""
    head, sep, column = source.rpartition(":")
    if sep and head.lower().endswith(TABLE_SUFFIXES) and column and "/" not in column:
        return head, column
    if source.lower().endswith(TABLE_SUFFIXES):
        raise UsageError(f"--blocklist {redact_uri(source)}: name the key column, e.g. {redact_uri(source)}:url")
    return source, None


def decompress(uri: str, data: bytes) -> bytes:
    lower = uri.lower()
    if lower.endswith(".gz"):
        return gzip.decompress(data)
    if lower.endswith(".zst"):
        # stream_reader copes with frames that do not record their content size
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return data


def text_keys(data: bytes) -> pa.Array:
    """One key a line; blank lines and lines starting with ``#`` are skipped, ends trimmed."""
    lines = data.decode("utf-8").splitlines()
    keys = pa.array(lines, pa.large_string())
    keys = pc.utf8_trim_whitespace(keys)
    keep = pc.and_(pc.not_equal(keys, ""), pc.invert(pc.starts_with(keys, "#")))
    return keys.filter(keep)


def table_keys(uri: str, data: bytes, column: str) -> pa.Array:
    if uri.lower().endswith(".parquet"):
        table = pq.read_table(pa.BufferReader(data), columns=None)
    else:
        table = pacsv.read_csv(pa.BufferReader(data))
    if column not in table.schema.names:
        names = ", ".join(table.schema.names[:12])
        raise UsageError(f"--blocklist {redact_uri(uri)} has no column {column!r} (it has: {names})")
    return as_text(table.column(column))


async def load_keys(sources: list[str], stores: Stores) -> list[pa.Array]:
    """The keys of every source, one array per source (duplicates are removed by the set)."""
    arrays = []
    for source in sources:
        uri, column = parse_source(source)
        try:
            data = decompress(uri, await stores.for_uri(uri).read_all(uri))
            keys = text_keys(data) if column is None else table_keys(uri, data, column)
        except UsageError:
            raise
        except StreamfilterError as exc:
            raise UsageError(f"cannot read blocklist: {exc}") from exc
        except (OSError, ValueError, pa.ArrowException, zstandard.ZstdError) as exc:
            raise UsageError(f"cannot parse blocklist {redact_uri(uri)}: {type(exc).__name__}: {exc}") from exc
        if keys.null_count == len(keys):
            # An empty list is nearly always the wrong file; in allow mode it would empty every shard.
            raise UsageError(f"blocklist {redact_uri(uri)} holds no keys; check the file (and the column)")
        arrays.append(keys)
    if not arrays:
        raise UsageError("no membership list: pass --blocklist FILE")
    return arrays


async def build_key_set(sources: list[str], spec: KeySpec, stores: Stores) -> ExactKeySet:
    arrays = [normalize(keys, spec.normalize) for keys in await load_keys(sources, stores)]
    return ExactKeySet(pa.concat_arrays([as_bytes(keys) for keys in arrays]))
