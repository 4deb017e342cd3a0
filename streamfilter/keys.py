"""Which value of a row is its key, and how it is normalized before lookup."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from .errors import ShardError, UsageError

Normalization = Literal["none", "strip"]
NORMALIZATIONS: tuple[str, ...] = ("none", "strip")


@dataclass(frozen=True)
class KeySpec:
    """The key of a row: one column, or several joined by ``separator``.

    ``normalize`` is applied to both the rows' keys and the list's keys, so a
    list written with stray whitespace still matches under ``strip``.
    """

    columns: tuple[str, ...] = ("url",)
    separator: str = "\t"
    normalize: Normalization = "none"

    def __post_init__(self) -> None:
        if not self.columns or any(not c for c in self.columns):
            raise UsageError("--key: name at least one column, e.g. --key url or --key url,caption")
        if self.normalize not in NORMALIZATIONS:
            raise UsageError(f"--normalize {self.normalize!r}: choose one of {', '.join(NORMALIZATIONS)}")

    def to_dict(self) -> dict:
        """Plain JSON types (columns as a list), so a spec read back from a receipt compares equal."""
        return {**asdict(self), "columns": list(self.columns)}


def as_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Keys as one large_string array (binary kept as binary), whatever the column type."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type):
        return values
    if pa.types.is_binary(values.type) or pa.types.is_binary_view(values.type):
        return values.cast(pa.large_binary())
    return values.cast(pa.large_string())


def as_bytes(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Keys as large_binary: strings and bytes compare by their UTF-8 bytes, zero-copy."""
    values = as_text(values)
    return values if pa.types.is_large_binary(values.type) else values.view(pa.large_binary())


def normalize(values: pa.Array, how: Normalization) -> pa.Array:
    if how == "strip" and pa.types.is_large_string(values.type):
        return pc.utf8_trim_whitespace(values)
    return values


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
