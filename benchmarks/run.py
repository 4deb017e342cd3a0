"""Benchmark streamfilter against DuckDB and Polars on the same generated LAION-style shards.

One invocation generates (or reuses) the data, then runs every engine several times,
each run in its own fresh subprocess, locally and through a loopback S3 endpoint
(a moto server this script starts and stops), verifies every output against counts
computed independently with pyarrow, and writes ``results/<name>.md`` and ``.json``.

    python benchmarks/run.py                                   # the full default benchmark
    python benchmarks/run.py --shards 2 --rows 50000 --runs 1 --results smoke   # a smoke run

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
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data"
RESULTS = HERE / "results"
SIDE_VENV = HERE / ".venv-duckdb-s3"
SIDE_DUCKDB_VERSION = "1.5.5"  # newest duckdb with an httpfs extension on PyPI (duckdb-extension-httpfs)

ROW_GROUP_SIZE = 122_880  # DuckDB's default row group size
HIT_FRACTION = 0.01
BUCKET = "bench"
S3_KEY_ID = "benchkey"
S3_SECRET = "benchsecret"
S3_REGION = "us-east-1"
MIB = 1024 * 1024

TARGET_WALL_RATIO = 1.3
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
    con.execute("CREATE TABLE blocklist AS SELECT unnest($1::VARCHAR[]) AS url", [read_blocklist(job["blocklist"])])
    for src, dst in zip(job["inputs"], job["outputs"], strict=True):
        con.execute(
            f"COPY (SELECT * FROM read_parquet({sql_str(src)}) ANTI JOIN blocklist USING (url)) "
            f"TO {sql_str(dst)} (FORMAT parquet, COMPRESSION zstd)"
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
            .sink_parquet(dst, compression="zstd", storage_options=options)
        )


def child_main(engine: str, job_path: str) -> int:
    if engine == "probe-httpfs":
        child_probe_httpfs()
        return 0
    job = json.loads(Path(job_path).read_text())
    {"duckdb": child_duckdb, "polars": child_polars}[engine](job)
    return 0


# --------------------------------------------------------------------------- measuring one run


#: Runs in its own small interpreter and spawns the engine. Its child's ru_maxrss is the engine's own
#: peak: Linux keeps the high-water mark across exec, and a child spawned straight from this harness
#: (hundreds of MiB after loading pyarrow) would start with the harness's RSS as its floor.
WRAPPER = """
import json, os, signal, sys, time
result, timeout, cmd = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
# What a spawned child inherits as its high-water mark: this process's own memory's (VmHWM), not
# its ru_maxrss (which carries the harness's over exec).
with open("/proc/self/status") as f:
    floor = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
start = time.perf_counter()
pid = os.posix_spawnp(cmd[0], cmd, os.environ)
signal.signal(signal.SIGALRM, lambda *_: os.kill(pid, signal.SIGKILL))
signal.setitimer(signal.ITIMER_REAL, timeout)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(result, "w") as f:
    json.dump({"wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
               "peak_rss_kib": usage.ru_maxrss, "minor_faults": usage.ru_minflt, "floor_kib": floor,
               "returncode": os.waitstatus_to_exitcode(status)}, f)
