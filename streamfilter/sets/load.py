"""Loading key lists from any store: text (optionally .gz/.zst), Parquet or CSV columns.

The list is read once per run, before any shard is touched; a list that cannot be
read or parsed stops the run with exit code 2 and nothing written.
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import zstandard

from ..errors import StreamfilterError, UsageError, redact_uri
from ..keys import KeySpec, as_bytes, as_text
from ..store import Stores
from ..store.uris import object_path
from .entries import entry_values, has_tags
from .exact import ExactKeySet
from .keyset import KeySet
from .lines import keys_of_lines, text_lines
from .rules import RuleEntries, rule_key_set, split_rules

if TYPE_CHECKING:  # the hashed sets import numba: only runs that use them pay for it
    from .hashed import HashedKeySet

TABLE_SUFFIXES = (".parquet", ".csv", ".csv.gz", ".csv.zst")


def name_of(uri: str) -> str:
    """The lower-cased path of a URI, by which its kind is told: a signed URL's query is no part of it."""
    return object_path(uri)


#: The column of a Parquet list named without one: allowed when the file has exactly one column.
ONLY_COLUMN = ""


def parse_source(source: str) -> tuple[str, str | None]:
    """Split ``FILE.parquet:COLUMN`` into the object and the column; text lists have none."""
    head, sep, column = source.rpartition(":")
    if sep and name_of(head).endswith(TABLE_SUFFIXES) and column and "/" not in column:
        return head, column
    if name_of(source).endswith(".parquet"):
        return source, ONLY_COLUMN  # a one-column Parquet list (as `diff --out` writes) needs no name
    if name_of(source).endswith(TABLE_SUFFIXES):
        raise UsageError(f"--blocklist {redact_uri(source)}: name the key column, e.g. {redact_uri(source)}:url")
    return source, None


#: A compressed list may inflate to at most this many times its stored size once it is past
#: :data:`INFLATE_FREE_BYTES`; real key lists compress 3-10x, a bomb of zeros 1,000x (gzip) to 30,000x (zstd).
MAX_INFLATE_RATIO = 200
#: Below this decompressed size any ratio is accepted, so small, very repetitive lists still load.
INFLATE_FREE_BYTES = 64 * 1024 * 1024
#: Decompressed bytes produced per step while inflating, so a bomb is stopped within one step of the limit.
_GZIP_STEP = 1024 * 1024
#: Compressed bytes fed per zstd step: a zstd RLE block inflates 4 bytes to 128 KiB, so 1 KiB yields at most 32 MiB.
_ZSTD_STEP = 1024


def _gzip_steps(data: bytes) -> Iterator[bytes]:
    # GzipFile reads concatenated members and raises EOFError on a truncated one.
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as reader:
        while chunk := reader.read(_GZIP_STEP):
            yield chunk


def _zstd_steps(data: bytes) -> Iterator[bytes]:
    """Every frame of ``data`` in turn; a last frame cut short is an error, not a short list."""
    dctx = zstandard.ZstdDecompressor()
    frame, fed = dctx.decompressobj(), 0
    for pos in range(0, len(data), _ZSTD_STEP):
        chunk = data[pos : pos + _ZSTD_STEP]
        yield frame.decompress(chunk)
        fed += len(chunk)
        while frame.eof:  # one decompressobj reads one frame; the rest of the chunk starts the next
            rest = frame.unused_data
            frame, fed = dctx.decompressobj(), len(rest)
            if not rest:
                break
            yield frame.decompress(rest)
    if fed and not frame.eof:
        raise EOFError("the last zstd frame ends early")


