"""``streamfilter build-filter``: key lists turned into a membership file (Bloom filter or fingerprint set).

Only the keys' 64-bit hashes are kept (8 bytes a key). Parquet sources are
streamed row group by row group (the key column only) and plain text sources in
64 MiB pieces cut at line ends, so a list of billions of keys never sits in
memory as text; compressed text and CSV lists are read whole (their size is
bounded by the list limits). The file format is :mod:`.filterfile`'s; its header
records the key spec the run must use.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import anyio
import anyio.to_thread
import numpy as np
import pyarrow as pa
from anyio.from_thread import BlockingPortal

from .._version import __version__
from ..errors import StreamfilterError, UsageError, redact_uri
from ..formats.parquet import ParquetShard
from ..keys import KeySpec, as_text
from ..store import StoreOptions, Stores
from ..store.uris import is_local, local_path
from .bloom import BloomFilter
from .entries import entry_values
from .filterfile import HEADER_READ_BYTES, describe, header_span, read_header, write_set
from .fingerprints import FingerprintSet
from .load import describe as describe_error
from .load import entry_place, load_keys, name_of, parse_source, text_keys

KINDS = ("bloom", "fingerprints")


def _check_writable(out: str) -> None:
    """Refuse a local ``out`` that cannot be written before any key is hashed, not after."""
    path = local_path(out)
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"cannot write the filter to {out}: it is a directory; choose a file path")
    if not path.parent.is_dir():
        raise UsageError(f"cannot write the filter to {out}: {path.parent} is not a directory; choose another path")


async def build_filter(
    sources: list[str], spec: KeySpec, stores: Stores, *, out: str, kind: str = "bloom", fpr: float = 1e-4
) -> dict[str, Any]:
    """Hash every source's keys, build the structure and write it to ``out`` (local path or s3://)."""
    if not spec.is_64bit:
        raise UsageError(
            f"build-filter needs a 64-bit key hash (--key-hash xxh3_64, xxh64 or mmh3_64), not {spec.hash!r}"
        )
    if kind not in KINDS:
        raise UsageError(f"--kind {kind!r}: choose bloom or fingerprints")
    if not 0 < fpr < 1:
        raise UsageError(f"--fpr {fpr}: a false-positive rate between 0 and 1, e.g. 1e-4")
    _check_writable(out)
    started = time.perf_counter()
    parts: list[np.ndarray] = []
    shown = [0.0]

    def add(values: pa.Array) -> None:
        parts.append(values.drop_null().to_numpy(zero_copy_only=False).astype(np.uint64))
        now = time.perf_counter() - started
        if now - shown[0] >= 1.0:  # a progress line a second at most
            shown[0] = now
            print(f"build-filter: {sum(len(p) for p in parts):,} keys hashed, {now:.0f} s", file=sys.stderr)

    for source in sources:
        uri, column = parse_source(source)
        if column is not None and name_of(uri).endswith(".parquet"):
            await _stream_parquet(uri, column, spec, stores, add)
        elif column is None and not name_of(uri).endswith((".gz", ".zst")):
            await _stream_text(uri, spec, stores, add)
        else:
            (values,) = await load_keys([source], stores, spec)
            add(values)
    if not parts or not sum(len(p) for p in parts):
        raise UsageError("build-filter: the sources hold no keys; check the files (and the columns)")
    hashes = np.concatenate(parts) if len(parts) > 1 else parts[0]
    parts.clear()
    structure = BloomFilter.from_hashes(hashes, fpr) if kind == "bloom" else FingerprintSet.from_hashes(hashes)
    return await _save(structure, spec, stores, out, len(hashes), fpr if kind == "bloom" else None)


TEXT_PIECE = 64 * 1024 * 1024