"""


def measure(cmd: list[str], env: dict[str, str], log_prefix: Path, timeout: float) -> dict[str, Any]:
    """Run ``cmd`` in a fresh process; wall time, CPU time and peak RSS from its own rusage."""
    result = Path(f"{log_prefix}.rusage.json")
    result.unlink(missing_ok=True)
    with open(f"{log_prefix}.out", "wb") as out, open(f"{log_prefix}.err", "wb") as err:
        wrapper = [sys.executable, "-S", "-c", WRAPPER, str(result), str(timeout), *cmd]
        proc = subprocess.run(wrapper, stdout=out, stderr=err, env=env, cwd=REPO, timeout=timeout + 60)
    stderr = Path(f"{log_prefix}.err").read_text(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not result.exists():
        return {
            "wall_s": 0.0,
            "cpu_s": 0.0,
            "peak_rss_mib": 0.0,
            "returncode": proc.returncode or -1,
            "stderr_tail": ["benchmark wrapper failed", *stderr[-3:]],
        }
    usage = json.loads(result.read_text())
    return {
        "wall_s": usage["wall_s"],
        "cpu_s": usage["user_s"] + usage["sys_s"],
        "sys_s": usage["sys_s"],
        "minor_faults": usage["minor_faults"],
        "peak_rss_mib": usage["peak_rss_kib"] / 1024,  # Linux reports KiB
        "rss_floor_mib": usage["floor_kib"] / 1024,
        "returncode": usage["returncode"],
        "stderr_tail": stderr[-3:],
    }


# --------------------------------------------------------------------------- data


def dataset(name: str, shards: int, rows: int, fraction: float, seed: int = 0) -> dict[str, Any]:
    """Shards and blocklist under data/, reused when meta.json records the same parameters."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from streamfilter import demo
    from streamfilter.demo import pick_urls, write_blocklist, write_shards

    # The generator's source is part of the key: data made by an older laion_table is not reused.
    generator = hashlib.sha256(inspect.getsource(demo.laion_table).encode()).hexdigest()[:12]
    params = {
        "generator": generator,
        "shards": shards,
        "rows": rows,
        "row_group_size": ROW_GROUP_SIZE,
        "fraction": fraction,
        "seed": seed,
        "compression": "zstd",
    }
    root = DATA / f"{name}-{shards}x{rows}"
    meta_path = root / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("params") == params and all((root / "shards" / s).exists() for s in meta["expected"]):
            print(f"reusing {root.relative_to(REPO)} ({shards} shards x {rows:,} rows)", flush=True)
            return {"root": root, **meta}
    shutil.rmtree(root, ignore_errors=True)
    print(f"generating {root.relative_to(REPO)}: {shards} shards x {rows:,} rows ...", flush=True)
    started = time.perf_counter()
    paths = write_shards(root / "shards", shards, rows, ROW_GROUP_SIZE, seed=seed)
    urls = pick_urls(paths, fraction)
    write_blocklist(root / "blocklist.txt", urls)
    # The expected result, independently of every engine: rows whose url is not listed.
    block = pa.array(read_blocklist(str(root / "blocklist.txt")), pa.string())
    expected = {}
    for path in paths:
        url = pq.read_table(path, columns=["url"]).column("url")
        hits = pc.sum(pc.is_in(url, value_set=block)).as_py() or 0
        expected[path.name] = {"rows_in": len(url), "rows_out": len(url) - hits}
    meta = {
        "params": params,
        "expected": expected,
        "blocklist_keys": len(block),
        "bytes": sum(p.stat().st_size for p in paths),
    }
    meta_path.write_text(json.dumps(meta, indent=1))  # written last: marks the set complete
    print(f"  done in {time.perf_counter() - started:.1f} s, {meta['bytes'] / MIB:.0f} MiB", flush=True)
    return {"root": root, **meta}


