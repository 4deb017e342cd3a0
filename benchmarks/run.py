"""Benchmark streamfilter against DuckDB and Polars on the same generated LAION-style shards.

One invocation generates (or reuses) the data of two cases, then runs every engine
several times, each run in its own fresh subprocess, locally and through a loopback S3
endpoint (s3rver with a one-bug fix and moto, each started and stopped by this script, behind a
byte-counting proxy; ``--endpoints``),
verifies every output against counts computed independently with pyarrow, and writes
``results/<name>.md`` and ``.json``.

- dense: a few large shards, 1% of rows removed from every shard (a full rewrite);
- sparse: many small shards, a short list whose keys all sit in about 2% of the shards
  (what a real removal list looks like), where streamfilter's key-column scan lets it copy
  the clean shards instead of rewriting them.

    python benchmarks/run.py                                   # the full default benchmark
    python benchmarks/run.py --shards 2 --rows 50000 --sparse-shards 8 --sparse-rows 20000 \\
        --sparse-hit-shards 1 --sparse-keys 50 --runs 1 --results smoke          # a smoke run

Peak RSS is the child's own ``ru_maxrss`` as reported by ``wait4`` on that child,
so it is the engine's alone (the harness and the S3 server are other processes).

This module is also the engines' entry point (``--child ENGINE JOB.json``): it
imports nothing heavy at the top, so a child loads only its own engine, and the
DuckDB child can run under another interpreter (a side virtualenv with httpfs).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import inspect
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import (  # a sibling module
    ENDPOINTS,
    ENV_AT_START,
    MIB,
    S3_REGION,
    CountingProxy,
    S3Server,
    load_notes,
    measure,
    request_mix,
    start_server,
    streamfilter_report,
    verification_failures,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data"
RESULTS = HERE / "results"
SIDE_VENV = HERE / ".venv-duckdb-s3"
SIDE_DUCKDB_VERSION = "1.5.5"  # newest duckdb with an httpfs extension on PyPI (duckdb-extension-httpfs)

ROW_GROUP_SIZE = 122_880  # DuckDB's default row group size
HIT_FRACTION = 0.01  # the dense case: 1% of rows, spread over every shard
KEY_COLUMN = "url"
BUCKET = "bench"

CASES = ("dense", "sparse")
# Issue 6's targets.
TARGET_DENSE_WALL_RATIO = 0.9  # streamfilter's wall time over the faster of DuckDB and Polars, at most
TARGET_SPARSE_BYTES_RATIO = 1.2  # bytes read at the endpoint over (key chunks + footers + hit shards), at most
TARGET_SPARSE_SPEEDUP = 4.0  # the faster of DuckDB and Polars over streamfilter on S3, at least
# The streaming engine's memory targets, still judged.
TARGET_RSS_MIB = 600
TARGET_BIG_RSS_RATIO = 1.10


# --------------------------------------------------------------------------- engines (child side)


def read_blocklist(path: str) -> list[str]:
    """Same rules as streamfilter's text lists: one key a line, blanks and '#' lines skipped, trimmed."""
    with open(path, encoding="utf-8") as f:
        keys = (line.strip() for line in f)
        return [k for k in keys if k and not k.startswith("#")]


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def load_httpfs(con: Any) -> None:
    """From the duckdb-extension-httpfs package (the side virtualenv), else DuckDB's own install."""
    import duckdb

    try:
        import duckdb_extension_httpfs
    except ImportError:
        con.execute("LOAD httpfs")
        return
    ext = Path(duckdb_extension_httpfs.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    con.execute(f"LOAD {sql_str(str(ext / 'httpfs.duckdb_extension'))}")


def child_probe_httpfs() -> None:
    import duckdb

    load_httpfs(duckdb.connect())
    print(duckdb.__version__)


def child_duckdb(job: dict[str, Any]) -> None:
    import duckdb

    con = duckdb.connect()  # in memory, default threads (= cores)
    s3 = job.get("s3")
    if s3:
        load_httpfs(con)
        endpoint = s3["endpoint"].removeprefix("http://")
        con.execute(
            f"CREATE SECRET bench (TYPE s3, KEY_ID {sql_str(s3['key_id'])}, SECRET {sql_str(s3['secret'])}, "
            f"REGION {sql_str(s3['region'])}, ENDPOINT {sql_str(endpoint)}, URL_STYLE 'path', USE_SSL false)"
        )
    # The list read by DuckDB itself, with read_blocklist's rules (lines trimmed; blank and '#' lines skipped):
    # binding it as one VARCHAR[] parameter took DuckDB 1.5.5 20 s for 80,000 keys (2.0.1: well under 1 s).
    con.execute(
        "CREATE TABLE blocklist AS SELECT trim(line) AS url FROM read_csv($1, header = false, "
        "delim = '\x01', quote = '', escape = '', auto_detect = false, columns = {'line': 'VARCHAR'}) "
        "WHERE trim(line) <> '' AND NOT starts_with(trim(line), '#')",
        [job["blocklist"]],
    )
    for src, dst in zip(job["inputs"], job["outputs"], strict=True):
        con.execute(
            f"COPY (SELECT * FROM read_parquet({sql_str(src)}) ANTI JOIN blocklist USING (url)) "
            f"TO {sql_str(dst)} (FORMAT parquet, COMPRESSION {job.get('compression', 'zstd')})"
        )


def child_polars(job: dict[str, Any]) -> None:
    import polars as pl

    s3 = job.get("s3")
    options = None
    if s3:
        options = {
            "aws_endpoint_url": s3["endpoint"],
            "aws_allow_http": "true",
            "aws_access_key_id": s3["key_id"],
            "aws_secret_access_key": s3["secret"],
            "aws_region": s3["region"],
        }
    block = pl.Series("url", read_blocklist(job["blocklist"]), dtype=pl.String)
    for src, dst in zip(job["inputs"], job["outputs"], strict=True):
        (
            pl.scan_parquet(src, storage_options=options)
            .filter(~pl.col("url").is_in(block.implode()))  # implode: a set, not an element-wise match
            .sink_parquet(dst, compression=job.get("compression", "zstd"), storage_options=options)
        )


def child_main(engine: str, job_path: str) -> int:
    if engine == "probe-httpfs":
        child_probe_httpfs()
        return 0
    job = json.loads(Path(job_path).read_text())
    {"duckdb": child_duckdb, "polars": child_polars}[engine](job)
    return 0


# --------------------------------------------------------------------------- measuring one run


# --------------------------------------------------------------------------- data


def pick_sparse(paths: list[Path], keys: int, hit_shards: int, seed: int = 1) -> tuple[list[str], list[str]]:
    """``keys`` urls, all from ``hit_shards`` shards chosen at random, spread evenly over them."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    chosen = sorted(int(i) for i in rng.choice(len(paths), size=min(hit_shards, len(paths)), replace=False))
    urls: list[str] = []
    for j, i in enumerate(chosen):
        want = keys // len(chosen) + (j < keys % len(chosen))
        column = pq.read_table(paths[i], columns=[KEY_COLUMN]).column(KEY_COLUMN)
        rows = np.sort(rng.choice(len(column), size=min(want, len(column)), replace=False))
        urls += column.take(pa.array(rows)).to_pylist()
    return urls, [paths[i].name for i in chosen]


def shard_facts(path: Path) -> dict[str, Any]:
    """Size, SHA-256, and the bytes a key-column scan needs, from the file's own metadata.

    Computed here with pyarrow, independently of streamfilter: the key column's chunks (from the
    dictionary page, when there is one, through ``total_compressed_size``) of every row group, and the
    footer (its Thrift length plus the 8-byte length and magic that end the file).
    """
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(path).metadata
    index = metadata.schema.names.index(KEY_COLUMN)
    key_bytes = sum(metadata.row_group(i).column(index).total_compressed_size for i in range(metadata.num_row_groups))
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MIB):
            digest.update(block)
    return {
        "size": path.stat().st_size,
        "sha256": digest.hexdigest(),
        "key_bytes": key_bytes,
        "footer_bytes": metadata.serialized_size + 8,
        "row_groups": metadata.num_row_groups,
    }


def shown(path: Path) -> str:
    """``path`` as printed: within the repository relative to it (``--data`` may put data elsewhere)."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def dataset(
    name: str,
    shards: int,
    rows: int,
    fraction: float | None = None,
    sparse: tuple[int, int] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Shards and blocklist under data/, reused when meta.json records the same parameters.

    The list hits ``fraction`` of the rows of every shard (dense) or, with ``sparse=(keys, hit_shards)``,
    ``keys`` rows that all sit in ``hit_shards`` shards.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from streamfilter import demo
    from streamfilter.demo import pick_urls, write_blocklist, write_shards

    # The generator's source is part of the key: data made by an older laion_table is not reused.
    generator = hashlib.sha256(inspect.getsource(demo.laion_table).encode()).hexdigest()[:12]
    params: dict[str, Any] = {
        "generator": generator,
        "shards": shards,
        "rows": rows,
        "row_group_size": ROW_GROUP_SIZE,
        "fraction": fraction,
        "seed": seed,
        "compression": "zstd",
    }
    if sparse:
        params.update(sparse_keys=sparse[0], hit_shards=sparse[1])
    root = DATA / f"{name}-{shards}x{rows}"
    meta_path = root / "meta.json"
    meta = None
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("params") == params and all((root / "shards" / s).exists() for s in meta["expected"]):
            print(f"reusing {shown(root)} ({shards} shards x {rows:,} rows)", flush=True)
        else:
            meta = None
    if meta is None:
        shutil.rmtree(root, ignore_errors=True)
        print(f"generating {shown(root)}: {shards} shards x {rows:,} rows ...", flush=True)
        started = time.perf_counter()
        paths = write_shards(root / "shards", shards, rows, ROW_GROUP_SIZE, seed=seed)
        hit_names = None
        if sparse:
            urls, hit_names = pick_sparse(paths, *sparse)
        else:
            urls = pick_urls(paths, fraction or 0.0)
        write_blocklist(root / "blocklist.txt", urls)
        # The expected result, independently of every engine: rows whose url is not listed.
        block = pa.array(read_blocklist(str(root / "blocklist.txt")), pa.string())
        expected = {}
        for path in paths:
            url = pq.read_table(path, columns=[KEY_COLUMN]).column(KEY_COLUMN)
            hits = pc.sum(pc.is_in(url, value_set=block)).as_py() or 0
            expected[path.name] = {"rows_in": len(url), "rows_out": len(url) - hits}
        if hit_names is not None:
            assert sorted(n for n, e in expected.items() if e["rows_out"] < e["rows_in"]) == hit_names
        meta = {
            "params": params,
            "expected": expected,
            "blocklist_keys": len(block),
            "bytes": sum(p.stat().st_size for p in paths),
        }
        meta_path.write_text(json.dumps(meta, indent=1))  # written last: marks the set complete
        print(f"  done in {time.perf_counter() - started:.1f} s, {meta['bytes'] / MIB:.0f} MiB", flush=True)
    if "inputs" not in meta:  # also for data sets made before these facts were recorded
        meta["inputs"] = {n: shard_facts(root / "shards" / n) for n in sorted(meta["expected"])}
        meta_path.write_text(json.dumps(meta, indent=1))
    return {"root": root, **meta}


