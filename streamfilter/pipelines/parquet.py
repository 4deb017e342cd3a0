"""Parquet shards: row group by row group, each input row group one output row group."""

from __future__ import annotations

from ..formats.parquet import ParquetOutput, ParquetShard, row_group_span
from ..keys import require_columns
from . import Counts, ShardFiles, ShardTools


def filter_shard(files: ShardFiles, tools: ShardTools) -> Counts:
    """Filter one Parquet shard; without a sink only the key columns are decoded and counted."""
    rule, name = tools.rule, files.name
    shard = ParquetShard(files.source, name)
    require_columns(shard.schema, rule.key, name)  # also for a shard without row groups
    output = ParquetOutput(files.sink, shard.schema, shard.metadata) if files.sink is not None else None
    columns = list(rule.key.columns) if output is None else None
    counts = Counts()
    for i, table in enumerate(shard.row_groups(columns, use_threads=tools.decode_threads)):
        tools.check_cancelled(name)
        keep = rule.keep_mask(table, name)
        kept = keep.true_count
        counts.rows_in += table.num_rows
        counts.rows_out += kept
        if output is not None:
            output.write(table if kept == table.num_rows else table.filter(keep))
        start, end = row_group_span(shard.metadata, i, columns)
        tools.progress.add(table.num_rows, end - start)  # stored (compressed) bytes, as read
        del table, keep  # free this row group before the next one is decoded: one, not two, in memory
    if output is not None:
        output.close()
    return counts