def verify(outputs: dict[str, Any], ds: dict[str, Any], block: Any) -> str | None:
    """None if every output shard has exactly the expected rows and no listed url; else why not."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for name, want in ds["expected"].items():
        source = outputs.get(name)
        if source is None:
            return f"output {name} missing"
        try:
            pf = pq.ParquetFile(source)
            got = pf.metadata.num_rows
            if got != want["rows_out"]:
                return f"{name}: {got} rows, expected {want['rows_out']}"
            left = pc.sum(pc.is_in(pf.read(columns=["url"]).column("url"), value_set=block)).as_py() or 0
        except (OSError, pa.ArrowException) as exc:
            return f"{name}: unreadable output ({exc})"
        if left:
            return f"{name}: {left} listed urls remain"
    return None


# --------------------------------------------------------------------------- S3 (loopback moto)


class MotoServer:
    """A moto S3 server on 127.0.0.1 in its own process (so its CPU is not ours)."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(DATA / "moto.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start; see {DATA / 'moto.log'}")
            time.sleep(0.2)
        import boto3

        self.client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_KEY_ID,
            aws_secret_access_key=S3_SECRET,
            region_name=S3_REGION,
        )

    def cpu_s(self) -> float:
        import psutil

        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def rss_mib(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / MIB

    def delete_prefix(self, prefix: str) -> None:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# --------------------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.runs: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.logs = DATA / "logs"
        shutil.rmtree(self.logs, ignore_errors=True)
        self.logs.mkdir(parents=True)
        self.env = dict(os.environ)
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
            self.env.pop(name, None)
        self.env.update(
            AWS_ACCESS_KEY_ID=S3_KEY_ID,
            AWS_SECRET_ACCESS_KEY=S3_SECRET,
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
                "url",
            ]
            if s3:
                cmd += ["--s3-endpoint-url", s3["endpoint"]]
            return cmd + self.args.streamfilter_args.split()
        names = [uri.rsplit("/", 1)[1] for uri in inputs]
        job = {
            "inputs": inputs,
            "outputs": [f"{out_prefix}/{n}" for n in names],
            "blocklist": blocklist,
            "s3": s3,
        }
        job_path = self.logs / f"{tag}.job.json"
        job_path.write_text(json.dumps(job))
        return [engine["python"], str(Path(__file__).resolve()), "--child", engine["kind"], str(job_path)]

    def run_once(
        self,
        engine: dict[str, Any],
        where: str,
        ds: dict[str, Any],
        run: int | str,
        server: MotoServer | None = None,
        case: str = "default",
    ) -> dict[str, Any]:
        names = sorted(ds["expected"])
        tag = f"{engine['name'].replace(' ', '_')}-{where}-{case}-{run}"
        blocklist = str(ds["root"] / "blocklist.txt")
        s3 = None
        if server is None:
            out_dir = DATA / "out" / tag
            shutil.rmtree(out_dir, ignore_errors=True)
            out_dir.mkdir(parents=True)
            inputs = [str(ds["root"] / "shards" / n) for n in names]
            out_prefix = str(out_dir)
        else:
            s3 = {"endpoint": server.endpoint, "key_id": S3_KEY_ID, "secret": S3_SECRET, "region": S3_REGION}
            inputs = [f"s3://{BUCKET}/{ds['s3_prefix']}/{n}" for n in names]
            out_prefix = f"s3://{BUCKET}/out/{tag}"
            server.delete_prefix(f"out/{tag}/")
        cmd = self.command(engine, inputs, out_prefix, blocklist, s3, tag)
        load_before = os.getloadavg()[0]
        cpu_before = server.cpu_s() if server else 0.0
        result = measure(cmd, self.env, self.logs / tag, self.args.timeout)
        if server:
            result["server_cpu_s"] = server.cpu_s() - cpu_before
        result.update(
            engine=engine["name"],
            where=where,
            case=case,
            run=run,
            load1_before=load_before,
            load1_after=os.getloadavg()[0],
            rows_in=sum(e["rows_in"] for e in ds["expected"].values()),
        )
        if result["returncode"] != 0:
            result["error"] = f"exit {result['returncode']}: " + " | ".join(result["stderr_tail"])[-600:]
        else:
            result["error"], result["bytes_out"] = self.check(names, out_prefix, ds, server)
        if server is None:
            shutil.rmtree(DATA / "out" / tag, ignore_errors=True)
        else:
            server.delete_prefix(f"out/{tag}/")
        shown = "ok" if not result["error"] else f"FAILED: {result['error']}"
        print(
            f"  {engine['name']:<22} {where:<5} {case:<10} run {run}: {result['wall_s']:7.2f} s  "
            f"cpu {result['cpu_s']:6.2f} s  rss {result['peak_rss_mib']:6.0f} MiB  "
            f"load {load_before:.1f}  {shown}",
            flush=True,
        )
        return result

    def check(
        self, names: list[str], out_prefix: str, ds: dict[str, Any], server: MotoServer | None
    ) -> tuple[str | None, int]:
        """The verification's verdict, and the output bytes."""
        import pyarrow as pa

        block = ds.setdefault("_block", pa.array(read_blocklist(str(ds["root"] / "blocklist.txt")), pa.string()))
        if server is None:
            outputs = {n: f"{out_prefix}/{n}" for n in names if Path(f"{out_prefix}/{n}").exists()}
            size = sum(Path(path).stat().st_size for path in outputs.values())
        else:
            prefix = out_prefix.removeprefix(f"s3://{BUCKET}/")
            listed = server.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])
            present = {o["Key"].rsplit("/", 1)[1] for o in listed}
            outputs = {n: pa.BufferReader(server.get(f"{prefix}/{n}")) for n in names if n in present}
            size = sum(o["Size"] for o in listed if o["Key"].rsplit("/", 1)[1] in names)
        return verify(outputs, ds, block), size

    def series(
        self,
        engines: list[dict[str, Any]],
        where: str,
        ds: dict[str, Any],
        server: MotoServer | None = None,
        case: str = "default",
    ) -> None:
        """Warm-up (discarded), then runs interleaved across engines so drifting load hits all alike."""
        for i in range(self.args.warmup):
            for engine in engines:
                self.runs.append(self.run_once(engine, where, ds, f"warmup{i}", server, case))
        for run in range(1, self.args.runs + 1):
            for engine in engines:
                self.runs.append(self.run_once(engine, where, ds, run, server, case))

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
            walls = [measure(cmd, self.env, self.logs / tag, 60)["wall_s"] for _ in range(3)]
            found[engine["name"]] = statistics.median(walls)
        return found

    # the phases ------------------------------------------------------------------

    def local_phase(self, engines: list[dict[str, Any]], ds: dict[str, Any]) -> None:
        print(f"\n== local: {len(engines)} engines x {self.args.runs} runs", flush=True)
        self.series(engines, "local", ds)

    def big_phase(self, engine: dict[str, Any], big: dict[str, Any]) -> None:
        print(
            f"\n== local, {self.args.big_factor}x larger shards: streamfilter x {self.args.runs} runs",
            flush=True,
        )
        self.series([engine], "local", big, case=f"{self.args.big_factor}x-shards")

    def s3_phase(self, engines: list[dict[str, Any]], ds: dict[str, Any]) -> None:
        print("\n== s3 (moto on 127.0.0.1): starting the server and uploading the shards", flush=True)
        server = MotoServer()
        try:
            server.client.create_bucket(Bucket=BUCKET)
            ds["s3_prefix"] = "in/" + ds["root"].name
            started = time.perf_counter()
            for name in sorted(ds["expected"]):
                server.client.upload_file(str(ds["root"] / "shards" / name), BUCKET, f"{ds['s3_prefix']}/{name}")
            print(
                f"  uploaded {ds['bytes'] / MIB:.0f} MiB in {time.perf_counter() - started:.1f} s "
                f"(server {server.endpoint}, pid {server.proc.pid})",
                flush=True,
            )
            self.series(engines, "s3", ds, server)
            self.server_rss_mib = server.rss_mib()
        finally:
            server.stop()