def scan_bound(ds: dict[str, Any]) -> dict[str, int]:
    """The sparse target's yardstick: key chunks and footers of every shard, plus all of the shards with hits."""
    inputs, expected = ds["inputs"], ds["expected"]
    parts = {
        "key_chunks": sum(f["key_bytes"] for f in inputs.values()),
        "footers": sum(f["footer_bytes"] for f in inputs.values()),
        "hit_shards": sum(inputs[n]["size"] for n, e in expected.items() if e["rows_out"] < e["rows_in"]),
    }
    return {**parts, "total": sum(parts.values())}


def verify_shard(name: str, body: bytes, want: dict[str, Any], block: Any) -> str | None:
    """None if this output shard has exactly the expected rows and no listed url; else why not."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(pa.BufferReader(body))
        got = pf.metadata.num_rows
        if got != want["rows_out"]:
            return f"{name}: {got} rows, expected {want['rows_out']}"
        column = pf.read(columns=[KEY_COLUMN]).column(KEY_COLUMN)
        left = pc.sum(pc.is_in(column, value_set=block)).as_py() or 0
    except (OSError, pa.ArrowException) as exc:
        return f"{name}: unreadable output ({exc})"
    return f"{name}: {left} listed urls remain" if left else None


# --------------------------------------------------------------------------- S3 (loopback moto)


# --------------------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.runs: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.server_rss_mib: dict[str, float] = {}
        self.logs = DATA / "logs"
        shutil.rmtree(self.logs, ignore_errors=True)
        self.logs.mkdir(parents=True)
        self.env = dict(ENV_AT_START)
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
            self.env.pop(name, None)
        self.env.update(
            AWS_DEFAULT_REGION=S3_REGION,
            AWS_REGION=S3_REGION,
            AWS_EC2_METADATA_DISABLED="true",
        )

    # one engine, one run -------------------------------------------------

    def command(
        self,
        engine: dict[str, Any],
        inputs: list[str],
        out_prefix: str,
        blocklist: str,
        s3: dict[str, str] | None,
        tag: str,
    ) -> list[str]:
        if engine["kind"] == "streamfilter":
            glob = inputs[0].rsplit("/", 1)[0] + "/*.parquet"
            cmd = [
                sys.executable,
                "-m",
                "streamfilter.cli",
                "run",
                glob,
                "--output",
                out_prefix,
                "--blocklist",
                blocklist,
                "--key",
                KEY_COLUMN,
                "--report",
                str(self.logs / f"{tag}.report.json"),
            ]
            if s3:
                cmd += ["--s3-endpoint-url", s3["endpoint"]]
            return cmd + engine.get("args", []) + self.args.streamfilter_args.split()
        names = [uri.rsplit("/", 1)[1] for uri in inputs]
        job = {
            "inputs": inputs,
            "outputs": [f"{out_prefix}/{n}" for n in names],
            "blocklist": blocklist,
            "s3": s3,
            # Each engine writes the codec its inputs have (streamfilter keeps every column's own).
            "compression": self.compression_of(blocklist),
        }
        job_path = self.logs / f"{tag}.job.json"
        job_path.write_text(json.dumps(job))
        return [engine["python"], str(Path(__file__).resolve()), "--child", engine["kind"], str(job_path)]

    @staticmethod
    def compression_of(blocklist: str) -> str:
        meta = Path(blocklist).parent / "meta.json"
        with contextlib.suppress(OSError, ValueError):
            return json.loads(meta.read_text())["params"].get("compression", "zstd")
        return "zstd"

    def run_once(
        self,
        engine: dict[str, Any],
        where: str,
        ds: dict[str, Any],
        run: int | str,
        case: str,
        server: S3Server | None = None,
        proxy: CountingProxy | None = None,
    ) -> dict[str, Any]:
        names = sorted(ds["expected"])
        env = dict(self.env)
        tag = f"{engine['name'].replace(' ', '_')}-{where.replace('/', '-')}-{case}-{run}"
        blocklist = str(ds["root"] / "blocklist.txt")
        s3 = None
        if server is None:
            out_dir = DATA / "out" / tag
            shutil.rmtree(out_dir, ignore_errors=True)
            out_dir.mkdir(parents=True)
            inputs = [str(ds["root"] / "shards" / n) for n in names]
            out_prefix = str(out_dir)
        else:
            # The engines talk to the proxy; the harness's own uploads and checks go to the server
            # directly, so the proxy counts the engine's traffic alone.
            endpoint = proxy.endpoint if proxy else server.endpoint
            s3 = {"endpoint": endpoint, "key_id": server.key_id, "secret": server.secret, "region": S3_REGION}
            env.update(AWS_ACCESS_KEY_ID=server.key_id, AWS_SECRET_ACCESS_KEY=server.secret)
            inputs = [f"s3://{BUCKET}/{ds['s3_prefix']}/{n}" for n in names]
            out_prefix = f"s3://{BUCKET}/out/{tag}"
            server.delete_prefix(f"out/{tag}/")
        cmd = self.command(engine, inputs, out_prefix, blocklist, s3, tag)
        load_before = os.getloadavg()[0]
        cpu_before = server.cpu_s() if server else 0.0
        log_before = server.log_offset() if server else 0
        counts_before = proxy.snapshot() if proxy else None
        own_before = resource.getrusage(resource.RUSAGE_SELF)
        result = measure(cmd, env, self.logs / tag, self.args.timeout, REPO)
        if server:
            result["server_cpu_s"] = server.cpu_s() - cpu_before
            result["endpoint"] = server.name
            requests, _ = server.requests_since(log_before)
            if requests:
                result["requests"] = request_mix(requests)
        if proxy and counts_before:
            if not proxy.quiesce():
                self.notes.append(f"{tag}: proxy connections still open 10 s after the engine exited")
            own = resource.getrusage(resource.RUSAGE_SELF)
            counts = proxy.snapshot()
            result["s3_read_bytes"] = counts["read"] - counts_before["read"]
            result["s3_written_bytes"] = counts["written"] - counts_before["written"]
            result["s3_connections"] = counts["connections"] - counts_before["connections"]
            result["proxy_cpu_s"] = own.ru_utime + own.ru_stime - own_before.ru_utime - own_before.ru_stime
        result.update(
            engine=engine["name"],
            kind=engine["kind"],
            variant=engine.get("variant", "default"),
            where=where,
            case=case,
            run=run,
            load1_before=load_before,
            load1_after=os.getloadavg()[0],
            rows_in=sum(e["rows_in"] for e in ds["expected"].values()),
        )
        if engine["kind"] == "streamfilter":
            result.update(self.streamfilter_report(self.logs / f"{tag}.report.json"))
            # What it told the user about the endpoint's refusals (fallbacks), once each.
            err = Path(f"{self.logs / tag}.err").read_text(errors="replace").splitlines()
            said = [line.strip() for line in err if "refus" in line.lower() or "not implemented" in line.lower()]
            result["sf_refusals"] = list(dict.fromkeys(said))[:4]
        if result["returncode"] != 0:
            result["error"] = f"exit {result['returncode']}: " + " | ".join(result["stderr_tail"])[-600:]
        else:
            # A shard the scan found clean must come out as the very bytes that went in.
            must_match = engine["kind"] == "streamfilter" and engine.get("scan", True)
            checked = time.perf_counter()
            result["error"], result["bytes_out"], result["identical_clean"] = self.check(
                names, out_prefix, ds, server, must_match
            )
            result["check_s"] = time.perf_counter() - checked
        if server is None:
            shutil.rmtree(DATA / "out" / tag, ignore_errors=True)
        else:
            server.delete_prefix(f"out/{tag}/")
        shown = "ok" if not result["error"] else f"FAILED: {result['error']}"
        moved = ""
        if "s3_read_bytes" in result:
            moved = (
                f"  read {result['s3_read_bytes'] / MIB:6.1f} MiB  written {result['s3_written_bytes'] / MIB:6.1f} MiB"
            )
        print(
            f"  {engine['name']:<31} {where:<5} {case:<9} run {run}: {result['wall_s']:7.2f} s  "
            f"cpu {result['cpu_s']:6.2f} s  rss {result['peak_rss_mib']:5.0f} MiB{moved}  "
            f"load {load_before:.1f}  check {result.get('check_s', 0):.1f} s  {shown}",
            flush=True,
        )
        return result

    @staticmethod
    def streamfilter_report(path: Path) -> dict[str, Any]:
        """What streamfilter says it read, wrote and how each output came to be (for comparison with the proxy)."""
        totals, shards = streamfilter_report(path)
        if not totals:
            return {}
        return {**totals, "sf_via_by_shard": {s["input"].rsplit("/", 1)[-1]: s.get("output_via") for s in shards}}

    def check(
        self, names: list[str], out_prefix: str, ds: dict[str, Any], server: S3Server | None, must_match: bool
    ) -> tuple[str | None, int, int]:
        """The verification's verdict, the output bytes, and how many clean shards came out byte-identical.

        Every output is read whole, its rows counted and its urls matched (``verify_shard``); clean shards
        (no listed row) are also compared by size and SHA-256 with their inputs, and a mismatch is an error
        only when ``must_match`` (streamfilter with its scan on, which copies them). Shards are checked on
        a few threads (pyarrow, hashlib and socket reads release the GIL): with 128 shards a run's check
        took 2-5 s on one.
        """
        from concurrent.futures import ThreadPoolExecutor

        import pyarrow as pa

        block = ds.setdefault("_block", pa.array(read_blocklist(str(ds["root"] / "blocklist.txt")), pa.string()))
        if server is None:
            present = {n for n in names if Path(f"{out_prefix}/{n}").exists()}

            def fetch(name: str) -> bytes:
                return Path(f"{out_prefix}/{name}").read_bytes()

        else:
            prefix = out_prefix.removeprefix(f"s3://{BUCKET}/")
            pages = server.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
            present = {o["Key"].rsplit("/", 1)[1] for page in pages for o in page.get("Contents", [])}

            def fetch(name: str) -> bytes:
                return server.get(f"{prefix}/{name}")

        def one(name: str) -> tuple[str | None, int, bool]:
            if name not in present:
                return f"output {name} missing", 0, False
            body = fetch(name)
            want, facts = ds["expected"][name], ds["inputs"][name]
            clean = want["rows_out"] == want["rows_in"]
            identical = clean and (len(body), hashlib.sha256(body).hexdigest()) == (facts["size"], facts["sha256"])
            return verify_shard(name, body, want, block), len(body), identical

        with ThreadPoolExecutor(4) as pool:
            results = dict(zip(names, pool.map(one, names), strict=True))
        error = next((e for e, _, _ in results.values() if e), None)
        clean = {n for n, e in ds["expected"].items() if e["rows_out"] == e["rows_in"]}
        identical = {n for n, (_, _, same) in results.items() if same}
        if error is None and must_match and identical != clean:
            differ = sorted(clean - identical)
            error = f"{len(differ)} of {len(clean)} clean shards not byte-identical to their inputs, e.g. {differ[0]}"
        return error, sum(size for _, size, _ in results.values()), len(identical)

    def series(
        self,
        engines: list[dict[str, Any]],
        where: str,
        ds: dict[str, Any],
        case: str,
        server: S3Server | None = None,
        proxy: CountingProxy | None = None,
    ) -> None:
        """Warm-up (discarded), then runs interleaved across engines so drifting load hits all alike."""
        for i in range(self.args.sparse_warmup if case == "sparse" else self.args.warmup):
            for engine in engines:
                self.runs.append(self.run_once(engine, where, ds, f"warmup{i}", case, server, proxy))
        for run in range(1, self.args.runs + 1):
            for engine in engines:
                self.runs.append(self.run_once(engine, where, ds, run, case, server, proxy))

    # engines ------------------------------------------------------------------

    def engines(self, need_s3: bool) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """The engines for local runs, and the DuckDB that can read S3 (None if there is none).

        The project's DuckDB has no httpfs extension offline, and PyPI ships that extension only for
        older DuckDB releases: S3 then runs under a side virtualenv with such a release (made here on
        first use), which also runs locally so that its local and S3 rows compare.
        """
        import duckdb
        import polars

        import streamfilter

        py = sys.executable
        wanted = set(self.args.engines.split(","))
        local = [
            {"name": f"streamfilter {streamfilter.__version__}", "kind": "streamfilter", "python": py},
            {"name": f"duckdb {duckdb.__version__}", "kind": "duckdb", "python": py},
            {"name": f"polars {polars.__version__}", "kind": "polars", "python": py},
        ]
        local = [e for e in local if e["kind"] in wanted]
        if "duckdb" not in wanted or not need_s3:
            return local, None
        side = self.args.duckdb_s3_python or str(SIDE_VENV / "bin" / "python")
        reasons = []
        for python in (py, side):
            if python == side and not Path(side).exists():
                if self.args.duckdb_s3_python or self.args.no_side_venv:
                    reasons.append(f"{side}: not there")
                    continue
                try:
                    setup_side_venv()
                except (OSError, subprocess.CalledProcessError) as exc:
                    reasons.append(f"creating {SIDE_VENV} failed: {exc}")
                    continue
            probe = [python, str(Path(__file__).resolve()), "--child", "probe-httpfs", "-"]
            proc = subprocess.run(probe, capture_output=True, text=True, timeout=120)
            if proc.returncode == 0:
                version = proc.stdout.strip()
                s3_engine = {"name": f"duckdb {version}", "kind": "duckdb", "python": python}
                if python != py:
                    s3_engine["name"] += " (side venv)"
                    s3_engine["side"] = True
                    local.append(s3_engine)
                return local, s3_engine
            reasons.append(f"{python}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        self.notes.append(
            "DuckDB S3 not run: no interpreter here could load DuckDB's httpfs extension. Tried: " + "; ".join(reasons)
        )
        return local, None

    def startup(self, engines: list[dict[str, Any]]) -> dict[str, float]:
        """Median wall time of starting each engine's interpreter and importing it."""
        found = {}
        for engine in engines:
            if engine["kind"] == "streamfilter":
                cmd = [engine["python"], "-m", "streamfilter.cli", "--version"]
            else:
                cmd = [engine["python"], "-c", f"import {engine['kind']}"]
            tag = f"startup-{engine['name'].replace(' ', '_')}"
            walls = [measure(cmd, self.env, self.logs / tag, 60, REPO)["wall_s"] for _ in range(3)]
            found[engine["name"]] = statistics.median(walls)
        return found

    # the phases ------------------------------------------------------------------

    def local_phase(self, plan: list[tuple[str, dict[str, Any], list[dict[str, Any]]]]) -> None:
        for case, ds, engines in plan:
            print(f"\n== local, {case}: {len(engines)} engines x {self.args.runs} runs", flush=True)
            self.series(engines, "local", ds, case)

    def big_phase(self, engine: dict[str, Any], big: dict[str, Any]) -> None:
        print(
            f"\n== local, {self.args.big_factor}x larger shards: streamfilter x {self.args.runs} runs",
            flush=True,
        )
        self.series([engine], "local", big, f"{self.args.big_factor}x-shards")

    def s3_phase(self, plan: list[tuple[str, dict[str, Any], list[dict[str, Any]]]], endpoint: str) -> None:
        """Every case on one S3 endpoint (``ENDPOINTS``), started here and stopped after; rows' place is s3/NAME."""
        print(f"\n== s3 on {endpoint} (127.0.0.1): starting the server and uploading the shards", flush=True)
        server = start_server(endpoint, DATA / f"{endpoint}.log", BUCKET, DATA)
        where = f"s3/{endpoint}"
        proxy = None
        try:
            for _, ds, _ in plan:
                ds["s3_prefix"] = "in/" + ds["root"].name
                started = time.perf_counter()
                for name in sorted(ds["expected"]):
                    server.client.upload_file(str(ds["root"] / "shards" / name), BUCKET, f"{ds['s3_prefix']}/{name}")
                print(
                    f"  uploaded {len(ds['expected'])} shards, {ds['bytes'] / MIB:.0f} MiB in "
                    f"{time.perf_counter() - started:.1f} s (server {server.endpoint}, pid {server.proc.pid})",
                    flush=True,
                )
            if not self.args.no_proxy:
                proxy = CountingProxy(server.port, latency=self.args.latency_ms / 1000)
                delay = f", which holds each request {self.args.latency_ms:g} ms" if self.args.latency_ms else ""
                print(f"  engines go through the counting proxy at {proxy.endpoint}{delay}", flush=True)
            for case, ds, engines in plan:
                print(f"\n== {where}, {case}: {len(engines)} engines x {self.args.runs} runs", flush=True)
                self.series(engines, where, ds, case, server, proxy)
            self.server_rss_mib[endpoint] = server.rss_mib()
        finally:
            if proxy:
                proxy.stop()
            server.stop()


