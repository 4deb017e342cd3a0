"""CLIP embedding sets: streamfilter against the straightforward anchor, and the targets of issue 17.

Three measurements, each the median of ``--runs`` runs in fresh processes (harness.measure):

- sparse, loopback S3: ``--sets`` sets (metadata Parquet, img_emb and text_emb .npy of float16 x
  768), a few rows listed in 2 of them, on each of ``--endpoints`` (moto: the full API, so the hit
  sets are assembled from UploadPartCopy; s3rver: faster per request and per byte, but it refuses
  UploadPartCopy, so the hit sets' .npy are streamed). Engines talk to the server through the
  counting proxy: bytes through the client are what crosses it. The anchor loads each .npy with
  NumPy, masks it, saves it and uploads it, and does the same for each metadata Parquet with
  pyarrow, 2 threads. Targets: bytes through the client <= 3% of the input, wall >= 10x faster
  than the anchor.
- dense, local: 5% of the rows of every set listed; streamfilter into a local folder against a
  plain copy of the same folder (``cp -r``, which neither fsyncs nor waits for the disk) and against
  a copy that, as streamfilter's local commit does, writes each file under a temporary name, fsyncs
  it and renames it (``copy+fsync``). Target: throughput >= 80% of the copy's.
- memory: the dense local run with files 1x and 4x as long. Target: peak RSS flat.

Usage: python benchmarks/embeddings.py [--sets 16] [--rows 16384] [--runs 3] [--endpoints moto,s3rver]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness import ENDPOINTS, ENV_AT_START, MIB, S3_REGION, CountingProxy, S3Server, measure, start_server

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data" / "embeddings"
RESULTS = HERE / "results"
BUCKET = "bench-emb"
DIM = 768
HIT_SETS = (3, 11)  # sparse: the sets with listed rows
COPIES = "copies only"  # sparse: the reference that makes the clean sets' server-side copies and nothing else
HITS_PER_SET = 1  # as Re-LAION's 2,236 removals fall on LAION-2B-en's ~2,300 files a modality
DENSE_SHARE = 0.05
TARGET_MOVED, TARGET_SPEEDUP, TARGET_DENSE, TARGET_RSS_GROWTH = 0.03, 10.0, 0.80, 1.25


def generate(root: Path, sets: int, rows: int) -> list[str]:
    """The sets under ``root`` (kept between runs of the same size); returns every set's URLs."""
    import numpy as np
    import pyarrow.parquet as pq

    from streamfilter.demo import laion_table

    marker = root / "done.json"
    if marker.exists() and json.loads(marker.read_text()) == {"sets": sets, "rows": rows, "version": 1}:
        return json.loads((root / "urls.json").read_text())
    shutil.rmtree(root, ignore_errors=True)
    urls = []
    for i in range(sets):
        n = f"{i:04d}"
        table = laion_table(rows, start=i * rows, seed=i)
        urls.append(table["url"].to_pylist())
        (root / "metadata").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / "metadata" / f"metadata_{n}.parquet")
        rng = np.random.default_rng(i)
        for kind in ("img_emb", "text_emb"):
            (root / kind).mkdir(exist_ok=True)
            np.save(root / kind / f"{kind}_{n}.npy", rng.standard_normal((rows, DIM), np.float32).astype(np.float16))
    (root / "urls.json").write_text(json.dumps(urls))
    marker.write_text(json.dumps({"sets": sets, "rows": rows, "version": 1}))
    return urls


def sparse_list(urls: list[list[str]]) -> list[str]:
    import random

    rng = random.Random(17)
    return [u for i in HIT_SETS for u in rng.sample(urls[i], HITS_PER_SET)]


def dense_list(urls: list[list[str]]) -> list[str]:
    import random

    rng = random.Random(5)
    return [u for set_urls in urls for u in rng.sample(set_urls, int(len(set_urls) * DENSE_SHARE))]


def input_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.suffix in (".npy", ".parquet"))


# --------------------------------------------------------------------------- the anchor (child side)


