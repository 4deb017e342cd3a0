"""Test data and the independent reference the engine's outputs are compared against.

The reference is plain pyarrow: read the whole input table, build each row's key
with compute functions, and filter with ``pc.is_in``. Nothing here calls
streamfilter's matching code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from aiohttp import web

from streamfilter.demo import laion_table


def parquet_bytes(table: pa.Table, **write_options) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **write_options)
    return buf.getvalue()


def read_parquet(data: bytes | str | Path) -> pa.Table:
    source = pa.BufferReader(data) if isinstance(data, bytes) else str(data)
    return pq.read_table(source)


def parquet_file(data: bytes | str | Path) -> pq.ParquetFile:
    source = pa.BufferReader(data) if isinstance(data, bytes) else str(data)
    return pq.ParquetFile(source)


def reference_keys(table: pa.Table, columns: Sequence[str], separator: str = "\t", normalize: str = "none") -> pa.Array:
    parts = [table.column(c).combine_chunks().cast(pa.string()) for c in columns]
    keys = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, separator)
    if normalize == "strip":
        keys = pc.utf8_trim_whitespace(keys)
    return keys


def reference_mask(
    table: pa.Table,
    listed: Iterable[str],
    columns: Sequence[str] = ("url",),
    mode: str = "deny",
    separator: str = "\t",
    normalize: str = "none",
) -> pa.Array:
    """The rows the reference keeps: null keys are never members of the list."""
    listed = list(listed)
    if normalize == "strip":
        listed = [k.strip() for k in listed]
    keys = reference_keys(table, columns, separator, normalize)
    hit = pc.fill_null(pc.is_in(keys, value_set=pa.array(listed, pa.string())), False)
    return hit if mode == "allow" else pc.invert(hit)


def reference_filter(table: pa.Table, listed: Iterable[str], **kw) -> pa.Table:
    return table.filter(reference_mask(table, listed, **kw))


def reference_row_group_counts(data: bytes | str | Path, listed: Iterable[str], **kw) -> list[int]:
    """Rows kept per input row group, empty row groups left out (as the output drops them)."""
    pf = parquet_file(data)
    listed = list(listed)
    counts = []
    for i in range(pf.num_row_groups):
        kept = reference_mask(pf.read_row_group(i), listed, **kw)
        n = pc.sum(kept).as_py() or 0
        if n:
            counts.append(n)
    return counts


def row_group_rows(data: bytes | str | Path) -> list[int]:
    md = parquet_file(data).metadata
    return [md.row_group(i).num_rows for i in range(md.num_row_groups)]


def assert_same_table(actual: pa.Table, expected: pa.Table) -> None:
    assert actual.schema.equals(expected.schema, check_metadata=True), (actual.schema, expected.schema)
    assert actual.num_rows == expected.num_rows
    assert actual.equals(expected, check_metadata=True)


def sample(values: pa.Array | pa.ChunkedArray, every: int, offset: int = 0) -> list:
    """Every ``every``-th non-null value, a deterministic pick for blocklists."""
    py = values.to_pylist()
    return [v for v in py[offset::every] if v is not None]


def shard_table(n: int, start: int = 0, seed: int = 0) -> pa.Table:
    return laion_table(n, start=start, seed=seed)


def write_shard(path: Path, table: pa.Table, **write_options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **write_options)
    return path


#: A Parquet reader fetches the footer with one read of up to this many bytes from the end,
#: which overlaps the last row group: reading a file once costs at most its size plus this.
FOOTER_WINDOW = 64 * 1024


def key_chunk_bytes(data: bytes | Path, column: str = "url") -> int:
    """The stored bytes of one column's chunks over all row groups, from pyarrow's reading of the footer."""
    md = pq.ParquetFile(io.BytesIO(data) if isinstance(data, bytes) else data).metadata
    total = 0
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        total += sum(
            rg.column(j).total_compressed_size for j in range(rg.num_columns) if rg.column(j).path_in_schema == column
        )
    return total


def assert_read_once(bytes_read: int, data: bytes | Path) -> None:
    """Every byte of the object (but perhaps the 4-byte leading magic) was read once.

    The scan before a rewrite reads the key column's chunks up to the first hit, so
    at most one more pass over that column is allowed, and nothing else twice.
    """
    size = len(data) if isinstance(data, bytes) else data.stat().st_size
    assert size - 4 <= bytes_read <= size + FOOTER_WINDOW + key_chunk_bytes(data), (bytes_read, size)


def sha256_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


#: The fields of one shard in the report, as the CLI contract documents them (and their extensions).
REPORT_SHARD_FIELDS = {
    "input",
    "output",
    "status",
    "rows_in",
    "rows_out",
    "rows_removed",
    "bytes_read",
    "bytes_written",
    "seconds",
    "error",
    "resumed",
    "output_etag",
    "bytes_saved",
    "members_in",
    "members_out",
    "unkeyed",
    "output_via",
    "earlier_bytes_written",
    "abandoned_uploads",
    "removed_by",
    "kept_by",
    "images",
}


#: Where the engine keeps its receipts under an output prefix; not output data.
RECEIPTS = "_streamfilter/"


def files_under(root: Path, receipts: bool = False) -> list[str]:
    """Output files below ``root``; the receipts directory only when asked for."""
    if not root.exists():
        return []
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return [n for n in names if receipts or not n.startswith(RECEIPTS)]


def s3_keys(client, bucket: str, prefix: str = "", receipts: bool = False) -> list[str]:
    """Object keys under ``prefix``; those of the receipts directory only when asked for."""
    resp = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    keys = sorted(obj["Key"] for obj in resp.get("Contents", []))
    return [k for k in keys if receipts or f"/{RECEIPTS}" not in f"/{k}"]


def s3_get(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def s3_pending_uploads(client, bucket: str) -> list[dict]:
    return client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def random_strings(n: int, nbytes: int, seed: int) -> pa.Array:
    """``n`` distinct-ish incompressible ASCII strings of ``2 * nbytes`` hex characters."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    hexed = [bytes(row).hex() for row in raw]
    return pa.array(hexed, pa.string())