# --------------------------------------------------------------------------- summary and report

CASE_ORDER = {"dense": 0, "sparse": 2}  # the memory check's case sits between the two


def where_order(where: str) -> int:
    """local first, then each S3 endpoint in ENDPOINTS' order."""
    names = list(ENDPOINTS)
    endpoint = where.removeprefix("s3/")
    return 0 if where == "local" else 1 + (names.index(endpoint) if endpoint in names else len(names))


def places(table: list[dict[str, Any]]) -> list[str]:
    return sorted({r["where"] for r in table}, key=where_order)


def is_default_sf(row: dict[str, Any]) -> bool:
    return row["kind"] == "streamfilter" and row["variant"] == "default"


def anchors_of(table: list[dict[str, Any]], row: dict[str, Any], field: str) -> list[dict[str, Any]]:
    """DuckDB and Polars rows at the same place and case that have ``field``."""
    return [
        o
        for o in table
        if o["kind"] != "streamfilter" and o["where"] == row["where"] and o["case"] == row["case"] and field in o
    ]


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        if str(r["run"]).startswith("warmup"):
            continue
        rows.setdefault((r["engine"], r["where"], r["case"]), []).append(r)
    table = []
    for (engine, where, case), rs in rows.items():
        good = [r for r in rs if not r["error"]]
        row: dict[str, Any] = {
            "engine": engine,
            "kind": rs[0]["kind"],
            "variant": rs[0]["variant"],
            "where": where,
            "case": case,
            "runs": len(rs),
            "ok_runs": len(good),
        }
        if good:
            walls = [r["wall_s"] for r in good]
            row.update(
                median_wall_s=statistics.median(walls),
                min_wall_s=min(walls),
                max_wall_s=max(walls),
                rows_per_s=good[0]["rows_in"] / statistics.median(walls),
                median_cpu_s=statistics.median(r["cpu_s"] for r in good),
                median_sys_s=statistics.median(r.get("sys_s", 0.0) for r in good),
                median_minor_faults=statistics.median(r.get("minor_faults", 0) for r in good),
                min_cpu_s=min(r["cpu_s"] for r in good),
                bytes_out=statistics.median(r.get("bytes_out", 0) for r in good),
                peak_rss_mib=max(r["peak_rss_mib"] for r in good),
                median_peak_rss_mib=statistics.median(r["peak_rss_mib"] for r in good),
                rows_in=good[0]["rows_in"],
                identical_clean=min(r.get("identical_clean", 0) for r in good),
            )
            for field in ("server_cpu_s", "proxy_cpu_s", "s3_read_bytes", "s3_written_bytes", "sf_bytes_read"):
                if field in good[0]:
                    row[f"median_{field}"] = statistics.median(r[field] for r in good)
            if "s3_read_bytes" in good[0]:
                row["max_s3_read_bytes"] = max(r["s3_read_bytes"] for r in good)
                row["max_s3_written_bytes"] = max(r["s3_written_bytes"] for r in good)
            if "sf_output_via" in good[0]:
                row["sf_output_via"] = good[0]["sf_output_via"]
            for field in ("endpoint", "requests", "sf_refusals"):
                if field in good[0]:
                    row[field] = good[0][field]
        row["errors"] = sorted({r["error"] for r in rs if r["error"]})
        table.append(row)
    table.sort(key=lambda r: (CASE_ORDER.get(r["case"], 1), where_order(r["where"])))  # stable: engines keep order
    for row in table:  # streamfilter's wall time over the faster of the others, same place and case
        if row["kind"] == "streamfilter" and "median_wall_s" in row:
            same = anchors_of(table, row, "median_wall_s")
            if same:
                row["ratio_vs_fastest_other"] = row["median_wall_s"] / min(o["median_wall_s"] for o in same)
                # Less sensitive to other processes on a shared machine: best wall and median CPU time.
                row["min_wall_ratio"] = row["min_wall_s"] / min(o["min_wall_s"] for o in same)
                row["cpu_ratio"] = row["median_cpu_s"] / min(o["median_cpu_s"] for o in same)
    return table


