"""Which value of a row is its key, and how it is normalized and hashed before lookup.

A key goes through three steps, the same for a shard's rows and a list's entries:
the key columns are joined (``separator``), the text is normalized (``none``,
``strip``, or ``url``: see :mod:`streamfilter.urls`), and the result is hashed
(``hash``: ``none`` keeps the key itself; ``md5``/``sha1``/``sha256`` give the raw
digest; ``xxh64``/``xxh3_64``/``mmh3_64`` give a 64-bit integer, LAION's ``hash``
column being ``mmh3_64`` of ``url + caption`` with an empty separator).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import ShardError, UsageError
from .urls import normalize_urls

Normalization = Literal["none", "strip", "url"]
NORMALIZATIONS: tuple[str, ...] = ("none", "strip", "url")
#: The same names as :mod:`.hashing`'s (a test checks); written here so that importing this module
#: does not import numba (half a second of every start-up) unless a run hashes its keys.
DIGESTS: tuple[str, ...] = ("md5", "sha1", "sha256")
HASH64: tuple[str, ...] = ("xxh64", "xxh3_64", "mmh3_64")
KEY_HASHES: tuple[str, ...] = ("none", *DIGESTS, *HASH64)
LIST_ENTRIES: tuple[str, ...] = ("raw", "hex", "int")
#: What ``--image-hash`` may make a tar sample's key: nothing (its columns decide), or its image's PDQ hash.
IMAGE_HASHES: tuple[str, ...] = ("none", "pdq")


@dataclass(frozen=True)
class KeySpec:
    """The key of a row: one column, or several joined by ``separator``.

    ``normalize`` is applied to both the rows' keys and the list's keys, so a
    list written with stray whitespace still matches under ``strip``.
    """

    columns: tuple[str, ...] = ("url",)
    separator: str = "\t"
    normalize: Normalization = "none"
    hash: str = "none"
    #: What the list's entries are: "raw" keys (normalized and hashed like the rows), "hex" digests
    #: (or hex 64-bit hashes), or "int" 64-bit integers (decimal, or hex with 0x).
    entries: str = "raw"
    #: "pdq": a tar sample's key is its image's PDQ hash, matched within ``max_distance`` bits of a
    #: list of hex PDQ hashes; the columns are unused.
    image: str = "none"
    max_distance: int = 31

    def __post_init__(self) -> None:
        if not self.columns or any(not c for c in self.columns):
            raise UsageError("--key: name at least one column, e.g. --key url or --key url,caption")
        if self.normalize not in NORMALIZATIONS:
            raise UsageError(f"--normalize {self.normalize!r}: choose one of {', '.join(NORMALIZATIONS)}")
        if self.hash not in KEY_HASHES:
            raise UsageError(f"--key-hash {self.hash!r}: choose one of {', '.join(KEY_HASHES)}")
        if self.entries not in LIST_ENTRIES:
            raise UsageError(f"--blocklist-hash {self.entries!r}: choose one of {', '.join(LIST_ENTRIES)}")
        if self.entries == "int" and self.hash in DIGESTS:
            raise UsageError(f"--blocklist-hash int: a {self.hash} digest is no 64-bit integer; use hex")
        if self.image not in IMAGE_HASHES:
            raise UsageError(f"--image-hash {self.image!r}: choose one of {', '.join(IMAGE_HASHES)}")
        if self.image != "none" and (self.hash != "none" or self.entries != "raw" or self.normalize != "none"):
            raise UsageError(
                "--image-hash pdq: the list holds hex PDQ hashes and the key is each sample's image; leave out "
                "--key-hash, --blocklist-hash and --normalize"
            )

    @classmethod
    def from_options(cls, options: Mapping[str, Any], default_column: str = "url") -> KeySpec:
        """The key spec the options name (the CLI's flags with underscores: ``key``, ``key_separator``,
        ``normalize``, ``key_hash``, ``blocklist_hash``); an option that is absent or None takes its default.
        ``key`` is a column, comma-separated columns, or a list of them. The one place options become a key."""

        def given(name: str, default: Any) -> Any:
            value = options.get(name)
            return default if value is None else value  # an empty separator is a choice, not a default

        key = given("key", default_column)
        return cls(
            tuple(c.strip() for c in (key.split(",") if isinstance(key, str) else key)),
            given("key_separator", "\t"),
            given("normalize", "none"),
            given("key_hash", "none"),
            given("blocklist_hash", "raw"),
            given("image_hash", "none"),
            given("max_distance", 31),
        )

    @property
    def is_64bit(self) -> bool:
        """Keys become 64-bit integers: looked up in a fingerprint set or a Bloom filter."""
        return self.hash in HASH64

    def to_dict(self) -> dict:
        """Plain JSON types (columns as a list), so a spec read back from a receipt compares equal.

        The image fields appear only when an image hash is the key, so receipts written before they
        existed still match a run keyed by columns."""
        fields = {**asdict(self), "columns": list(self.columns)}
        if self.image == "none":
            for name in ("image", "max_distance"):
                del fields[name]
        return fields


def as_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Keys as one large_string array (binary kept as binary), whatever the column type."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type):
        return values
    if pa.types.is_string(values.type) or pa.types.is_binary(values.type):
        return _widened(values)
    if pa.types.is_binary_view(values.type):
        return values.cast(pa.large_binary())
    return values.cast(pa.large_string())


def _widened(values: pa.Array) -> pa.Array:
    """A string or binary array as large_string or large_binary: its offsets widened, its bytes and
    validity shared (a cast copies the bytes too: 0.43 ms for 40,000 URLs, this 0.02 ms)."""
    large = pa.large_string() if pa.types.is_string(values.type) else pa.large_binary()
    validity, offsets, data = values.buffers()
    if data is None or offsets is None:  # no bytes to share (only empty strings and nulls, or no values)
        return values.cast(large)
    wide = np.frombuffer(offsets, dtype=np.int32, count=values.offset + len(values) + 1).astype(np.int64)
    return pa.Array.from_buffers(
        large, len(values), [validity, pa.py_buffer(wide), data], values.null_count, values.offset
    )


def as_bytes(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Keys as large_binary: strings and bytes compare by their UTF-8 bytes, zero-copy."""
    values = as_text(values)
    return values if pa.types.is_large_binary(values.type) else values.view(pa.large_binary())


