"""What the benchmarks share: running an engine in a fresh, measured process, an S3 server in its own
process (moto, moto under waitress, or s3rver with a one-bug fix; ``ENDPOINTS``), and a byte-counting
TCP proxy in front of it, all on loopback.

Only the standard library at import time: the DuckDB side virtualenv imports the benchmark scripts too.
"""

from __future__ import annotations

import compileall
import contextlib
import functools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

#: The environment before anything imports streamfilter, whose package sets allocator and thread
#: variables in its own process: engines are spawned with this one, so the anchors never inherit them.
ENV_AT_START = dict(os.environ)

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


def streamfilter_report(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What streamfilter's report says it read and wrote (for comparison with the proxy), and its shards;
    nothing if the run left no readable report."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}, []
    shards = report.get("shards", [])
    return {
        "sf_bytes_read": report["totals"]["bytes_read"],
        "sf_bytes_written": report["totals"]["bytes_written"],
        "sf_output_via": dict(Counter(str(s.get("output_via")) for s in shards)),
    }, shards


@functools.cache
def byte_compiled(package: Path) -> None:
    """Compile ``package``'s modules to bytecode once, as installing it does. With PYTHONDONTWRITEBYTECODE
    set (it is, on these machines), a checkout's modules would otherwise be compiled from source in every
    timed run (streamfilter's: about 50 ms of CPU), which an installed streamfilter, DuckDB or Polars never pays."""
    if package.is_dir():
        compileall.compile_dir(str(package), quiet=1)


def measure(cmd: list[str], env: dict[str, str], log_prefix: Path, timeout: float, cwd: Path) -> dict[str, Any]:
    """Run ``cmd`` in a fresh process; wall time, CPU time and peak RSS from its own rusage."""
    byte_compiled(cwd.resolve() / "streamfilter")  # the package a `python -m streamfilter.cli` in cwd imports
    result = Path(f"{log_prefix}.rusage.json")
    result.unlink(missing_ok=True)
    with open(f"{log_prefix}.out", "wb") as out, open(f"{log_prefix}.err", "wb") as err:
        wrapper = [sys.executable, "-S", "-c", WRAPPER, str(result), str(timeout), *cmd]
        proc = subprocess.run(wrapper, stdout=out, stderr=err, env=env, cwd=cwd, timeout=timeout + 60)
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


#: Credentials moto accepts (it checks none); the engines get them through the environment.
S3_KEY_ID = "benchkey"
S3_SECRET = "benchsecret"
S3_REGION = "us-east-1"
MIB = 1024 * 1024

#: Pinned, as in tests/test_s3rver.py: the fix in s3rver_serve.js is for this version's bug.
S3RVER = "s3rver@3.7.1"
S3RVER_SERVE_JS = Path(__file__).resolve().parent / "s3rver_serve.js"

#: moto's WSGI app under waitress: threads, HTTP/1.1 keep-alive (Werkzeug's server closes every connection).
MOTO_WAITRESS = """
import sys, waitress
from moto.server import DomainDispatcherApplication, create_backend_app
waitress.serve(DomainDispatcherApplication(create_backend_app), host="127.0.0.1", port=int(sys.argv[1]),
               threads=8, channel_timeout=600, _quiet=True)
"""

#: The endpoints the S3 benchmarks can run on (``--endpoints``): what each is, and the fix in front, if any.
ENDPOINTS = {
    "moto": "moto server (Werkzeug, one connection a request), full API",
    "moto-waitress": "moto's WSGI app under waitress (8 threads, keep-alive)",
    "s3rver": f"{S3RVER} (Node.js), suffix-range fix in benchmarks/s3rver_serve.js; no UploadPartCopy, "
    "no ListMultipartUploads",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def npm_modules(package: str = S3RVER) -> Path:
    """node_modules holding ``package``, installed once into a cache folder (no global install):
    ``STREAMFILTER_NPM_CACHE``, else the one the tests use (same pinned version)."""
    import shutil

    if shutil.which("node") is None or shutil.which("npm") is None:
        raise RuntimeError("s3rver needs Node.js and npm (apt-get install nodejs npm)")
    root = Path(os.environ.get("STREAMFILTER_NPM_CACHE", Path.home() / ".cache" / "streamfilter-tests" / "npm"))
    name, _, version = package.rpartition("@")
    manifest = root / "node_modules" / name / "package.json"
    if not manifest.exists() or json.loads(manifest.read_text()).get("version") != version:
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(root), "--no-audit", "--no-fund", "--silent", package],
            check=True, timeout=600,
        )  # fmt: skip
    return root / "node_modules"


