"""Sparse img2dataset benchmark: streamfilter against a webdataset rewrite, through loopback S3.

    python benchmarks/img2dataset.py                    # 64 shard sets, 3 runs each (about 4-5 min)
    python benchmarks/img2dataset.py --sets 8 --runs 1 --results img2dataset-smoke   # a smoke run

Issue 6, part 4, the sparse img2dataset case. The data (generated once under
``data/img2dataset/``, git-ignored) is ``--sets`` shard sets as img2dataset writes
them: ``00000.tar`` (400 samples ``{key}.jpg``/``.json``/``.txt``, JPEG-like random
payloads of about 52 KB, so each tar is over 20 MiB), ``00000.parquet`` (one row per
sample plus a few failed downloads: url, caption, key, status, error_message, width,
height) and ``00000_stats.json``. The blocklist holds 500 urls, all of them in 2 of
the 64 sets (about 3%), a few of them failed downloads; the other sets have no hit.

The sets are uploaded to an S3 server on 127.0.0.1 (``--endpoint``: s3rver by default, or
moto; its own process, started and stopped here). Every engine talks to it through a counting TCP proxy (threads of this
harness), which counts the bytes it reads (server to engine) and writes (engine to
server), HTTP framing included; the harness's own uploads and checks bypass the proxy.
Engines, each a fresh subprocess, interleaved, ``--runs`` timed runs each (medians),
each run writing a fresh output prefix that is deleted after its check:

- streamfilter: ``python -m streamfilter.cli run 's3://…/in/*.tar' --format img2dataset
  --output s3://…/out/TAG/ --blocklist LIST --key url --s3-endpoint-url PROXY``, at its
  default concurrency, after ``--warmup`` untimed runs (its start-up loads compiled
  kernels; the anchor gets no warm-up, its time is all data);
- the anchor, what a user would write with the ``webdataset`` package: for every set,
  one after another, stream the tar from S3 (boto3 ``get_object`` body), iterate its
  samples with ``webdataset.tariterators``, drop the samples whose ``.json`` url is
  listed, write the rest with ``webdataset.TarWriter`` to a local temporary file and
  upload it with boto3's ``upload_file``; filter the Parquet with pyarrow and lower the
  stats' counts, and upload both;
- a reference (not judged): only the CopyObjects of the clean sets' three objects, with
  boto3, 3 at a time, told which sets are clean. On moto a CopyObject duplicates the
  object's bytes inside the server process, so this is what the endpoint itself charges
  for the copies any skipping engine must make; the anchor's time over it bounds the
  speed-up reachable here.

Every run is verified from the S3 server directly: per set, the output tar's member
names (tarfile) equal the input's minus the listed samples' members, the output
Parquet equals the input's rows without the listed urls, and the stats' ``count``,
``successes``, ``failed_to_download`` and ``status_dict`` are lowered by the removed
rows. A run that fails its check is reported as failed and left out of the medians.

Peak RSS is ``ru_maxrss`` of the engine process from ``wait4``, taken by a tiny wrapper
interpreter (``python -S``) that spawns it: Linux carries the high-water mark across
``exec``, so a child spawned by this harness (which holds pyarrow and the proxy) would
report at least the harness's RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness import (  # a sibling module
    ENDPOINTS,
    ENV_AT_START,
    MIB,
    S3_REGION,
    CountingProxy,
    measure,
    start_server,
    streamfilter_report,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data" / "img2dataset"
RESULTS = HERE / "results"

SAMPLES = 400  # samples per tar
JPG_MEAN = 52_000  # mean payload bytes; with tar headers each tar is about 22 MB, over 20 MiB
FAILED = 8  # failed-download rows per Parquet (in the Parquet and the stats, not in the tar)
KEYS = 500  # listed urls
HIT_SETS = 2  # sets holding them: 2 of 64 is about 3%
LISTED_FAILED = 4  # of each hit set's listed urls, how many are failed downloads
SEED = 6
DATA_VERSION = 2  # bump when the generator changes, so cached data is regenerated

BUCKET = "bench-i2d"

# Issue 6's targets for the sparse img2dataset case.
TARGET_MOVED_FRACTION = 0.05  # bytes read + written at the proxy over the input bytes, at most
TARGET_SPEEDUP = 20.0  # the anchor's median wall time over streamfilter's, at least
# and streamfilter's peak RSS no higher than the anchor's.

#: Run in this order each round. copy-floor is a reference (see child_copy_floor), not judged.
ENGINES = ("streamfilter", "anchor", "copy-floor")


# --------------------------------------------------------------------------- data


def stem(index: int) -> str:
    return f"{index:05d}"


def generate(sets: int) -> dict[str, Any]:
    """Write the shard sets and the blocklist once; later calls with the same parameters reuse them."""
    import random
    import tarfile

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = DATA / f"sets-{sets}"
    meta_path = root / "meta.json"
    params = {"sets": sets, "samples": SAMPLES, "jpg_mean": JPG_MEAN, "failed": FAILED, "keys": KEYS,
              "hit_sets": HIT_SETS, "seed": SEED, "version": DATA_VERSION}  # fmt: skip
    if meta_path.exists() and json.loads(meta_path.read_text()).get("params") == params:
        return json.loads(meta_path.read_text())
    print(f"generating {sets} img2dataset shard sets under {root} ...", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    picker = random.Random(SEED)
    # Payloads are slices of one random pool: incompressible like JPEG data, and cheap to make.
    pool = rng.bytes(16 * MIB)
    jfif, eoi = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01", b"\xff\xd9"
    words = ["a", "photo", "of", "the", "dog", "cat", "red", "house", "beach", "city", "night", "vintage"]
    hit_sets = sorted(picker.sample(range(sets), min(HIT_SETS, sets)))
    listed: list[str] = []
    for s in range(sets):
        name = stem(s)
        # Log-normal sizes, like real thumbnails, scaled so every tar has the same payload total.
        sizes = np.clip(rng.lognormal(np.log(JPG_MEAN), 0.5, SAMPLES), 2_000, 1_000_000)
        sizes = np.maximum(sizes * (JPG_MEAN * SAMPLES / sizes.sum()), 64).astype(int)
        offsets = rng.integers(0, len(pool) - 1_000_000, SAMPLES)
        urls, keys, captions = [], [], []
        with tarfile.open(root / f"{name}.tar", "w", format=tarfile.GNU_FORMAT) as tf:
            for i in range(SAMPLES):
                key = f"{s:05d}{i:04d}"
                url = f"https://img{picker.randrange(20)}.example.com/{key}/{picker.getrandbits(64):x}.jpg"
                caption = " ".join(picker.choices(words, k=8))
                meta = {"url": url, "caption": caption, "key": key, "status": "success", "error_message": None,
                        "width": 256, "height": 256}  # fmt: skip
                jpg = jfif + pool[offsets[i] : offsets[i] + sizes[i] - len(jfif) - len(eoi)] + eoi
                for ext, data in (("jpg", jpg), ("json", json.dumps(meta).encode()), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 1_650_000_000 + i, 0o644
                    tf.addfile(info, io.BytesIO(data))
                urls.append(url)
                keys.append(key)
                captions.append(caption)
        failed_urls = [f"https://dead{picker.randrange(5)}.example.org/{s}/{j}/{picker.getrandbits(48):x}.jpg"
                       for j in range(FAILED)]  # fmt: skip
        n = SAMPLES + FAILED
        table = pa.table(
            {
                "url": urls + failed_urls,
                "caption": captions + [" ".join(picker.choices(words, k=6)) for _ in range(FAILED)],
                "key": keys + [f"{s:05d}{SAMPLES + j:04d}" for j in range(FAILED)],
                "status": ["success"] * SAMPLES + ["failed_to_download"] * FAILED,
                "error_message": [None] * SAMPLES + ["HTTP Error 404: Not Found"] * FAILED,
                "width": pa.array([256] * SAMPLES + [None] * FAILED, pa.int64()),
                "height": pa.array([256] * SAMPLES + [None] * FAILED, pa.int64()),
            }
        )
        pq.write_table(table, root / f"{name}.parquet")
        stats = {
            "count": n, "successes": SAMPLES, "failed_to_download": FAILED, "failed_to_resize": 0,
            "duration": 31.4, "start_time": 1700000000.0 + s, "end_time": 1700000031.4 + s,
            # As img2dataset writes it: successes under "success", failures under their error message.
            "status_dict": {"success": SAMPLES, "HTTP Error 404: Not Found": FAILED},
        }  # fmt: skip
        (root / f"{name}_stats.json").write_text(json.dumps(stats, indent=4))
        if s in hit_sets:
            # The listed urls of a hit set: samples spread over the whole tar, plus a few failed downloads.
            per_set = KEYS // len(hit_sets) + (hit_sets.index(s) < KEYS % len(hit_sets))
            listed += picker.sample(urls, per_set - LISTED_FAILED) + failed_urls[:LISTED_FAILED]
    (root / "blocklist.txt").write_text("\n".join(listed) + "\n")
    files = sorted(p.name for p in root.iterdir() if p.name not in ("meta.json", "blocklist.txt"))
    sizes_by_file = {f: (root / f).stat().st_size for f in files}
    meta = {
        "params": params,
        "root": str(root),
        "hit_sets": [stem(s) for s in hit_sets],
        "listed": len(listed),
        "files": sizes_by_file,
        "input_bytes": sum(sizes_by_file.values()),
        "tar_bytes": sum(v for f, v in sizes_by_file.items() if f.endswith(".tar")),
        "min_tar_bytes": min(v for f, v in sizes_by_file.items() if f.endswith(".tar")),
    }
    meta_path.write_text(json.dumps(meta))
    return meta


def expectations(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per set: the expected output member names, Parquet and stats, from the inputs alone (no engine).

    The member names come from listing the input tar with tarfile; a sample is removed when its
    key's url (from the input Parquet) is listed.
    """
    import tarfile

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = Path(meta["root"])
    listed = pa.array(read_list(root / "blocklist.txt"), pa.string())
    out = {}
    for f in sorted(meta["files"]):
        if not f.endswith(".tar"):
            continue
        name = f.removesuffix(".tar")
        table = pq.read_table(root / f"{name}.parquet")
        drop = pc.is_in(table["url"], value_set=listed)
        removed = table.filter(drop)
        removed_keys = set(removed["key"].to_pylist())
        with tarfile.open(root / f, "r:") as tf:
            names = tf.getnames()
        kept_names = [n for n in names if n.split(".", 1)[0] not in removed_keys]
        stats = json.loads((root / f"{name}_stats.json").read_text())
        statuses = Counter(removed["status"].to_pylist())
        stats["count"] -= removed.num_rows
        stats["successes"] -= statuses.get("success", 0)
        stats["failed_to_download"] -= statuses.get("failed_to_download", 0)
        for key, n in status_dict_keys(removed).items():
            stats["status_dict"][key] -= n
        out[name] = {
            "names": kept_names,
            "members_removed": len(names) - len(kept_names),
            "parquet": table.filter(pc.invert(drop)),
            "rows_removed": removed.num_rows,
            "stats": stats,
        }
    return out