# --------------------------------------------------------------------------- summary and report


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
            )
            if "server_cpu_s" in good[0]:
                row["median_server_cpu_s"] = statistics.median(r["server_cpu_s"] for r in good)
        row["errors"] = sorted({r["error"] for r in rs if r["error"]})
        table.append(row)
    for row in table:  # streamfilter's wall time over the faster of the others, same place and case
        if row["engine"].startswith("streamfilter") and "median_wall_s" in row:
            others = [
                o["median_wall_s"]
                for o in table
                if not o["engine"].startswith("streamfilter")
                and o["where"] == row["where"]
                and o["case"] == row["case"]
                and "median_wall_s" in o
            ]
            if others:
                row["ratio_vs_fastest_other"] = row["median_wall_s"] / min(others)
                # Less sensitive to other processes on a shared machine: best wall and median CPU time.
                same = [
                    o
                    for o in table
                    if not o["engine"].startswith("streamfilter")
                    and o["where"] == row["where"]
                    and o["case"] == row["case"]
                    and "min_wall_s" in o
                ]
                row["min_wall_ratio"] = row["min_wall_s"] / min(o["min_wall_s"] for o in same)
                row["cpu_ratio"] = row["median_cpu_s"] / min(o["median_cpu_s"] for o in same)
    return table