def targets(table: list[dict[str, Any]], big_case: str, bound: dict[str, int] | None) -> list[dict[str, Any]]:
    def find(where: str, case: str) -> dict[str, Any] | None:
        return next((r for r in table if is_default_sf(r) and r["where"] == where and r["case"] == case), None)

    def fastest(row: dict[str, Any]) -> dict[str, Any] | None:
        same = anchors_of(table, row, "median_wall_s")
        return min(same, key=lambda o: o["median_wall_s"]) if same else None

    out = []
    for where in places(table):
        row = find(where, "dense")
        anchor = row and "median_wall_s" in row and fastest(row)
        if row and anchor:
            ratio = row["median_wall_s"] / anchor["median_wall_s"]
            out.append(
                {
                    "target": f"dense, {where}: wall time <= {TARGET_DENSE_WALL_RATIO}x the faster of DuckDB "
                    "and Polars",
                    "value": f"{ratio:.2f}x ({row['median_wall_s']:.2f} s vs {anchor['engine']} "
                    f"{anchor['median_wall_s']:.2f} s, medians; for reference, not judged: "
                    f"{row['min_wall_ratio']:.2f}x on the best runs, {row['cpu_ratio']:.2f}x on CPU time)",
                    "pass": ratio <= TARGET_DENSE_WALL_RATIO,
                }
            )
    for where in [p for p in places(table) if p != "local"]:
        row = find(where, "sparse")
        if row and bound and "max_s3_read_bytes" in row:
            ratio = row["max_s3_read_bytes"] / bound["total"]
            out.append(
                {
                    "target": f"sparse, {where}: bytes read at the endpoint <= {TARGET_SPARSE_BYTES_RATIO}x "
                    "(key column chunks + footers of all shards + the shards with hits)",
                    "value": f"{ratio:.3f}x ({row['max_s3_read_bytes'] / MIB:.1f} MiB, the most of "
                    f"{row['ok_runs']} runs, vs {bound['total'] / MIB:.1f} MiB = {bound['key_chunks'] / MIB:.1f} key "
                    f"chunks + {bound['footers'] / MIB:.2f} footers + {bound['hit_shards'] / MIB:.1f} hit shards)",
                    "pass": ratio <= TARGET_SPARSE_BYTES_RATIO,
                }
            )
        elif row:
            out.append(
                {"target": f"sparse, {where}: bytes read at the endpoint", "value": "not measured", "pass": False}
            )
        anchor = row and "median_wall_s" in row and fastest(row)
        if row and anchor:
            speedup = anchor["median_wall_s"] / row["median_wall_s"]
            out.append(
                {
                    "target": f"sparse, {where}: wall time >= {TARGET_SPARSE_SPEEDUP:g}x faster than the faster of "
                    "DuckDB and Polars",
                    "value": f"{speedup:.2f}x ({row['median_wall_s']:.2f} s vs {anchor['engine']} "
                    f"{anchor['median_wall_s']:.2f} s, medians; best runs: "
                    f"{1 / row['min_wall_ratio']:.2f}x)",
                    "pass": speedup >= TARGET_SPARSE_SPEEDUP,
                }
            )
    for row in table:
        if not is_default_sf(row) or "peak_rss_mib" not in row:
            continue
        same = anchors_of(table, row, "peak_rss_mib")
        if not same:
            continue
        lowest = min(same, key=lambda o: o["peak_rss_mib"])
        listed = ", ".join(f"{o['engine']} {o['peak_rss_mib']:.0f}" for o in same)
        out.append(
            {
                "target": f"{row['case']}, {row['where']}: peak RSS no higher than the anchors'",
                "value": f"{row['peak_rss_mib']:.0f} MiB vs {lowest['engine']} {lowest['peak_rss_mib']:.0f} MiB "
                f"(the lowest anchor; {listed})",
                "pass": row["peak_rss_mib"] <= lowest["peak_rss_mib"],
            }
        )
    for where in places(table):
        row = find(where, "dense")
        if row and "peak_rss_mib" in row:
            out.append(
                {
                    "target": f"dense, {where}: peak RSS < {TARGET_RSS_MIB} MiB at default concurrency "
                    "(streaming engine's target)",
                    "value": f"{row['peak_rss_mib']:.0f} MiB",
                    "pass": row["peak_rss_mib"] < TARGET_RSS_MIB,
                }
            )
    local, big = find("local", "dense"), find("local", big_case)
    if local and big and "peak_rss_mib" in local and "peak_rss_mib" in big:
        ratio = big["peak_rss_mib"] / local["peak_rss_mib"]
        out.append(
            {
                "target": f"peak RSS with {big_case} <= {TARGET_BIG_RSS_RATIO}x the dense case (local; streaming "
                "engine's target)",
                "value": f"{ratio:.2f}x ({big['peak_rss_mib']:.0f} vs {local['peak_rss_mib']:.0f} MiB)",
                "pass": ratio <= TARGET_BIG_RSS_RATIO,
            }
        )
    out += verification_failures(table)
    return out


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem_kib = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(mem_kib / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "hostname": platform.node(),
    }


