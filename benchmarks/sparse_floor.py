"""How fast the sparse S3 case can be on this machine: its requests alone, beside streamfilter and Polars.

The floor client makes the S3 requests of streamfilter's sparse run and nothing else: for every
shard of run.py's sparse data set (128 shards x 100,000 rows, hits in 3), a GET of the footer (the
last 64 KiB) and a GET of the key column's chunks; then, for a shard without hits, a CopyObject to
the output, and for a shard with hits a GET of the whole object and a PUT of it (the bytes a
rewrite moves); then a receipt PUT. Nothing is decoded, matched or encoded. It uses aiobotocore,
streamfilter's S3 client, with the same settings, 32 shards at a time. Its wall time is the least
any client built on aiobotocore could take on this endpoint and machine (the server shares the
cores), so Polars' wall time over it bounds the ratio streamfilter could reach.

Each engine runs in a fresh process through run.py's counting proxy (``--latency-ms`` holds each
request, standing in for a real endpoint's round trip), interleaved, medians of ``--runs``.

    python benchmarks/sparse_floor.py [--endpoint s3rver] [--latency-ms 0] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import ENV_AT_START, S3_REGION, CountingProxy, measure, start_server
from run import KEY_COLUMN, dataset

HERE = Path(__file__).resolve().parent
BUCKET = "floor"

#: The floor client, run as ``python -c FLOOR ENDPOINT JOB``: the job lists each shard's key, size,
#: key-column span and whether it has hits.
FLOOR = r"""
import asyncio, json, sys
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

endpoint, job = sys.argv[1], json.load(open(sys.argv[2]))
config = AioConfig(max_pool_connections=64, request_checksum_calculation="when_required",
                   response_checksum_validation="when_required", retries={"total_max_attempts": 1})

async def main():
    async with get_session().create_client("s3", endpoint_url=endpoint, config=config) as s3:
        gate = asyncio.Semaphore(32)

        async def get(key, first, last):
            reply = await s3.get_object(Bucket=job["bucket"], Key=key, Range=f"bytes={first}-{last}")
            return await reply["Body"].read()

        async def one(shard):
            async with gate:
                bucket, key, size = job["bucket"], shard["key"], shard["size"]
                await get(key, max(0, size - 65536), size - 1)
                await get(key, shard["key_start"], shard["key_end"] - 1)
                name = key.rsplit("/", 1)[1]
                out = job["out"] + name
                if shard["hits"]:
                    await s3.put_object(Bucket=bucket, Key=out, Body=await get(key, 0, size - 1))
                else:
                    await s3.copy_object(Bucket=bucket, Key=out, CopySource={"Bucket": bucket, "Key": key})
                await s3.put_object(Bucket=bucket, Key=job["out"] + "_receipts/" + name + ".json", Body=b" " * 600)

        await asyncio.gather(*(one(shard) for shard in job["shards"]))

asyncio.run(main())
"""


def key_span(path: Path) -> tuple[int, int]:
    """The byte span of the key column's chunks (dictionary page included) over all row groups."""
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(path).metadata
    index = metadata.schema.names.index(KEY_COLUMN)
    spans = []
    for i in range(metadata.num_row_groups):
        column = metadata.row_group(i).column(index)
        start = column.dictionary_page_offset or column.data_page_offset
        spans.append((start, start + column.total_compressed_size))
    return min(s for s, _ in spans), max(e for _, e in spans)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", default="s3rver", help="s3rver, moto or moto-waitress")
    ap.add_argument("--latency-ms", type=float, default=0.0, help="the proxy holds each request this long")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    ds = dataset("laion-sparse", 128, 100_000, sparse=(2000, 3))
    root, names = ds["root"], sorted(ds["expected"])
    scratch = Path(tempfile.mkdtemp(prefix="sparse-floor-"))
    server = start_server(args.endpoint, scratch / "server.log", BUCKET, scratch)
    proxy = CountingProxy(server.port, latency=args.latency_ms / 1000)
    shards = []
    for name in names:
        server.client.upload_file(str(root / "shards" / name), BUCKET, f"in/{name}")
        start, end = key_span(root / "shards" / name)
        expected = ds["expected"][name]
        size = (root / "shards" / name).stat().st_size
        hits = expected["rows_out"] < expected["rows_in"]
        shards.append({"key": f"in/{name}", "size": size, "key_start": start, "key_end": end, "hits": hits})
    env = {**ENV_AT_START, "AWS_ACCESS_KEY_ID": server.key_id, "AWS_SECRET_ACCESS_KEY": server.secret,
           "AWS_DEFAULT_REGION": S3_REGION, "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        env.pop(name, None)
    floor_job = scratch / "floor.json"
    floor_job.write_text(json.dumps({"bucket": BUCKET, "out": "out-floor/", "shards": shards}))
    polars_job = scratch / "polars.json"
    s3 = {"endpoint": proxy.endpoint, "key_id": server.key_id, "secret": server.secret, "region": S3_REGION}
    polars_job.write_text(json.dumps({
        "inputs": [f"s3://{BUCKET}/in/{n}" for n in names], "outputs": [f"s3://{BUCKET}/out-polars/{n}" for n in names],
        "blocklist": str(root / "blocklist.txt"), "s3": s3, "compression": "zstd",
    }))  # fmt: skip
    commands = {
        "requests only (aiobotocore)": [sys.executable, "-c", FLOOR, proxy.endpoint, str(floor_job)],
        "streamfilter": [sys.executable, "-m", "streamfilter.cli", "run", f"s3://{BUCKET}/in/*.parquet", "--output",
                         f"s3://{BUCKET}/out-sf/", "--blocklist", str(root / "blocklist.txt"), "--key", KEY_COLUMN,
                         "--s3-endpoint-url", proxy.endpoint],
        "polars": [sys.executable, str(HERE / "run.py"), "--child", "polars", str(polars_job)],
    }  # fmt: skip
    walls: dict[str, list[float]] = {name: [] for name in commands}
    loads = []
    try:
        for run in range(args.runs):
            for name, cmd in commands.items():
                for prefix in ("out-floor/", "out-polars/", "out-sf/"):
                    server.delete_prefix(prefix)
                loads.append(os.getloadavg()[0])
                result = measure(cmd, env, scratch / f"{name.split()[0]}-{run}", timeout=900, cwd=HERE.parent)
                if result.get("returncode") != 0:
                    print(f"{name} run {run} failed: {' '.join(result['stderr_tail'])}", file=sys.stderr)
                    return 1
                walls[name].append(result["wall_s"])
                print(f"{name:30s} run {run}: {result['wall_s']:.2f} s, CPU {result.get('cpu_s', 0):.2f} s", flush=True)
    finally:
        proxy.stop()
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    floor, sf, polars = (statistics.median(walls[n]) for n in commands)
    delay = f", {args.latency_ms:g} ms a request" if args.latency_ms else ""
    print(f"\n{args.endpoint}{delay}; load {min(loads):.1f}-{max(loads):.1f}; medians of {args.runs}, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}")  # fmt: skip
    print(f"requests only {floor:.2f} s; streamfilter {sf:.2f} s; Polars {polars:.2f} s")
    print(f"Polars / requests only = {polars / floor:.2f}x (the most any aiobotocore client reaches here); "
          f"Polars / streamfilter = {polars / sf:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
