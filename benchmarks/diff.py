"""Benchmark ``streamfilter diff`` against DuckDB's ANTI JOIN on a generated reference and derivative.

One invocation generates (or reuses) a LAION-like reference (``url``, ``similarity``) and a derivative
with its own layout (``URL``, ``TEXT``, ``punsafe``) whose keys all come from the reference except
``--removed`` new ones, then runs every engine ``--runs`` times, each run a fresh process measured by
``harness.measure`` (wall, CPU, peak RSS), checks every output against the ground-truth removal set,
projects the 5.5 B-key case from streamfilter's measured per-key costs, and writes
``results/<name>.md`` and ``.json``.

    python benchmarks/diff.py                          # 100 M x 20 M keys (the full benchmark)
    python benchmarks/diff.py --scale small --runs 1   # 2 M x 400 k keys, a quick check

This module is also the DuckDB engine's entry point (``--child duckdb JOB.json``): nothing heavy is
imported at the top, so that child loads only duckdb.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from harness import ENV_AT_START, MIB, measure  # a sibling module

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data"
RESULTS = HERE / "results"
GIB = 1024**3

#: --scale presets: reference keys, derivative rows, removed keys.
SCALES = {
    "small": {"reference_keys": 2_000_000, "derivative_keys": 400_000, "removed": 1_000},
    "full": {"reference_keys": 100_000_000, "derivative_keys": 20_000_000, "removed": 10_000},
}
REFERENCE_SHARDS = 32
DERIVATIVE_SHARDS = 16
ROW_GROUP_SIZE = 1_000_000
#: Generation works in chunks of this many rows (one row group of the reference at most).
CHUNK_ROWS = 1_000_000
#: Derivative rows that repeat another derivative row (duplicates the diff must collapse).
DUPLICATE_FRACTION = 0.005
#: At this size or below, the ground truth is also checked independently with pyarrow.
INDEPENDENT_CHECK_MAX_KEYS = 10_000_000

#: The projection's target: Re-LAION-5B's reference, a LAION-2B-en-sized derivative.
PROJECT_REFERENCE_KEYS = 5_526_641_167
PROJECT_DERIVATIVE_KEYS = 2_300_000_000
PROJECT_WORKERS = (1, 8, 32, 128)

ENGINES = ("streamfilter", "duckdb", "duckdb-2gb")
ENGINE_NAMES = {
    "streamfilter": "streamfilter diff",
    "duckdb": "DuckDB ANTI JOIN (default settings)",
    "duckdb-2gb": "DuckDB ANTI JOIN (memory_limit 2GB)",
}
DUCKDB_LIMIT = "2GB"


# --------------------------------------------------------------------------- the DuckDB engine (child side)


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def child_duckdb(job: dict[str, Any]) -> None:
    import duckdb

    con = duckdb.connect()  # in memory, default threads (= cores)
    if job.get("memory_limit"):
        con.execute(f"SET memory_limit = {sql_str(job['memory_limit'])}")
    # Where it spills (also by default, in memory, it spills to ./.tmp): named so its size can be watched.
    con.execute(f"SET temp_directory = {sql_str(job['temp_directory'])}")
    con.execute(
        f"COPY (SELECT DISTINCT d.URL FROM read_parquet({sql_str(job['derivative'])}) d "
        f"ANTI JOIN read_parquet({sql_str(job['reference'])}) r ON d.URL = r.url ORDER BY 1) "
        f"TO {sql_str(job['out'])} (FORMAT csv, HEADER false)"
    )


def child_main(engine: str, job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    {"duckdb": child_duckdb}[engine](job)
    return 0


# --------------------------------------------------------------------------- data

_HEX = b"0123456789abcdef"
_SUBDOMAINS = ["img", "cdn", "static", "media", "images", "photos", "i", "assets"]
_DOMAINS = [
    "example-cdn.com",
    "example.net.br",
    "shop-example.co.uk",
    "example-media.org",
    "pics.example.io",
    "blog-example.com",
    "example-static.net",
    "store.example.de",
]
_DIRS = [
    "images",
    "wp-content/uploads",
    "uploads",
    "media/catalog/product",
    "photos",
    "img",
    "assets/images",
    "content/dam",
    "files",
    "p",
]
_YEARS = [str(y) for y in range(2012, 2024)]
_EXTS = [".jpg", ".jpg", ".jpg", ".jpg", ".png", ".jpeg", ".webp", ".gif"]
_WORD_TEXT = """
red blue green dog cat house tree beach city night portrait vintage car flower summer winter sunset
river mountain lake garden kitchen table chair lamp shoes dress shirt logo icon banner poster map
family wedding party food cake coffee bread pizza salad fruit apple orange lemon street bridge tower
castle church forest desert island boat train plane bike horse bird fish baby girl boy man woman
team game book paper card gift box sale new old big small best top modern classic rustic white black
gold silver wood stone glass metal art photo image view
"""
_WORDS = _WORD_TEXT.split()


def mix64(x: Any) -> Any:
    """splitmix64's finalizer on a uint64 array: a bijection, so distinct ids stay distinct."""
    import numpy as np

    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _fixed_width_strings(chars: Any) -> Any:
    """An (n, w) uint8 array of ASCII characters as a string array of n strings of w bytes, no per-row work."""
    import numpy as np
    import pyarrow as pa

    n, w = chars.shape
    offsets = np.arange(0, (n + 1) * w, w, dtype=np.int64)
    data = np.ascontiguousarray(chars, dtype=np.uint8)
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _hex(values: Any, digits: int) -> Any:
    """The low ``digits`` (even) hex digits of each uint64, as strings: one table lookup per byte."""
    import numpy as np

    pairs = np.frombuffer(_HEX, dtype=np.uint8)[np.indices((16, 16)).reshape(2, 256).T]  # byte -> 2 hex chars
    octets = values.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - digits // 2 :]
    return _fixed_width_strings(pairs[octets].reshape(len(values), digits))


def _pick(choices: list[str], index: Any) -> Any:
    import pyarrow as pa

    return pa.array(choices, pa.large_string()).take(pa.array(index))