def child_anchor(job: dict[str, Any]) -> None:
    """Every file of every set: download, load, mask, save, upload; 2 sets at a time."""
    import boto3
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    s3 = boto3.client("s3", endpoint_url=job["endpoint"])
    listed = pa.array(sorted(json.loads(Path(job["blocklist_json"]).read_text())), pa.string())

    def one(n: str) -> None:
        get = lambda key: s3.get_object(Bucket=BUCKET, Key=f"in/{key}")["Body"].read()  # noqa: E731
        table = pq.read_table(pa.BufferReader(get(f"metadata/metadata_{n}.parquet")))
        keep = pc.invert(pc.is_in(table["url"], value_set=listed))
        sink = pa.BufferOutputStream()
        pq.write_table(table.filter(keep), sink)
        s3.put_object(Bucket=BUCKET, Key=f"anchor/metadata/metadata_{n}.parquet", Body=sink.getvalue().to_pybytes())
        mask = keep.to_numpy(zero_copy_only=False)
        for kind in ("img_emb", "text_emb"):
            array = np.load(io.BytesIO(get(f"{kind}/{kind}_{n}.npy")))
            out = io.BytesIO()
            np.save(out, array[mask])
            s3.put_object(Bucket=BUCKET, Key=f"anchor/{kind}/{kind}_{n}.npy", Body=out.getvalue())

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, [f"{i:04d}" for i in range(job["sets"])]))


def child_copies(job: dict[str, Any]) -> None:
    """Reference, not an engine: CopyObject of the clean sets' three objects each, nothing else.

    It is told which sets are clean (no scan, no hit set, no receipt), so its time is what the endpoint
    itself charges for the server-side copies any engine that skips clean sets must make; on loopback the
    server copies on the same cores the client runs on. Eight at a time, more than streamfilter's default.
    """
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=job["endpoint"], config=Config(max_pool_connections=8))
    keys = [f"{kind}/{kind}_{n:04d}.{ext}" for n in job["clean_sets"]
            for kind, ext in (("metadata", "parquet"), ("img_emb", "npy"), ("text_emb", "npy"))]  # fmt: skip
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: s3.copy_object(Bucket=BUCKET, Key=f"copies/{key}",
                                                 CopySource={"Bucket": BUCKET, "Key": f"in/{key}"}), keys))  # fmt: skip


# --------------------------------------------------------------------------- runs


def sf_command(inputs: str, output: str, blocklist: Path, report: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "streamfilter.cli", "run", inputs, "--output", output, "--format", "embeddings",
            "--blocklist", str(blocklist), "--report", str(report), *extra]  # fmt: skip


def s3_env(server: S3Server, endpoint: str) -> dict[str, str]:
    env = dict(ENV_AT_START)
    env.update(AWS_ACCESS_KEY_ID=server.key_id, AWS_SECRET_ACCESS_KEY=server.secret, AWS_DEFAULT_REGION=S3_REGION,
               AWS_ENDPOINT_URL=endpoint, AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
    return env


#: A fair local copy for the dense case: each file under a temporary name, fsynced, renamed (as
#: streamfilter's local commit does); the bytes copied by the kernel (shutil's sendfile), one file at a time.
COPY_FSYNC = """
import os, shutil, sys
src, dst = sys.argv[1:3]
for dirpath, _, files in os.walk(src):
    out = os.path.join(dst, os.path.relpath(dirpath, src))
    os.makedirs(out, exist_ok=True)
    for name in files:
        tmp = os.path.join(out, "." + name + ".partial")
        shutil.copyfile(os.path.join(dirpath, name), tmp)
        fd = os.open(tmp, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, os.path.join(out, name))
"""


def timed(cmd: list[str], env: dict[str, str], tag: str) -> dict[str, Any]:
    result = measure(cmd, env, DATA / "logs" / tag, timeout=1800, cwd=REPO)
    if result["returncode"] != 0:
        raise SystemExit(f"{tag} failed: {result['stderr_tail']}")
    return result


def sparse(args: argparse.Namespace, root: Path, urls: list[list[str]], endpoint: str) -> dict[str, Any]:
    listed = sparse_list(urls)
    blocklist = DATA / "sparse.txt"
    blocklist.write_text("\n".join(listed) + "\n")
    (DATA / "sparse.json").write_text(json.dumps(listed))
    server = start_server(endpoint, DATA / "logs" / f"{endpoint}.log", BUCKET, DATA / "scratch")
    proxy = CountingProxy(server.port)
    try:
        files = [p for p in root.rglob("*") if p.suffix in (".npy", ".parquet")]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda p: server.client.upload_file(str(p), BUCKET, f"in/{p.relative_to(root)}"), files))
        env = s3_env(server, proxy.endpoint)
        rows: dict[str, list[dict[str, Any]]] = {"streamfilter": [], "anchor": [], COPIES: []}
        for run in range(args.runs):
            for engine in rows:
                server.delete_prefix({"streamfilter": "out/", "anchor": "anchor/", COPIES: "copies/"}[engine])
                before = proxy.snapshot()
                server_cpu = server.cpu_s()
                if engine == "streamfilter":
                    report = DATA / f"sparse-{endpoint}-{run}.json"
                    cmd = sf_command(f"s3://{BUCKET}/in/", f"s3://{BUCKET}/out/", blocklist, report)
                elif engine == COPIES:
                    job = DATA / "copies.json"
                    clean = [n for n in range(args.sets) if n not in HIT_SETS]
                    job.write_text(json.dumps({"endpoint": proxy.endpoint, "clean_sets": clean}))
                    cmd = [sys.executable, str(Path(__file__)), "--child-copies", str(job)]
                else:
                    job = DATA / "anchor.json"
                    job.write_text(json.dumps({"endpoint": proxy.endpoint, "sets": args.sets,
                                               "blocklist_json": str(DATA / "sparse.json")}))  # fmt: skip
                    cmd = [sys.executable, str(Path(__file__)), "--child-anchor", str(job)]
                load = os.getloadavg()[0]
                result = timed(cmd, env, f"sparse-{endpoint}-{engine}-{run}")
                proxy.quiesce()
                after = proxy.snapshot()
                result["load1"] = load
                result["server_cpu_s"] = server.cpu_s() - server_cpu
                result["moved_bytes"] = after["read"] + after["written"] - before["read"] - before["written"]
                if engine == "streamfilter":
                    result["output_via"] = sorted({s["output_via"] for s in json.loads(report.read_text())["shards"]})
                rows[engine].append(result)
                print(f"sparse {endpoint} {engine} run {run}: {result['wall_s']:.2f} s, "
                      f"{result['moved_bytes'] / MIB:.1f} MiB through the proxy, server CPU "
                      f"{result['server_cpu_s']:.1f} s, load {load:.1f}", flush=True)  # fmt: skip
        check_sparse(server, listed)
    finally:
        proxy.stop()
        server.stop()
    return {engine: summarize(r) for engine, r in rows.items()}


