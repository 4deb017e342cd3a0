"""Benchmark the 64-bit membership structures: FingerprintSet and BloomFilter, and their file format.

    python benchmarks/membership.py                        # 100 M keys (~6 GiB peak RSS, a few minutes)
    python benchmarks/membership.py --keys 10000000        # quick run
    python benchmarks/membership.py --json results/membership.json

For ``--keys`` random uint64 keys (stand-ins for xxh3_64 hashes), for each structure:

- build time from the in-memory array, and the peak RSS of the build above the input array, both
  measured in a fresh process that holds only the input (high-water mark from ``/proc/self/status``);
- size on disk, write time;
- load time from the local file (memory-mapped), with and without the SHA-256 verification. The file
  was just written, so it is in the page cache: these are warm-cache figures, not disk reads;
- lookup rate on ONE thread, batches of ``--batch`` queries of which ``--present`` (1%) are members,
  the rest random (absent), against the full set and against a set of 10 M keys (or ``--keys`` if
  smaller), both for the structure in memory and for the one memory-mapped from its file;
- measured false-positive rate on 10 M absent keys (Bloom; the fingerprint set must give 0);
- peak RSS of the whole process.

Prints a markdown table; ``--json`` also writes every figure. The machine may be shared: rates are
the best of ``--repeats`` passes, each over ``--lookups`` queries.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamfilter.sets.bloom import BloomFilter
from streamfilter.sets.filterfile import load_set, write_set
from streamfilter.sets.fingerprints import FingerprintSet, collision_bound

MiB = 1024 * 1024
SMALL_SET = 10_000_000
FPR_QUERIES = 10_000_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keys", type=int, default=100_000_000, help="keys in the large set (default 100M)")
    p.add_argument("--fpr", type=float, default=1e-4, help="Bloom filter target false-positive rate")
    p.add_argument("--batch", type=int, default=100_000, help="queries per contains() call")
    p.add_argument("--lookups", type=int, default=10_000_000, help="queries per timed pass")
    p.add_argument("--repeats", type=int, default=3, help="timed passes; the best is reported")
    p.add_argument("--present", type=float, default=0.01, help="fraction of queries that are members")
    p.add_argument("--dir", type=Path, default=None, help="where to write the files (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--child-build", choices=["fingerprints", "bloom"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- measuring ---


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """VmHWM, the peak RSS (since the last reset through /proc/self/clear_refs)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def builder(name: str, fpr: float) -> Callable[[np.ndarray], Any]:
    if name == "fingerprints":
        return FingerprintSet.from_hashes
    return lambda h: BloomFilter.from_hashes(h, fpr)


def make_keys(args: argparse.Namespace) -> np.ndarray:
    return np.random.default_rng(args.seed).integers(0, 2**64, args.keys, dtype=np.uint64, endpoint=False)


def child_build(args: argparse.Namespace) -> None:
    """In a fresh process: build once; print the seconds and the peak RSS above the input's as JSON.

    A fresh process, because in a long-lived one malloc reuses memory freed by earlier steps
    without the RSS growing, which hides a build's real footprint.
    """
    keys = make_keys(args)
    build = builder(args.child_build, args.fpr)
    build(keys[:1000])  # load the compiled kernels outside the measurement
    before = rss_now()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    seconds, _ = timed(lambda: build(keys))
    print(json.dumps({"build_s": seconds, "build_peak_extra_bytes": peak_rss() - before}))