def decompress(uri: str, data: bytes) -> bytes:
    """The list's bytes, inflated step by step and refused once they look like a decompression bomb."""
    lower = name_of(uri)
    if lower.endswith(".gz"):
        steps = _gzip_steps(data)
    elif lower.endswith(".zst"):
        steps = _zstd_steps(data)
    else:
        return data
    chunks, total = [], 0
    for chunk in steps:
        chunks.append(chunk)
        total += len(chunk)
        if total > INFLATE_FREE_BYTES and total > MAX_INFLATE_RATIO * len(data):
            raise UsageError(
                f"blocklist {redact_uri(uri)} inflates past {total:,} bytes from {len(data):,} "
                f"(over {MAX_INFLATE_RATIO}x and {INFLATE_FREE_BYTES >> 20} MiB), which looks like a "
                "decompression bomb; check the file, or pass the list uncompressed"
            )
    return b"".join(chunks)


def text_keys(data: bytes) -> tuple[pa.Array, pa.Array]:
    """One key a line; blank lines and lines starting with ``#`` are skipped, ends trimmed.

    Returns the keys and, for messages, the 0-based line index of each. Lines are those of
    ``str.splitlines`` (see :func:`.lines.text_lines`).
    """
    return keys_of_lines(text_lines(data))


#: Column names shown in messages; a list without a header row would otherwise show its first key as a name.
_COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_ .-]{0,39}")


def _column_names(names: list[str]) -> str:
    shown = [n if _COLUMN_NAME.fullmatch(n) else "…" for n in names[:12]]
    return ", ".join(shown) + (", …" if len(names) > 12 else "")


def _missing_column(uri: str, column: str, names: list[str]) -> UsageError:
    return UsageError(
        f"--blocklist {redact_uri(uri)} has no column {column!r} (it has: {_column_names(names)}); "
        "name one of those, and give a CSV list a header row"
    )


def parquet_list_keys(uri: str, data: bytes, column: str) -> pa.Array:
    pf = pq.ParquetFile(pa.BufferReader(data))
    names = pf.schema_arrow.names
    if column == ONLY_COLUMN:
        if len(names) != 1:
            shown = redact_uri(uri)
            raise UsageError(
                f"--blocklist {shown} has {len(names)} columns ({_column_names(names)}); name the key column, "
                f"e.g. {shown}:{names[0] if names and _COLUMN_NAME.fullmatch(names[0]) else 'url'}"
            )
        column = names[0]
    if column not in names:
        raise _missing_column(uri, column, pf.schema_arrow.names)
    md = pf.metadata
    declared = sum(
        md.row_group(i).column(j).total_uncompressed_size
        for i in range(md.num_row_groups)
        for j in range(md.num_columns)
        if md.row_group(i).column(j).path_in_schema.split(".", 1)[0] == column
    )
    # The same bound as for .gz/.zst lists, on the sizes the footer declares, before decoding.
    if declared > INFLATE_FREE_BYTES and declared > MAX_INFLATE_RATIO * len(data):
        raise UsageError(
            f"blocklist {redact_uri(uri)}: column {column!r} declares {declared:,} bytes decoded from a "
            f"{len(data):,}-byte file (over {MAX_INFLATE_RATIO}x and {INFLATE_FREE_BYTES >> 20} MiB), which looks "
            "like a decompression bomb; check the file"
        )
    return as_text(pf.read(columns=[column]).column(column))


def csv_list_keys(uri: str, data: bytes, column: str) -> pa.Array:
    # Keys are text: inferred as integers, "00123" would become 123 and match nothing.
    options = pacsv.ConvertOptions(include_columns=[column], column_types={column: pa.large_string()})
    try:
        table = pacsv.read_csv(pa.BufferReader(data), convert_options=options)
    except pa.ArrowKeyError:  # include_columns names a column the header lacks
        raise _missing_column(uri, column, pacsv.open_csv(pa.BufferReader(data)).schema.names) from None
    return as_text(table.column(column))


def table_keys(uri: str, data: bytes, column: str) -> pa.Array:
    if name_of(uri).endswith(".parquet"):
        return parquet_list_keys(uri, data, column)
    return csv_list_keys(uri, data, column)