class S3Server:
    """An S3 server on 127.0.0.1 in its own process (so its CPU is not the harness's), with a boto3
    client of the harness's own for uploads, listings and checks (never through the counting proxy)."""

    name = "?"
    key_id, secret = S3_KEY_ID, S3_SECRET

    def _client(self) -> None:
        import boto3
        from botocore.config import Config

        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
            region_name=S3_REGION,
            config=Config(max_pool_connections=16),
        )

    def _wait_listening(self, log: Path) -> None:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start; see {log}")
            time.sleep(0.2)

    @property
    def description(self) -> str:
        return ENDPOINTS.get(self.name, self.name)

    def cpu_s(self) -> float:
        import psutil

        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def rss_mib(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / MIB

    def keys(self, prefix: str) -> dict[str, int]:
        """Object keys under ``prefix`` and their sizes."""
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return out

    def delete_prefix(self, prefix: str) -> None:
        keys = list(self.keys(prefix))
        for i in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[i : i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk})

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def requests_since(self, offset: int) -> tuple[list[dict[str, Any]], int]:
        """The requests the server logged after byte ``offset`` of its log, and the new offset
        (only servers that log requests: s3rver here; empty otherwise)."""
        return [], offset

    def log_offset(self) -> int:
        return 0

    def stop(self) -> None:
        if self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class MotoServer(S3Server):
    """A moto S3 server: ``python -m moto.server`` (Werkzeug) or, with ``wsgi="waitress"``, its app
    under waitress."""

    def __init__(self, log: Path, bucket: str, wsgi: str = "werkzeug") -> None:
        self.name = "moto" if wsgi == "werkzeug" else f"moto-{wsgi}"
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        self.log_path = log
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        if wsgi == "werkzeug":
            cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        else:
            cmd = [sys.executable, "-c", MOTO_WAITRESS, str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_listening(log)
        self._client()


class S3rverServer(S3Server):
    """s3rver (npm, pinned) with the suffix-range fix of s3rver_serve.js, storing under ``directory``,
    logging every request (JSON lines) to ``log.requests.jsonl``."""

    name = "s3rver"
    key_id = secret = "S3RVER"  # s3rver checks signatures against its own key pair

    def __init__(self, log: Path, bucket: str, directory: Path) -> None:
        import shutil

        modules = npm_modules()
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        self.directory = directory
        self.bucket = bucket
        self.log_path = log
        self.request_log = Path(f"{log}.requests.jsonl")
        self.request_log.unlink(missing_ok=True)
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["node", str(S3RVER_SERVE_JS), str(directory), str(self.request_log)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            env={**os.environ, "NODE_PATH": str(modules)},
        )  # fmt: skip
        assert self.proc.stdout is not None
        port = self.proc.stdout.readline().decode().strip()
        if not port.isdigit():
            raise RuntimeError(f"s3rver did not start; see {log}")
        self.port = int(port)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._client()

    def stop(self) -> None:
        super().stop()
        import shutil

        shutil.rmtree(self.directory, ignore_errors=True)

    def log_offset(self) -> int:
        try:
            return self.request_log.stat().st_size
        except OSError:
            return 0

    def requests_since(self, offset: int) -> tuple[list[dict[str, Any]], int]:
        time.sleep(0.05)  # the server's log stream writes asynchronously
        try:
            with open(self.request_log, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            return [], offset
        data = data[: data.rfind(b"\n") + 1]
        return [json.loads(line) for line in data.splitlines() if line.strip()], offset + len(data)


def start_server(name: str, log: Path, bucket: str, scratch: Path) -> S3Server:
    """One of ``ENDPOINTS`` on loopback, its bucket created."""
    if name == "moto":
        server: S3Server = MotoServer(log, bucket)
    elif name == "moto-waitress":
        server = MotoServer(log, bucket, wsgi="waitress")
    elif name == "s3rver":
        # A folder of this process's own: two benchmarks at once must not empty each other's store.
        server = S3rverServer(log, bucket, scratch / f"s3rver-store-{os.getpid()}")
    else:
        raise ValueError(f"unknown endpoint {name!r}; one of {', '.join(ENDPOINTS)}")
    try:
        server.client.create_bucket(Bucket=bucket)
    except BaseException:
        server.stop()
        raise
    return server


def request_mix(requests: list[dict[str, Any]]) -> dict[str, Any]:
    """An engine's requests by S3 operation (from a server's request log), with the bytes of each."""
    mix: dict[str, dict[str, int]] = {}
    for r in requests:
        path, _, query = r["u"].partition("?")
        params = {p.split("=", 1)[0] for p in query.split("&") if p}
        method = r["m"]
        if method == "GET" and "uploads" in params:
            op = "ListMultipartUploads"
        elif method == "GET" and path.count("/") <= 1:
            op = "ListObjects"
        elif method == "GET":
            op = "GetObject (ranged)" if r.get("r") else "GetObject (whole)"
        elif method == "HEAD":
            op = "HeadObject"
        elif method == "PUT" and "partNumber" in params:
            op = "UploadPartCopy" if r.get("c") else "UploadPart"
        elif method == "PUT":
            op = "CopyObject" if r.get("c") else "PutObject"
        elif method == "POST" and "uploads" in params:
            op = "CreateMultipartUpload"
        elif method == "POST" and "uploadId" in params:
            op = "CompleteMultipartUpload"
        elif method == "POST" and "delete" in params:
            op = "DeleteObjects"
        elif method == "DELETE":
            op = "Delete/Abort"
        else:
            op = f"{method} other"
        if int(r.get("s") or 200) >= 400:
            op += f" ({r['s']})"  # refused or failed: 501 NotImplemented, 404, ...
        entry = mix.setdefault(op, {"requests": 0, "bytes_out": 0, "bytes_in": 0})
        entry["requests"] += 1
        entry["bytes_out"] += 0 if method == "HEAD" else int(r.get("out") or 0)  # a HEAD's length has no body
        entry["bytes_in"] += int(r.get("in") or 0)
    return mix


class CountingProxy:
    """A loopback TCP proxy in front of the S3 server that counts the bytes going each way.

    Every engine's S3 traffic goes through it, so bytes read and written are measured the same way
    for all of them, at the endpoint, whatever each engine reports about itself: raw TCP payload,
    HTTP headers, listings and error replies included. It runs as threads of the harness, which only
    waits while an engine runs, so the harness's CPU time during a run is the proxy's. Bounded: at
    most MAX_CONNECTIONS connections at once (a further one waits to be accepted), one CHUNK buffer
    per direction each.

    With ``latency`` (seconds) each request waits that long before it is passed on: a request is a
    burst from the engine after a pause, so a streamed body is delayed once, not a chunk at a time.
    It stands in for a real endpoint's round trip, which loopback lacks.
    """

    CHUNK = 256 * 1024  # large enough that a 3 MiB GET costs a dozen recv/send pairs, not hundreds
    MAX_CONNECTIONS = 256

    #: Seconds without bytes from the engine after which its next bytes start a new request.
    REQUEST_GAP = 0.001

    def __init__(self, upstream_port: int, latency: float = 0.0) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.latency = latency
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        # accept() is not woken by close() from another thread on Linux: poll, so stop() is prompt.
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.counts = {"read": 0, "written": 0, "connections": 0}
        self.active: set[socket.socket] = set()
        self.slots = threading.BoundedSemaphore(self.MAX_CONNECTIONS)
        self.stopping = threading.Event()
        self.acceptor = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self.acceptor.start()

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)

    def quiesce(self, timeout: float = 10.0) -> bool:
        """Wait until every connection is closed (the engine has exited), so its last bytes are counted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self.active:
                    return True
            time.sleep(0.02)
        return False

    def _accept(self) -> None:
        while not self.stopping.is_set():
            if not self.slots.acquire(timeout=0.2):
                continue
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                self.slots.release()
                continue
            except OSError:  # the listener was closed
                self.slots.release()
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.upstream, timeout=30)
            except OSError:
                return  # the engine sees a dropped connection, as it would from the server itself
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.active |= {client, upstream}
                self.counts["connections"] += 1
            writer = threading.Thread(target=self._pump, args=(client, upstream, "written"), daemon=True)
            writer.start()
            self._pump(upstream, client, "read")
            writer.join()
        finally:
            with self.lock:
                self.active.discard(client)
                if upstream is not None:
                    self.active.discard(upstream)
            for sock in (client, upstream):
                if sock is not None:
                    sock.close()
            self.slots.release()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        buf = bytearray(self.CHUNK)
        view = memoryview(buf)
        delay = self.latency if direction == "written" else 0.0
        last = 0.0
        try:
            while n := src.recv_into(buf):
                with self.lock:
                    self.counts[direction] += n
                if delay:
                    now = time.monotonic()
                    if now - last > self.REQUEST_GAP:
                        time.sleep(delay)
                    last = time.monotonic()
                dst.sendall(view[:n])
        except OSError:
            # A reset on one side: end both directions, or the other pump would wait forever.
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            return
        with contextlib.suppress(OSError):  # a clean end: pass the half-close on, as HTTP expects
            dst.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        self.stopping.set()
        self.acceptor.join(5)
        self.listener.close()
        with self.lock:
            active = list(self.active)
        for sock in active:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def verification_failures(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A failed target for each row of ``table`` whose runs did not all pass their output check."""
    return [
        {
            "target": f"{row['engine']} {row['where']} {row['case']}: every output verified",
            "value": "; ".join(row["errors"])[:300],
            "pass": False,
        }
        for row in table
        if row["errors"] or row["ok_runs"] < row["runs"]
    ]


def load_notes(runs: list[dict[str, Any]]) -> list[str]:
    """A note when timed runs shared the CPU with other processes (a 1-minute load above the core count)."""
    timed = [r for r in runs if not str(r["run"]).startswith("warmup")]
    busy = [r for r in timed if max(r["load1_before"], r["load1_after"]) > (os.cpu_count() or 1)]
    if not busy:
        return []
    return [
        f"{len(busy)} of {len(timed)} timed runs saw a 1-minute load average above the core count: other "
        "processes competed for the CPU, so their wall times are inflated (CPU times much less)."
    ]
