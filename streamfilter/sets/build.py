"""``streamfilter build-filter``: key lists turned into a membership file (Bloom filter or fingerprint set).

Sources are read one at a time and only their 64-bit hashes are kept (8 bytes a
key), so a source's text is freed before the next is read. The file format is
:mod:`.filterfile`'s; its header records the key spec the run must use.
"""

from __future__ import annotations

import io
import sys
import time
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import StreamfilterError, UsageError, redact_uri
from ..keys import KeySpec
from ..store import Stores
from .bloom import BloomFilter
from .filterfile import HEADER_READ_BYTES, describe, header_span, read_header, write_set
from .fingerprints import FingerprintSet
from .load import load_keys

KINDS = ("bloom", "fingerprints")


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
    started, parts = time.perf_counter(), []
    for i, source in enumerate(sources, 1):
        (values,) = await load_keys([source], stores, spec)
        parts.append(values.drop_null().to_numpy(zero_copy_only=False).astype(np.uint64))
        total = sum(len(p) for p in parts)
        print(
            f"build-filter: {i}/{len(sources)} sources, {total:,} keys hashed, {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
    hashes = np.concatenate(parts) if len(parts) > 1 else parts[0]
    del parts
    structure = BloomFilter.from_hashes(hashes, fpr) if kind == "bloom" else FingerprintSet.from_hashes(hashes)
    return await _save(structure, spec, stores, out, len(hashes), fpr if kind == "bloom" else None)


async def _save(
    structure: BloomFilter | FingerprintSet, spec: KeySpec, stores: Stores, out: str, count: int, fpr: float | None
) -> dict[str, Any]:
    options = dict(
        hash_name=spec.hash, key_spec=spec.to_dict(), key_count=count, target_fpr=fpr,
        created_by=f"streamfilter {__version__}",
    )  # fmt: skip
    if "://" not in out or out.startswith("file://"):
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