def status_dict_keys(removed: Any) -> Counter:
    """How many removed rows had each ``status_dict`` key: img2dataset counts a success under
    ``success`` and a failure under its error message."""
    return Counter(
        "success" if status == "success" else (message or status)
        for status, message in zip(removed["status"].to_pylist(), removed["error_message"].to_pylist(), strict=True)
    )


def read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- the anchor (child side)


def child_anchor(job: dict[str, Any]) -> None:
    """The straightforward webdataset rewrite of every set, one after another."""
    import tempfile

    import boto3
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import webdataset as wds

    s3 = boto3.client("s3", endpoint_url=job["endpoint"])
    bucket, src, dst = job["bucket"], job["input_prefix"], job["output_prefix"]
    listed = set(read_list(Path(job["blocklist"])))
    listed_arr = pa.array(sorted(listed), pa.string())
    for name in job["stems"]:
        body = s3.get_object(Bucket=bucket, Key=f"{src}{name}.tar")["Body"]
        source = [{"url": f"s3://{bucket}/{src}{name}.tar", "stream": body}]
        with tempfile.NamedTemporaryFile(suffix=".tar") as tmp:
            writer = wds.TarWriter(tmp)
            for sample in wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander(source)):
                if json.loads(sample["json"])["url"] in listed:
                    continue
                writer.write({k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")})
            writer.close()  # ends the archive; the temporary file stays open (TarWriter did not open it)
            tmp.flush()
            s3.upload_file(tmp.name, bucket, f"{dst}{name}.tar")
        data = s3.get_object(Bucket=bucket, Key=f"{src}{name}.parquet")["Body"].read()
        table = pq.read_table(pa.BufferReader(data))
        drop = pc.is_in(table["url"], value_set=listed_arr)
        removed = table.filter(drop)
        sink = pa.BufferOutputStream()
        pq.write_table(table.filter(pc.invert(drop)), sink)
        s3.put_object(Bucket=bucket, Key=f"{dst}{name}.parquet", Body=sink.getvalue().to_pybytes())
        stats = json.loads(s3.get_object(Bucket=bucket, Key=f"{src}{name}_stats.json")["Body"].read())
        statuses = Counter(removed["status"].to_pylist())
        stats["count"] -= removed.num_rows
        stats["successes"] -= statuses.get("success", 0)
        stats["failed_to_download"] -= statuses.get("failed_to_download", 0)
        for key, n in status_dict_keys(removed).items():
            if key in stats.get("status_dict", {}):
                stats["status_dict"][key] -= n
        s3.put_object(Bucket=bucket, Key=f"{dst}{name}_stats.json", Body=json.dumps(stats, indent=4).encode())


def child_copy_floor(job: dict[str, Any]) -> None:
    """Reference, not an engine: CopyObject of the clean sets' three objects, nothing else.

    It is told which sets are clean (no scan, no hit set, no receipt), so its time is what the
    endpoint itself charges for the server-side copies any skipping engine must make: on moto each
    copy duplicates the object's bytes in the server process, which real S3 does off the client's
    clock. Three threads, as streamfilter's default concurrency.
    """
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=job["endpoint"], config=Config(max_pool_connections=8))
    bucket, src, dst = job["bucket"], job["input_prefix"], job["output_prefix"]

    def copy(name: str) -> None:
        for suffix in (".tar", ".parquet", "_stats.json"):
            s3.copy_object(
                Bucket=bucket, Key=f"{dst}{name}{suffix}", CopySource={"Bucket": bucket, "Key": f"{src}{name}{suffix}"}
            )

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(copy, job["stems"]))