async def _stream_text(uri: str, spec: KeySpec, stores: Stores, add: Callable[[pa.Array], None]) -> None:
    """A plain text list in pieces cut after their last newline; entries are checked as whole lists are."""
    store = stores.for_uri(uri)
    try:
        size = (await store.stat(uri)).size
        pos, carry, line_base = 0, b"", 0
        while pos < size or carry:
            piece = carry + (await store.read_range(uri, pos, min(size, pos + TEXT_PIECE)) if pos < size else b"")
            pos = min(size, pos + TEXT_PIECE)
            cut = piece.rfind(b"\n") + 1 if pos < size else len(piece)
            if cut == 0:  # a line longer than a piece: read on
                carry = piece
                continue
            carry = piece[cut:]
            keys, lines = text_keys(piece[:cut])
            if len(keys):
                add(entry_values(keys, spec, entry_place(uri, lines, line_base)))
            line_base += piece[:cut].count(b"\n")
    except StreamfilterError as exc:
        raise UsageError(f"cannot read {redact_uri(uri)}: {exc}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"cannot parse {redact_uri(uri)}: {describe_error(exc)}") from None


async def _stream_parquet(
    uri: str, column: str, spec: KeySpec, stores: Stores, add: Callable[[pa.Array], None]
) -> None:
    """A Parquet list's key column, row group by row group, through ranged reads."""
    store = stores.for_uri(uri)

    def read(file: BinaryIO) -> None:
        shard = ParquetShard(file, redact_uri(uri))
        if column not in shard.schema.names:
            raise UsageError(f"--blocklist {redact_uri(uri)} has no column {column!r}; name one it has")
        row = 0
        for table in shard.row_groups([column], use_threads=True):
            add(entry_values(as_text(table.column(column)), spec, entry_place(uri, None, row)))
            row += table.num_rows

    failure: Exception | None = None
    try:
        info = await store.stat(uri)
        async with BlockingPortal() as portal:
            file = store.open_input(info, portal)
            try:
                await anyio.to_thread.run_sync(read, file)
            except Exception as exc:  # raised below: out of the portal's task group it would come as a group
                failure = exc
            finally:
                file.close()
        if failure is not None:
            raise failure
    except UsageError:
        raise
    except StreamfilterError as exc:
        raise UsageError(f"cannot read blocklist {redact_uri(uri)}: {exc}") from None


async def _save(
    structure: BloomFilter | FingerprintSet, spec: KeySpec, stores: Stores, out: str, count: int, fpr: float | None
) -> dict[str, Any]:
    options = dict(
        hash_name=spec.hash, key_spec=spec.to_dict(), key_count=count, target_fpr=fpr,
        created_by=f"streamfilter {__version__}",
    )  # fmt: skip
    if is_local(out):
        return write_set(out.removeprefix("file://"), structure, **options)
    buffer = io.BytesIO()
    header = write_set(buffer, structure, **options)
    try:
        await stores.for_uri(out).put(out, buffer.getvalue())
    except StreamfilterError as exc:
        raise StreamfilterError(f"writing the filter failed: {exc}") from exc
    return header


async def inspect_file(uri: str, stores: Stores) -> str:
    """What a membership file holds, from its header alone (one ranged read for a remote file)."""
    store = stores.for_uri(uri)
    try:
        info = await store.stat(uri)
        prefix = await store.read_range(uri, 0, min(info.size, HEADER_READ_BYTES))
        need = header_span(prefix, source=redact_uri(uri))
        if need > len(prefix):
            prefix = await store.read_range(uri, 0, min(info.size, need))
    except StreamfilterError as exc:
        raise UsageError(f"cannot read {redact_uri(uri)}: {exc}") from None
    header, offset = read_header(prefix, source=redact_uri(uri))
    if info.size < offset + header["body_bytes"]:
        raise UsageError(
            f"{redact_uri(uri)} is truncated: {info.size:,} bytes, its header promises "
            f"{offset + header['body_bytes']:,}; build or download it again"
        )
    return describe(header)


async def build_filter_file(
    sources: list[str], spec: KeySpec, options: StoreOptions, out: str, kind: str, fpr: float
) -> str:
    """``streamfilter build-filter``: the filter written to ``out``, and what it holds, as text to show."""
    stores = Stores(options)
    try:
        header = await build_filter(sources, spec, stores, out=out, kind=kind, fpr=fpr)
    finally:
        await stores.aclose()
    return f"wrote {redact_uri(out)}\n{describe(header)}"


async def inspect_file_at(uri: str, options: StoreOptions) -> str:
    """``streamfilter inspect``: what a filter file holds, from one ranged read."""
    stores = Stores(options)
    try:
        return await inspect_file(uri, stores)
    finally:
        await stores.aclose()
