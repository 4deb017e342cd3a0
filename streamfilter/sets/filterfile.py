"""The membership file: one fingerprint set or one Bloom filter, with the metadata to use it safely.

Layout, version 1 (all integers little-endian)::

    offset  size  field
    0       8     magic b"SFMEMSET"
    8       2     format version, u16 (= 1)
    10      4     header length H, u32 (bytes of JSON that follow)
    14      H     header: a UTF-8 JSON object (fields below)
    14+H    P     zero bytes, 0 <= P < 8, so the body starts at a multiple of 8
    B       N     body, B = 14 + H + P, N = header["body_bytes"]; the file ends here

Readers locate the body only by the rule above. This writer also pads the JSON text itself with
trailing spaces (valid JSON whitespace) so that B is a multiple of 64: Bloom blocks then never
straddle a cache line when the file is memory-mapped.

Header fields (all required unless noted):

``kind``            ``"bloom"`` or ``"fingerprints"``
``hash``            name of the 64-bit key hash, e.g. ``"xxh3_64"`` or ``"sha256/64"`` (opaque here)
``seed``            int, the hash seed (0)
``key_spec``        JSON object from the caller describing how keys were derived, stored verbatim
``key_count``       int, keys the caller inserted (a Bloom filter's count may include repeats)
``target_fpr``      float or null, the false-positive rate the structure was sized for
``body_bytes``      int, N
``body_sha256``     hex SHA-256 of the body: detects truncation and corruption
``created_by``      string from the caller (tool and version)
bloom only:
``num_blocks``      int; the body is num_blocks * 8 u32 words, block after block (32 bytes each)
``bits``            int, num_blocks * 256
``hashes_per_key``  int, 8 (one bit per word)
fingerprints only:
``count``           int, distinct 64-bit fingerprints
``index_bits``      int <= 32; the body is ``count`` distinct u64 fingerprints in ascending order, then
                    2**index_bits + 1 u32 offsets: the keys whose top index_bits bits equal b are
                    keys[off[b]:off[b+1]] (off[0] = 0, off[-1] = count)

Readers ignore header fields they do not know, so v1 files may carry more. See :mod:`.bloom` and
:mod:`.fingerprints` for how each body is queried.

Every problem with a file (wrong magic, unknown version, a header that is not JSON or lacks a
field, a body shorter or longer than the header says, a checksum mismatch) raises
:class:`~streamfilter.errors.UsageError` with one line that names the file.

A remote file's header is one ranged read: fetch :data:`HEADER_READ_BYTES` bytes, or exactly
:func:`header_span` of the first 14 bytes, and pass them to :func:`read_header`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import UsageError
from .bloom import BloomFilter, sbbf_fpr
from .fingerprints import FingerprintSet

MAGIC = b"SFMEMSET"
VERSION = 1
_PREFIX = struct.Struct("<8sHI")  # magic, version, header length
PREFIX_BYTES = _PREFIX.size  # 14
#: A first ranged read this long holds the header of any file whose key_spec is not huge.
HEADER_READ_BYTES = 64 * 1024
#: Headers beyond this are refused rather than read: a corrupt length must not cause a huge read.
MAX_HEADER_BYTES = 16 * 1024 * 1024
_WRITE_ALIGN = 64

Structure = FingerprintSet | BloomFilter

_COMMON_FIELDS: dict[str, tuple[type, ...]] = {
    "kind": (str,),
    "hash": (str,),
    "seed": (int,),
    "key_spec": (dict,),
    "key_count": (int,),
    "target_fpr": (float, int, type(None)),
    "body_bytes": (int,),
    "body_sha256": (str,),
    "created_by": (str,),
}
_KIND_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "bloom": {"num_blocks": (int,), "bits": (int,), "hashes_per_key": (int,)},
    "fingerprints": {"count": (int,), "index_bits": (int,)},
}


def _fail(source: str, problem: str) -> UsageError:
    """One line: the file, then what is wrong with it (``problem`` starts with a verb)."""
    return UsageError(f"{source} {problem}")


# --- writing ---


def write_set(
    stream_or_path: str | os.PathLike[str] | BinaryIO,
    structure: Structure,
    *,
    hash_name: str,
    key_spec: dict[str, Any],
    key_count: int,
    target_fpr: float | None,
    created_by: str,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``structure`` as a membership file; return the header written.

    A path is written through a temporary file in the same directory and renamed into place, so
    readers never see a partial file. A stream gets the bytes in order, from its current position.
    """
    kind = _kind_of(structure)
    if key_count < 0:
        raise ValueError(f"key_count must be >= 0, got {key_count}")
    key_spec = _checked_key_spec(key_spec)
    parts = [np.ascontiguousarray(p) for p in structure.body_parts()]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(memoryview(part).cast("B"))
    header = {
        "kind": kind,
        "hash": str(hash_name),
        "seed": int(seed),
        "key_spec": key_spec,
        "key_count": int(key_count),
        "target_fpr": None if target_fpr is None else float(target_fpr),
        **structure.header_fields(),
        "body_bytes": sum(p.nbytes for p in parts),
        "body_sha256": digest.hexdigest(),
        "created_by": str(created_by),
    }
    head = _encode_header(header)
    if isinstance(stream_or_path, str | os.PathLike):
        _write_path(Path(stream_or_path), head, parts)
    else:
        _write_stream(stream_or_path, head, parts)
    return header