def check_sparse(server: S3Server, listed: list[str]) -> None:
    """streamfilter's outputs of the hit sets equal the anchor's (NumPy boolean indexing), byte for byte
    after the header; the clean sets' outputs equal their inputs."""
    import numpy as np

    for i in HIT_SETS:
        for kind in ("img_emb", "text_emb"):
            key = f"{kind}/{kind}_{i:04d}.npy"
            ours = np.load(io.BytesIO(server.get(f"out/{key}")))
            theirs = np.load(io.BytesIO(server.get(f"anchor/{key}")))
            assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), key
            assert len(ours) == len(np.load(io.BytesIO(server.get(f"in/{key}")), mmap_mode=None)) - HITS_PER_SET
    # moto's CopyObject keeps the source's multipart checksum, which botocore would check as a whole-object one.
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.key_id,
                          aws_secret_access_key=server.secret, region_name=S3_REGION,
                          config=Config(response_checksum_validation="when_required"))  # fmt: skip
    get = lambda key: client.get_object(Bucket=BUCKET, Key=key)["Body"].read()  # noqa: E731
    assert get("out/img_emb/img_emb_0000.npy") == get("in/img_emb/img_emb_0000.npy")


def dense(args: argparse.Namespace, root: Path, urls: list[list[str]], tag: str, runs: int) -> dict[str, Any]:
    blocklist = DATA / f"dense-{tag}.txt"
    blocklist.write_text("\n".join(dense_list(urls)) + "\n")
    rows: dict[str, list[dict[str, Any]]] = {"streamfilter": [], "copy": [], "copy+fsync": []}
    out = DATA / f"out-{tag}"
    for run in range(runs):
        for engine in rows:
            shutil.rmtree(out, ignore_errors=True)
            if engine == "streamfilter":
                cmd = sf_command(str(root), str(out), blocklist, DATA / f"dense-{tag}-{run}.json")
            elif engine == "copy":
                cmd = ["cp", "-r", str(root), str(out)]
            else:
                cmd = [sys.executable, "-S", "-c", COPY_FSYNC, str(root), str(out)]
            subprocess.run(["sync"], check=False)
            load = os.getloadavg()[0]
            result = timed(cmd, dict(ENV_AT_START), f"dense-{tag}-{engine}-{run}")
            result["load1"] = load
            rows[engine].append(result)
            print(f"dense {tag} {engine} run {run}: {result['wall_s']:.2f} s, peak {result['peak_rss_mib']:.0f} MiB, "
                  f"load {load:.1f}", flush=True)  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    return {engine: summarize(r) for engine, r in rows.items()}


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    med = lambda field: statistics.median(r[field] for r in results)  # noqa: E731
    out = {"runs": len(results), "wall_s": med("wall_s"), "cpu_s": med("cpu_s"), "peak_rss_mib": med("peak_rss_mib"),
           "walls": [round(r["wall_s"], 2) for r in results],
           "loads": [round(r["load1"], 1) for r in results]}  # fmt: skip
    if "server_cpu_s" in results[0]:
        out["server_cpu_s"] = med("server_cpu_s")
    if "moved_bytes" in results[0]:
        out["moved_bytes"] = med("moved_bytes")
    if "output_via" in results[0]:
        out["output_via"] = results[0]["output_via"]
    return out


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    import platform

    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_before": os.getloadavg()}  # fmt: skip