# --------------------------------------------------------------------------- measuring one run


# --------------------------------------------------------------------------- S3 (loopback moto) and the proxy


# --------------------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, args: argparse.Namespace, meta: dict[str, Any]) -> None:
        self.args = args
        self.meta = meta
        self.root = Path(meta["root"])
        self.stems = sorted(f.removesuffix(".tar") for f in meta["files"] if f.endswith(".tar"))
        self.expected = expectations(meta)
        self.logs = DATA / "logs"
        shutil.rmtree(self.logs, ignore_errors=True)
        self.logs.mkdir(parents=True)
        self.runs: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.env = dict(ENV_AT_START)
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
            self.env.pop(name, None)
        self.server = start_server(args.endpoint, DATA / f"{args.endpoint}.log", BUCKET, DATA)
        self.env.update(
            AWS_ACCESS_KEY_ID=self.server.key_id,
            AWS_SECRET_ACCESS_KEY=self.server.secret,
            AWS_DEFAULT_REGION=S3_REGION,
            AWS_REGION=S3_REGION,
            AWS_EC2_METADATA_DISABLED="true",
        )
        self.proxy = CountingProxy(self.server.port, latency=args.latency_ms / 1000)

    def close(self) -> None:
        self.proxy.stop()
        self.server.stop()

    def upload(self) -> float:
        """The inputs go to the server directly (not through the proxy), in parallel."""
        start = time.perf_counter()  # the bucket was made when the server started

        def put(name: str) -> None:
            self.server.client.put_object(Bucket=BUCKET, Key=f"in/{name}", Body=(self.root / name).read_bytes())

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(put, sorted(self.meta["files"])))
        return time.perf_counter() - start

    def command(self, engine: str, out_prefix: str, tag: str) -> list[str]:
        blocklist = str(self.root / "blocklist.txt")
        if engine == "streamfilter":
            return [
                sys.executable, "-m", "streamfilter.cli", "run", f"s3://{BUCKET}/in/*.tar",
                "--format", "img2dataset", "--output", f"s3://{BUCKET}/{out_prefix}", "--blocklist", blocklist,
                "--key", "url", "--s3-endpoint-url", self.proxy.endpoint,
                "--report", str(self.logs / f"{tag}.report.json"),
                *self.args.streamfilter_args.split(),
            ]  # fmt: skip
        stems = self.stems if engine == "anchor" else [s for s in self.stems if not self.expected[s]["rows_removed"]]
        job = {"endpoint": self.proxy.endpoint, "bucket": BUCKET, "input_prefix": "in/", "output_prefix": out_prefix,
               "stems": stems, "blocklist": blocklist}  # fmt: skip
        job_path = self.logs / f"{tag}.job.json"
        job_path.write_text(json.dumps(job))
        return [sys.executable, str(Path(__file__).resolve()), f"--child-{engine}", str(job_path)]

    def run_once(self, engine: str, run: int | str) -> dict[str, Any]:
        tag = f"{engine}-{run}"
        out_prefix = f"out/{tag}/"
        self.server.delete_prefix(out_prefix)
        cmd = self.command(engine, out_prefix, tag)
        load_before = os.getloadavg()[0]
        cpu_before = self.server.cpu_s()
        counts_before = self.proxy.snapshot()
        own_before = resource.getrusage(resource.RUSAGE_SELF)
        result = measure(cmd, self.env, self.logs / tag, self.args.timeout, REPO)
        if not self.proxy.quiesce():
            self.notes.append(f"{tag}: proxy connections still open 10 s after the engine exited")
        own = resource.getrusage(resource.RUSAGE_SELF)
        counts = self.proxy.snapshot()
        result.update(
            engine=engine,
            run=run,
            read_bytes=counts["read"] - counts_before["read"],
            written_bytes=counts["written"] - counts_before["written"],
            connections=counts["connections"] - counts_before["connections"],
            server_cpu_s=self.server.cpu_s() - cpu_before,
            # The harness only waits while the engine runs, so its CPU time is the proxy's.
            proxy_cpu_s=own.ru_utime + own.ru_stime - own_before.ru_utime - own_before.ru_stime,
            load1_before=load_before,
            load1_after=os.getloadavg()[0],
        )
        if engine == "streamfilter":
            result.update(set_report(self.logs / f"{tag}.report.json"))
            # What it told the user about the endpoint's refusals (its fallbacks), once each.
            err = Path(f"{self.logs / tag}.err").read_text(errors="replace").splitlines()
            said = [line.strip() for line in err if "refus" in line.lower() or "not implemented" in line.lower()]
            result["sf_refusals"] = list(dict.fromkeys(said))[:4]
        if result["returncode"] != 0:
            result["error"] = f"exit {result['returncode']}: " + " | ".join(result["stderr_tail"])[-600:]
        elif engine == "copy-floor":
            result["error"] = None  # a reference that writes only the clean sets: nothing to verify
            result["copies"] = 3 * sum(1 for e in self.expected.values() if not e["rows_removed"])
        else:
            checked = time.perf_counter()
            result["error"], result["identical_clean"] = self.check(out_prefix)
            result["check_s"] = time.perf_counter() - checked
        self.server.delete_prefix(out_prefix)
        shown = "ok" if not result["error"] else f"FAILED: {result['error']}"
        print(
            f"  {engine:<12} run {run}: {result['wall_s']:7.2f} s  cpu {result['cpu_s']:6.2f} s  "
            f"rss {result['peak_rss_mib']:5.0f} MiB  read {result['read_bytes'] / MIB:7.1f} MiB  "
            f"written {result['written_bytes'] / MIB:7.1f} MiB  load {load_before:.1f}  "
            f"check {result.get('check_s', 0):.1f} s  {shown}",
            flush=True,
        )
        return result

    def check(self, out_prefix: str) -> tuple[str | None, int]:
        """Every set's three outputs against the expectations; also counts clean tars that came out byte-identical."""
        present = self.server.keys(out_prefix)
        wanted = {f"{out_prefix}{name}" for name in self.meta["files"]}
        missing = sorted(wanted - present.keys())
        if missing:
            return f"{len(missing)} outputs missing, e.g. {missing[0]}", 0
        # Fetching and listing 1.4 GB of tars dominates the check: a few threads (moto serves in parallel).
        with ThreadPoolExecutor(4) as pool:
            verdicts = list(pool.map(lambda name: self.check_set(out_prefix, name), self.stems))
        errors = [e for e, _ in verdicts if e]
        identical = sum(same for _, same in verdicts)
        return (f"{len(errors)} sets wrong, e.g. {errors[0]}" if errors else None), identical

    def check_set(self, out_prefix: str, name: str) -> tuple[str | None, bool]:
        import tarfile

        import pyarrow as pa
        import pyarrow.parquet as pq

        exp = self.expected[name]
        body = self.server.get(f"{out_prefix}{name}.tar")
        try:
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as tf:
                names = tf.getnames()
        except tarfile.TarError as exc:
            return f"{name}.tar is not a tar ({exc})", False
        if names != exp["names"]:
            return f"{name}.tar has {len(names)} members, expected {len(exp['names'])} (or other names/order)", False
        same = False
        if exp["rows_removed"] == 0:
            same = hashlib.sha256(body).digest() == hashlib.sha256((self.root / f"{name}.tar").read_bytes()).digest()
        table = pq.read_table(pa.BufferReader(self.server.get(f"{out_prefix}{name}.parquet")))
        want = exp["parquet"]
        if table.column_names != want.column_names or table.num_rows != want.num_rows:
            return f"{name}.parquet has {table.num_rows} rows / columns {table.column_names}", same
        for column in want.column_names:
            if table[column].to_pylist() != want[column].to_pylist():
                return f"{name}.parquet column {column} differs from the input without the listed rows", same
        stats = json.loads(self.server.get(f"{out_prefix}{name}_stats.json"))
        for field in ("count", "successes", "failed_to_download", "status_dict"):
            if stats.get(field) != exp["stats"][field]:
                return f"{name}_stats.json {field} is {stats.get(field)}, expected {exp['stats'][field]}", same
        return None, same


