"""Which loopback S3 endpoint is not the bottleneck, and what S3 clients cost per request and per byte.

Part 1, the endpoints (``ENDPOINTS`` in harness.py; each in its own process, started here): a
256 MiB object is uploaded, then read as 32 ranged GETs of 8 MiB and as 256 ranged GETs of 64 KiB
(4 at a time, boto3 in threads), 16 objects of 8 MiB are copied server-side (CopyObject), and a
suffix range (``bytes=-N``, how object_store reads Parquet footers) must return the last N bytes.
Wall time and the server's own CPU time are reported per step.

Part 2, the clients, on one endpoint (``--client-endpoint``, default s3rver): client CPU time
(process_time of this process, the server being another) per ranged GET of 64 KiB and of 8 MiB, and
per PUT of 8 MiB, 4 at a time, with aiobotocore (streamfilter's S3 client: ``get_object`` and
reading the body, as its store does), obstore and pyarrow.fs (when installed). A per-request and a
per-MiB cost are solved from the two GET sizes, so that run.py can price an engine's real request mix.

    python benchmarks/endpoints.py --json benchmarks/results/endpoints.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness import ENDPOINTS, MIB, S3_REGION, S3Server, start_server

HERE = Path(__file__).resolve().parent
SCRATCH = HERE / "data" / "endpoints"
BUCKET = "bench"
BIG = 256 * MIB


def timed(server: S3Server, fn: Any) -> dict[str, float]:
    cpu, wall = server.cpu_s(), time.perf_counter()
    fn()
    return {"wall_s": time.perf_counter() - wall, "server_cpu_s": server.cpu_s() - cpu}


def ranged(server: S3Server, key: str, size: int, count: int, total: int) -> None:
    step = (total - size) // max(1, count - 1)

    def one(i: int) -> None:
        start = i * step
        body = server.client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={start}-{start + size - 1}")
        assert len(body["Body"].read()) == size

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(count)))


def endpoint_steps(name: str, runs: int) -> dict[str, Any]:
    SCRATCH.mkdir(parents=True, exist_ok=True)
    server = start_server(name, SCRATCH / f"{name}.log", BUCKET, SCRATCH)
    try:
        blob = os.urandom(BIG)
        out: dict[str, Any] = {"endpoint": name, "description": server.description}
        out["put_256mib"] = timed(server, lambda: server.client.put_object(Bucket=BUCKET, Key="big", Body=blob))
        small = blob[: 8 * MIB]
        for i in range(16):
            server.client.put_object(Bucket=BUCKET, Key=f"src/{i}", Body=small)
        steps = {
            "32 x 8 MiB ranged GET": lambda: ranged(server, "big", 8 * MIB, 32, BIG),
            "256 x 64 KiB ranged GET": lambda: ranged(server, "big", 64 * 1024, 256, BIG),
            "16 x 8 MiB CopyObject": lambda: list(
                ThreadPoolExecutor(4).map(
                    lambda i: server.client.copy_object(
                        Bucket=BUCKET, Key=f"dst/{i}", CopySource={"Bucket": BUCKET, "Key": f"src/{i}"}
                    ),
                    range(16),
                )
            ),
        }
        for step, fn in steps.items():
            samples = [timed(server, fn) for _ in range(runs)]
            out[step] = {
                "wall_s": statistics.median(s["wall_s"] for s in samples),
                "server_cpu_s": statistics.median(s["server_cpu_s"] for s in samples),
                "walls": [round(s["wall_s"], 3) for s in samples],
            }
        got = server.client.get_object(Bucket=BUCKET, Key="big", Range="bytes=-1000")["Body"].read()
        out["suffix_range_ok"] = got == blob[-1000:]
        out["server_rss_mib"] = server.rss_mib()
        return out
    finally:
        server.stop()


# --------------------------------------------------------------------------- clients


def client_aiobotocore(endpoint: str, key_id: str, secret: str) -> Any:
    from aiobotocore.session import get_session

    async def run(jobs: list[tuple[str, str, int, int]], concurrency: int = 4) -> None:
        session = get_session()
        async with session.create_client(
            "s3", endpoint_url=endpoint, aws_access_key_id=key_id, aws_secret_access_key=secret, region_name=S3_REGION
        ) as client:
            sem = asyncio.Semaphore(concurrency)

            async def one(job: tuple[str, str, int, int]) -> None:
                op, key, start, size = job
                async with sem:
                    if op == "get":
                        resp = await client.get_object(
                            Bucket=BUCKET, Key=key, Range=f"bytes={start}-{start + size - 1}"
                        )
                        async with resp["Body"] as body:
                            assert len(await body.read()) == size
                    else:
                        await client.put_object(Bucket=BUCKET, Key=key, Body=b"\0" * size)

            await asyncio.gather(*(one(j) for j in jobs))

    return lambda jobs: asyncio.run(run(jobs))


def client_obstore(endpoint: str, key_id: str, secret: str) -> Any:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        endpoint=endpoint,
        access_key_id=key_id,
        secret_access_key=secret,
        region=S3_REGION,
        client_options={"allow_http": True},
    )

    async def run(jobs: list[tuple[str, str, int, int]], concurrency: int = 4) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(job: tuple[str, str, int, int]) -> None:
            op, key, start, size = job
            async with sem:
                if op == "get":
                    got = await obstore.get_range_async(store, key, start=start, length=size)
                    assert len(got) == size
                else:
                    await obstore.put_async(store, key, b"\0" * size)

        await asyncio.gather(*(one(j) for j in jobs))

    return lambda jobs: asyncio.run(run(jobs))


def client_pyarrow(endpoint: str, key_id: str, secret: str) -> Any:
    from pyarrow import fs

    s3 = fs.S3FileSystem(
        access_key=key_id, secret_key=secret, endpoint_override=endpoint, scheme="http", region=S3_REGION
    )

    def run(jobs: list[tuple[str, str, int, int]]) -> None:
        def one(job: tuple[str, str, int, int]) -> None:
            op, key, start, size = job
            if op == "get":
                with s3.open_input_file(f"{BUCKET}/{key}") as f:
                    assert len(f.read_at(size, start)) == size
            else:
                with s3.open_output_stream(f"{BUCKET}/{key}") as f:
                    f.write(b"\0" * size)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, jobs))

    return run


CLIENTS = {"aiobotocore": client_aiobotocore, "obstore": client_obstore, "pyarrow.fs": client_pyarrow}


def client_costs(name: str, runs: int) -> dict[str, Any]:
    SCRATCH.mkdir(parents=True, exist_ok=True)
    server = start_server(name, SCRATCH / f"{name}-clients.log", BUCKET, SCRATCH)
    try:
        server.client.put_object(Bucket=BUCKET, Key="big", Body=os.urandom(BIG))
        work = {
            "get_64k": [("get", "big", i * 997_000, 64 * 1024) for i in range(256)],
            "get_8m": [("get", "big", i * 7 * MIB, 8 * MIB) for i in range(32)],
            "put_8m": [("put", f"put/{i}", 0, 8 * MIB) for i in range(16)],
        }
        out: dict[str, Any] = {"endpoint": name}
        for client, make in CLIENTS.items():
            try:
                run = make(server.endpoint, server.key_id, server.secret)
            except ImportError as exc:
                out[client] = {"error": f"not installed ({exc.name})"}
                continue
            run(work["get_64k"][:8])  # warm: imports, connections
            res: dict[str, Any] = {}
            for label, jobs in work.items():
                cpus, walls = [], []
                for _ in range(runs):
                    cpu, wall = time.process_time(), time.perf_counter()
                    run(jobs)
                    cpus.append(time.process_time() - cpu)
                    walls.append(time.perf_counter() - wall)
                res[label] = {
                    "cpu_ms_per_request": 1000 * statistics.median(cpus) / len(jobs),
                    "wall_s": statistics.median(walls),
                }
            # cpu = a + b * bytes, from the two GET sizes
            c64, c8 = res["get_64k"]["cpu_ms_per_request"], res["get_8m"]["cpu_ms_per_request"]
            per_mib = (c8 - c64) / (8 - 1 / 16)
            res["get_ms_per_request"] = c64 - per_mib / 16
            res["get_ms_per_mib"] = per_mib
            out[client] = res
        return out
    finally:
        server.stop()


def render(report: dict[str, Any]) -> str:
    lines = [
        "# S3 endpoints and clients on loopback",
        "",
        f"- date: {report['date']}; machine: {report['machine']}; 1-minute load average {report['load'][0]:.2f} "
        f"at start, {report['load'][1]:.2f} at end",
        f"- command: `{report['command']}`; medians of {report['runs']} runs; boto3 client, 4 requests at a time",
        "",
        "| endpoint | 32 x 8 MiB ranged GET: wall s | server CPU s | 256 x 64 KiB ranged GET: wall s | server CPU s "
        "| 16 x 8 MiB CopyObject: wall s | server CPU s | suffix range right | server RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for e in report["endpoints"]:
        if "error" in e:
            lines.append(f"| {e['endpoint']} | failed: {e['error']} | | | | | | | |")
            continue
        cells = []
        for step in ("32 x 8 MiB ranged GET", "256 x 64 KiB ranged GET", "16 x 8 MiB CopyObject"):
            cells += [f"{e[step]['wall_s']:.2f}", f"{e[step]['server_cpu_s']:.2f}"]
        lines.append(
            f"| {e['endpoint']} ({e['description']}) | " + " | ".join(cells) + f" | {e['suffix_range_ok']} | "
            f"{e['server_rss_mib']:.0f} |"
        )
    c = report.get("clients")
    if c:
        lines += [
            "",
            f"Client CPU on {c['endpoint']} (this process's CPU time; 4 requests at a time):",
            "",
            "| client | ms CPU / 64 KiB GET | ms CPU / 8 MiB GET | ms CPU / 8 MiB PUT | solved: ms / request "
            "| ms / MiB |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for client in CLIENTS:
            r = c.get(client, {})
            if "error" in r:
                lines.append(f"| {client} | {r['error']} | | | | |")
                continue
            lines.append(
                f"| {client} | {r['get_64k']['cpu_ms_per_request']:.2f} | {r['get_8m']['cpu_ms_per_request']:.2f} "
                f"| {r['put_8m']['cpu_ms_per_request']:.2f} | {r['get_ms_per_request']:.2f} "
                f"| {r['get_ms_per_mib']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--endpoints", default=",".join(ENDPOINTS), help="comma-separated subset of " + ", ".join(ENDPOINTS)
    )
    ap.add_argument("--client-endpoint", default="s3rver", help="where client CPU is measured ('' to skip)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=HERE / "results" / "endpoints.json")
    args = ap.parse_args(argv)
    load0 = os.getloadavg()[0]
    report: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "command": "python benchmarks/endpoints.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "runs": args.runs,
        "endpoints": [],
    }
    for name in args.endpoints.split(","):
        print(f"== {name}", flush=True)
        try:
            report["endpoints"].append(endpoint_steps(name, args.runs))
        except Exception as exc:
            report["endpoints"].append({"endpoint": name, "error": f"{type(exc).__name__}: {exc}"[:200]})
        print(json.dumps(report["endpoints"][-1], default=str), flush=True)
    if args.client_endpoint:
        print(f"== clients on {args.client_endpoint}", flush=True)
        report["clients"] = client_costs(args.client_endpoint, args.runs)
    report["load"] = [load0, os.getloadavg()[0]]
    md = render(report)
    args.json.parent.mkdir(exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    args.json.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