def describe(exc: BaseException) -> str:
    """A library error in a few words, never quoting the list's content (keys are secret)."""
    if isinstance(exc, gzip.BadGzipFile):  # its message quotes the file's first bytes
        return "not gzip data"
    if isinstance(exc, EOFError):
        return "the compressed data ends early (a truncated file?)"
    if isinstance(exc, UnicodeDecodeError):  # its message quotes the offending byte
        return f"not UTF-8 text (at byte {exc.start:,}); save the list as UTF-8"
    message = str(exc)
    # pyarrow's CSV errors end with the offending row ("Expected 1 columns, got 2: <row>"), or quote a value.
    message = re.sub(r"(got \d+)\b.*", r"\1", message, flags=re.DOTALL)
    message = re.sub(r"'[^']*'", "'…'", message) if isinstance(exc, pa.ArrowInvalid) else message
    return f"{type(exc).__name__}: {message}"


def entry_place(uri: str, lines: pa.Array | None, base: int = 0) -> Callable[[int], str]:
    """Names entry ``i`` of a list for a message: its line in a text list, its row in a table.

    ``base`` counts the lines (or rows) before this piece, for lists read in pieces.
    """

    def where(i: int) -> str:
        if lines is None:
            return f"blocklist {redact_uri(uri)}, row {base + i + 1:,}"
        return f"blocklist {redact_uri(uri)}, line {base + lines[i].as_py() + 1:,}"

    return where


async def _read_list(uri: str, column: str | None, stores: Stores) -> tuple[pa.Array, pa.Array | None]:
    """One list's entries as text, and the line of each (None for a table); refused in one line if unreadable."""
    try:
        data = decompress(uri, await stores.for_uri(uri).read_all(uri))
        keys, lines = text_keys(data) if column is None else (table_keys(uri, data, column), None)
    except UsageError:
        raise
    except StreamfilterError as exc:
        raise UsageError(f"cannot read blocklist: {exc}") from None
    except (OSError, EOFError, ValueError, pa.ArrowException, zstandard.ZstdError) as exc:
        raise UsageError(f"cannot parse blocklist {redact_uri(uri)}: {describe(exc)}") from None
    if keys.null_count == len(keys):
        # An empty list is nearly always the wrong file; in allow mode it would empty every shard.
        raise UsageError(f"blocklist {redact_uri(uri)} holds no keys; check the file (and the column)")
    return keys, lines


async def load_keys(
    sources: list[str], stores: Stores, spec: KeySpec | None = None, rules: RuleEntries | None = None
) -> list[pa.Array]:
    """The lookup values of every source, one array per source (duplicates are removed by the set).

    Entries are converted as ``spec.entries`` says (raw keys normalized and hashed like the rows);
    without a spec the raw text keys are returned. ``domain:``/``prefix:`` lines go to ``rules``
    when given (see :mod:`.rules`); without it they are refused.
    """
    arrays = []
    for source in sources:
        uri, column = parse_source(source)
        keys, lines = await _read_list(uri, column, stores)
        if spec is not None and rules is not None and has_tags(keys):  # (has_tags: see entry_values)
            keys, lines = split_rules(keys, lines, spec, entry_place(uri, lines), rules)
        if spec is not None:
            keys = entry_values(keys, spec, entry_place(uri, lines))
        arrays.append(keys)
    if not arrays:
        raise UsageError("no membership list: pass --blocklist FILE")
    return arrays


async def build_key_set(sources: list[str], spec: KeySpec, stores: Stores) -> KeySet:
    """The run's membership set from its lists: 64-bit values in a fingerprint set, others exact;
    with domain:/prefix: rules, exact keys and rules in one :class:`.rules.RuleKeySet`; with an image
    hash as the key, the lists' hex PDQ hashes in a :class:`.perceptual.PdqKeySet`."""
    if spec.image == "pdq":
        return await _pdq_key_set(sources, spec, stores)
    rules = RuleEntries()
    arrays = await load_keys(sources, stores, spec, rules)
    if spec.is_64bit or (arrays and pa.types.is_uint64(arrays[0].type)):
        from .hashed import HashedKeySet

        return HashedKeySet.from_values(pa.concat_arrays(arrays))
    exact = ExactKeySet(pa.concat_arrays([as_bytes(keys) for keys in arrays]))
    return rule_key_set(exact if exact.size else None, rules) if rules else exact


