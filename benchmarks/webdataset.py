"""WebDataset benchmark: streamfilter on img2dataset-style tars against a raw copy of the same bytes.

    python benchmarks/webdataset.py                       # two shard sizes, ~2.2 GB each, 3 runs
    python benchmarks/webdataset.py --json results/wds.json
    python benchmarks/webdataset.py --samples 2000 --runs 1   # a smoke run

For each layout (the same ~2.2 GB cut into small or large shards) it generates tar
shards once under ``data/wds/`` (``{key}.jpg`` with incompressible payloads whose
sizes follow a log-normal around 24 KB, ``{key}.json`` with ``url``/``caption``/``key``,
``{key}.txt``; written with Python's tarfile) and a blocklist naming every 100th
sample's url (1%). Then, interleaved, ``--runs`` times each:

- the baseline: every shard copied file to file with ``shutil.copyfileobj`` (8 MiB
  buffer) and fsynced, one after another — the machine's raw read+write rate for
  these bytes (streamfilter fsyncs its outputs too);
- streamfilter: ``streamfilter.run(shards, output=..., blocklist=...)`` at its default
  concurrency, in a fresh child process (``--child``), timed around the call.

Both read inputs that are warm in the page cache. Reported: medians of MB/s (input
bytes / wall seconds), streamfilter's ratio to the baseline, and streamfilter's
peak RSS: ``ru_maxrss`` of the child from ``wait4`` (exact; the harness stays small,
because Linux carries the high-water mark across exec) and the largest RSS psutil
saw polling it every 10 ms. Every run's report must show exactly the expected
samples removed, and the first run's first output shard is listed with tarfile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "wds"
EVERY = 100  # one sample in 100 is listed
TARGET = 0.80


def generate(directory: Path, shards: int, samples: int, seed: int) -> dict:
    """Write the shards and the blocklist (in a child: the harness must stay small)."""
    import io
    import random
    import tarfile

    import numpy as np

    meta_path = directory / "meta.json"
    params = {"shards": shards, "samples": samples, "seed": seed, "version": 1}
    if meta_path.exists() and json.loads(meta_path.read_text()).get("params") == params:
        return json.loads(meta_path.read_text())
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    pool = rng.bytes(16 * 1024 * 1024)
    words = ["a", "photo", "of", "the", "dog", "cat", "red", "house", "beach", "city", "night", "vintage"]
    picker = random.Random(seed)
    listed, total = [], 0
    for s in range(shards):
        path = directory / f"{s:05d}.tar"
        sizes = np.clip(rng.lognormal(np.log(24_000), 0.6, samples), 1_000, 1_000_000).astype(int)
        offsets = rng.integers(0, len(pool) - 1_000_000, samples)
        with tarfile.open(path, "w") as tf:
            for i in range(samples):
                key = f"{s * samples + i:09d}"
                url = f"https://img{picker.randrange(10)}.example.com/{key}/{picker.getrandbits(64):x}.jpg"
                if (s * samples + i) % EVERY == 7:
                    listed.append(url)
                caption = " ".join(picker.choices(words, k=8))
                meta = {"url": url, "caption": caption, "key": key, "status": "success", "width": 256}
                for ext, data in (
                    ("jpg", pool[offsets[i] : offsets[i] + sizes[i]]),
                    ("json", json.dumps(meta).encode()),
                    ("txt", caption.encode()),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 1_650_000_000 + i, 0o644
                    tf.addfile(info, io.BytesIO(data))
        total += path.stat().st_size
    (directory / "blocklist.txt").write_text("\n".join(listed) + "\n")
    meta = {"params": params, "bytes": total, "samples": shards * samples, "removed": len(listed)}
    meta_path.write_text(json.dumps(meta))
    return meta


def copy_baseline(shards: list[Path], out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for src in shards:
        with open(src, "rb") as fin, open(out / src.name, "wb") as fout:
            shutil.copyfileobj(fin, fout, 8 * 1024 * 1024)
            fout.flush()
            os.fsync(fout.fileno())
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    return seconds


def child(job_path: str) -> None:
    import streamfilter

    job = json.loads(Path(job_path).read_text())
    start = time.perf_counter()
    report = streamfilter.run(job["inputs"], output=job["output"], blocklist=[job["blocklist"]], quiet=True)
    seconds = time.perf_counter() - start
    errors = [s.error for s in report.shards if s.status != "done"]
    print(json.dumps({"seconds": seconds, "totals": report.totals, "errors": errors}))


def run_streamfilter(shards: list[Path], out: Path, blocklist: Path) -> dict:
    job = out.parent / f"{out.name}.job.json"
    job.write_text(json.dumps({"inputs": [str(p) for p in shards], "output": str(out), "blocklist": str(blocklist)}))
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(job)], stdout=subprocess.PIPE, text=True)
    sampled = [0]
    done = threading.Event()

    def poll() -> None:
        ps = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                sampled[0] = max(sampled[0], ps.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.01)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    stdout = proc.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    poller.join()
    job.unlink()
    if status != 0:
        raise SystemExit(f"streamfilter child failed with status {status}")
    result = json.loads(stdout)
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    result["psutil_rss_mib"] = sampled[0] / 2**20
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    return result


def check_first_output(src: Path, out: Path, blocklist: Path) -> None:
    """Member names of one output shard against tarfile's listing of the input minus the listed samples."""
    import tarfile

    listed = set(blocklist.read_text().split())
    with tarfile.open(src) as tf:
        members = tf.getmembers()
        dropped = {
            m.name.split(".")[0]
            for m in members
            if m.name.endswith(".json") and json.load(tf.extractfile(m))["url"] in listed
        }
    expected = [m.name for m in members if m.name.split(".")[0] not in dropped]
    with tarfile.open(out) as tf:
        assert tf.getnames() == expected, f"{out}: members differ from the reference"


