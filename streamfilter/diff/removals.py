"""The removal list a diff writes: the derivative's keys the reference lacks, as ``run --blocklist`` reads them.

Keys are written as the derivative's shards hold them (key columns joined by the
separator, before normalization), once each, sorted, so ``run --blocklist LIST``
with the derivative's ``--key`` matches them exactly, and the same diff always
writes the same bytes.

- ``.parquet``: one column, ``key`` (string, or binary if a key is not UTF-8), with
  the diff's key specs and counts in the file's metadata; any key survives.
- anything else: text, one key a line (``.gz``/``.zst`` compressed by extension). A
  text list trims each line and skips blank and ``#`` lines, so a key that text
  cannot carry (a line break, surrounding whitespace, a leading ``#``, empty) is
  refused with a message that names the Parquet form instead of being changed.
"""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

from ..errors import UsageError, redact_uri
from ..sets.load import name_of

#: Every character ``str.splitlines`` breaks a line at (the list loader splits with it), as literal characters.
_LINE_BREAKS = "[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]"


def _text_safe(keys: pa.Array) -> bool:
    text = keys.cast(pa.large_string())
    trimmed = pc.utf8_trim_whitespace(text)
    unsafe = pc.or_(
        pc.or_(pc.not_equal(trimmed, text), pc.equal(text, "")),
        pc.or_(pc.starts_with(text, "#"), pc.match_substring_regex(text, _LINE_BREAKS)),
    )
    return not pc.any(unsafe).as_py()


def _as_text(keys: pa.Array) -> pa.Array | None:
    try:
        return keys.cast(pa.large_string())  # validates UTF-8
    except pa.ArrowInvalid:
        return None


#: Keys joined into text at a time: binary_join's string output has 32-bit offsets.
_JOIN_ROWS = 100_000


def _lines(keys: pa.Array) -> bytes:
    """The keys as text, one a line (joined by Arrow, not a loop over the keys)."""
    whole = pc.binary_join(pa.LargeListArray.from_arrays([0, len(keys)], keys.cast(pa.string())), "\n")
    return (whole[0].as_py() + "\n").encode("utf-8")


def encode_removals(keys: pa.Array, out: str, spill: str, metadata: dict) -> bytes:
    """The bytes of the list at ``out``: Parquet by extension, else text (optionally compressed)."""
    lower = name_of(out)
    text = _as_text(keys)
    if lower.endswith(".parquet"):
        column = text if text is not None else keys
        table = pa.table({"key": column}).replace_schema_metadata({"streamfilter.diff": json.dumps(metadata)})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue().to_pybytes()
    if text is None or (len(text) and not _text_safe(text)):
        raise UsageError(
            f"--out {redact_uri(out)}: some keys cannot be written one a line (line breaks, surrounding "
            f"whitespace, a leading '#' or non-UTF-8 bytes); name a .parquet file instead, with --spill "
            f"{redact_uri(spill)} to reuse the work done"
        )
    body = b"".join(_lines(text[i : i + _JOIN_ROWS]) for i in range(0, len(text), _JOIN_ROWS))
    if lower.endswith(".gz"):
        return gzip.compress(body, mtime=0)
    if lower.endswith(".zst"):
        return zstandard.ZstdCompressor().compress(body)
    return body
