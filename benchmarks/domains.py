"""Benchmark domain: and prefix: rules: URLs matched per second on one thread against 1 M domain entries.

    python benchmarks/domains.py                       # 1 M domains, 2 M URLs, 5 runs
    python benchmarks/domains.py --domains 100000 --urls 500000 --json results/domains.json

Generated data: ``--domains`` registrable domains (``site<i>.<tld>`` over 8 suffixes, some of
them two-label like co.uk), and ``--urls`` LAION-like URLs (https, 0-2 subdomain labels, a
path, a query on a third of them, userinfo and a port on 0.5%, a non-ASCII host on ``--idn``
(0.5%) of them: those take the Arrow path and a Python IDNA conversion) whose host
is under a listed domain for ``--hits`` of them (1% by default) and under an unlisted one
otherwise. The set is built once (its time and the table's size are reported); then each
run matches every URL in batches of ``--batch`` (what a pipeline hands a key set), on one
thread. A URL's rate is given per CPU-second (``time.thread_time``) as well as per wall
second, since the machine may be shared; the median of ``--runs`` runs is reported.

Also measured, the same way: the Arrow extraction of hosts alone (the path taken by
non-ASCII and IPv6 hosts, and the reference for the compiled path), 100 URL prefixes, and the
whole RuleKeySet.classify (exact keys + domains + prefixes) that a run's filter calls.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamfilter.sets.domains import DomainSet
from streamfilter.sets.exact import ExactKeySet
from streamfilter.sets.hosts import url_hosts
from streamfilter.sets.rules import RuleEntries, rule_key_set

SUFFIXES = ["com", "org", "net", "de", "co.uk", "com.au", "fr", "io"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--domains", type=int, default=1_000_000, help="domain entries (default 1M)")
    p.add_argument("--urls", type=int, default=2_000_000, help="URLs per run (default 2M)")
    p.add_argument("--hits", type=float, default=0.01, help="share of URLs under a listed domain (default 0.01)")
    p.add_argument("--idn", type=float, default=0.005, help="share of URLs with a non-ASCII host (default 0.005)")
    p.add_argument("--batch", type=int, default=65_536, help="URLs per contains() call")
    p.add_argument("--runs", type=int, default=5, help="timed runs; the median is reported")
    p.add_argument("--json", type=Path, default=None, help="also write every figure here")
    return p.parse_args(argv)


def domains(n: int) -> pa.Array:
    ids = np.arange(n)
    names = [f"site{i}.{SUFFIXES[i % len(SUFFIXES)]}" for i in ids]
    return pa.array(names, pa.large_string())


def urls(n: int, n_domains: int, hits: float, idn: float, seed: int = 0) -> pa.Array:
    rng = np.random.default_rng(seed)
    listed = rng.random(n) < hits
    site = np.where(listed, rng.integers(0, n_domains, n), rng.integers(n_domains, 50 * n_domains, n))
    sub = rng.choice(["", "www.", "img.", "cdn.static."], n, p=[0.4, 0.3, 0.2, 0.1])
    rare = rng.random(n)
    out = []
    for i in range(n):
        host = f"{sub[i]}site{site[i]}.{SUFFIXES[site[i] % len(SUFFIXES)]}"
        if rare[i] < idn:
            host = "bücher." + host
        elif rare[i] < idn + 0.005:
            host = f"user@{host}:8443"
        query = f"?w={i % 1000}" if i % 3 == 0 else ""
        out.append(f"https://{host}/images/{i % 9973}/photo_{i}.jpg{query}")
    return pa.array(out, pa.large_string())


def rate(fn: Callable[[pa.Array], object], values: pa.Array, batch: int, runs: int) -> dict:
    """Median URLs per CPU-second and per wall second over ``runs`` runs of ``fn`` over every batch."""
    chunks = [values.slice(i, batch) for i in range(0, len(values), batch)]
    fn(chunks[0])  # compile (or load) the kernels outside the timing
    cpu, wall = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.thread_time()
        for chunk in chunks:
            fn(chunk)
        cpu.append(len(values) / (time.thread_time() - c0) / 1e6)
        wall.append(len(values) / (time.perf_counter() - t0) / 1e6)
    return {"m_per_cpu_s": round(statistics.median(cpu), 2), "m_per_wall_s": round(statistics.median(wall), 2),
            "runs_cpu": [round(x, 2) for x in cpu]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    entries = domains(args.domains)
    started = time.perf_counter()
    domain_set = DomainSet(entries)
    build_s = time.perf_counter() - started
    table_mib = (domain_set.table.slots.nbytes + domain_set.table.data.nbytes + domain_set.table.offsets.nbytes) / 2**20
    values = urls(args.urls, args.domains, args.hits, args.idn)
    found = domain_set.contains_urls(values)
    exact = ExactKeySet(values.filter(pa.array(np.arange(len(values)) % 1000 == 0)))
    prefixes = pa.array([f"https://site{i}.com/images/{i}/" for i in range(0, 800, 8)], pa.large_string())
    rules = rule_key_set(exact, RuleEntries([entries], [prefixes]))
    figures = {
        "domains": args.domains,
        "urls": args.urls,
        "idn_share": args.idn,
        "hit_share": round(float(found.mean()), 4),
        "build_s": round(build_s, 2),
        "table_mib": round(table_mib, 1),
        "domain_match": rate(domain_set.contains_urls, values, args.batch, args.runs),
        "arrow_hosts_only": rate(url_hosts, values, args.batch, max(1, args.runs // 2)),
        "prefixes_100": rate(rules.prefixes.contains, values, args.batch, args.runs),
        "classify_exact_domain_prefix": rate(rules.classify, values, args.batch, args.runs),
        "machine": f"{platform.machine()}, {platform.python_version()}, pyarrow {pa.__version__}",
    }
    assert pc.sum(pa.array(found)).as_py() > 0
    print(f"{args.domains:,} domains: set built in {figures['build_s']} s, {figures['table_mib']} MiB")
    print(f"{args.urls:,} URLs, {figures['hit_share']:.2%} under a listed domain, {args.idn:.1%} IDN hosts")
    print("| operation | M URLs per CPU-second (median) | M URLs/s wall (median) |")
    print("| --- | ---: | ---: |")
    for name in ("domain_match", "arrow_hosts_only", "prefixes_100", "classify_exact_domain_prefix"):
        f = figures[name]
        print(f"| {name} | {f['m_per_cpu_s']} | {f['m_per_wall_s']} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