def _kind_of(structure: Structure) -> str:
    if isinstance(structure, BloomFilter):
        return "bloom"
    if isinstance(structure, FingerprintSet):
        return "fingerprints"
    raise TypeError(f"cannot write a {type(structure).__name__}: expected a FingerprintSet or BloomFilter")


def _checked_key_spec(key_spec: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(key_spec, dict):
        raise TypeError(f"key_spec must be a JSON object (dict), got {type(key_spec).__name__}")
    json.dumps(key_spec)  # raises TypeError before the body is hashed and anything is written
    return key_spec


def _encode_header(header: dict[str, Any]) -> bytes:
    """Magic, version, length and JSON, padded with spaces so the body starts 64-byte aligned."""
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(PREFIX_BYTES + len(text)) % _WRITE_ALIGN)
    return _PREFIX.pack(MAGIC, VERSION, len(text)) + text  # already 8-aligned: no zero padding needed


def _write_stream(stream: BinaryIO, head: bytes, parts: list[np.ndarray]) -> None:
    stream.write(head)
    for part in parts:
        stream.write(memoryview(part).cast("B"))


def _write_path(path: Path, head: bytes, parts: list[np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            _write_stream(f, head, parts)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # its directory may be what failed
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a directory in the way, a missing parent, no permission, a full disk
            raise UsageError(f"cannot write the filter to {path}: {exc.strerror or exc}; choose another path") from None
        raise


# --- reading ---


def header_span(prefix: bytes, *, source: str = "<buffer>") -> int:
    """Body offset (= bytes needed for :func:`read_header`), from the first 14 bytes of a file."""
    prefix = bytes(prefix[:PREFIX_BYTES])
    if prefix[: len(MAGIC)] != MAGIC[: len(prefix)]:
        raise _fail(source, "is not a streamfilter membership file (bad magic)")
    if len(prefix) < PREFIX_BYTES:
        raise _fail(source, f"is truncated: {len(prefix)} bytes, shorter than the {PREFIX_BYTES}-byte preamble")
    _, version, length = _PREFIX.unpack(prefix)
    if version != VERSION:
        raise _fail(source, f"has format version {version}; this streamfilter reads version {VERSION}, upgrade it")
    if length > MAX_HEADER_BYTES:
        raise _fail(source, f"declares a {length}-byte header, over the {MAX_HEADER_BYTES}-byte limit (corrupt?)")
    return PREFIX_BYTES + length + (-(PREFIX_BYTES + length) % 8)


def read_header(prefix: bytes, *, source: str = "<buffer>") -> tuple[dict[str, Any], int]:
    """Parse and check the header from the first bytes of a file; return (header, body offset).

    ``prefix`` may be the whole file or just its start (one ranged read of
    :data:`HEADER_READ_BYTES`); it must reach at least to the end of the JSON header.
    ``source`` names the file in error messages.
    """
    body_offset = header_span(prefix, source=source)
    (length,) = struct.unpack_from("<I", prefix, 10)
    end = PREFIX_BYTES + length
    if len(prefix) < end:
        raise _fail(source, f"has a truncated header: needs the first {end} bytes, got {len(prefix)}")
    try:
        header = json.loads(bytes(prefix[PREFIX_BYTES:end]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(source, f"has a header that is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _fail(source, "has a header that is not a JSON object")
    _check_fields(header, source)
    return header, body_offset


def _check_fields(header: dict[str, Any], source: str) -> None:
    kind = header.get("kind")
    if kind not in _KIND_FIELDS:
        raise _fail(source, f"has header kind {kind!r}, not one of {sorted(_KIND_FIELDS)}")
    for name, types_ in {**_COMMON_FIELDS, **_KIND_FIELDS[kind]}.items():
        if name not in header:
            raise _fail(source, f"has a header missing field {name!r}")
        value = header[name]
        if not isinstance(value, types_) or (isinstance(value, bool) and bool not in types_):
            raise _fail(source, f"has header field {name!r} of the wrong type ({type(value).__name__})")
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise _fail(source, f"has a negative header field {name!r} ({value})")
    expected = _body_size(header, source)
    if header["body_bytes"] != expected:
        raise _fail(
            source, f"has body_bytes={header['body_bytes']} in its header but its {kind} fields imply {expected}"
        )


def _body_size(header: dict[str, Any], source: str) -> int:
    if header["kind"] == "bloom":
        if header["hashes_per_key"] != BloomFilter.hashes_per_key:
            raise _fail(
                source, f"has a Bloom filter with {header['hashes_per_key']} hashes per key; only 8 is supported"
            )
        if header["bits"] != header["num_blocks"] * 256 or header["num_blocks"] < 1:
            raise _fail(source, "has Bloom filter bits and num_blocks that disagree")
        return BloomFilter.body_size(header["num_blocks"])
    if header["index_bits"] > 32:
        raise _fail(source, f"has fingerprint index_bits={header['index_bits']}, over 32")
    return FingerprintSet.body_size(header["count"], header["index_bits"])


def load_set(
    buffer_or_path: str | os.PathLike[str] | bytes | bytearray | memoryview,
    *,
    verify: bool = True,
    source: str | None = None,
) -> tuple[dict[str, Any], Structure]:
    """Open a membership file; return (header, FingerprintSet or BloomFilter).

    A path is memory-mapped read-only with numpy: nothing is copied, pages load on first use and
    are shared by every process mapping the file. A bytes-like object (e.g. fetched from S3 or
    HTTP) is used in place. ``verify`` checks the body's SHA-256, one pass over it (~1-2 GB/s);
    without it a corrupt body can give wrong answers (never an out-of-bounds read). ``source``
    names the file in errors (default: the path).
    """
    if isinstance(buffer_or_path, str | os.PathLike):
        source = source or str(buffer_or_path)
        data = _map(Path(buffer_or_path), source)
    else:
        source = source or "<in-memory buffer>"
        data = np.frombuffer(buffer_or_path, dtype=np.uint8)
    header, body_offset = read_header(_header_bytes(data, source), source=source)
    body = _body(data, header, body_offset, source)
    if verify and hashlib.sha256(memoryview(body)).hexdigest() != header["body_sha256"]:
        raise _fail(source, "has a body checksum mismatch: the file is corrupt; fetch or build it again")
    try:
        return header, _structure(header, body)
    except ValueError as exc:  # e.g. an index that does not span the keys
        raise _fail(source, f"has a body inconsistent with its header ({exc})") from None


def _map(path: Path, source: str) -> np.ndarray:
    try:
        if path.stat().st_size == 0:  # np.memmap refuses empty files
            return np.zeros(0, dtype=np.uint8)
        return np.memmap(path, dtype=np.uint8, mode="r")
    except OSError as exc:
        raise _fail(source, f"cannot be opened ({exc.strerror or exc})") from None


def _header_bytes(data: np.ndarray, source: str) -> bytes:
    head = data[:PREFIX_BYTES].tobytes()
    span = header_span(head, source=source) if len(head) == PREFIX_BYTES else len(head)
    return data[:span].tobytes()


def _body(data: np.ndarray, header: dict[str, Any], body_offset: int, source: str) -> np.ndarray:
    want = header["body_bytes"]
    have = len(data) - body_offset
    if have < want:
        raise _fail(source, f"is truncated: body has {max(have, 0)} bytes, header says {want}")
    if have > want:
        raise _fail(source, f"has a size mismatch: {have - want} unexpected bytes after the {want}-byte body")
    body = data[body_offset:]
    if body.ctypes.data % 8:  # e.g. a slice of a bytearray: numba wants aligned words, so copy
        body = body.copy()
    return body


def _structure(header: dict[str, Any], body: np.ndarray) -> Structure:
    if header["kind"] == "bloom":
        return BloomFilter.from_body(body, header["num_blocks"], target_fpr=header["target_fpr"])
    return FingerprintSet.from_body(body, header["count"], header["index_bits"])


# --- describing ---


def expected_fpr(header: dict[str, Any]) -> float:
    """False-positive rate per absent key implied by the header's key count and size.

    Bloom: :func:`.bloom.sbbf_fpr` at key_count / num_blocks (an upper bound if keys repeated).
    Fingerprints: count / 2**64, the chance a random absent hash equals some member's.
    """
    if header["kind"] == "bloom":
        return sbbf_fpr(header["key_count"] / header["num_blocks"])
    return header["count"] / 2.0**64


def _size(n: int) -> str:
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit} ({n:,} bytes)"


def _fpr(value: float | None) -> str:
    return "none" if value is None else f"{value:.3g}"


def _describe_structure(h: dict[str, Any]) -> list[str]:
    if h["kind"] == "bloom":
        return [
            "kind:          bloom (split-block Bloom filter)",
            f"structure:     {h['num_blocks']:,} blocks, {h['bits']:,} bits, {h['hashes_per_key']} hashes per key"
            f" ({h['bits'] / max(h['key_count'], 1):.1f} bits per key)",
        ]
    return [
        "kind:          fingerprints (exact set of 64-bit hashes)",
        f"structure:     {h['count']:,} distinct fingerprints, 2**{h['index_bits']} index buckets",
    ]


def describe(header: dict[str, Any]) -> str:
    """A multi-line, human-readable summary of a header (for ``streamfilter inspect``)."""
    lines = [
        *_describe_structure(header),
        f"hash:          {header['hash']} (seed {header['seed']})",
        f"key spec:      {json.dumps(header['key_spec'], ensure_ascii=False, sort_keys=True)}",
        f"keys:          {header['key_count']:,}",
        f"size:          {_size(header['body_bytes'])}",
        f"target FPR:    {_fpr(header['target_fpr'])}",
        f"expected FPR:  {_fpr(expected_fpr(header))} per absent key",
        f"created by:    {header['created_by']}",
        f"body sha256:   {header['body_sha256']}",
    ]
    return "\n".join(lines)