def floor_bytes(r: dict[str, Any], npy_bytes: int) -> int:
    """What must cross the client when the hit sets' .npy are assembled: per rewritten .npy one 5 MiB piece
    (the new header and the rows filling S3's smallest part) fetched and uploaded; the metadata is not
    counted (measured: the key column of every set, the hit sets' metadata read and written)."""
    rewritten = len(HIT_SETS) * 2
    return rewritten * 2 * min(5 * MIB, npy_bytes)


def sparse_verdicts(r: dict[str, Any]) -> list[str]:
    ok = lambda flag: "met" if flag else "NOT met"  # noqa: E731
    npy = r["rows"] * DIM * 2
    floor = floor_bytes(r, npy)
    lines = []
    for name, sp in r["sparse"].items():
        moved = sp["streamfilter"]["moved_bytes"] / r["input_bytes"]
        speedup = sp["anchor"]["wall_s"] / sp["streamfilter"]["wall_s"]
        lines += [
            f"- sparse on {name}, bytes through the client: {moved:.2%} of the input (target <= {TARGET_MOVED:.0%}): "
            f"{ok(moved <= TARGET_MOVED)}; outputs via {sp['streamfilter'].get('output_via')}",
            f"- sparse on {name}, anchor wall / streamfilter wall: {speedup:.1f}x (target >= {TARGET_SPEEDUP:.0f}x): "
            f"{ok(speedup >= TARGET_SPEEDUP)}",
        ]
        if COPIES in sp:
            lines.append(
                f"- sparse on {name}, the ceiling: anchor wall / {COPIES} wall (the clean sets' CopyObjects alone, "
                f"nothing scanned or rewritten): {sp['anchor']['wall_s'] / sp[COPIES]['wall_s']:.1f}x"
            )
    lines.append(
        f"- the floor of assembly with these files: {len(HIT_SETS) * 2} rewritten .npy x (5 MiB fetched + 5 MiB "
        f"uploaded) = {floor / MIB:.0f} MiB, {floor / r['input_bytes']:.2%} of the input before any metadata"
    )
    return lines


def _heading(r: dict[str, Any], case: str, data_note: str) -> list[str]:
    """The title, machine and data lines of a one-case report (``--sparse-only`` / ``--dense-only``)."""
    return [
        f"# Embedding sets benchmark, {case} only (benchmarks/embeddings.py --{case}-only --rows {r['rows']})",
        "",
        f"{r['date']}; {r['machine']['nproc']} CPUs ({r['machine']['cpu']}), load average before "
        f"{', '.join(f'{x:.2f}' for x in r['machine']['loadavg_before'])}; medians of {r['runs']} runs.",
        f"{r['sets']} sets of {r['rows']:,} rows (float16 x {DIM}, {r['rows'] * DIM * 2 / MIB:,.0f} MiB a .npy); "
        f"input {r['input_bytes'] / MIB:,.0f} MiB{data_note}",
        "",
    ]


