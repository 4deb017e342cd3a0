"""Images by perceptual hash (issue 19, part 2): PDQ throughput end to end, and where the time goes.

- end to end: ``--sets`` img2dataset shard sets of ``--images`` 256-pixel JPEGs each (quality 95,
  img2dataset's defaults), matched with ``--image-hash pdq`` against a list of ``--list-size``
  hashes (random ones, plus re-encoded copies of 2 images of 2 sets: a sparse hit list), local disk,
  the median of ``--runs`` runs in fresh processes. Target: >= 300 images/s per core, i.e.
  per CPU-second of the whole process (start-up and the list's index included).
- breakdown, in this process on 500 of the images: decoding (Pillow), hashing (pdqhash) and the
  lookup (the Hamming index against the same list), per image; and the index's build time.

Usage: python benchmarks/pdq.py [--sets 8] [--images 500] [--list-size 1000000] [--runs 3]
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
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from harness import ENV_AT_START, measure

from streamfilter.demo import photo as natural

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data" / "pdq"
RESULTS = HERE / "results"
TARGET_PER_CORE = 300.0
HIT_SETS = (1, 5)


def jpeg(image: Any, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def generate(root: Path, sets: int, images: int) -> None:
    """img2dataset-shaped sets under ``root/in`` (kept between runs of the same size)."""
    marker = root / "done.json"
    wanted = {"sets": sets, "images": images, "version": 1}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return
    shutil.rmtree(root, ignore_errors=True)
    (root / "in").mkdir(parents=True)
    for s in range(sets):
        stem = f"{s:05d}"
        keys, urls = [], []
        with tarfile.open(root / "in" / f"{stem}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
            for i in range(images):
                key = f"{stem}{i:04d}"
                url = f"https://example.com/{key}.jpg"
                meta = json.dumps({"url": url, "key": key, "status": "success"}).encode()
                for name, body in ((f"{key}.jpg", jpeg(natural(s * images + i), 95)), (f"{key}.json", meta),
                                   (f"{key}.txt", b"a caption")):  # fmt: skip
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime = len(body), 1_650_000_000
                    tar.addfile(info, io.BytesIO(body))
                keys.append(key)
                urls.append(url)
        n = len(keys)
        table = pa.table({"url": urls, "caption": ["a caption"] * n, "key": keys, "status": ["success"] * n,
                          "error_message": pa.nulls(n, pa.string())})  # fmt: skip
        pq.write_table(table, root / "in" / f"{stem}.parquet")
        stats = {"count": n, "successes": n, "failed_to_download": 0, "failed_to_resize": 0,
                 "status_dict": {"success": n}}  # fmt: skip
        (root / "in" / f"{stem}_stats.json").write_text(json.dumps(stats, indent=4) + "\n")
    marker.write_text(json.dumps(wanted))


def hash_list(root: Path, images: int, size: int) -> tuple[Path, int]:
    """Random hashes plus the reference hashes of re-encoded copies of 2 images in each hit set."""
    import pdqhash
    from PIL import Image

    path = root / f"list_{size}.txt"
    listed = []
    for s in HIT_SETS:
        for i in (7, images // 2):
            copy = Image.open(io.BytesIO(jpeg(natural(s * images + i), 80))).convert("RGB")
            bits, _ = pdqhash.compute(np.asarray(copy))
            listed.append(np.packbits(np.asarray(bits, np.uint8)).tobytes().hex())
    if not path.exists():
        rng = np.random.default_rng(19)
        random = rng.integers(0, 256, (size - len(listed), 32), dtype=np.uint8)
        text = "\n".join(listed) + "\n" + "\n".join(bytes(r).hex() for r in random) + "\n"
        path.write_text(text)
    return path, len(listed)


def breakdown(root: Path, list_path: Path, sample: int = 500) -> dict[str, float]:
    """Per image: decode, hash and lookup times (CPU, this process), and the index's build."""
    import pdqhash
    from PIL import Image

    from streamfilter.image_hash import decode
    from streamfilter.sets.perceptual import PdqKeySet, parse_hex

    datas = []
    with tarfile.open(root / "in" / "00000.tar") as tar:
        for member in tar:
            if member.name.endswith(".jpg") and len(datas) < sample:
                datas.append(tar.extractfile(member).read())  # type: ignore[union-attr]
    assert Image is not None
    t = time.process_time()
    pixels = [decode(d) for d in datas]
    decode_ms = (time.process_time() - t) / len(datas) * 1e3
    t = time.process_time()
    hashes = np.array([np.packbits(np.asarray(pdqhash.compute(p)[0], np.uint8)) for p in pixels])
    hash_ms = (time.process_time() - t) / len(datas) * 1e3
    entries = pa.array(list_path.read_text().split())
    t = time.process_time()
    index = PdqKeySet(parse_hex(entries, str))
    build_s = time.process_time() - t
    index.distances(hashes[:2])  # numba compiles (or loads its cache) once
    t = time.process_time()
    index.distances(hashes)
    lookup_ms = (time.process_time() - t) / len(datas) * 1e3
    return {"decode_ms": decode_ms, "hash_ms": hash_ms, "lookup_ms": lookup_ms, "index_build_s": build_s,
            "list_size": index.size}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=8)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--list-size", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    generate(DATA, args.sets, args.images)
    list_path, hits = hash_list(DATA, args.images, args.list_size)
    env = {**ENV_AT_START, "PYTHONPATH": str(REPO)}
    inputs = str(DATA / "in" / f"{{00000..{args.sets - 1:05d}}}.tar")
    results = []
    for run in range(args.runs):
        out = DATA / "out"
        shutil.rmtree(out, ignore_errors=True)
        report = DATA / "report.json"
        cmd = [sys.executable, "-m", "streamfilter.cli", "run", inputs, "--format", "img2dataset", "--image-hash",
               "pdq", "--blocklist", str(list_path), "--output", str(out), "--report", str(report)]  # fmt: skip
        load = os.getloadavg()[0]
        measured = measure(cmd, env, DATA / f"run{run}", timeout=1800, cwd=REPO)
        assert measured["returncode"] == 0, measured["stderr_tail"]
        totals = json.loads(report.read_text())["totals"]
        assert totals["images"]["matched"] == hits and totals["rows_removed"] == hits, totals
        measured.update(load=load, images=totals["images"]["hashed"])
        results.append(measured)
        print(f"run {run}: {measured['wall_s']:.2f} s wall, {measured['cpu_s']:.2f} CPU s, "
              f"{measured['peak_rss_mib']:.0f} MiB, load {load:.1f}", flush=True)  # fmt: skip
    images = results[0]["images"]
    wall = statistics.median(r["wall_s"] for r in results)
    cpu = statistics.median(r["cpu_s"] for r in results)
    parts = breakdown(DATA, list_path)
    per_core = images / cpu
    summary = {
        "sets": args.sets, "images": images, "list_size": parts["list_size"], "median_wall_s": wall,
        "median_cpu_s": cpu, "images_per_s": images / wall, "images_per_cpu_s": per_core,
        "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in results), "loads": [r["load"] for r in results],
        **parts, "target_per_core": TARGET_PER_CORE, "met": per_core >= TARGET_PER_CORE,
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
        .stdout.strip(),
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pdq.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    verdict = "PASS" if summary["met"] else "FAIL"
    print(f"{verdict} >= {TARGET_PER_CORE:.0f} images/s per core: {per_core:.0f} images per CPU-second "
          f"({images / wall:.0f} images/s wall on {os.cpu_count()} cores)")  # fmt: skip


if __name__ == "__main__":
    main()