def put_table(client, bucket: str, key: str, table: pa.Table, **write_options) -> bytes:
    data = parquet_bytes(table, **write_options)
    client.put_object(Bucket=bucket, Key=key, Body=data)
    return data


def put_listed_shards(
    client, bucket: str, shards: int, rows: int, every: int, row_group_size: int
) -> tuple[dict[str, bytes], list[str]]:
    """``shards`` uncompressed shards of ``rows`` rows under ``in/`` and every ``every``-th url of each: the
    shards' bytes by key, and the list (every shard has hits)."""
    inputs: dict[str, bytes] = {}
    listed: list[str] = []
    for i in range(shards):
        table = shard_table(rows, start=rows * i, seed=i)
        key = f"in/{i:02d}.parquet"
        inputs[key] = put_table(client, bucket, key, table, compression="none", row_group_size=row_group_size)
        listed += sample(table["url"], every)
    return inputs, listed


def write_list(path: Path, keys: Iterable[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(keys) + "\n", encoding="utf-8")
    return path


def corrupt_row_group(data: bytes, index: int) -> bytes:
    """The file with the page header of one row group's first column chunk overwritten."""
    col = parquet_file(data).metadata.row_group(index).column(0)
    start = (
        col.dictionary_page_offset if col.has_dictionary_page and col.dictionary_page_offset else col.data_page_offset
    )
    return data[:start] + b"\xff" * 64 + data[start + 64 :]


@contextlib.contextmanager
def serve(app: web.Application) -> Iterator[str]:
    """Run ``app`` on 127.0.0.1 in a thread of its own, with its own event loop; yields its base URL."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    started = threading.Event()
    url: list[str] = []

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url.append(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}")  # type: ignore[union-attr]

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="test-server", daemon=True)
    thread.start()
    assert started.wait(10), "the test server did not start"
    try:
        yield url[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
