"""Parquet decode, column by column: pyarrow (streamfilter's reader) against Polars, in this process.

What is left of the dense gap to Polars (README, "Dense, every shape") is pyarrow's
decoding; this prints, for one shard, the CPU each library spends decoding each column
alone from bytes in memory (no I/O), with the ways of reading strings pyarrow offers.

    python benchmarks/decode_columns.py SHARD.parquet [--runs 5]

e.g. a shard of ``shapes.py``'s data: ``--data DIR`` puts it under
``DIR/shapes/8sh-5rg-80k-snappy/shards/00000.parquet``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = cpu_s()
        fn()
        times.append(cpu_s() - start)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shard", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    data = args.shard.read_bytes()
    schema = pq.ParquetFile(pa.BufferReader(data)).schema_arrow

    def pyarrow_read(column: str, **options: object) -> Callable[[], object]:
        return lambda: pq.read_table(pa.BufferReader(data), columns=[column], use_threads=False, **options)

    print(f"{args.shard}: {len(data) / 1e6:.1f} MB, CPU ms to decode each column alone, median of {args.runs}")
    print("| column | type | pyarrow | pyarrow as views | pyarrow as dictionary | Polars | pyarrow / Polars |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for field in schema:
        name = field.name
        plain = median_ms(pyarrow_read(name), args.runs)
        polars = median_ms(lambda name=name: pl.read_parquet(data, columns=[name]), args.runs)
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            views_schema = pa.schema([pa.field(name, pa.string_view())])
            views = f"{median_ms(pyarrow_read(name, schema=views_schema), args.runs):.1f}"
            dictionary = f"{median_ms(pyarrow_read(name, read_dictionary=[name]), args.runs):.1f}"
        else:
            views = dictionary = "-"
        print(f"| {name} | {field.type} | {plain:.1f} | {views} | {dictionary} | {polars:.1f} | {plain / polars:.2f} |")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # Polars' and pyarrow's thread pools can race at interpreter teardown ("terminate called without an
    # active exception", once in five runs here): the figures are out, so leave without the teardown.
    os._exit(code)