def versions(side_python: str | None) -> dict[str, str]:
    import importlib.metadata as md

    found = {}
    for name in (
        "streamfilter",
        "pyarrow",
        "duckdb",
        "polars",
        "s3fs",
        "aiobotocore",
        "anyio",
        "moto",
        "boto3",
        "numpy",
    ):
        with contextlib.suppress(md.PackageNotFoundError):
            found[name] = md.version(name)
    if side_python and side_python != sys.executable:
        code = "import duckdb; print(duckdb.__version__)"
        found["duckdb (side venv, for S3)"] = subprocess.run(
            [side_python, "-c", code], capture_output=True, text=True
        ).stdout.strip()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "streamfilter"], capture_output=True, text=True
    )
    found["git"] = commit.stdout.strip() + (" (streamfilter/ modified)" if dirty.stdout.strip() else "")
    # The code that ran, even when uncommitted: a digest of every streamfilter/*.py.
    digest = hashlib.sha256()
    for path in sorted((REPO / "streamfilter").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    found["streamfilter source sha256"] = digest.hexdigest()[:12]
    return found


def mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / MIB:.1f}"


def client_costs() -> dict[str, Any]:
    """Per-request and per-MiB client CPU of each S3 client, as endpoints.py last measured them."""
    try:
        return json.loads((RESULTS / "endpoints.json").read_text()).get("clients") or {}
    except (OSError, ValueError):
        return {}