async def _pdq_key_set(sources: list[str], spec: KeySpec, stores: Stores) -> KeySet:
    from ..image_hash import check_available
    from .perceptual import PdqKeySet, parse_hex  # numba: only runs that match images pay its import

    check_available()  # before any shard: the run would fail every one of them
    hashes = []
    for source in sources:
        uri, column = parse_source(source)
        keys, lines = await _read_list(uri, column, stores)
        hashes.append(parse_hex(keys, entry_place(uri, lines)))
    return PdqKeySet(np.concatenate(hashes), spec.max_distance)


#: The flag that sets each KeySpec field, for messages.
KEY_FLAGS = {
    "columns": "--key", "separator": "--key-separator", "normalize": "--normalize", "hash": "--key-hash",
    "entries": "--blocklist-hash",
}  # fmt: skip


def filter_key_spec(built: dict, spec: KeySpec, given: frozenset[str] | None, source: str) -> KeySpec:
    """The run's key spec with a filter file: the one the file records, with the parts the user chose.

    A part the user chose (``given``; None: every part) must agree with the file's, since the file holds
    hashes of keys made that way; the key columns may be renamed (they are the shards' names), but not
    be more or fewer. Parts left to their defaults are taken from the file.
    """
    chosen = set(KEY_FLAGS) if given is None else set(given)
    mine = spec.to_dict()
    differs = [
        f"{KEY_FLAGS[name]} {built.get(name)!r} (this run: {mine[name]!r})"
        for name in ("normalize", "hash", "separator", "entries")
        if name in chosen and built.get(name) != mine[name]
    ]
    columns = built.get("columns")
    if "columns" in chosen and len(columns or []) != len(spec.columns):
        differs.append(f"{len(columns or [])} key column(s) (this run: {len(spec.columns)})")
    if differs:
        raise UsageError(
            f"--filter {source} was built with {'; '.join(differs)}; leave these flags out (the file's key spec "
            "is used) or build the filter again with them"
        )
    try:
        return KeySpec(
            tuple(spec.columns if "columns" in chosen else columns),  # type: ignore[arg-type]
            *(mine[name] if name in chosen else built[name] for name in ("separator", "normalize", "hash", "entries")),
        )
    except (KeyError, TypeError, UsageError) as exc:
        raise UsageError(f"--filter {source} records a key spec this streamfilter cannot use ({exc})") from None


async def open_filter(
    uri: str, spec: KeySpec, stores: Stores, given: frozenset[str] | None = None
) -> tuple[KeySpec, HashedKeySet]:
    """A membership file built by ``build-filter``, and the key spec to run it with (see
    :func:`filter_key_spec`), checked before any shard."""
    from .filterfile import load_set
    from .hashed import HashedKeySet

    try:
        data = await stores.for_uri(uri).read_all(uri) if "://" in uri else uri
    except StreamfilterError as exc:
        raise UsageError(f"cannot read --filter: {exc}") from None
    header, structure = load_set(data, source=redact_uri(uri))
    key = filter_key_spec(header["key_spec"], spec, given, redact_uri(uri))
    if not key.is_64bit:  # a file build-filter did not write: it only keeps 64-bit hashes
        raise UsageError(f"--filter {redact_uri(uri)} records the key hash {key.hash!r}, not a 64-bit one; "
                         "build the filter again with build-filter")  # fmt: skip
    return key, HashedKeySet(structure, "sha256:" + header["body_sha256"], int(header["key_count"]))


async def load_filter(uri: str, spec: KeySpec, stores: Stores) -> HashedKeySet:
    """A membership file whose recorded key spec must equal ``spec`` in every part."""
    return (await open_filter(uri, spec, stores))[1]