def _field(bits: Any, shift: int, width: int) -> Any:
    """``width`` bits of each uint64 from bit ``shift``, as int64."""
    import numpy as np

    return ((bits >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)


HOSTS = [f"{_SUBDOMAINS[k % 8]}{k}.{_DOMAINS[(k // 8) % 8]}" for k in range(4096)]


def make_urls(ids: Any, seed: int) -> Any:
    """The url of each id: a function of the id alone, distinct for distinct ids, 62-119 bytes.

    ``https://<host>/<dir>/<year>/<ab>/<1-3 slug words>-<16 hex digits><ext>``, the 16 hex digits being a
    bijection of the id, so the url names its id (the 16 characters before the first '.' of the last
    path segment) and two ids never share a url. Host (4,096, skewed toward the first), directory,
    year, bucket, slug and extension come from other bits of a second bijection of the id.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    ident = mix64(ids.astype(np.uint64) ^ np.uint64((seed + 1) * 0x9E3779B97F4A7C15 % 2**64))
    bits = mix64(ident ^ np.uint64(0xD1B54A32D192ED03))
    u = _field(bits, 0, 16) / 65536.0
    host = (len(HOSTS) * u**3).astype(np.int64)  # a few hosts hold most of the urls, as in LAION
    empty = pa.scalar("", pa.large_string())
    words = [w + "-" for w in _WORDS]
    slug_words = _field(bits, 16, 2) % 3 + 1
    slug = [_pick(words, _field(bits, 18 + 7 * j, 7) % len(words)) for j in range(3)]
    slug = [s if j == 0 else pc.if_else(slug_words > j, s, empty) for j, s in enumerate(slug)]

    def lit(text: str) -> Any:
        return pa.scalar(text, pa.large_string())

    return pc.binary_join_element_wise(
        lit("https://"),
        _pick(HOSTS, host),
        lit("/"),
        _pick(_DIRS, _field(bits, 39, 8) % len(_DIRS)),
        lit("/"),
        _pick(_YEARS, _field(bits, 47, 8) % len(_YEARS)),
        lit("/"),
        _hex(bits >> np.uint64(55), 2),
        lit("/"),
        *slug,
        _hex(ident, 16),
        _pick(_EXTS, _field(bits, 60, 3)),
        lit(""),  # the separator
    )


def captions(rng: Any, n: int) -> Any:
    """Short captions of 2-6 words."""
    import pyarrow as pa
    import pyarrow.compute as pc

    count = rng.integers(2, 7, n)
    parts = [_pick(_WORDS, rng.integers(0, len(_WORDS), n)) for _ in range(6)]
    parts = [p if j < 2 else pc.if_else(count > j, p, pa.scalar(None, pa.large_string())) for j, p in enumerate(parts)]
    return pc.binary_join_element_wise(*parts, pa.scalar(" ", pa.large_string()), null_handling="skip")


def _spans(total: int, parts: int, start: int = 0) -> list[tuple[int, int]]:
    return [(start + i * total // parts, start + (i + 1) * total // parts) for i in range(parts)]


def _chunks(lo: int, hi: int) -> list[tuple[int, int]]:
    """[lo, hi) in even chunks of at most CHUNK_ROWS rows: one row group each."""
    return _spans(hi - lo, max(1, -(-(hi - lo) // CHUNK_ROWS)), lo)


def _write_parquet(path: Path, schema: Any, chunks: Any) -> int:
    """Write tables from ``chunks`` as row groups of ``ROW_GROUP_SIZE`` rows (at most); returns the rows."""
    import pyarrow.parquet as pq

    rows = 0
    with pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=False) as writer:
        for table in chunks:
            writer.write_table(table, row_group_size=ROW_GROUP_SIZE)
            rows += table.num_rows
    return rows


def generate(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Both sides' shards and the sorted ground-truth removal list, vectorized (numpy, pyarrow compute)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n_ref, n_der, n_removed, seed = (
        params["reference_keys"],
        params["derivative_keys"],
        params["removed"],
        params["seed"],
    )
    n_dup = round(n_der * params["duplicate_fraction"])
    n_kept = n_der - n_dup - n_removed
    if n_kept < 1 or n_kept > n_ref:
        raise SystemExit(f"cannot draw {n_kept:,} derivative keys from a {n_ref:,}-key reference")
    lengths: list[int] = []

    def measure_urls(urls: Any) -> Any:
        lo_hi = pc.min_max(pc.binary_length(urls)).as_py()
        lengths.extend([lo_hi["min"], lo_hi["max"]])
        return urls

    (root / "ref").mkdir(parents=True)
    (root / "der").mkdir()
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    ref_schema = pa.schema([("url", pa.large_string()), ("similarity", pa.float32())])
    for s, (lo, hi) in enumerate(_spans(n_ref, REFERENCE_SHARDS)):

        def ref_chunks(lo: int = lo, hi: int = hi) -> Any:
            for a, b in _chunks(lo, hi):
                ids = np.arange(a, b, dtype=np.uint64)
                urls = measure_urls(make_urls(ids, seed))
                yield pa.table([urls, pa.array(rng.random(len(ids), dtype=np.float32))], schema=ref_schema)

        _write_parquet(root / "ref" / f"part-{s:05d}.parquet", ref_schema, ref_chunks())
    ref_seconds = time.perf_counter() - started

    # The derivative: n_kept distinct reference ids, n_removed ids past the reference's range (so urls it
    # lacks), n_dup rows repeating some of those (a few of them removed keys), all shuffled.
    t = time.perf_counter()
    kept = rng.choice(n_ref, size=n_kept, replace=False).astype(np.uint64)
    removed = np.arange(n_ref, n_ref + n_removed, dtype=np.uint64)
    dup_removed = min(n_removed, max(1, n_dup // 100)) if n_dup else 0
    dups = np.concatenate([rng.choice(removed, size=dup_removed), rng.choice(kept, size=n_dup - dup_removed)]).astype(
        np.uint64
    )
    ids = np.concatenate([kept, removed, dups])
    del kept, dups
    ids = ids[rng.permutation(len(ids))]
    der_schema = pa.schema([("URL", pa.large_string()), ("TEXT", pa.large_string()), ("punsafe", pa.float32())])
    for s, (lo, hi) in enumerate(_spans(n_der, DERIVATIVE_SHARDS)):

        def der_chunks(lo: int = lo, hi: int = hi) -> Any:
            for a, b in _chunks(lo, hi):
                part = ids[a:b]
                urls = measure_urls(make_urls(part, seed))
                text = captions(rng, len(part))
                yield pa.table([urls, text, pa.array(rng.random(len(part), dtype=np.float32))], schema=der_schema)

        _write_parquet(root / "der" / f"part-{s:05d}.parquet", der_schema, der_chunks())
    der_seconds = time.perf_counter() - t

    truth = pc.sort_indices(make_urls(removed, seed))
    truth_urls = make_urls(removed, seed).take(truth)
    (root / "removals.txt").write_text("".join(u + "\n" for u in truth_urls.to_pylist()))  # n_removed lines
    sizes = {side: sum(p.stat().st_size for p in (root / side).glob("*.parquet")) for side in ("ref", "der")}
    return {
        "generate_seconds": {
            "reference": round(ref_seconds, 2),
            "derivative": round(der_seconds, 2),
            "total": round(time.perf_counter() - started, 2),
        },
        "bytes": {"reference": sizes["ref"], "derivative": sizes["der"]},
        "url_bytes": {"min": min(lengths), "max": max(lengths)},
        "derivative_rows": n_der,
        "derivative_distinct": n_kept + n_removed,
        "duplicate_rows": n_dup,
        "removed_keys": n_removed,
        "removed_rows": n_removed + dup_removed,
    }


def check_truth_independently(root: Path) -> dict[str, Any]:
    """The ground truth again, from the files alone with pyarrow: distinct derivative urls not in the reference."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    ref = ds.dataset(root / "ref", format="parquet").to_table(columns=["url"]).column("url")
    der = ds.dataset(root / "der", format="parquet").to_table(columns=["URL"]).column("URL")
    distinct_ref = pc.count_distinct(ref).as_py()
    missing = der.filter(pc.invert(pc.is_in(der, value_set=ref.combine_chunks())))
    want = sorted(pc.unique(missing).to_pylist())
    truth = (root / "removals.txt").read_text().splitlines()
    problems = []
    if distinct_ref != len(ref):
        problems.append(f"reference urls not distinct: {distinct_ref:,} of {len(ref):,}")
    if want != truth:
        problems.append(f"removals.txt ({len(truth):,} keys) differs from pyarrow's anti-join ({len(want):,} keys)")
    if problems:
        raise SystemExit("generated data is wrong: " + "; ".join(problems))
    return {"reference_distinct": distinct_ref, "removed_keys": len(want), "removed_rows": len(missing)}


def dataset(args: argparse.Namespace) -> dict[str, Any]:
    """The data set under data/diff-<scale>/, reused when meta.json records the same parameters."""
    preset = SCALES[args.scale]
    params = {
        "reference_keys": args.reference_keys or preset["reference_keys"],
        "derivative_keys": args.derivative_keys or preset["derivative_keys"],
        "removed": args.removed if args.removed is not None else preset["removed"],
        "duplicate_fraction": DUPLICATE_FRACTION,
        "reference_shards": REFERENCE_SHARDS,
        "derivative_shards": DERIVATIVE_SHARDS,
        "row_group_size": ROW_GROUP_SIZE,
        "seed": args.seed,
        # The generator's source is part of the key: data made by older code is not reused.
        "generator": hashlib.sha256(
            "".join(inspect.getsource(f) for f in (mix64, _hex, make_urls, captions, generate)).encode()
        ).hexdigest()[:12],
    }
    same = all(params[k] == preset.get(k) for k in ("reference_keys", "derivative_keys", "removed"))
    name = args.scale if same else f"{params['reference_keys']}x{params['derivative_keys']}x{params['removed']}"
    root = DATA / f"diff-{name}"
    meta_path = root / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("params") == params:
            print(f"reusing {root.relative_to(REPO)} (generated in {meta['generate_seconds']['total']:.0f} s)")
            return {"root": root, **meta}
    shutil.rmtree(root, ignore_errors=True)
    print(
        f"generating {root.relative_to(REPO)}: reference {params['reference_keys']:,} keys in {REFERENCE_SHARDS} "
        f"shards, derivative {params['derivative_keys']:,} rows in {DERIVATIVE_SHARDS} shards ...",
        flush=True,
    )
    meta = {"params": params, **generate(root, params)}
    g = meta["generate_seconds"]
    print(
        f"  generated in {g['total']:.1f} s (reference {g['reference']:.1f} s, derivative {g['derivative']:.1f} s): "
        f"{meta['bytes']['reference'] / MIB:,.0f} MiB + {meta['bytes']['derivative'] / MIB:,.0f} MiB, "
        f"urls of {meta['url_bytes']['min']}-{meta['url_bytes']['max']} bytes",
        flush=True,
    )
    if params["reference_keys"] <= INDEPENDENT_CHECK_MAX_KEYS:
        t = time.perf_counter()
        meta["independent_check"] = check_truth_independently(root)
        print(f"  ground truth checked with pyarrow in {time.perf_counter() - t:.1f} s", flush=True)
    meta_path.write_text(json.dumps(meta, indent=1))  # written last: marks the set complete
    return {"root": root, **meta}


def warm_page_cache(root: Path) -> float:
    """Read every input once so that no engine's first run pays for cold reads."""
    t = time.perf_counter()
    for path in sorted(root.glob("*/*.parquet")):
        with open(path, "rb") as f:
            while f.read(16 * MIB):
                pass
    return time.perf_counter() - t


# --------------------------------------------------------------------------- measuring


def dir_bytes(path: Path) -> tuple[int, int]:
    """(apparent bytes, bytes allocated on disk) of every file under ``path``."""
    size = disk = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.stat(os.path.join(dirpath, name))
                size += st.st_size
                disk += st.st_blocks * 512
    return size, disk


class DirWatch:
    """The largest size a directory reached while an engine ran, sampled every ``interval`` seconds."""

    def __init__(self, path: Path, interval: float = 1.0) -> None:
        self.path, self.interval = path, interval
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.peak = max(self.peak, dir_bytes(self.path)[0])

    def __enter__(self) -> DirWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, dir_bytes(self.path)[0])