def save_one_case(name: str, result: dict[str, Any], render: Any) -> int:
    """A one-case report (``--sparse-only`` / ``--dense-only``) as results/NAME.json and .md, printed too."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(render(result))
    print(render(result))
    return 0


def render_sparse(r: dict[str, Any]) -> str:
    """The sparse case alone (``--sparse-only``)."""
    lines = [
        *_heading(r, "sparse", "."),
        "| endpoint | engine | median wall s | runs (s) | loads | CPU s | server CPU s | through the client MiB |",
        "| --- | --- | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for name, engines in r["sparse"].items():
        for engine, s in engines.items():
            lines.append(f"| {name} | {engine} | {s['wall_s']:.2f} | {s['walls']} | {s['loads']} | {s['cpu_s']:.1f} | "
                         f"{s['server_cpu_s']:.1f} | {s['moved_bytes'] / MIB:,.1f} |")  # fmt: skip
    return "\n".join([*lines, "", *sparse_verdicts(r)]) + "\n"


def dense_verdicts(de: dict[str, Any]) -> list[str]:
    ok = lambda flag: "met" if flag else "NOT met"  # noqa: E731
    lines = []
    for copy in ("copy", "copy+fsync"):
        ratio = de[copy]["wall_s"] / de["streamfilter"]["wall_s"]
        what = "cp -r" if copy == "copy" else "a copy that fsyncs each file, as our commit does"
        lines.append(f"- dense local, throughput against {what}: {ratio:.0%} (target >= {TARGET_DENSE:.0%}): "
                     f"{ok(ratio >= TARGET_DENSE)}")  # fmt: skip
    return lines


def render_dense(r: dict[str, Any]) -> str:
    """The dense case alone (``--dense-only``)."""
    lines = [
        *_heading(r, "dense", "; 5% of every set's rows listed, local disk."),
        "| engine | median wall s | runs (s) | loads | CPU s | peak RSS MiB |",
        "| --- | ---: | --- | --- | ---: | ---: |",
    ]
    for engine, s in r["dense"].items():
        lines.append(f"| {engine} | {s['wall_s']:.2f} | {s['walls']} | {s['loads']} | {s['cpu_s']:.1f} | "
                     f"{s['peak_rss_mib']:.0f} |")  # fmt: skip
    return "\n".join([*lines, "", *dense_verdicts(r["dense"])]) + "\n"


def render(r: dict[str, Any]) -> str:
    de, mem = r["dense"], r["memory"]
    ok = lambda flag: "met" if flag else "NOT met"  # noqa: E731
    lines = [
        "# Embedding sets benchmark (benchmarks/embeddings.py)",
        "",
        f"{r['date']}; {r['machine']['nproc']} CPUs ({r['machine']['cpu']}), load average before "
        f"{', '.join(f'{x:.2f}' for x in r['machine']['loadavg_before'])}; medians of {r['runs']} runs "
        "(each run's 1-minute load average at its start in the loads column).",
        f"{r['sets']} sets of {r['rows']:,} rows: metadata Parquet + img_emb + text_emb (float16 x {DIM}); "
        f"input {r['input_bytes'] / MIB:,.0f} MiB.",
        "",
        "| case | engine | median wall s | runs (s) | loads | CPU s | server CPU s | peak RSS MiB | through the "
        "client MiB |",
        "| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    cases = [(f"sparse S3 ({name})", engines) for name, engines in r["sparse"].items()]
    cases += [("dense local", de), ("dense local 1x", mem["1x"]), ("dense local 4x", mem["4x"])]
    for case, engines in cases:
        for engine, s in engines.items():
            through = f"{s['moved_bytes'] / MIB:,.1f}" if "moved_bytes" in s else ""
            server = f"{s['server_cpu_s']:.1f}" if "server_cpu_s" in s else ""
            lines.append(f"| {case} | {engine} | {s['wall_s']:.2f} | {s['walls']} | {s.get('loads', '')} | "
                         f"{s['cpu_s']:.1f} | {server} | {s['peak_rss_mib']:.0f} | {through} |")  # fmt: skip
    lines += ["", *sparse_verdicts(r), *dense_verdicts(de)]
    growth = mem["4x"]["streamfilter"]["peak_rss_mib"] / mem["1x"]["streamfilter"]["peak_rss_mib"]
    lines += [
        f"- peak RSS with files 4x as long: {growth:.2f}x the 1x run's (target: flat, <= {TARGET_RSS_GROWTH}x): "
        f"{ok(growth <= TARGET_RSS_GROWTH)}",
        "",
        r["projection"],
    ]
    return "\n".join(lines) + "\n"


def projection(r: dict[str, Any]) -> str:
    """LAION-2B-en's embeddings from the measured costs: per byte through the client, per set."""
    assembled = next((e for e in r["sparse"].values() if "assembled" in e["streamfilter"].get("output_via", [])), None)
    sp = (assembled or next(iter(r["sparse"].values())))["streamfilter"]
    de = r["dense"]["streamfilter"]
    rows, row_bytes, files = 2.3e9, DIM * 2, 2314
    total = rows * row_bytes * 2
    per_byte = de["wall_s"] / r["input_bytes"]  # dense local: seconds per input byte cut and copied
    per_set = sp["wall_s"] / r["sets"]  # sparse S3: seconds per set (scan, copies, assembly requests)
    pieces = files * 2 * 2 * 5 * MIB  # a hit set's two .npy: one 5 MiB header piece each, fetched and uploaded
    # The metadata of a set with a hit is read and written whole: its bytes a row, as in this benchmark's Parquet.
    metadata_row = (r["input_bytes"] - r["sets"] * 2 * (128 + r["rows"] * row_bytes)) / (r["sets"] * r["rows"])
    metadata = 2 * rows * metadata_row
    dense_s = total * per_byte
    npy = rows * row_bytes / files
    return (
        f"Projection to LAION-2B-en ({rows:.1e} rows x {DIM} float16, 2 modalities = {total / 1e12:.2f} TB of "
        f"vectors in ~{files} files a modality, ~{npy / 1e9:.1f} GB a .npy), from these costs on this machine: "
        f"sparse with a hit in every set (as Re-LAION's 2,236 removals would be) ~{files * per_set / 3600:.1f} h at "
        f"{per_set:.2f} s a set; through the client ~{pieces / 1e9:.0f} GB of header pieces "
        f"({pieces / total:.2%} of the vectors) and ~{metadata / 1e9:.0f} GB of metadata read and written whole "
        f"({metadata_row:.0f} bytes a row as here; {metadata / total:.2%}); dense (5% of every set) "
        f"~{dense_s / 3600:.1f} h at {1 / per_byte / MIB:.0f} MiB/s. Loopback servers' per-request costs stand in for "
        "a real endpoint's; a real one adds latency per request and its own copy bandwidth."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=16)
    parser.add_argument("--rows", type=int, default=16384, help="rows a set (16384: 24 MiB a .npy)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--endpoints", default="moto,s3rver", help="the S3 endpoints: " + ", ".join(ENDPOINTS))
    parser.add_argument(
        "--sparse-only",
        action="store_true",
        help="only the sparse case, into results/embeddings-sparse-ROWS.{json,md} (for larger --rows)",
    )
    parser.add_argument(
        "--dense-only",
        action="store_true",
        help="only the dense case, into results/embeddings-dense-ROWS.{json,md} (for larger --rows)",
    )
    parser.add_argument(
        "--data",
        help="folder for the generated sets, logs, outputs and the S3 server's store (default "
        "benchmarks/data/embeddings): another run of this benchmark in the same folder at the same time clears "
        "this one's logs and outputs",
    )
    parser.add_argument("--child-anchor", help=argparse.SUPPRESS)
    parser.add_argument("--child-copies", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global DATA
    if args.data:
        DATA = Path(args.data).resolve()
    if args.child_anchor:
        child_anchor(json.loads(Path(args.child_anchor).read_text()))
        return 0
    if args.child_copies:
        child_copies(json.loads(Path(args.child_copies).read_text()))
        return 0
    (DATA / "logs").mkdir(parents=True, exist_ok=True)
    started = time.time()
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "runs": args.runs,
                              "sets": args.sets, "rows": args.rows}  # fmt: skip
    root = DATA / ("sets" if args.rows == 16384 else f"sets-{args.rows}")
    urls = generate(root, args.sets, args.rows)
    result["input_bytes"] = input_bytes(root)
    if args.dense_only:
        result["dense"] = dense(args, root, urls, f"rows{args.rows}", args.runs)
        return save_one_case(f"embeddings-dense-{args.rows}", result, render_dense)
    result["sparse"] = {name: sparse(args, root, urls, name) for name in args.endpoints.split(",")}
    if args.sparse_only:
        return save_one_case(f"embeddings-sparse-{args.rows}", result, render_sparse)
    result["dense"] = dense(args, root, urls, "main", args.runs)
    small, large = DATA / "mem-1x", DATA / "mem-4x"
    mem_sets = 4
    result["memory"] = {
        "1x": dense(args, small, generate(small, mem_sets, args.rows), "1x", args.runs),
        "4x": dense(args, large, generate(large, mem_sets, args.rows * 4), "4x", args.runs),
    }
    result["projection"] = projection(result)
    result["seconds"] = round(time.time() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "embeddings.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "embeddings.md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