def build_measured(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child-build", name, "--keys", str(args.keys), "--seed", str(args.seed)]
    done = subprocess.run([*cmd, "--fpr", str(args.fpr)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def query_batches(members: np.ndarray, args: argparse.Namespace, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of mostly absent random hashes, with ``--present`` of them drawn from the members."""
    n_batches = max(1, args.lookups // args.batch)
    batches = []
    for _ in range(n_batches):
        q = rng.integers(0, 2**64, args.batch, dtype=np.uint64, endpoint=False)
        hits = rng.random(args.batch) < args.present
        q[hits] = members[rng.integers(0, len(members), int(hits.sum()))]
        batches.append(q)
    return batches


def lookup_rate(structure: Any, batches: list[np.ndarray], repeats: int) -> dict[str, float]:
    """Best queries/s over ``repeats`` single-threaded passes through all batches, by wall and CPU time.

    The CPU-time rate (this thread's CPU seconds) discounts time slices lost to other processes on a
    shared machine; both still include their effect on the caches and memory bandwidth.
    """
    structure.contains(batches[0])  # compile / fault in outside the timing
    n = len(batches) * len(batches[0])
    wall = cpu = 0.0
    for _ in range(repeats):
        t, c = time.perf_counter(), time.thread_time()
        for q in batches:
            structure.contains(q)
        wall = max(wall, n / (time.perf_counter() - t))
        cpu = max(cpu, n / max(time.thread_time() - c, 1e-9))
    return {"wall": wall, "cpu": cpu}


def measured_fpr(structure: Any, rng: np.random.Generator, n: int = FPR_QUERIES) -> float:
    # Random 64-bit values: one equals a member with probability < n_keys / 2**64, negligible here.
    positives = 0
    for start in range(0, n, 1_000_000):
        positives += int(structure.contains(rng.integers(0, 2**64, min(1_000_000, n - start), np.uint64)).sum())
    return positives / n


# --- one structure ---


def file_figures(structure: Any, path: Path, n_keys: int, target_fpr: float | None) -> dict[str, Any]:
    seconds, _ = timed(
        lambda: write_set(
            path,
            structure,
            hash_name="random64",
            key_spec={"benchmark": "membership"},
            key_count=n_keys,
            target_fpr=target_fpr,
            created_by="benchmarks/membership.py",
        )
    )
    verified_s, (_, verified) = timed(lambda: load_set(path, verify=True))
    unverified_s, (_, unverified) = timed(lambda: load_set(path, verify=False))
    return {
        "write_s": seconds,
        "file_bytes": path.stat().st_size,
        "load_verified_s": verified_s,
        "load_unverified_s": unverified_s,
        "loaded": verified,  # its pages were touched by the checksum: mapped and resident
        "loaded_unverified": unverified,
    }


def bench_structure(
    name: str, keys: np.ndarray, small_keys: np.ndarray, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed + 7)
    build = builder(name, args.fpr)
    print(f"[{name}] building {len(keys):,} keys (timed in a fresh process)", flush=True)
    fig = build_measured(name, args)
    structure = build(keys)
    fig["size_bytes"] = structure.size_bytes
    print(f"[{name}] writing and loading", flush=True)
    fig.update(file_figures(structure, workdir / f"{name}.sfm", len(keys), getattr(structure, "target_fpr", None)))
    loaded = fig.pop("loaded")
    fig.pop("loaded_unverified")
    assert loaded.contains(keys[:100_000]).all(), "false negative"
    print(f"[{name}] lookups", flush=True)
    big = query_batches(keys, args, rng)
    fig["lookup_full_mem_per_s"] = lookup_rate(structure, big, args.repeats)
    fig["lookup_full_mmap_per_s"] = lookup_rate(loaded, big, args.repeats)
    fig["fpr_measured"] = measured_fpr(structure, rng)
    if hasattr(structure, "expected_fpr"):
        fig["fpr_expected"] = structure.expected_fpr()
    del structure, loaded
    small = build(small_keys)
    path = workdir / f"{name}-small.sfm"
    target = getattr(small, "target_fpr", None)
    write_set(
        path, small, hash_name="random64", key_spec={}, key_count=len(small_keys), target_fpr=target, created_by=""
    )
    _, small_loaded = load_set(path)
    batches = query_batches(small_keys, args, rng)
    fig["lookup_small_mem_per_s"] = lookup_rate(small, batches, args.repeats)
    fig["lookup_small_mmap_per_s"] = lookup_rate(small_loaded, batches, args.repeats)
    return fig


def baseline_searchsorted(small_keys: np.ndarray, args: argparse.Namespace) -> float:
    """np.searchsorted over the sorted small set: the plain-numpy alternative, for scale."""
    sorted_keys = np.unique(small_keys)
    batches = query_batches(small_keys, args, np.random.default_rng(args.seed + 9))[:10]
    t = time.perf_counter()
    for q in batches:
        pos = np.minimum(np.searchsorted(sorted_keys, q), len(sorted_keys) - 1)
        _ = sorted_keys[pos] == q
    return len(batches) * len(batches[0]) / (time.perf_counter() - t)


# --- report ---


def _rate(v: dict[str, float]) -> str:
    return f"{v['wall'] / 1e6:.1f} / {v['cpu'] / 1e6:.1f}"


ROWS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("build_s", "build time (s)", lambda v: f"{v:.2f}"),
    ("build_peak_extra_bytes", "build peak RSS above the input array (MiB)", lambda v: f"{v / MiB:,.0f}"),
    ("size_bytes", "size in memory (MiB)", lambda v: f"{v / MiB:,.0f}"),
    ("file_bytes", "size on disk (MiB)", lambda v: f"{v / MiB:,.1f}"),
    ("write_s", "write time (s)", lambda v: f"{v:.2f}"),
    ("load_verified_s", "load, mmap + SHA-256 verify (s, warm cache)", lambda v: f"{v:.3f}"),
    ("load_unverified_s", "load, mmap, no verify (s)", lambda v: f"{v:.4f}"),
    ("lookup_full_mem_per_s", "lookup vs full set, in memory (M keys/s wall / per CPU-s, 1 thread)", _rate),
    ("lookup_full_mmap_per_s", "lookup vs full set, mmapped file (M keys/s)", _rate),
    ("lookup_small_mem_per_s", "lookup vs 10 M set, in memory (M keys/s)", _rate),
    ("lookup_small_mmap_per_s", "lookup vs 10 M set, mmapped file (M keys/s)", _rate),
    ("fpr_measured", "measured FPR (10 M absent keys)", lambda v: f"{v:.3g}"),
    ("fpr_expected", "expected FPR (from the filter's bits)", lambda v: f"{v:.3g}"),
]


def markdown(results: dict[str, Any]) -> str:
    fp, bf = results["fingerprints"], results["bloom"]
    lines = [
        f"Membership structures, {results['keys']:,} random uint64 keys; Bloom target FPR {results['fpr']:g}; "
        f"lookups in batches of {results['batch']:,}, {results['present']:.0%} present.",
        "",
        "| | fingerprints | bloom |",
        "|---|---:|---:|",
    ]
    for key, label, fmt in ROWS:
        cells = [fmt(f[key]) if key in f else "-" for f in (fp, bf)]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        f"- np.searchsorted against the 10 M set, for scale: {results['searchsorted_per_s'] / 1e6:.1f} M keys/s",
        f"- fingerprint collisions expected for 10 G absent queries: {results['collision_bound_10G']:.3g}",
        f"- peak RSS of the benchmark process (builds excluded): {results['peak_rss_bytes'] / MiB:,.0f} MiB; "
        f"input array {results['keys'] * 8 / MiB:,.0f} MiB",
        f"- machine: {results['machine']}",
    ]
    return "\n".join(lines)


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child_build:
        child_build(args)
        return
    keys = make_keys(args)
    small_keys = keys[: min(SMALL_SET, args.keys)].copy()
    results: dict[str, Any] = {"keys": args.keys, "fpr": args.fpr, "batch": args.batch, "present": args.present}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="membership-bench-") as tmp:
        for name in ("fingerprints", "bloom"):
            results[name] = bench_structure(name, keys, small_keys, args, Path(tmp))
    results["searchsorted_per_s"] = baseline_searchsorted(small_keys, args)
    results["collision_bound_10G"] = collision_bound(args.keys, 10_000_000_000)
    results["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results["machine"] = machine()
    print(markdown(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