def read_list(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def compare(got: list[str], truth: list[str]) -> str | None:
    """None if ``got`` is the ground truth exactly (each key once); else what differs."""
    if got == truth:
        return None
    have, want = set(got), set(truth)
    parts = []
    if len(have) != len(got):
        parts.append(f"{len(got) - len(have):,} repeated lines")
    if have - want:
        parts.append(f"{len(have - want):,} keys that are not removals")
    if want - have:
        parts.append(f"{len(want - have):,} removals missing")
    if not parts:
        parts.append("same keys, another order")
    return f"{len(got):,} keys against {len(truth):,} expected: " + ", ".join(parts)


class Bench:
    def __init__(self, args: argparse.Namespace, data: dict[str, Any]) -> None:
        self.args = args
        self.data = data
        self.root: Path = data["root"]
        self.out = self.root / "out"
        self.logs = self.root / "logs"
        shutil.rmtree(self.logs, ignore_errors=True)
        self.logs.mkdir(parents=True)
        self.truth = read_list(self.root / "removals.txt")
        self.env = dict(ENV_AT_START)
        self.runs: list[dict[str, Any]] = []

    def fresh_out(self) -> Path:
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir(parents=True)
        return self.out

    def streamfilter_cmd(self, out: Path, phase: str | None = None) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "streamfilter.cli",
            "diff",
            "--reference",
            str(self.root / "ref" / "*.parquet"),
            "--reference-key",
            "url",
            "--derivative",
            str(self.root / "der" / "*.parquet"),
            "--key",
            "URL",
            "--out",
            str(out / "removals.txt"),
            "--spill",
            str(out / "spill") + "/",
            "--report",
            str(out / (f"report-{phase}.json" if phase else "report.json")),
        ]
        cmd += self.args.streamfilter_args.split()
        return [*cmd, "--phase", phase] if phase else cmd

    def check_report(self, report: dict[str, Any]) -> list[str]:
        """streamfilter's own counts against what the generator made."""
        d = self.data
        want = {
            ("reference", "rows"): d["params"]["reference_keys"],
            ("reference", "duplicates"): 0,
            ("derivative", "rows"): d["derivative_rows"],
            ("derivative", "duplicates"): d["duplicate_rows"],
            ("removals", "keys"): d["removed_keys"],
            ("removals", "rows"): d["removed_rows"],
        }
        problems = []
        for (section, name), value in want.items():
            got = report.get(section, {}).get(name)
            if got != value:
                problems.append(f"report {section}.{name} = {got}, expected {value:,}")
        return problems

    def run_streamfilter(self, run: int) -> dict[str, Any]:
        out = self.fresh_out()  # the spill goes too: nothing is resumed
        tag = f"streamfilter-{run}"
        with DirWatch(out / "spill") as watch:
            result = measure(self.streamfilter_cmd(out), self.env, self.logs / tag, self.args.timeout, REPO)
        row = {"engine": "streamfilter", "run": run, **result}
        errors = [] if result["returncode"] == 0 else [f"exit {result['returncode']}: {result['stderr_tail']}"]
        report_path = out / "report.json"
        if report_path.exists():
            report = json.loads(report_path.read_text())
            (self.logs / f"{tag}.report.json").write_text(json.dumps(report, indent=1))
            spill_size, spill_disk = dir_bytes(out / "spill")
            row.update(
                seconds=report.get("seconds", {}),
                partitions=report.get("partitions"),
                rounds=report.get("resolve_rounds", report.get("rounds")),  # renamed; either
                spill_bytes_written=report.get("spill_bytes_written"),
                spill_bytes_by_side={s: report.get(s, {}).get("spill_bytes") for s in ("reference", "derivative")},
                spill_dir_bytes=spill_size,
                spill_dir_disk_bytes=spill_disk,
                spill_dir_peak_bytes=watch.peak,
                counts={s: report.get(s) for s in ("reference", "derivative", "removals")},
            )
            errors += self.check_report(report)
        elif not errors:
            errors.append("no report written")
        mismatch = compare(read_list(out / "removals.txt"), self.truth)
        if mismatch:
            errors.append("output: " + mismatch)
        row["error"] = "; ".join(errors) or None
        return row

    def run_streamfilter_phases(self, run: int) -> dict[str, Any]:
        """The same diff as three processes (partition, resolve, merge): CPU time and peak RSS per phase."""
        out = self.fresh_out()
        row: dict[str, Any] = {"engine": "streamfilter (phase by phase)", "run": run, "phases": {}}
        errors = []
        for phase in ("partition", "resolve", "merge"):
            tag = f"streamfilter-phases-{run}-{phase}"
            result = measure(self.streamfilter_cmd(out, phase), self.env, self.logs / tag, self.args.timeout, REPO)
            report_path = out / f"report-{phase}.json"
            report = json.loads(report_path.read_text()) if report_path.exists() else {}
            row["phases"][phase] = {**result, "seconds": report.get("seconds", {})}
            if result["returncode"] != 0:
                errors.append(f"{phase}: exit {result['returncode']}: {result['stderr_tail']}")
                break
            if phase == "merge":
                errors += self.check_report(report)
        mismatch = compare(read_list(out / "removals.txt"), self.truth)
        if mismatch:
            errors.append("output: " + mismatch)
        row["error"] = "; ".join(errors) or None
        return row

    def run_duckdb(self, engine: str, run: int) -> dict[str, Any]:
        out = self.fresh_out()
        tag = f"{engine}-{run}"
        job = {
            "reference": str(self.root / "ref" / "*.parquet"),
            "derivative": str(self.root / "der" / "*.parquet"),
            "out": str(out / "duck.txt"),
            "memory_limit": DUCKDB_LIMIT if engine == "duckdb-2gb" else None,
            "temp_directory": str(out / "duck-tmp"),
        }
        job_path = self.logs / f"{tag}.job.json"
        job_path.write_text(json.dumps(job))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "duckdb", str(job_path)]
        with DirWatch(out / "duck-tmp") as watch:
            result = measure(cmd, self.env, self.logs / tag, self.args.timeout, out)
        row = {"engine": engine, "run": run, **result, "spill_dir_peak_bytes": watch.peak}
        errors = [] if result["returncode"] == 0 else [f"exit {result['returncode']}: {result['stderr_tail']}"]
        mismatch = compare(read_list(out / "duck.txt"), self.truth)
        if mismatch:
            errors.append("output: " + mismatch)
        row["error"] = "; ".join(errors) or None
        return row

    def startup(self) -> dict[str, Any]:
        """A process that only imports what a diff imports (and loads the fingerprint kernel): its fixed cost."""
        code = (
            "import numpy, pyarrow as pa, streamfilter.cli, streamfilter.diff.job; "
            "from streamfilter.hashing import hash128; hash128(pa.array([b'x']))"
        )
        return measure([sys.executable, "-c", code], self.env, self.logs / "startup", 600, REPO)

    def run_all(self) -> None:
        engines = [e for e in ENGINES if e in self.args.engines.split(",")]
        for run in range(1, self.args.runs + 1):
            for engine in engines:  # interleaved, so load drifts hit every engine alike
                row = self.run_streamfilter(run) if engine == "streamfilter" else self.run_duckdb(engine, run)
                self.runs.append(row)
                print(progress_line(row), flush=True)
        if "streamfilter" in engines:
            for run in range(1, self.args.phase_runs + 1):
                row = self.run_streamfilter_phases(run)
                self.runs.append(row)
                print(progress_line(row), flush=True)
        shutil.rmtree(self.out, ignore_errors=True)