def targets(table: list[dict[str, Any]], big_case: str) -> list[dict[str, Any]]:
    def find(where: str, case: str = "default") -> dict[str, Any] | None:
        for row in table:
            if row["engine"].startswith("streamfilter") and row["where"] == where and row["case"] == case:
                return row
        return None

    out = []
    local = find("local")
    if local and "ratio_vs_fastest_other" in local:
        ratio = local["ratio_vs_fastest_other"]
        out.append(
            {
                "target": f"local wall time <= {TARGET_WALL_RATIO}x the faster of DuckDB and Polars",
                "value": f"{ratio:.2f}x on median wall times (for reference, not judged: "
                f"{local['min_wall_ratio']:.2f}x on the best runs, {local['cpu_ratio']:.2f}x on CPU time)",
                "pass": ratio <= TARGET_WALL_RATIO,
            }
        )
    for where in ("local", "s3"):
        row = find(where)
        if row and "peak_rss_mib" in row:
            out.append(
                {
                    "target": f"peak RSS < {TARGET_RSS_MIB} MiB at default concurrency ({where})",
                    "value": f"{row['peak_rss_mib']:.0f} MiB",
                    "pass": row["peak_rss_mib"] < TARGET_RSS_MIB,
                }
            )
    big = find("local", big_case)
    if local and big and "peak_rss_mib" in local and "peak_rss_mib" in big:
        ratio = big["peak_rss_mib"] / local["peak_rss_mib"]
        out.append(
            {
                "target": f"peak RSS with {big_case} <= {TARGET_BIG_RSS_RATIO}x the normal case (local)",
                "value": f"{ratio:.2f}x ({big['peak_rss_mib']:.0f} vs {local['peak_rss_mib']:.0f} MiB)",
                "pass": ratio <= TARGET_BIG_RSS_RATIO,
            }
        )
    for row in table:
        if row["errors"] or row["ok_runs"] < row["runs"]:
            out.append(
                {
                    "target": f"{row['engine']} {row['where']} {row['case']}: every output verified",
                    "value": "; ".join(row["errors"])[:300],
                    "pass": False,
                }
            )
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