def set_report(path: Path) -> dict[str, Any]:
    """What streamfilter says it read and wrote, and how each set's output came to be."""
    totals, shards = streamfilter_report(path)
    if not totals:
        return {}
    return {
        **totals,
        "sf_seconds_by_via": {
            via: round(sum(s.get("seconds") or 0 for s in shards if s.get("output_via") == via), 2)
            for via in {str(s.get("output_via")) for s in shards}
        },
    }


# --------------------------------------------------------------------------- summary and report


def summarize(runs: list[dict[str, Any]], input_bytes: int) -> dict[str, dict[str, Any]]:
    out = {}
    for engine in ENGINES:
        mine = [r for r in runs if r["engine"] == engine and isinstance(r["run"], int)]
        ok = [r for r in mine if not r.get("error")]
        row: dict[str, Any] = {"engine": engine, "runs": len(mine), "ok": len(ok)}
        if ok:

            def med(field: str, rows: list[dict[str, Any]] = ok) -> float:
                return statistics.median(r[field] for r in rows)

            row.update(
                wall_s=med("wall_s"),
                wall_min=min(r["wall_s"] for r in ok),
                wall_max=max(r["wall_s"] for r in ok),
                cpu_s=med("cpu_s"),
                server_cpu_s=med("server_cpu_s"),
                proxy_cpu_s=med("proxy_cpu_s"),
                peak_rss_mib=med("peak_rss_mib"),
                peak_rss_max_mib=max(r["peak_rss_mib"] for r in ok),
                read_bytes=med("read_bytes"),
                written_bytes=med("written_bytes"),
            )
            row["read_fraction"] = row["read_bytes"] / input_bytes
            row["written_fraction"] = row["written_bytes"] / input_bytes
            row["moved_fraction"] = (row["read_bytes"] + row["written_bytes"]) / input_bytes
            if engine == "copy-floor":
                row["copies"] = ok[-1]["copies"]
            if engine == "streamfilter":
                row["output_via"] = ok[-1].get("sf_output_via")
                row["sf_bytes_read"] = med("sf_bytes_read")
                row["sf_bytes_written"] = med("sf_bytes_written")
                row["identical_clean"] = ok[-1].get("identical_clean")
        out[engine] = row
    return out