def progress_line(row: dict[str, Any]) -> str:
    if "phases" in row:
        parts = ", ".join(
            f"{p} {r['wall_s']:.1f} s / {r['cpu_s']:.1f} CPU s / {r['peak_rss_mib']:.0f} MiB"
            for p, r in row["phases"].items()
        )
        text = f"{row['engine']} run {row['run']}: {parts}"
    else:
        text = (
            f"{ENGINE_NAMES[row['engine']]} run {row['run']}: {row['wall_s']:.1f} s, {row['cpu_s']:.1f} CPU s, "
            f"{row['peak_rss_mib']:.0f} MiB peak RSS"
        )
        if row.get("spill_dir_peak_bytes"):
            text += f", spill {row['spill_dir_peak_bytes'] / MIB:,.1f} MiB"
    return text + (f"  FAILED: {row['error']}" if row["error"] else "")


# --------------------------------------------------------------------------- summary and projection


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    for engine in ENGINES:
        rows = [r for r in runs if r["engine"] == engine]
        ok = [r for r in rows if not r["error"]]
        if not rows:
            continue
        entry: dict[str, Any] = {
            "engine": engine,
            "name": ENGINE_NAMES[engine],
            "runs": len(rows),
            "ok_runs": len(ok),
            "wall_s": median([r["wall_s"] for r in ok]),
            "wall_min_s": min((r["wall_s"] for r in ok), default=None),
            "wall_max_s": max((r["wall_s"] for r in ok), default=None),
            "cpu_s": median([r["cpu_s"] for r in ok]),
            "peak_rss_mib": median([r["peak_rss_mib"] for r in ok]),
            "peak_rss_max_mib": max((r["peak_rss_mib"] for r in ok), default=None),
            "spill_peak_bytes": median([r.get("spill_dir_peak_bytes") or 0 for r in ok]),
        }
        if engine == "streamfilter" and ok:
            entry["spill_bytes_written"] = median([r["spill_bytes_written"] for r in ok])
            entry["partitions"] = ok[0]["partitions"]
            entry["rounds"] = ok[0]["rounds"]
            entry["spill_dir_bytes"] = median([r["spill_dir_disk_bytes"] for r in ok])
            entry["seconds"] = {
                phase: median([r["seconds"][phase] for r in ok if phase in r["seconds"]])
                for phase in ("partition", "resolve", "merge", "total")
            }
        table.append(entry)
    anchors = {e["engine"]: e for e in table if e["wall_s"]}
    for entry in table:
        for anchor in ("duckdb", "duckdb-2gb"):
            a = anchors.get(anchor)
            if a and entry["wall_s"]:
                entry[f"wall_over_{anchor}"] = entry["wall_s"] / a["wall_s"]
                entry[f"rss_over_{anchor}"] = entry["peak_rss_mib"] / a["peak_rss_mib"]
    return table