def price(mix: dict[str, dict[str, int]], cost: dict[str, Any]) -> float:
    """Client CPU seconds a request mix would cost with one client: GETs at its per-request plus per-MiB
    cost, written bytes at its 8 MiB PUT's cost per MiB, every other request at the per-request cost."""
    seconds = 0.0
    put_per_mib = cost["put_8m"]["cpu_ms_per_request"] / 8
    for op, m in mix.items():
        if op.startswith("GetObject"):
            seconds += m["requests"] * cost["get_ms_per_request"] + m["bytes_out"] / MIB * cost["get_ms_per_mib"]
        elif op in ("UploadPart", "PutObject"):
            seconds += m["bytes_in"] / MIB * put_per_mib + m["requests"] * cost["get_ms_per_request"]
        else:
            seconds += m["requests"] * cost["get_ms_per_request"]
    return seconds / 1000


def render_requests(report: dict[str, Any]) -> list[str]:
    """Each S3 row's request mix (from the server's own log) and, for streamfilter, what its S3 client
    costs on that mix with aiobotocore against a leaner client, priced with endpoints.py's figures."""
    rows = [r for r in report["table"] if r.get("requests")]
    if not rows:
        return []
    costs = report.get("client_costs") or {}
    lean = [c for c in ("obstore", "pyarrow.fs") if "get_ms_per_request" in costs.get(c, {})]
    lines = [
        "",
        "## S3 request mix and client CPU",
        "",
        "Requests by operation, from the server's request log (one run); 'client CPU priced' is the mix "
        "multiplied by the per-request and per-MiB client CPU that `benchmarks/endpoints.py` measured for each "
        "client on the same endpoint (an estimate of the S3 client's share, not a run with another client); "
        "'cut' is aiobotocore's price less the leaner client's, over streamfilter's whole CPU time of the run.",
        "",
        "| engine | where | case | requests | GET MiB | PUT MiB | CPU s | client CPU priced s: aiobotocore"
        + "".join(f" / {c}" for c in lean)
        + " | cut ÷ run CPU |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        mix = r["requests"]
        shown = ", ".join(f"{op} {m['requests']}" for op, m in sorted(mix.items(), key=lambda kv: -kv[1]["requests"]))
        got = sum(m["bytes_out"] for op, m in mix.items() if op.startswith("GetObject")) / MIB
        put = sum(m["bytes_in"] for m in mix.values()) / MIB
        priced = cut = ""
        if r["kind"] == "streamfilter" and "get_ms_per_request" in costs.get("aiobotocore", {}):
            base = price(mix, costs["aiobotocore"])
            others = [price(mix, costs[c]) for c in lean]
            priced = " / ".join(f"{v:.2f}" for v in [base, *others])
            cut = " / ".join(f"{(base - v) / r['median_cpu_s']:.0%}" for v in others)
        lines.append(
            f"| {r['engine']} | {r['where']} | {r['case']} | {shown} | {got:.0f} | {put:.0f} | "
            f"{r['median_cpu_s']:.1f} | {priced} | {cut} |"
        )
    refusals = {(r["where"], r["case"]): r["sf_refusals"] for r in report["table"] if r.get("sf_refusals")}
    for (where, case), said in refusals.items():
        lines.append(f"\nstreamfilter on {where}, {case}, told the user: " + " / ".join(f"`{x[:200]}`" for x in said))
    return lines


def render(report: dict[str, Any]) -> str:
    p = report["parameters"]
    m = report["machine"]
    lines = [
        "# streamfilter benchmark",
        "",
        f"- date: {report['date']}; total runtime {report['seconds'] / 60:.1f} min",
        f"- machine: {m['nproc']} cores, {m['cpu']}, {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}; load average at start {report['load_start']}, at end {report['load_end']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
    ]
    for case, c in report["cases"].items():
        spread = (
            f"all in {c['hit_shards']} of {c['shards']} shards ({c['hit_shards'] / c['shards']:.1%})"
            if case == "sparse"
            else "spread over every shard"
        )
        lines.append(
            f"- {case}: {c['shards']} shards x {c['rows']:,} rows (LAION-style, zstd, row groups of "
            f"{ROW_GROUP_SIZE:,}), {c['data_mib']:.0f} MiB; blocklist of {c['blocklist_keys']:,} urls removing "
            f"{c['rows_removed']:,} rows ({c['rows_removed'] / max(1, c['rows_in']):.3%}), {spread}"
        )
    lines += [
        f"- {p['runs']} timed runs per engine, place and case (after {p['warmup']} warm-up in the dense case, "
        f"{p['sparse_warmup']} in the sparse case), interleaved; median wall time; peak RSS is the largest of "
        "the runs (the child's own ru_maxrss)",
        "- S3: "
        + (
            "not run"
            if p["only"] == "local"
            else "engines talk to moto directly (--no-proxy): no byte counts"
            if p["no_proxy"]
            else "every engine through a byte-counting proxy in front of the server; read/written MiB are what "
            "crossed it (server to engine, engine to server), medians"
            + (
                f"; the proxy holds each request {p['latency_ms']:g} ms before passing it on (a real endpoint's "
                "round trip; loopback has none)"
                if p.get("latency_ms")
                else ""
            )
        ),
        *(f"- endpoint s3/{name}: {what}" for name, what in report.get("endpoints", {}).items()),
        "- local read MiB: streamfilter's own report (`bytes_read`, marked r); the others are not counted",
        f"- command: `{report['command']}`",
        "",
        "| engine | where | case | median wall s | min-max s | rows/s | CPU s | peak RSS MiB | read MiB "
        "| written MiB | out MiB | sf ÷ fastest other |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["table"]:
        if "median_wall_s" not in row:
            lines.append(f"| {row['engine']} | {row['where']} | {row['case']} | FAILED | | | | | | | | |")
            continue
        ratio = f"{row['ratio_vs_fastest_other']:.2f}" if "ratio_vs_fastest_other" in row else ""
        cpu = f"{row['median_cpu_s']:.1f} ({row['median_sys_s']:.1f} sys)"
        if "median_server_cpu_s" in row:
            cpu += f" +{row['median_server_cpu_s']:.1f} server"
        if "median_proxy_cpu_s" in row:
            cpu += f" +{row['median_proxy_cpu_s']:.1f} proxy"
        if "median_s3_read_bytes" in row:
            read, written = mib(row["median_s3_read_bytes"]), mib(row["median_s3_written_bytes"])
        elif row["where"] == "local" and "median_sf_bytes_read" in row:
            read, written = f"{mib(row['median_sf_bytes_read'])} r", "n/a"
        else:
            read = written = "n/a"
        lines.append(
            f"| {row['engine']} | {row['where']} | {row['case']} | {row['median_wall_s']:.2f} | "
            f"{row['min_wall_s']:.2f}-{row['max_wall_s']:.2f} | {row['rows_per_s'] / 1e6:.2f} M | {cpu} | "
            f"{row['peak_rss_mib']:.0f} | {read} | {written} | {row['bytes_out'] / MIB:.0f} | {ratio} |"
        )
    sparse = report["cases"].get("sparse")
    if sparse:
        bound = sparse["bound"]
        lines += [
            "",
            "## Sparse case: bytes",
            "",
            f"Bound of the target, from the files' metadata with pyarrow: {bound['total'] / MIB:.1f} MiB = key "
            f"(`url`) column chunks {bound['key_chunks'] / MIB:.1f} MiB + footers {bound['footers'] / MIB:.2f} MiB "
            f"+ the {sparse['hit_shards']} shards with hits {bound['hit_shards'] / MIB:.1f} MiB; the data set is "
            f"{sparse['data_mib']:.1f} MiB.",
            "",
            "| engine | where | read MiB | read ÷ bound | read ÷ data | written MiB | outputs by way (streamfilter's "
            "report) | clean shards byte-identical |",
            "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |",
        ]
        clean = sparse["shards"] - sparse["hit_shards"]
        for row in report["table"]:
            if row["case"] != "sparse" or "median_wall_s" not in row:
                continue
            read = row.get("median_s3_read_bytes")
            if read is None and row["where"] == "local":
                read = row.get("median_sf_bytes_read")
            ways = ", ".join(f"{k} {v}" for k, v in sorted(row.get("sf_output_via", {}).items()))
            shown = mib(read) + (" r" if read is not None and "median_s3_read_bytes" not in row else "")
            of_bound = "" if read is None else f"{read / bound['total']:.2f}"
            of_data = "" if read is None else f"{read / (sparse['data_mib'] * MIB):.2f}"
            lines.append(
                f"| {row['engine']} | {row['where']} | {shown} | {of_bound} | {of_data} | "
                f"{mib(row.get('median_s3_written_bytes'))} | {ways} | {row['identical_clean']}/{clean} |"
            )
    lines += render_requests(report)
    lines += ["", "## Targets", ""]
    for t in report["targets"]:
        lines.append(f"- **{'PASS' if t['pass'] else 'FAIL'}** {t['target']}: {t['value']}")
    lines += ["", "## Notes", ""]
    lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def describe(concurrency: int, startup: dict[str, float], proxied: bool, warmups: tuple[int, int]) -> list[str]:
    started = ", ".join(f"{name} {sec:.2f} s" for name, sec in startup.items())
    notes = [
        "streamfilter: `python -m streamfilter.cli run '<data>/*.parquet' --output <out> --blocklist "
        f"<list> --key url --report <file>`, default concurrency ({concurrency} shards in flight) and default "
        "two-phase run (a key-column scan first; shards without hits are copied, server-side on S3); on S3 "
        "with `--s3-endpoint-url`. It keeps row order and row groups, and each column's codec (zstd). The "
        "`--no-scan` row (sparse case only) is the same with the scan off: every shard is rewritten.",
        "DuckDB: one process, default threads; per shard `COPY (SELECT * FROM read_parquet(shard) ANTI JOIN "
        "blocklist USING (url)) TO out (FORMAT parquet, COMPRESSION zstd)`, the blocklist loaded once into a "
        "table. ANTI JOIN does not promise to keep row order.",
        "Polars: one process; per shard `pl.scan_parquet(shard).filter(~pl.col('url').is_in(block.implode()))"
        ".sink_parquet(out, compression='zstd')`, the blocklist loaded once as a Series (`implode()` because "
        "is_in with a same-typed Series is deprecated as ambiguous in Polars 2).",
        "Every run is a fresh subprocess that parses the same text blocklist itself, inside its wall time. "
        "Every run's outputs are checked: each output shard must hold exactly the row count computed "
        "independently with pyarrow and no listed url; for streamfilter with its scan on, every shard without "
        "hits must also come out byte-identical to its input (size and SHA-256); a run that fails the check "
        "does not count.",
        "Peak RSS is ru_maxrss of the engine process, taken by a small wrapper process that spawns it (a "
        "child spawned by the harness itself would inherit the harness's high-water mark across exec). "
        "CPU s is user + system time.",
        "S3: each endpoint (s3/NAME rows, see above) on 127.0.0.1 in its own process, started and stopped "
        "here, one after the other; inputs uploaded once, "
        "outputs deleted after each run's check; the blocklist stays a local file. The server shares the 2 "
        "cores with the engine ('+N server' is its CPU time during the run), so S3 rows measure the engines' "
        "S3 paths against a loopback server, not a real network.",
        f"Wall times include interpreter start and imports (measured alone: {started}). Inputs are in the "
        f"page cache: the data was just written or read, every engine has {warmups[0]} warm-up run(s) per place "
        f"in the dense case and {warmups[1]} in the sparse case, which runs after it (same engines, same "
        "server).",
    ]
    if proxied:
        notes.append(
            "Bytes at the endpoint: every engine's S3 endpoint is a counting TCP proxy (threads of the harness, "
            "loopback only) in front of the server; 'read' is every byte the server sent the engine, 'written' every "
            "byte the engine sent the server, HTTP headers, listings and receipts included; server-side copies "
            "(CopyObject) move no bytes through it. '+N proxy' is the proxy's CPU time during the run, on the "
            "same 2 cores. S3 figures of results before the proxy was added (2026-11-26 and earlier) had no "
            "proxy hop, so they are not quite comparable with these."
        )
    return notes


def setup_side_venv() -> int:
    """A virtualenv with the newest DuckDB whose httpfs extension is published on PyPI."""
    print(f"creating {SIDE_VENV} with duckdb=={SIDE_DUCKDB_VERSION} and its httpfs extension", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(SIDE_VENV)], check=True)
        pip = [str(SIDE_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        packages = [f"duckdb=={SIDE_DUCKDB_VERSION}", f"duckdb-extension-httpfs=={SIDE_DUCKDB_VERSION}"]
        subprocess.run([*pip, *packages], check=True, timeout=600)
    except BaseException:
        shutil.rmtree(SIDE_VENV, ignore_errors=True)  # half a virtualenv would be probed again next time
        raise
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of dense,sparse (default both)")
    ap.add_argument("--shards", type=int, default=8, help="dense case: shards (default 8)")
    ap.add_argument("--rows", type=int, default=500_000, help="dense case: rows per shard (default 500000)")
    ap.add_argument("--sparse-shards", type=int, default=128, help="sparse case: shards (default 128)")
    ap.add_argument("--sparse-rows", type=int, default=100_000, help="sparse case: rows per shard (default 100000)")
    ap.add_argument("--sparse-keys", type=int, default=2000, help="sparse case: listed urls (default 2000)")
    ap.add_argument(
        "--sparse-hit-shards", type=int, default=3, help="sparse case: shards holding the listed urls (default 3)"
    )
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies --rows and --sparse-rows")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per engine and place; the median is reported")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per engine and place first (default 1)")
    # The sparse case runs after the dense one: every engine's code is warm by then, and its shards are in
    # the page cache (hashed when first used) and in moto; a warm-up round of it would cost about 3 minutes.
    ap.add_argument("--sparse-warmup", type=int, default=0, help="untimed runs of the sparse case (default 0)")
    ap.add_argument("--only", choices=["local", "s3"], help="run only the local or only the S3 comparison")
    ap.add_argument("--engines", default="streamfilter,duckdb,polars", help="comma-separated subset")
    ap.add_argument("--big-factor", type=int, default=4, help="shard size multiplier of the memory check (0: skip)")
    ap.add_argument("--no-proxy", action="store_true", help="engines talk to the server directly (no byte counts)")
    ap.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="the counting proxy holds each S3 request this long, as a real endpoint's round trip would",
    )
    ap.add_argument(
        "--endpoints",
        default="s3rver,moto",
        help="comma-separated S3 endpoints to run the S3 cases on, each in turn: " + ", ".join(ENDPOINTS),
    )
    ap.add_argument(
        "--duckdb-s3-python", help=f"interpreter whose duckdb loads httpfs (default {SIDE_VENV}/bin/python)"
    )
    ap.add_argument("--setup-duckdb-s3", action="store_true", help="create that side virtualenv from PyPI, then exit")
    ap.add_argument("--no-side-venv", action="store_true", help="do not create the side virtualenv when it is missing")
    ap.add_argument("--streamfilter-args", default="", help="extra streamfilter flags, e.g. '--concurrency 2'")
    ap.add_argument("--results", default="latest", help="results/NAME.md and .json (default latest)")
    ap.add_argument(
        "--data",
        help="folder for the generated shards, logs and outputs (default benchmarks/data): another benchmark "
        "running at the same time in the same folder clears this one's logs and outputs",
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before a run is killed")
    args = ap.parse_args(argv)
    if args.latency_ms and args.no_proxy:
        ap.error("--latency-ms needs the proxy: leave out --no-proxy")
    unknown = set(args.cases.split(",")) - set(CASES)
    if unknown:
        ap.error(f"--cases: unknown {', '.join(sorted(unknown))}")
    return args


def case_facts(ds: dict[str, Any]) -> dict[str, Any]:
    rows_in = sum(e["rows_in"] for e in ds["expected"].values())
    rows_out = sum(e["rows_out"] for e in ds["expected"].values())
    return {
        "shards": len(ds["expected"]),
        "rows": ds["params"]["rows"],
        "data_mib": ds["bytes"] / MIB,
        "blocklist_keys": ds["blocklist_keys"],
        "rows_in": rows_in,
        "rows_removed": rows_in - rows_out,
        "hit_shards": sum(e["rows_out"] < e["rows_in"] for e in ds["expected"].values()),
        "row_groups_per_shard": max(f["row_groups"] for f in ds["inputs"].values()),
        "bound": scan_bound(ds),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1], argv[2])
    args = parse_args(argv)
    if args.setup_duckdb_s3:
        return setup_side_venv()
    if args.data:
        global DATA  # read when the data sets, logs, outputs and the server's store are made
        DATA = Path(args.data).resolve()
    started = time.perf_counter()
    from streamfilter.spec import DEFAULT_CONCURRENCY

    cases = [c for c in CASES if c in args.cases.split(",")]
    rows = max(1, int(args.rows * args.scale))
    sparse_rows = max(1, int(args.sparse_rows * args.scale))
    bench = Bench(args)
    load_start = round(os.getloadavg()[0], 2)
    data: dict[str, dict[str, Any]] = {}
    if "dense" in cases:
        data["dense"] = dataset("laion", args.shards, rows, HIT_FRACTION)
    if "sparse" in cases:
        data["sparse"] = dataset(
            "laion-sparse", args.sparse_shards, sparse_rows, sparse=(args.sparse_keys, args.sparse_hit_shards)
        )
    local_engines, s3_duckdb = bench.engines(need_s3=args.only != "local")
    for engine in local_engines:
        engine["variant"] = "default"
    library_versions = versions(s3_duckdb["python"] if s3_duckdb else None)
    sf = next((e for e in local_engines if e["kind"] == "streamfilter"), None)
    # The reference row of the sparse case: streamfilter rewriting every shard, as the anchors do.
    no_scan = sf and {
        **sf,
        "name": sf["name"] + " --no-scan",
        "args": ["--no-scan"],
        "scan": False,
        "variant": "no-scan",
    }
    big_case = f"{args.big_factor}x-shards"
    big = None
    if args.only != "s3" and sf and args.big_factor > 1 and "dense" in cases:
        # As many large shards as run at once, so the concurrency is as saturated as in the normal case;
        # the blocklist has as many keys as the normal one, so only the shard size differs.
        big_shards = DEFAULT_CONCURRENCY
        total = big_shards * rows * args.big_factor
        big = dataset("laion-big", big_shards, rows * args.big_factor, HIT_FRACTION * args.shards * rows / total)

    def for_case(engines: list[dict[str, Any]], case: str, where: str) -> list[dict[str, Any]]:
        if case != "sparse":
            return engines
        if where == "local":
            # The side venv's DuckDB runs locally only so that its S3 row has a local twin; the dense case
            # gives that, and here it would be the slowest engine (about 45 s a run) and never the anchor.
            engines = [e for e in engines if not e.get("side")]
        return [*engines[:1], no_scan, *engines[1:]] if no_scan else engines

    if args.only != "s3":
        bench.local_phase([(c, data[c], for_case(local_engines, c, "local")) for c in cases])
        if big and sf:
            bench.big_phase(sf, big)
    if args.only != "local":
        s3_engines = [e for e in local_engines if e["kind"] != "duckdb"]
        if s3_duckdb:
            s3_engines.insert(1, s3_duckdb)
        for endpoint in args.endpoints.split(","):
            bench.s3_phase([(c, data[c], for_case(s3_engines, c, "s3")) for c in cases], endpoint)

    facts = {case: case_facts(ds) for case, ds in data.items()}
    proxied = not args.no_proxy and args.only != "local"
    notes = describe(DEFAULT_CONCURRENCY, bench.startup(local_engines), proxied, (args.warmup, args.sparse_warmup))
    if "sparse" in facts:
        s = facts["sparse"]
        names = sorted(n for n, e in data["sparse"]["expected"].items() if e["rows_out"] < e["rows_in"])
        notes.append(
            f"The sparse case: {s['shards']} shards x {s['rows']:,} rows ({s['row_groups_per_shard']} row "
            f"group(s) a shard), a list of {s['blocklist_keys']:,} urls picked at random from shards "
            f"{', '.join(names)} only, spread evenly over them. Its bound (the target's yardstick) is computed "
            "from each file's metadata with pyarrow, not from streamfilter: the url column chunks of every row "
            "group (total_compressed_size, dictionary page included), the footer (Thrift length + 8 bytes) of "
            "every shard, and the whole of each shard with hits."
        )
    if big:
        notes.append(
            f"The {big_case} case: {len(big['expected'])} shards x {big['params']['rows']:,} rows, as many "
            "shards as the default concurrency so that as many are in flight as in the dense case; same row "
            f"group size; a blocklist of {big['blocklist_keys']:,} keys, about as many as the dense case's."
        )
        if rows < ROW_GROUP_SIZE:
            notes.append(
                f"With {rows:,} rows a shard the dense case has smaller row groups than the {big_case} "
                "case, so their memory does not compare: the check means something only from "
                f"{ROW_GROUP_SIZE:,} rows a shard up."
            )
    s3_sf = [r for r in bench.runs if r["kind"] == "streamfilter" and r["where"] != "local" and "sf_via_by_shard" in r]
    copied_wrong = sorted(
        {
            f"{r['engine']} {r['case']} run {r['run']}"
            for r in s3_sf
            if any(v == "byte_copy" for v in r["sf_via_by_shard"].values())
        }
    )
    if copied_wrong:
        notes.append(
            "streamfilter byte-copied (not server-side copied) clean shards on S3 in: " + "; ".join(copied_wrong)
        )
    notes += bench.notes
    if versions(None)["streamfilter source sha256"] != library_versions["streamfilter source sha256"]:
        notes.append("WARNING: streamfilter/*.py changed while the benchmark ran; runs may mix two versions.")
    notes += load_notes(bench.runs)
    failed_warmups = [r for r in bench.runs if str(r["run"]).startswith("warmup") and r["error"]]
    notes += [f"warm-up failed: {r['engine']} {r['where']} {r['case']}: {r['error']}" for r in failed_warmups]
    table = summarize(bench.runs)
    report = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/run.py", *argv]),
        "parameters": {
            **vars(args),
            "rows": rows,
            "sparse_rows": sparse_rows,
            "row_group_size": ROW_GROUP_SIZE,
            "default_concurrency": DEFAULT_CONCURRENCY,
        },
        "machine": machine(),
        "versions": library_versions,
        "load_start": load_start,
        "load_end": round(os.getloadavg()[0], 2),
        "cases": facts,
        "table": table,
        "targets": targets(table, big_case, facts.get("sparse", {}).get("bound")),
        "notes": notes,
        "server_rss_mib_at_end": bench.server_rss_mib,
        "endpoints": {e: ENDPOINTS[e] for e in args.endpoints.split(",")} if args.only != "local" else {},
        "client_costs": client_costs(),
        "runs": bench.runs,
        "seconds": time.perf_counter() - started,
    }
    RESULTS.mkdir(exist_ok=True)
    md = render(report)
    (RESULTS / f"{args.results}.md").write_text(md)
    (RESULTS / f"{args.results}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print("\n" + md)
    print(f"wrote {RESULTS / args.results}.md and .json")
    return 0 if all(r["ok_runs"] == r["runs"] for r in table) else 1


if __name__ == "__main__":
    sys.exit(main())