def render(report: dict[str, Any]) -> str:
    p = report["parameters"]
    removed = report["rows_removed"]
    m = report["machine"]
    lines = [
        "# streamfilter benchmark",
        "",
        f"- date: {report['date']}; total runtime {report['seconds'] / 60:.1f} min",
        f"- machine: {m['nproc']} cores, {m['cpu']}, {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}; load average at start {report['load_start']}, at end {report['load_end']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- data: {p['shards']} shards x {p['rows']:,} rows (LAION-style, zstd, row groups of "
        f"{ROW_GROUP_SIZE:,}), {report['data_mib']:.0f} MiB; blocklist of {report['blocklist_keys']:,} "
        f"urls removing {removed:,} rows ({removed / max(1, report['rows_in']):.2%})",
        f"- {p['runs']} timed runs per engine and place (after {p['warmup']} warm-up), interleaved; "
        "median wall time; peak RSS is the largest of the runs (the child's own ru_maxrss)",
        f"- command: `{report['command']}`",
        "",
        "| engine | where | case | median wall s | min-max s | rows/s | CPU s | page faults | peak RSS MiB "
        "| out MiB | sf ÷ fastest other |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["table"]:
        if "median_wall_s" not in row:
            lines.append(f"| {row['engine']} | {row['where']} | {row['case']} | FAILED | | | | | | | |")
            continue
        ratio = f"{row['ratio_vs_fastest_other']:.2f}" if "ratio_vs_fastest_other" in row else ""
        cpu = f"{row['median_cpu_s']:.1f} ({row['median_sys_s']:.1f} sys)"
        if "median_server_cpu_s" in row:
            cpu += f" +{row['median_server_cpu_s']:.1f} server"
        lines.append(
            f"| {row['engine']} | {row['where']} | {row['case']} | {row['median_wall_s']:.2f} | "
            f"{row['min_wall_s']:.2f}-{row['max_wall_s']:.2f} | {row['rows_per_s'] / 1e6:.2f} M | {cpu} | "
            f"{row['median_minor_faults'] / 1000:.0f} k | {row['peak_rss_mib']:.0f} | "
            f"{row['bytes_out'] / MIB:.0f} | {ratio} |"
        )
    lines += ["", "## Targets", ""]
    for t in report["targets"]:
        lines.append(f"- **{'PASS' if t['pass'] else 'FAIL'}** {t['target']}: {t['value']}")
    lines += ["", "## Notes", ""]
    lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def describe(concurrency: int, startup: dict[str, float]) -> list[str]:
    started = ", ".join(f"{name} {sec:.2f} s" for name, sec in startup.items())
    return [
        "streamfilter: `python -m streamfilter.cli run '<data>/*.parquet' --output <out> --blocklist "
        f"<list> --key url`, default concurrency ({concurrency} shards in flight); on S3 with "
        "`--s3-endpoint-url`. It keeps row order and row groups, and each column's codec (zstd).",
        "DuckDB: one process, default threads; per shard `COPY (SELECT * FROM read_parquet(shard) ANTI JOIN "
        "blocklist USING (url)) TO out (FORMAT parquet, COMPRESSION zstd)`, the blocklist loaded once into a "
        "table. ANTI JOIN does not promise to keep row order.",
        "Polars: one process; per shard `pl.scan_parquet(shard).filter(~pl.col('url').is_in(block.implode()))"
        ".sink_parquet(out, compression='zstd')`, the blocklist loaded once as a Series (`implode()` because "
        "is_in with a same-typed Series is deprecated as ambiguous in Polars 2).",
        "Every run is a fresh subprocess that parses the same text blocklist itself, inside its wall time. "
        "Every run's outputs are checked: each output shard must hold exactly the row count computed "
        "independently with pyarrow and no listed url; a run that fails the check does not count.",
        "Peak RSS is ru_maxrss of the engine process, taken by a small wrapper process that spawns it (a "
        "child spawned by the harness itself would inherit the harness's high-water mark across exec). "
        "CPU s is user + system time; page faults are minor faults.",
        "S3: a moto server on 127.0.0.1 in its own process, started and stopped here; inputs uploaded once, "
        "outputs deleted after each run's check; the blocklist stays a local file. The server shares the 2 "
        "cores with the engine ('+N server' is its CPU time during the run), so S3 rows measure the engines' "
        "S3 paths against a loopback server, not a real network.",
        f"Wall times include interpreter start and imports (measured alone: {started}). Inputs are in the "
        "page cache (the data was just written or read, and every engine has a warm-up run).",
    ]


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
    ap.add_argument("--shards", type=int, default=8, help="shards in the data set (default 8)")
    ap.add_argument("--rows", type=int, default=500_000, help="rows per shard (default 500000)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies --rows (e.g. 0.1 for a quick look)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per engine and place; the median is reported")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per engine and place first (default 1)")
    ap.add_argument("--only", choices=["local", "s3"], help="run only the local or only the S3 comparison")
    ap.add_argument("--engines", default="streamfilter,duckdb,polars", help="comma-separated subset")
    ap.add_argument("--big-factor", type=int, default=4, help="shard size multiplier of the memory check (0: skip)")
    ap.add_argument(
        "--duckdb-s3-python", help=f"interpreter whose duckdb loads httpfs (default {SIDE_VENV}/bin/python)"
    )
    ap.add_argument("--setup-duckdb-s3", action="store_true", help="create that side virtualenv from PyPI, then exit")
    ap.add_argument("--no-side-venv", action="store_true", help="do not create the side virtualenv when it is missing")
    ap.add_argument("--streamfilter-args", default="", help="extra streamfilter flags, e.g. '--concurrency 2'")
    ap.add_argument("--results", default="latest", help="results/NAME.md and .json (default latest)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before a run is killed")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1], argv[2])
    args = parse_args(argv)
    if args.setup_duckdb_s3:
        return setup_side_venv()
    started = time.perf_counter()
    from streamfilter.spec import DEFAULT_CONCURRENCY

    rows = max(1, int(args.rows * args.scale))
    bench = Bench(args)
    load_start = round(os.getloadavg()[0], 2)
    ds = dataset("laion", args.shards, rows, HIT_FRACTION)
    local_engines, s3_duckdb = bench.engines(need_s3=args.only != "local")
    library_versions = versions(s3_duckdb["python"] if s3_duckdb else None)
    sf = next((e for e in local_engines if e["kind"] == "streamfilter"), None)
    big_case = f"{args.big_factor}x-shards"
    big = None
    if args.only != "s3" and sf and args.big_factor > 1:
        # As many large shards as run at once, so the concurrency is as saturated as in the normal case;
        # the blocklist has as many keys as the normal one, so only the shard size differs.
        big_shards = DEFAULT_CONCURRENCY
        total = big_shards * rows * args.big_factor
        big = dataset("laion-big", big_shards, rows * args.big_factor, HIT_FRACTION * args.shards * rows / total)
    if args.only != "s3":
        bench.local_phase(local_engines, ds)
        if big and sf:
            bench.big_phase(sf, big)
    if args.only != "local":
        s3_engines = [e for e in local_engines if e["kind"] != "duckdb"]
        if s3_duckdb:
            s3_engines.insert(1, s3_duckdb)
        bench.s3_phase(s3_engines, ds)

    rows_in = sum(e["rows_in"] for e in ds["expected"].values())
    rows_out = sum(e["rows_out"] for e in ds["expected"].values())
    notes = describe(DEFAULT_CONCURRENCY, bench.startup(local_engines))
    if big:
        notes.append(
            f"The {big_case} case: {len(big['expected'])} shards x {big['params']['rows']:,} rows, as many "
            "shards as the default concurrency so that as many are in flight as in the normal case; same row "
            f"group size; a blocklist of {big['blocklist_keys']:,} keys, about as many as the normal case's."
        )
        if rows < ROW_GROUP_SIZE:
            notes.append(
                f"With {rows:,} rows a shard the normal case has smaller row groups than the {big_case} "
                "case, so their memory does not compare: the check means something only from "
                f"{ROW_GROUP_SIZE:,} rows a shard up."
            )
    notes += bench.notes
    if versions(None)["streamfilter source sha256"] != library_versions["streamfilter source sha256"]:
        notes.append("WARNING: streamfilter/*.py changed while the benchmark ran; runs may mix two versions.")
    timed = [r for r in bench.runs if not str(r["run"]).startswith("warmup")]
    busy = [r for r in timed if max(r["load1_before"], r["load1_after"]) > (os.cpu_count() or 1)]
    if busy:
        notes.append(
            f"{len(busy)} of {len(timed)} timed runs saw a 1-minute load average above the core count: "
            "other processes competed for the CPU, so their wall times are inflated (CPU times much less)."
        )
    failed_warmups = [r for r in bench.runs if str(r["run"]).startswith("warmup") and r["error"]]
    notes += [f"warm-up failed: {r['engine']} {r['where']} {r['case']}: {r['error']}" for r in failed_warmups]
    table = summarize(bench.runs)
    report = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/run.py", *argv]),
        "parameters": {
            **vars(args),
            "rows": rows,
            "row_group_size": ROW_GROUP_SIZE,
            "default_concurrency": DEFAULT_CONCURRENCY,
        },
        "machine": machine(),
        "versions": library_versions,
        "load_start": load_start,
        "load_end": round(os.getloadavg()[0], 2),
        "data_mib": ds["bytes"] / MIB,
        "blocklist_keys": ds["blocklist_keys"],
        "rows_in": rows_in,
        "rows_removed": rows_in - rows_out,
        "table": table,
        "targets": targets(table, big_case),
        "notes": notes,
        "server_rss_mib_at_end": getattr(bench, "server_rss_mib", None),
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