def median_run(runs: list[dict[str, Any]], engine: str) -> dict[str, Any] | None:
    """The run of median wall time (the lower middle one for an even count)."""
    ok = sorted((r for r in runs if r["engine"] == engine and not r["error"]), key=lambda r: r["wall_s"])
    return ok[(len(ok) - 1) // 2] if ok else None


def per_key_costs(runs: list[dict[str, Any]], startup: dict[str, Any], data: dict[str, Any]) -> dict[str, Any] | None:
    """CPU per million keys by phase, spill bytes per key by side, from streamfilter's median run."""
    run = median_run(runs, "streamfilter")
    if run is None:
        return None
    ref_keys = run["counts"]["reference"]["rows"]
    der_keys = run["counts"]["derivative"]["rows"]
    mkeys = (ref_keys + der_keys) / 1e6
    sec = run["seconds"]
    phase_wall = {p: sec.get(p, 0.0) for p in ("partition", "resolve", "merge")}
    # Attribution by wall time: the process's CPU split over its wall time, phases and the rest (interpreter
    # start, imports, listing) alike, each share in proportion to its wall time.
    proportional = {p: run["cpu_s"] * w / run["wall_s"] for p, w in phase_wall.items()}
    costs: dict[str, Any] = {
        "run": run["run"],
        "reference_keys": ref_keys,
        "derivative_keys": der_keys,
        "phase_wall_s": phase_wall,
        "process_wall_s": run["wall_s"],
        "process_cpu_s": run["cpu_s"],
        "cpu_proportional_s": proportional,
        "startup_cpu_s": startup["cpu_s"],
        "startup_wall_s": startup["wall_s"],
    }
    measured = median_phase_cpu(runs)
    if measured:
        # Measured phase by phase (three processes); each process's start-up, measured alone, taken off.
        costs["cpu_measured_s"] = measured
        cpu = {p: max(measured[p] - startup["cpu_s"], 0.0) for p in measured}
        costs["cpu_source"] = "measured (phase-by-phase processes, start-up taken off)"
    else:
        cpu = proportional
        costs["cpu_source"] = "attributed in proportion to phase wall time (no phase-by-phase run)"
    costs["cpu_s"] = cpu
    costs["cpu_s_per_mkey"] = {p: cpu[p] / mkeys for p in cpu}
    costs["wall_s_per_mkey"] = {p: phase_wall[p] / mkeys for p in phase_wall}
    costs["spill_bytes_per_key"] = {
        "reference": run["spill_bytes_by_side"]["reference"] / ref_keys,
        "derivative": run["spill_bytes_by_side"]["derivative"] / der_keys,
    }
    costs["input_bytes_per_key"] = {
        "reference": data["bytes"]["reference"] / ref_keys,
        "derivative": data["bytes"]["derivative"] / der_keys,
    }
    costs["spill_bytes_other"] = run["spill_bytes_written"] - sum(run["spill_bytes_by_side"].values())
    costs["partitions"] = run["partitions"]
    costs["rounds"] = run["rounds"]
    return costs


def median_phase_cpu(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    ok = [r for r in runs if r["engine"] == "streamfilter (phase by phase)" and not r["error"]]
    if not ok:
        return None
    return {p: statistics.median(r["phases"][p]["cpu_s"] for r in ok) for p in ("partition", "resolve", "merge")}


def project(costs: dict[str, Any], workers: tuple[int, ...]) -> dict[str, Any]:
    """The 5.5 B-key case from the per-key costs: CPU, wall here and on N workers, spill, partitions."""
    from streamfilter.diff.job import choose_partitions
    from streamfilter.diff.resolve import rounds_for
    from streamfilter.diff.spec import DEFAULT_CONCURRENCY, DEFAULT_MEMORY_BUDGET

    r, d = PROJECT_REFERENCE_KEYS, PROJECT_DERIVATIVE_KEYS
    mkeys = (r + d) / 1e6
    ref_bytes = costs["input_bytes_per_key"]["reference"] * r
    der_bytes = costs["input_bytes_per_key"]["derivative"] * d
    # As `streamfilter diff` chooses them: partitions resolved DEFAULT_CONCURRENCY at a time within the budget.
    share = DEFAULT_MEMORY_BUDGET // DEFAULT_CONCURRENCY
    partitions = choose_partitions(r, d, share)
    rounds = rounds_for(r // partitions, d // partitions, share)
    cpu = {p: costs["cpu_s_per_mkey"][p] * mkeys for p in ("partition", "resolve")}
    wall = {p: costs["wall_s_per_mkey"][p] * mkeys for p in ("partition", "resolve")}
    spill = costs["spill_bytes_per_key"]["reference"] * r + costs["spill_bytes_per_key"]["derivative"] * d
    merge = costs["phase_wall_s"]["merge"]
    return {
        "reference_keys": r,
        "derivative_keys": d,
        "reference_input_bytes": ref_bytes,
        "derivative_input_bytes": der_bytes,
        "partitions": partitions,
        "rounds_per_partition": rounds,
        "cpu_s": cpu,
        "cpu_hours": sum(cpu.values()) / 3600,
        "wall_s_here": {**wall, "total": sum(wall.values()) + merge},
        "spill_bytes": spill,
        "merge_wall_s": merge,
        "workers": {
            str(n): {
                "partition_s": wall["partition"] / n,
                "resolve_s": wall["resolve"] / min(n, partitions),
                "total_s": wall["partition"] / n + wall["resolve"] / min(n, partitions) + merge,
                "spill_bytes_per_worker": spill / n,
            }
            for n in workers
        },
    }


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    from run import machine as run_machine  # the same record as run.py's

    return run_machine()


def versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {}
    for name in ("streamfilter", "pyarrow", "duckdb", "numpy", "numba", "anyio"):
        with contextlib.suppress(md.PackageNotFoundError):
            found[name] = md.version(name)
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # read only: no index refresh while another process commits
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, env=env
    )
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "streamfilter"], capture_output=True, text=True, env=env
    )
    found["git"] = commit.stdout.strip() + (" (streamfilter/ modified)" if dirty.stdout.strip() else "")
    digest = hashlib.sha256()  # the code that ran, even when uncommitted
    for path in sorted((REPO / "streamfilter").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    found["streamfilter source sha256"] = digest.hexdigest()[:12]
    return found


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def render(report: dict[str, Any]) -> str:
    m, data, p = report["machine"], report["data"], report["data"]["params"]
    lines = [
        "# streamfilter diff against DuckDB's ANTI JOIN",
        "",
        f"- date: {report['date']}",
        f"- command: `{report['command']}`",
        f"- machine: {m['nproc']} cores, {m['cpu']}, {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}; load average {report['load_start']} at start, {report['load_end']} at end",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- data: reference {p['reference_keys']:,} distinct urls in {p['reference_shards']} shards "
        f"({data['bytes']['reference'] / MIB:,.0f} MiB); derivative {data['derivative_rows']:,} rows in "
        f"{p['derivative_shards']} shards ({data['bytes']['derivative'] / MIB:,.0f} MiB), "
        f"{data['duplicate_rows']:,} of them duplicates; {data['removed_keys']:,} removals "
        f"({data['removed_rows']:,} rows); urls of {data['url_bytes']['min']}-{data['url_bytes']['max']} bytes; "
        f"generated in {data['generate_seconds']['total']:.1f} s",
        f"- runs: {report['parameters']['runs']} per engine (interleaved), medians; "
        + (
            f"streamfilter's memory budget {report['memory_budget'] / GIB:.0f} GiB (its default)"
            if not report["parameters"]["streamfilter_args"]
            else f"extra streamfilter flags `{report['parameters']['streamfilter_args']}`"
        ),
        "",
        "| engine | runs ok | median wall s (min-max) | CPU s | peak RSS MiB | spill GiB | wall / DuckDB | "
        "wall / DuckDB 2GB | RSS / DuckDB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["table"]:
        spill = e.get("spill_bytes_written", e["spill_peak_bytes"])
        lines.append(
            f"| {e['name']} | {e['ok_runs']}/{e['runs']} | {fmt(e['wall_s'])} ({fmt(e['wall_min_s'])}-"
            f"{fmt(e['wall_max_s'])}) | {fmt(e['cpu_s'])} | {fmt(e['peak_rss_mib'], '.0f')} | "
            f"{fmt(spill / GIB if spill is not None else None, '.3f')} | {fmt(e.get('wall_over_duckdb'), '.2f')} | "
            f"{fmt(e.get('wall_over_duckdb-2gb'), '.2f')} | {fmt(e.get('rss_over_duckdb'), '.2f')} |"
        )
    sf = next((e for e in report["table"] if e["engine"] == "streamfilter" and e.get("seconds")), None)
    lines.append("")
    lines.append(
        "Spill GiB: streamfilter's `spill_bytes_written` from its report (the spill directory's size on disk "
        "after the run is in the JSON: `spill_dir_bytes`); DuckDB's the largest size its temp_directory "
        "reached, sampled once a second (0: it did not spill). Wall times include interpreter start and imports."
    )
    if sf:
        s = sf["seconds"]
        lines += [
            "",
            f"streamfilter's phases (median s, from its report): partition {fmt(s['partition'])}, resolve "
            f"{fmt(s['resolve'])}, merge {fmt(s['merge'], '.2f')}, total {fmt(s['total'])}; "
            f"{sf['partitions']} partition(s), {sf['rounds']} resolve round(s) in all; spill directory "
            f"{sf['spill_dir_bytes'] / GIB:.3f} GiB on disk after the run (DuckDB's outputs are a few MiB).",
        ]
    phased = [r for r in report["runs"] if "phases" in r]
    if phased:
        lines += ["", "Phase by phase (`--phase partition`, then `resolve`, then `merge`, each its own process):", ""]
        lines += ["| run | phase | wall s | CPU s | peak RSS MiB |", "|---|---|---|---|---|"]
        for r in phased:
            for phase, x in r["phases"].items():
                lines.append(
                    f"| {r['run']}{' FAILED' if r['error'] else ''} | {phase} | {x['wall_s']:.1f} | {x['cpu_s']:.1f} "
                    f"| {x['peak_rss_mib']:.0f} |"
                )
    failures = [r for r in report["runs"] if r["error"]]
    if failures:
        lines += ["", "## FAILED runs", ""]
        lines += [f"- {r['engine']} run {r['run']}: {r['error']}" for r in failures]
    lines += render_projection(report)
    lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def render_projection(report: dict[str, Any]) -> list[str]:
    from streamfilter.diff.resolve import DERIVATIVE_BYTES_PER_ROW, REFERENCE_BYTES_PER_ROW

    c, pr = report.get("per_key_costs"), report.get("projection")
    if not c or not pr:
        return ["", "No projection: streamfilter had no successful run."]
    R, D = c["reference_keys"], c["derivative_keys"]
    K = (R + D) / 1e6
    cpu, w = c["cpu_s"], c["phase_wall_s"]
    spk, ipk = c["spill_bytes_per_key"], c["input_bytes_per_key"]
    R2, D2 = pr["reference_keys"], pr["derivative_keys"]
    K2 = (R2 + D2) / 1e6
    lines = [
        "",
        "## Per-key costs (streamfilter's median run)",
        "",
        f"R = {R:,} reference keys, D = {D:,} derivative keys, K = (R + D) / 10^6 = {K:,.3f} M keys. "
        f"CPU by phase: {c['cpu_source']}.",
    ]
    if "cpu_measured_s" in c:
        m = c["cpu_measured_s"]
        lines.append(
            f"Phase processes' CPU s (median): partition {m['partition']:.2f}, resolve {m['resolve']:.2f}, merge "
            f"{m['merge']:.2f}; start-up alone (interpreter, imports, fingerprint kernel load) "
            f"{c['startup_cpu_s']:.2f} CPU s, taken off each."
        )
    p = c["cpu_proportional_s"]
    lines += [
        f"For comparison, the one-process run's {c['process_cpu_s']:.2f} CPU s over {c['process_wall_s']:.2f} s "
        f"wall split by phase wall time: partition {p['partition']:.2f}, resolve {p['resolve']:.2f}, "
        f"merge {p['merge']:.2f} CPU s.",
        "",
        "| quantity | formula | value |",
        "|---|---|---|",
        f"| partition CPU s per M keys | c_p = CPU_partition / K = {cpu['partition']:.2f} / {K:,.3f} | "
        f"{c['cpu_s_per_mkey']['partition']:.3f} |",
        f"| resolve CPU s per M keys | c_r = CPU_resolve / K = {cpu['resolve']:.2f} / {K:,.3f} | "
        f"{c['cpu_s_per_mkey']['resolve']:.3f} |",
        f"| partition wall s per M keys (2 cores) | w_p = wall_partition / K = {w['partition']:.2f} / {K:,.3f} | "
        f"{c['wall_s_per_mkey']['partition']:.3f} |",
        f"| resolve wall s per M keys (2 cores) | w_r = wall_resolve / K = {w['resolve']:.2f} / {K:,.3f} | "
        f"{c['wall_s_per_mkey']['resolve']:.3f} |",
        f"| spill bytes per reference key | s_R = spill_R / R | {spk['reference']:.2f} |",
        f"| spill bytes per derivative key | s_D = spill_D / D | {spk['derivative']:.2f} |",
        f"| input (Parquet) bytes per reference key | b_R | {ipk['reference']:.2f} |",
        f"| input (Parquet) bytes per derivative key | b_D | {ipk['derivative']:.2f} |",
        "",
        f"## Projection: R' = {R2:,} reference keys (Re-LAION-5B), D' = {D2:,} derivative keys (LAION-2B-en-sized)",
        "",
        f"K' = (R' + D') / 10^6 = {K2:,.1f} M keys. Linear in keys: every phase's cost per key is taken as "
        "constant, which holds while the resolve rounds per partition stay as measured (see below).",
        "",
        "| quantity | formula | value |",
        "|---|---|---|",
        f"| partition CPU | c_p x K' | {pr['cpu_s']['partition'] / 3600:,.1f} CPU-h |",
        f"| resolve CPU | c_r x K' | {pr['cpu_s']['resolve'] / 3600:,.1f} CPU-h |",
        f"| wall on this machine ({report['machine']['nproc']} cores) | (w_p + w_r) x K' + merge "
        f"({pr['merge_wall_s']:.2f} s, as measured) | {duration(pr['wall_s_here']['total'])} |",
        f"| spill | s_R x R' + s_D x D' | {pr['spill_bytes'] / GIB:,.0f} GiB |",
        f"| partitions at 2 GiB | smallest power of two P with {REFERENCE_BYTES_PER_ROW} x R' + "
        f"{DERIVATIVE_BYTES_PER_ROW} x D' "
        f"<= P x 2 GiB / 2 (`choose_partitions`, 2 partitions at once) | {pr['partitions']:,} |",
        f"| resolve rounds per partition | `rounds_for(R'/P, D'/P, 2 GiB / 2)` | "
        f"{pr['rounds_per_partition']} (measured: {c['rounds']} in {c['partitions']} partition(s)) |",
        "",
        "On N workers, each like this machine (2 cores), shards split evenly in the partition phase and "
        "partitions in the resolve phase (at most P of them busy), the merge on one:",
        "",
        "| workers N | partition w_p x K' / N | resolve w_r x K' / min(N, P) | total (+ merge) | spill per worker |",
        "|---|---|---|---|---|",
    ]
    for n, x in pr["workers"].items():
        lines.append(
            f"| {n} | {duration(x['partition_s'])} | {duration(x['resolve_s'])} | {duration(x['total_s'])} | "
            f"{x['spill_bytes_per_worker'] / GIB:,.0f} GiB |"
        )
    lines += [
        "",
        "Caveats: the derivative's keys cost more than the reference's in the partition phase (their rows "
        "are spilled beside the fingerprints, and the merge reads back the keys of the listed rows), and D'/R' "
        f"({D2 / R2:.2f}) is larger than D/R ({D / R:.2f}) here, so the per-key CPU, measured on this mix, "
        "leans low for the projected one. The partition count comes from rows extrapolated from a few shards' "
        "footers, so it does not depend on how many other columns the shards have. Local disk here; "
        "spilling to object storage adds request latency and bandwidth limits that this does not measure.",
    ]
    free = report.get("disk_free_bytes")
    if free is not None and pr["spill_bytes"] > free:
        lines.append(
            f"One machine would need {pr['spill_bytes'] / GIB:,.0f} GiB of spill space; the data directory's disk "
            f"here has {free / GIB:,.0f} GiB free."
        )
    if R < INDEPENDENT_CHECK_MAX_KEYS:
        lines.append(
            f"At {R:,} reference keys, fixed costs (start-up, listing, loading the fingerprint kernel) are much "
            "of every phase's time, so these per-key costs and the projection overstate; quote the full scale."
        )
    if pr["rounds_per_partition"] != c["rounds"] / max(c["partitions"], 1):
        lines.append(
            "The projected rounds per partition differ from the measured ones: each extra round reads that "
            "partition's spill again, so the resolve estimate is less certain."
        )
    return lines


def notes(data: dict[str, Any], startup: dict[str, Any], warm_s: float) -> list[str]:
    return [
        "Data: reference urls are `https://<host>/<dir>/<year>/<2 hex>/<1-3 words>-<16 hex><ext>` over 4,096 hosts "
        "(skewed), the 16 hex digits a bijection of the row id, so every url is distinct; derivative urls are "
        "drawn without replacement from the reference, plus the removals (urls of ids past the reference's "
        "range), plus 0.5% duplicate rows (about 1% of them repeating a removal), shuffled. Parquet, zstd, "
        f"row groups of up to {ROW_GROUP_SIZE:,} rows, no dictionary encoding.",
        "Checks: every run's list must equal the ground truth (sorted, each key once) exactly, and "
        "streamfilter's report must count the reference's and derivative's rows and duplicates and the removals' "
        "keys and rows as generated; a failed run is excluded from the medians and listed."
        + (
            " The ground truth itself was checked with pyarrow (is_in of every derivative url against every "
            "reference url) when the data was generated."
            if "independent_check" in data
            else ""
        ),
        "streamfilter: `python -m streamfilter.cli diff --reference 'ref/*.parquet' --reference-key url "
        "--derivative 'der/*.parquet' --key URL --out removals.txt --spill spill/ --report report.json`, "
        "default memory budget and concurrency; the output directory (spill included) is deleted before every "
        "run, so nothing is resumed.",
        "DuckDB: one process, `COPY (SELECT DISTINCT d.URL FROM read_parquet('der/*.parquet') d ANTI JOIN "
        "read_parquet('ref/*.parquet') r ON d.URL = r.url ORDER BY 1) TO 'duck.txt' (FORMAT csv, HEADER false)`, "
        f"default threads; the second row first runs `SET memory_limit = '{DUCKDB_LIMIT}'`. Both set "
        "temp_directory to a directory of their own, so its size can be sampled.",
        "Peak RSS is ru_maxrss of the engine process (harness.measure: a small wrapper process spawns it). "
        "CPU s is user + system time.",
        f"Start-up alone (interpreter, numpy, pyarrow, streamfilter's diff modules, the fingerprint kernel "
        f"loaded): {startup['wall_s']:.2f} s wall, {startup['cpu_s']:.2f} CPU s. Inputs were read once "
        f"({warm_s:.1f} s) before the first run, so every run finds them in the page cache.",
    ]


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", choices=list(SCALES), default="full", help="data size preset (default full)")
    ap.add_argument("--reference-keys", type=int, help="reference keys (default: 100,000,000; small: 2,000,000)")
    ap.add_argument("--derivative-keys", type=int, help="derivative rows (default: 20,000,000; small: 400,000)")
    ap.add_argument("--removed", type=int, help="derivative keys the reference lacks (default 10,000; small 1,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per engine; medians are reported (default 3)")
    ap.add_argument(
        "--phase-runs",
        type=int,
        default=1,
        help="runs of streamfilter's phases as separate processes, for CPU time per phase (default 1; 0: none)",
    )
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated subset of {','.join(ENGINES)}")
    ap.add_argument("--streamfilter-args", default="", help="extra diff flags, e.g. '--memory-budget 512MiB'")
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="seconds before a run is killed")
    ap.add_argument("--results", help="results/NAME.md and .json (default: diff; diff-small with --scale small)")
    args = ap.parse_args(argv)
    unknown = set(args.engines.split(",")) - set(ENGINES)
    if unknown:
        ap.error(f"--engines: unknown {', '.join(sorted(unknown))}")
    if args.results is None:
        args.results = "diff" if args.scale == "full" else f"diff-{args.scale}"
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1], argv[2])
    args = parse_args(argv)
    started = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)
    from streamfilter.diff.spec import DEFAULT_MEMORY_BUDGET

    data = dataset(args)
    warm_s = warm_page_cache(data["root"])
    bench = Bench(args, data)
    startup = bench.startup()
    bench.run_all()
    table = summarize(bench.runs)
    costs = per_key_costs(bench.runs, startup, data)
    projection = None
    if costs:
        costs["mean_url_bytes"] = mean_url_bytes(data["root"])
        projection = project(costs, PROJECT_WORKERS)
    report = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/diff.py", *argv]),
        "parameters": vars(args),
        "machine": machine(),
        "versions": versions(),
        "memory_budget": DEFAULT_MEMORY_BUDGET,
        "load_start": load_start,
        "load_end": round(os.getloadavg()[0], 2),
        "disk_free_bytes": shutil.disk_usage(DATA).free,
        "data": {k: v for k, v in data.items() if k != "root"} | {"root": str(data["root"].relative_to(REPO))},
        "startup": startup,
        "table": table,
        "per_key_costs": costs,
        "projection": projection,
        "notes": notes(data, startup, warm_s),
        "runs": bench.runs,
        "seconds": time.perf_counter() - started,
    }
    md = render(report)
    out = Path(args.results) if "/" in args.results else RESULTS / args.results
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.md").write_text(md)
    Path(f"{out}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print("\n" + md)
    print(f"wrote {out}.md and .json")
    failed = [r for r in bench.runs if r["error"]]
    if failed:
        print(f"FAILED: {len(failed)} run(s) gave a wrong result or none; see above", file=sys.stderr)
        return 1
    return 0


def mean_url_bytes(root: Path) -> float:
    """Mean byte length of the derivative's urls, from its first shard (enough for a mean)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    first = sorted((root / "der").glob("*.parquet"))[0]
    urls = pq.read_table(first, columns=["URL"]).column("URL")
    return pc.mean(pc.binary_length(urls)).as_py()


if __name__ == "__main__":
    sys.exit(main())
