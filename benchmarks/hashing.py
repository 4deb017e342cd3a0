"""Single-thread rates of key hashing and URL normalization on LAION-like URLs.

    python benchmarks/hashing.py                    # markdown table, then the JSON, on stdout
    python benchmarks/hashing.py --json out.json    # the JSON to a file instead
    python benchmarks/hashing.py --rows 500000      # a quicker run

Generates ~2 M URLs of 60-100 bytes (real LAION hosts and path shapes, some
non-ASCII paths), then times each 64-bit hash, each digest and URL normalization
in three mixes: typical (no row needs rewriting), 5% of rows with a percent-encoding
to normalize, and every row with an upper-case host (the slow path for all rows).
The digests and the all-slow-path mix run on 200 k rows only (about a microsecond
a row each), so the whole script stays around a minute. Each figure is the median
of 5 runs after one warm-up call. Arrow's thread pool is set to one thread, and
the numba kernels run on the calling thread, so every figure is one core's; the
last column divides by the calling thread's CPU time instead of wall time, which
is the fairer figure on a shared machine. One extra row shows ``xxh3_64`` split
over 2 threads (the kernels release the GIL), wall clock only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamfilter import hashing, urls  # after the path insert: runs from a checkout

RUNS = 5
SLOW_ROWS = 200_000  # digests and the all-slow-path URL mix
PREFIXES = [
    "https://i.pinimg.com/originals/",
    "https://cdn.shopify.com/s/files/1/0234/5678/products/",
    "http://www.example-shop.com/wp-content/uploads/2019/05/",
    "https://images-na.ssl-images-amazon.com/images/I/",
    "https://ae01.alicdn.com/kf/",
    "https://media.istockphoto.com/photos/",
    "https://www.bilder-beispiel.de/produkte/grüne-",
    "https://img.example.jp/写真/",
]
ALPHABET = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", dtype=np.uint8)


def laion_urls(n: int, percent: float = 0.0, upper_host: bool = False, seed: int = 0) -> pa.Array:
    """``n`` URLs of 60-100 UTF-8 bytes: a host/path prefix, a random slug, ``.jpg``."""
    rng = np.random.default_rng(seed)
    prefixes = [p.upper() if upper_host else p for p in PREFIXES]
    which = rng.integers(0, len(prefixes), n)
    prefix_bytes = np.array([len(p.encode()) for p in prefixes])[which]
    slug_bytes = rng.integers(60, 101, n) - prefix_bytes - len(".jpg")
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(slug_bytes, out=offsets[1:])
    chars = ALPHABET[rng.integers(0, len(ALPHABET), int(offsets[-1]))]
    slug = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars))
    if percent:
        # "%7e" is an encoded "~": rule 7 rewrites it, so these rows take the slow path.
        slug = pc.if_else(pa.array(rng.random(n) < percent), pc.utf8_replace_slice(slug, 3, 6, "%7e"), slug)
    prefix = pa.array(prefixes, pa.large_string()).take(pa.array(which))
    return pc.binary_join_element_wise(prefix, slug, *(pa.scalar(s, pa.large_string()) for s in (".jpg", "")))


def timed(fn: Callable[[], Any], rows: int) -> dict[str, float | None]:
    """Rows per second of RUNS timed calls after one warm-up call: wall-clock median and best, and per CPU-second.

    The CPU-time rate (this thread's CPU time) is what one core does when the machine
    is shared: on a busy host the wall-clock rate also counts time spent descheduled.
    """
    fn()
    wall, cpu = [], []
    for _ in range(RUNS):
        start, start_cpu = time.perf_counter(), time.thread_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
    median = statistics.median(wall)
    return {
        "rows": rows,
        "median_s": median,
        "rows_per_s": rows / median,
        "best_rows_per_s": rows / min(wall),
        "rows_per_cpu_s": rows / statistics.median(cpu),
    }


def hash64_threads(values: pa.Array, algorithm: str, threads: int) -> np.ndarray:
    """hash64 over ``threads`` slices at once: the numba kernels release the GIL."""
    step = -(-len(values) // threads)
    with ThreadPoolExecutor(threads) as pool:
        parts = pool.map(lambda i: hashing.hash64(values.slice(i, step), algorithm), range(0, len(values), step))
        return np.concatenate(list(parts))


def run(rows: int) -> dict[str, Any]:
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    start = time.perf_counter()
    hashing.warm_up()
    warm_up_s = time.perf_counter() - start

    typical = laion_urls(rows)
    lengths = pc.binary_length(typical)
    results: dict[str, dict[str, float | None]] = {}
    for algorithm in hashing.HASH64:
        results[f"hash64 {algorithm}"] = timed(lambda a=algorithm: hashing.hash64(typical, a), rows)
    results["hash64 xxh3_64, 2 threads"] = timed(lambda: hash64_threads(typical, "xxh3_64", 2), rows)
    results["hash64 xxh3_64, 2 threads"]["rows_per_cpu_s"] = None  # the work is on the pool's threads
    sample = typical.slice(0, min(rows, SLOW_ROWS))
    for algorithm in hashing.DIGESTS:
        results[f"digest {algorithm}"] = timed(lambda a=algorithm: hashing.digest(sample, a), len(sample))
    mixes = {
        "typical (no row to rewrite)": typical,
        "5% rows percent-encoded": laion_urls(rows, percent=0.05, seed=1),
        "every host upper-case": laion_urls(min(rows, SLOW_ROWS), upper_host=True, seed=2),
    }
    for name, values in mixes.items():
        results[f"normalize_urls, {name}"] = timed(lambda v=values: urls.normalize_urls(v), len(values))
    return {
        "rows": rows,
        "url_bytes": {"min": pc.min(lengths).as_py(), "mean": pc.mean(lengths).as_py(), "max": pc.max(lengths).as_py()},
        "warm_up_s": warm_up_s,
        "results": results,
        "environment": {
            "python": platform.python_version(),
            "numba": numba.__version__,
            "numpy": np.__version__,
            "pyarrow": pa.__version__,
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
    }


def markdown(report: dict[str, Any]) -> str:
    b = report["url_bytes"]
    lines = [
        f"{report['rows']:,} LAION-like URLs, {b['min']}-{b['max']} bytes (mean {b['mean']:.0f}); "
        f"one core unless stated; median of {RUNS} runs; warm-up (compile or cache load) {report['warm_up_s']:.1f} s; "
        f"load average {report['environment']['load_average'][0]:.2f}",
        "",
        "| operation | rows timed | M rows/s (median) | M rows/s (best) | M rows per CPU-second (median) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in report["results"].items():
        rates = [r["rows_per_s"], r["best_rows_per_s"], r["rows_per_cpu_s"]]
        shown = ["-" if x is None else f"{x / 1e6:.2f}" for x in rates]
        lines.append(f"| {name} | {r['rows']:,} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="URLs to generate (default 2,000,000)")
    parser.add_argument("--json", type=Path, help="write the JSON report here instead of to stdout")
    args = parser.parse_args()
    report = run(args.rows)
    print(markdown(report))
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    else:
        print()
        print(text)


if __name__ == "__main__":
    main()