def normalize(values: pa.Array, how: str) -> pa.Array:
    if how == "strip" and pa.types.is_large_string(values.type):
        return pc.utf8_trim_whitespace(values)
    if how == "url" and pa.types.is_large_string(values.type):
        return normalize_urls(values)
    return values


def hash_keys(keys: pa.Array, spec: KeySpec) -> pa.Array:
    """The lookup value of each (normalized) key: itself, its digest, or its 64-bit hash; nulls stay null."""
    if spec.hash == "none":
        # A column of hex digests matched against hex entries: hex is case-insensitive.
        return pc.utf8_lower(keys) if spec.entries == "hex" and pa.types.is_large_string(keys.type) else keys
    from .hashing import digest, hash64

    if spec.hash in DIGESTS:
        return digest(keys, spec.hash).cast(pa.large_binary())
    hashes = hash64(keys, spec.hash)
    mask = pc.is_null(keys).to_numpy(zero_copy_only=False) if keys.null_count else None
    return pa.array(hashes, pa.uint64(), mask=mask)


def require_columns(schema: pa.Schema, spec: KeySpec, source: str) -> None:
    """Fail the shard, naming the columns it has, when a key column is missing."""
    missing = [c for c in spec.columns if c not in schema.names]
    if missing:
        shown = ", ".join(schema.names[:12])
        raise ShardError(f"{source} has no column {missing[0]!r} (it has: {shown}); choose the key with --key")


def extract_keys(table: pa.Table | pa.RecordBatch, spec: KeySpec, source: str) -> pa.Array:
    """The normalized key of every row; null where any key column is null (never matches)."""
    require_columns(table.schema, spec, source)
    parts = [as_text(table.column(c)) for c in spec.columns]
    if len(parts) == 1:
        keys = parts[0]
    else:
        parts = [p.cast(pa.large_string()) for p in parts]
        keys = pc.binary_join_element_wise(*parts, pa.scalar(spec.separator, pa.large_string()))
    return normalize(keys, spec.normalize)


def key_values(table: pa.Table | pa.RecordBatch, spec: KeySpec, source: str) -> pa.Array:
    """What each row is looked up by: its key, normalized and hashed as ``spec`` says."""
    return hash_keys(extract_keys(table, spec, source), spec)