def measure(name: str, shards: int, samples: int, runs: int, seed: int) -> dict:
    directory = DATA / name
    subprocess.run(
        [sys.executable, __file__, "--generate", str(directory), str(shards), str(samples), str(seed)], check=True
    )
    meta = json.loads((directory / "meta.json").read_text())
    inputs = sorted(directory.glob("*.tar"))
    blocklist = directory / "blocklist.txt"
    baseline, sf = [], []
    for run in range(runs):
        baseline.append(copy_baseline(inputs, DATA / "out-copy"))
        out = DATA / f"out-sf-{name}"
        shutil.rmtree(out, ignore_errors=True)
        result = run_streamfilter(inputs, out, blocklist)
        if result["errors"] or result["totals"]["rows_removed"] != meta["removed"]:
            raise SystemExit(f"{name}: wrong result {result}")
        if run == 0:
            check_first_output(inputs[0], out / inputs[0].name, blocklist)
        shutil.rmtree(out)
        sf.append(result)
        print(
            f"  {name} run {run + 1}: copy {meta['bytes'] / baseline[-1] / 1e6:.0f} MB/s, "
            f"streamfilter {meta['bytes'] / result['seconds'] / 1e6:.0f} MB/s, "
            f"peak RSS {result['peak_rss_mib']:.0f} MiB",
            file=sys.stderr,
        )
    copy_s = statistics.median(baseline)
    sf_s = statistics.median(r["seconds"] for r in sf)
    return {
        "layout": name,
        "shards": shards,
        "samples_per_shard": samples,
        "bytes": meta["bytes"],
        "samples_removed": meta["removed"],
        "copy_seconds": baseline,
        "streamfilter_seconds": [r["seconds"] for r in sf],
        "copy_mb_s": meta["bytes"] / copy_s / 1e6,
        "streamfilter_mb_s": meta["bytes"] / sf_s / 1e6,
        "ratio": copy_s / sf_s,
        "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in sf),
        "psutil_rss_mib": statistics.median(r["psutil_rss_mib"] for r in sf),
        "cpu_seconds": statistics.median(r["cpu_seconds"] for r in sf),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| layout | shards x MB | total GB | copy MB/s | streamfilter MB/s | ratio | CPU s | peak RSS MiB (psutil) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['layout']} | {r['shards']} x {r['bytes'] / r['shards'] / 1e6:.0f} | {r['bytes'] / 1e9:.2f} "
            f"| {r['copy_mb_s']:.0f} | {r['streamfilter_mb_s']:.0f} | {r['ratio']:.2f} | {r['cpu_seconds']:.1f} "
            f"| {r['peak_rss_mib']:.0f} ({r['psutil_rss_mib']:.0f}) |"
        )
    worst = min(r["ratio"] for r in rows)
    growth = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    lines.append("")
    lines.append(f"- **{'PASS' if worst >= TARGET else 'FAIL'}** throughput >= {TARGET:.0%} of the copy: {worst:.0%}")
    lines.append(
        f"- peak RSS, large shards / small shards: {growth:.2f}x "
        f"({rows[-1]['samples_per_shard'] // rows[0]['samples_per_shard']}x the shard size)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=80_000, help="samples per layout (about 29 KB each)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--generate", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    if args.generate:
        directory, shards, samples, seed = args.generate
        generate(Path(directory), int(shards), int(samples), int(seed))
        return None
    layouts = [("small-shards", 16), ("large-shards", 4)]
    rows = [measure(name, n, args.samples // n, args.runs, args.seed) for name, n in layouts]
    print(table(rows))
    machine = {"cpus": os.cpu_count(), "load": os.getloadavg(), "python": sys.version.split()[0]}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine, "layouts": rows}, indent=1))
    return None


if __name__ == "__main__":
    main()
