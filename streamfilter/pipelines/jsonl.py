"""JSON Lines shards: each line parsed with orjson for its key, kept lines written back byte for byte.

Decisions, for the record:
- Blank lines (empty, or only spaces, tabs and CRs) are not rows: they are kept
  where they are and counted nowhere.
- A key field is found by name at the top level, or by a dotted path into nested
  objects (``meta.url``). A string is the key; a number or boolean is keyed by its
  JSON text as orjson writes it (``123``, ``1.5``, ``true``); a missing field,
  ``null``, an object or an array leaves the line unkeyed (as does a line whose
  JSON is not an object): ``--on-unkeyed fail`` fails the shard naming the line,
  ``keep`` keeps it (in either mode) and counts it.
- One line, one document. pyarrow's JSON reader was measured faster (about 2x on
  LAION-like lines) but skips blank lines, accepts two documents on one line and
  does not check the UTF-8 of fields it ignores, so its rows cannot be trusted to
  line up with the lines that are written back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
import pyarrow as pa

from ..errors import ShardError
from ..formats.jsonl import JsonLinesReader, JsonLinesWriter
from . import Counts, Filter, ShardFiles, ShardTools

_BOM = b"\xef\xbb\xbf"
_BLANK = b" \t\r"


def parse_json(data: bytes) -> object:
    """The document in ``data`` (a leading UTF-8 byte order mark allowed); ValueError when it is not JSON."""
    return orjson.loads(data[3:] if data.startswith(_BOM) else data)


def key_paths(columns: Sequence[str]) -> list[tuple[str, ...]]:
    """Each key column as a path of field names: ``meta.url`` -> (``meta``, ``url``)."""
    return [tuple(c.split(".")) for c in columns]


def field_text(doc: object, path: tuple[str, ...]) -> str | None:
    """The key text at ``path`` in ``doc``; None when it is missing, null, an object or an array."""
    value = doc
    for name in path:
        if type(value) is not dict:
            return None
        value = value.get(name)
    if type(value) is str:
        return value
    if value is None or isinstance(value, dict | list):
        return None
    return orjson.dumps(value).decode()


class KeyBatch:
    """Key texts of the keyed rows of one batch, column by column, for one ``keep_mask`` call."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self._paths = key_paths(columns)
        self._values: list[list[str]] = [[] for _ in columns]
        #: Index (in the caller's numbering) of each keyed row.
        self.rows: list[int] = []

    def add(self, index: int, doc: object) -> str | None:
        """Record ``doc``'s key; returns the first unusable field's name instead when it has none."""
        if len(self._paths) == 1:
            text = field_text(doc, self._paths[0])
            if text is None:
                return self.columns[0]
            self._values[0].append(text)
        else:
            texts = [field_text(doc, path) for path in self._paths]
            if None in texts:
                return self.columns[texts.index(None)]
            for values, text in zip(self._values, texts, strict=True):
                values.append(text)  # type: ignore[arg-type]
        self.rows.append(index)
        return None

    def keep(self, rule: Filter, source: str) -> np.ndarray:
        """The keep decision of each keyed row, in ``rows`` order (one vectorized call)."""
        if not self.rows:
            return np.zeros(0, bool)
        table = pa.table({c: pa.array(v, pa.large_string()) for c, v in zip(self.columns, self._values, strict=True)})
        mask = rule.keep_mask(table, source)
        return mask.fill_null(False).to_numpy(zero_copy_only=False)


def unkeyed_message(source: str, where: str, field: str) -> str:
    return (
        f"{source}: {where} has no usable {field!r} (missing, null, an object or an array); fix the data, "
        "choose the key with --key, or pass --on-unkeyed keep to keep such rows"
    )


def filter_shard(files: ShardFiles, tools: ShardTools) -> Counts:
    """Filter one JSON Lines shard; without a sink lines are only counted."""
    name, rule = files.name, tools.rule
    reader = JsonLinesReader(files.source, name)
    writer = JsonLinesWriter(files.sink, reader.codec) if files.sink is not None else None
    counts = Counts()
    loads = orjson.loads
    reported = unkeyed = 0
    for batch in reader.batches():
        tools.check_cancelled(name)
        lines = batch.data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()  # the piece after the last newline
        keys = KeyBatch(rule.key.columns)
        keep = np.ones(len(lines), bool)
        rows = 0
        for i, line in enumerate(lines):
            try:
                doc = loads(line)
            except orjson.JSONDecodeError:
                if not line.strip(_BLANK):
                    continue
                number = batch.first_line + i
                try:
                    if number != 1:
                        raise ValueError
                    doc = parse_json(line)  # the first line may start with a byte order mark
                except ValueError:
                    raise ShardError(
                        f"{name}: line {number} is not JSON; fix the line or the shard (it is not removed silently)"
                    ) from None
            rows += 1
            missing = keys.add(i, doc)
            if missing is not None:
                if tools.on_unkeyed != "keep":
                    raise ShardError(unkeyed_message(name, f"line {batch.first_line + i}", missing))
                unkeyed += 1
        if keys.rows:
            keep[keys.rows] = keys.keep(rule, name)
        kept = int(keep.sum())
        counts.rows_in += rows
        counts.rows_out += rows - (len(lines) - kept)
        if writer is not None:
            _write_kept(writer, batch.data, lines, keep, kept)
        tools.progress.add(rows, batch.bytes_read - reported)
        reported = batch.bytes_read
    if writer is not None:
        writer.close()
    counts.unkeyed = unkeyed
    return counts


def _write_kept(writer: JsonLinesWriter, data: bytes, lines: list[bytes], keep: np.ndarray, kept: int) -> None:
    """Write the kept lines as runs of the batch's bytes, not line by line."""
    if kept == len(lines):
        writer.write(data)
        return
    ends = np.cumsum(np.fromiter(map(len, lines), np.int64, len(lines)) + 1)
    starts = np.concatenate(([0], ends[:-1]))
    edges = np.diff(np.concatenate(([0], keep.view(np.int8), [0])))
    view = memoryview(data)
    for first, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        writer.write(view[starts[first] : min(int(ends[stop - 1]), len(data))])
