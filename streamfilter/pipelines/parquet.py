"""Parquet shards: row group by row group, each input row group one output row group."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa

from ..formats.parquet import ParquetShard, row_group_span
from ..formats.parquet_writer import ParquetOutput
from ..keys import require_columns
from . import Counts, ShardFiles, ShardTools


def _open(files: ShardFiles, tools: ShardTools) -> ParquetShard:
    """The shard with its footer parsed, once per shard even when a scan came first."""
    shard = files.state.get("parquet")
    if shard is None:
        shard = files.state["parquet"] = ParquetShard(files.source, files.name)
        require_columns(shard.schema, tools.rule.key, files.name)  # also for a shard without row groups
    return shard


def filter_shard(files: ShardFiles, tools: ShardTools) -> Counts:
    """Filter one Parquet shard; without a sink only the key columns are decoded and counted."""
    rule, name = tools.rule, files.name
    shard = _open(files, tools)
    # The output's plan is checked before any row group is read: a shard it cannot reproduce fails here.
    output = ParquetOutput(files.sink, shard) if files.sink is not None else None
    keys = list(rule.key.columns)
    columns = keys if output is None else None
    scanned = files.state.pop(_SCANNED, None)
    counts = Counts()
    if output is None:
        runs = ([i] for i in shard.fetched(columns))
    else:
        runs = shard.fetched_runs(apart=scanned[0] if scanned is not None else None)
    writes = WriteBehind(output, tools)
    try:
        for run in runs:
            tools.check_cancelled(name)
            i = run[0]
            if len(run) > 1:
                # Consecutive small row groups decoded and matched in one call each, then written one for one.
                table = shard.read_run(run, tools.decode_threads)
                keep = rule.keep_mask(table, name)
                start = 0
                for i in run:
                    tools.check_cancelled(name)  # a stop still takes effect at the next row group, not run
                    rows = shard.metadata.row_group(i).num_rows
                    _write(shard, writes, counts, tools, i, table.slice(start, rows), keep.slice(start, rows), True)
                    start += rows
                del table, keep
                continue
            whole = output is not None and shard.small(i)
            if scanned is not None and scanned[0] == i:
                # The scan's hit, decoded and matched already: not again.
                table, keep, whole = scanned[1], scanned[2], False
                scanned = None
            else:
                # A small row group whole; a large one's keys first, then the other columns one at a time
                # (see kept_rows).
                table = shard.whole(i, tools.decode_threads) if whole else shard.read(i, keys, tools.decode_threads)
                keep = rule.keep_mask(table, name)
            _write(shard, writes, counts, tools, i, table, keep, whole, columns)
            del table, keep  # free this row group before the next one is decoded (a write behind holds one more)
        writes.finish()
    finally:
        writes.close()
    if output is not None:
        output.close()
    return counts


def _write(
    shard: ParquetShard,
    writes: WriteBehind,
    counts: Counts,
    tools: ShardTools,
    i: int,
    table: pa.Table,
    keep: pa.Array,
    whole: bool,
    columns: list[str] | None = None,
) -> None:
    """Count row group ``i`` (``table``: all its columns if ``whole``, else its keys) and write its kept rows."""
    rows, kept = table.num_rows, keep.true_count
    counts.rows_in += rows
    counts.rows_out += kept
    if writes.output is not None:
        if whole:
            writes.write(table if kept == rows else table.filter(keep))
        else:  # the other columns are decoded here, in this thread: the reader is not shared with the writer's
            writes.write(shard.kept_rows(i, keep if kept < rows else None, table, tools.decode_threads))
    start, end = row_group_span(shard.metadata, i, columns)
    tools.progress.add(rows, end - start)  # stored (compressed) bytes, as read


class WriteBehind:
    """A shard's kept row groups to its output, in order, one at a time: each in a second thread while this
    one decodes the next row group, if a core is spare then (the end of a run, fewer shards than cores),
    else in this thread. Holds at most one row group being written besides the one being decoded.
    A write's failure is raised by the next call."""

    def __init__(self, output: ParquetOutput | None, tools: ShardTools) -> None:
        self.output, self._tools = output, tools
        self._pending: Future[None] | None = None
        self._thread: ThreadPoolExecutor | None = None

    def write(self, table: pa.Table) -> None:
        assert self.output is not None
        self.finish()
        if not self._tools.decode_threads:
            self.output.write(table)
            return
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="streamfilter-encode")
        self._pending = self._thread.submit(self.output.write, table)

    def finish(self) -> None:
        """Wait for the write in flight; raises its failure."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """End the thread once the write in flight, if any, is done (its failure is dropped: the shard fails
        with the one raised already): nothing writes to the output after this returns."""
        if self._thread is not None:
            self._thread.shutdown(wait=True)


#: Where scan_shard leaves the row group it stopped at (index, decoded keys, keep mask) for the rewrite.
_SCANNED = "parquet.scanned"
#: The most compressed key-column bytes a shard requests before its scan may start: a waiting shard holds
#: them, and many shards wait at once (engine.STORE_WAITS).
PREFETCH_BYTES = 4 * 1024 * 1024


def prefetch_scan(files: ShardFiles, tools: ShardTools) -> None:
    """Before the shard's decode slot: its footer read and parsed (a round trip), and its first row group's
    key chunks requested, as the scan will ask for them, unless they are over :data:`PREFETCH_BYTES`.
    The scan, once it has its slot, then waits on no round trip for a shard of one small row group."""
    shard = _open(files, tools)
    prefetch = getattr(files.source, "prefetch", None)
    if prefetch is None or not shard.num_row_groups:
        return
    start, end = row_group_span(shard.metadata, 0, list(tools.rule.key.columns))
    if end - start <= PREFETCH_BYTES:
        prefetch([(start, end)])


def scan_shard(files: ShardFiles, tools: ShardTools) -> Counts | None:
    """Phase one of a two-phase run: the shard's counts if no row would be removed, else None.

    Reads the footer and the key columns' chunks only, and stops at the first row
    group with a row to remove, so a shard with hits costs little more than its
    rewrite: that row group's decoded keys and mask are left for the rewrite, which
    decodes and matches them no second time (unless the set tallies kinds of rules
    per pass). A shard is called clean only after every row group's keys were
    decoded and matched: a row group that fails to decode fails the shard.
    """
    rule, name = tools.rule, files.name
    shard = _open(files, tools)
    columns = list(rule.key.columns)
    rows = stored = 0
    reuse = getattr(rule.key_set, "classify", None) is None  # a tally per pass must see every row group
    # The first row group alone: on a dense list the scan stops there, and its look-ahead would be waste.
    for i, table in enumerate(shard.row_groups(columns, use_threads=tools.decode_threads, first_alone=True)):
        tools.check_cancelled(name)
        keep = rule.keep_mask(table, name)
        if keep.false_count:
            if reuse:
                files.state[_SCANNED] = (i, table, keep)
            return None
        rows += table.num_rows
        start, end = row_group_span(shard.metadata, i, columns)
        stored += end - start
    if rows != shard.metadata.num_rows:  # every row the footer declares must have been matched
        return None
    tools.progress.add(rows, stored)
    return Counts(rows_in=rows, rows_out=rows)