def targets(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    def target(name: str, ok: bool, detail: str) -> dict[str, Any]:
        return {"name": name, "pass": ok, "detail": detail}

    sf, anchor = summary["streamfilter"], summary["anchor"]
    if "wall_s" not in sf:
        return [target("streamfilter ran", False, "no verified streamfilter run")]
    moved = sf["moved_fraction"]
    moved_mib = (sf["read_bytes"] + sf["written_bytes"]) / MIB
    out = [
        target(
            f"bytes moved through streamfilter (read + written at the proxy) <= {TARGET_MOVED_FRACTION:.0%} of input",
            moved <= TARGET_MOVED_FRACTION,
            f"{moved:.2%} ({moved_mib:.1f} MiB: read {sf['read_fraction']:.2%}, written {sf['written_fraction']:.2%})",
        )
    ]
    if "wall_s" not in anchor:
        return [*out, target("anchor ran", False, "no verified anchor run: ratios not measured")]
    speedup = anchor["wall_s"] / sf["wall_s"]
    low, high = anchor["wall_min"] / sf["wall_max"], anchor["wall_max"] / sf["wall_min"]
    out.append(
        target(
            f"wall time >= {TARGET_SPEEDUP:.0f}x faster than the webdataset anchor",
            speedup >= TARGET_SPEEDUP,
            f"{speedup:.1f}x ({anchor['wall_s']:.2f} s / {sf['wall_s']:.2f} s, medians; {low:.1f}x-{high:.1f}x"
            " over the runs' extremes)",
        )
    )
    out.append(
        target(
            "peak RSS no higher than the anchor's",
            sf["peak_rss_mib"] <= anchor["peak_rss_mib"],
            f"{sf['peak_rss_mib']:.0f} MiB vs {anchor['peak_rss_mib']:.0f} MiB (medians; largest"
            f" {sf['peak_rss_max_mib']:.0f} vs {anchor['peak_rss_max_mib']:.0f})",
        )
    )
    return out


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem_kib = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_kib / 1024**2, 1),
            "kernel": platform.release(), "python": platform.python_version()}  # fmt: skip


def versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {}
    for name in ("streamfilter", "pyarrow", "webdataset", "boto3", "botocore", "s3fs", "aiobotocore", "moto"):
        with contextlib.suppress(md.PackageNotFoundError):
            found[name] = md.version(name)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "streamfilter"],
                           capture_output=True, text=True)  # fmt: skip
    found["git"] = commit.stdout.strip() + (" (streamfilter/ modified)" if dirty.stdout.strip() else "")
    # The code that ran, even when uncommitted.
    digest = hashlib.sha256()
    for path in sorted((REPO / "streamfilter").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    found["streamfilter source sha256"] = digest.hexdigest()[:12]
    return found


def render(report: dict[str, Any]) -> str:
    p, m, v, d = report["params"], report["machine"], report["versions"], report["data"]
    summary = report["summary"]
    lines = [
        f"# Sparse img2dataset case ({report['date']})",
        "",
        f"`python benchmarks/img2dataset.py --sets {p['sets']} --runs {p['runs']} --endpoint {p['endpoint']}`:"
        f" {p['sets']} shard sets"
        f" ({SAMPLES} samples + {FAILED} failed downloads each, tars of {d['min_tar_bytes'] / MIB:.1f} MiB and"
        f" more), {d['input_bytes'] / MIB:,.0f} MiB in all; a {d['listed']}-url blocklist whose urls all sit in"
        f" {len(d['hit_sets'])} sets ({', '.join(d['hit_sets'])}). S3: {p['endpoint']} on loopback"
        f" ({ENDPOINTS.get(p['endpoint'], '')}) behind a counting proxy; 1-minute load average"
        f" {report['load'][0]:.2f} at start, {report['load'][1]:.2f} at end;"
        f" median of {p['runs']} verified runs per engine, each a fresh process.",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, Python {m['python']}; "
        + ", ".join(f"{k} {val}" for k, val in v.items()),
        "",
        "| engine | runs ok | median wall s | min-max s | CPU s | server CPU s | proxy CPU s | peak RSS MiB"
        " | read MiB | written MiB | read % of input | written % of input | moved % of input | anchor ÷ engine |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    anchor_wall = summary["anchor"].get("wall_s")
    labels = {"streamfilter": "streamfilter", "anchor": "webdataset rewrite (anchor)",
              "copy-floor": "reference: CopyObject of the clean sets only"}  # fmt: skip
    for engine, label in labels.items():
        row = summary[engine]
        if "wall_s" not in row:
            lines.append(f"| {label} | {row['ok']}/{row['runs']} | failed | | | | | | | | | | | |")
            continue
        ratio = f"{anchor_wall / row['wall_s']:.1f}" if anchor_wall else "n/a"
        lines.append(
            f"| {label} | {row['ok']}/{row['runs']} | {row['wall_s']:.2f} | {row['wall_min']:.2f}-{row['wall_max']:.2f}"
            f" | {row['cpu_s']:.1f} | {row['server_cpu_s']:.1f} | {row['proxy_cpu_s']:.1f} | {row['peak_rss_mib']:.0f}"
            f" | {row['read_bytes'] / MIB:,.1f} | {row['written_bytes'] / MIB:,.1f} | {row['read_fraction']:.2%}"
            f" | {row['written_fraction']:.2%} | {row['moved_fraction']:.2%} | {ratio} |"
        )
    lines.append("")
    for t in report["targets"]:
        lines.append(f"- **{'PASS' if t['pass'] else 'FAIL'}** {t['name']}: {t['detail']}")
    floor = summary["copy-floor"]
    if "wall_s" in floor and anchor_wall:
        lines.append(
            f"- (context, not judged) the reference issues only the {floor.get('copies', '?')} CopyObjects of the"
            f" clean sets, 3 at a time, through the same proxy: {floor['wall_s']:.2f} s, with the server using"
            f" {floor['server_cpu_s']:.1f} s of CPU for them. An engine that server-copies the clean"
            f" sets at that concurrency on this endpoint is at most {anchor_wall / floor['wall_s']:.1f}x faster than"
            " the anchor."
        )
    sf = summary["streamfilter"]
    if "output_via" in sf:
        lines += [
            "",
            f"streamfilter's sets by `output_via`: {sf['output_via']}; its report's own bytes_read"
            f" {sf['sf_bytes_read'] / MIB:.1f} MiB, bytes_written {sf['sf_bytes_written'] / MIB:.1f} MiB"
            f" (written counts server-side copies too); clean tars byte-identical to their inputs:"
            f" {sf['identical_clean']} of {p['sets'] - len(d['hit_sets'])}.",
        ]
    said = next((r["sf_refusals"] for r in report["runs"] if r.get("sf_refusals")), [])
    if said:
        lines.append("streamfilter told the user: " + " / ".join(f"`{x[:240]}`" for x in said))
    failed = [r for r in report["runs"] if r.get("error")]
    for r in failed:
        lines.append(f"- run {r['engine']} {r['run']} failed: {r['error']}")
    lines += ["", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sets", type=int, default=64, help="img2dataset shard sets (default 64)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per engine (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed streamfilter runs first (default 1)")
    ap.add_argument("--results", default="img2dataset", help="results/NAME.md and .json (default img2dataset)")
    ap.add_argument("--streamfilter-args", default="", help="extra streamfilter flags, e.g. '--concurrency 4'")
    ap.add_argument("--timeout", type=float, default=900, help="a run is killed after this many seconds")
    ap.add_argument("--endpoint", default="s3rver", help="the S3 endpoint: " + ", ".join(ENDPOINTS))
    ap.add_argument(
        "--latency-ms", type=float, default=0.0, help="the proxy holds each request this long (a real round trip)"
    )
    ap.add_argument(
        "--data",
        help="folder for the generated sets, logs and the S3 server's store (default benchmarks/data/img2dataset): "
        "another run of this benchmark in the same folder at the same time clears this one's logs",
    )
    ap.add_argument("--child-anchor", metavar="JOB", help=argparse.SUPPRESS)
    ap.add_argument("--child-copy-floor", metavar="JOB", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    global DATA
    args = parse_args(argv)
    if args.data:
        DATA = Path(args.data).resolve()
    if args.child_anchor:
        # This script's directory holds benchmarks/webdataset.py, which would shadow the package.
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
        child_anchor(json.loads(Path(args.child_anchor).read_text()))
        return 0
    if args.child_copy_floor:
        child_copy_floor(json.loads(Path(args.child_copy_floor).read_text()))
        return 0
    if args.sets < HIT_SETS:
        raise SystemExit(f"--sets must be at least {HIT_SETS}")
    started = time.perf_counter()
    meta = generate(args.sets)
    print(f"{args.sets} sets, {meta['input_bytes'] / MIB:,.0f} MiB, {meta['listed']} listed urls in sets"
          f" {', '.join(meta['hit_sets'])}", flush=True)  # fmt: skip
    load_start = os.getloadavg()[0]
    bench = Bench(args, meta)
    try:
        print(
            f"uploaded to {args.endpoint} in {bench.upload():.1f} s; engines go through {bench.proxy.endpoint}",
            flush=True,
        )
        for i in range(args.warmup):
            bench.runs.append(bench.run_once("streamfilter", f"warmup{i}"))
        # Interleaved, so that load drifts on this shared machine hit both engines alike.
        for i in range(args.runs):
            for engine in ENGINES:
                bench.runs.append(bench.run_once(engine, i))
    finally:
        bench.close()
    summary = summarize(bench.runs, meta["input_bytes"])
    report = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "params": {
            "sets": args.sets,
            "runs": args.runs,
            "endpoint": args.endpoint,
            "latency_ms": args.latency_ms,
            "warmup": args.warmup,
            "streamfilter_args": args.streamfilter_args,
            "samples": SAMPLES,
            "jpg_mean": JPG_MEAN,
            "failed": FAILED,
            "keys": KEYS,
            "hit_sets": HIT_SETS,
            "seed": SEED,
        },
        "machine": machine(),
        "versions": versions(),
        "data": {k: meta[k] for k in ("hit_sets", "listed", "input_bytes", "tar_bytes", "min_tar_bytes")},
        "summary": summary,
        "load": [load_start, os.getloadavg()[0]],
        "targets": targets(summary),
        "runs": bench.runs,
        "notes": [
            *bench.notes,
            f"Bytes are counted at a TCP proxy in front of {args.endpoint} (HTTP framing included); server-side copies"
            " (CopyObject, UploadPartCopy) move no object bytes through it. 'moved' = read + written."
            + (
                f" The proxy holds each request {args.latency_ms:g} ms before passing it on (a real endpoint's round"
                " trip; loopback has none)."
                if args.latency_ms
                else ""
            ),
            "Peak RSS is ru_maxrss of the engine process (a small wrapper spawns it and waits for it).",
            "The server and the proxy share the 2 cores with the engine; their CPU seconds are given per run.",
            f"Total benchmark time {time.perf_counter() - started:.0f} s (generation, upload and checks included).",
        ],
    }
    RESULTS.mkdir(exist_ok=True)
    text = render(report)
    (RESULTS / f"{args.results}.md").write_text(text)
    (RESULTS / f"{args.results}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print()
    print(text)
    return 0 if all(t["pass"] for t in report["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
