"""`streamfilter diff`: the removal list against an independent anti-join (Python sets over pyarrow, DuckDB).

Every expected list, count and filtered output here is computed from the shards as
pyarrow reads them back (or by DuckDB), never by streamfilter's own key, hashing or
matching code. Each side has several shards with their own layout (column names,
row groups, compression), nulls, and duplicates within and across shards.
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import HTTP_TOKEN
from helpers import assert_same_table, files_under, put_table, read_parquet, s3_get, s3_keys, write_shard
from hub_standin import HubStandin
from test_hf import HF_TEST_TOKEN, hub  # noqa: F401  (the loopback Hub fixture)

from streamfilter import cli
from streamfilter.diff.removals import encode_removals
from streamfilter.diff.resolve import resolve_partition
from streamfilter.diff.spill import chunk_id
from streamfilter.errors import UsageError
from streamfilter.plan import Shard, worker_of

HOSTS = ("cdn.example.com", "img.photos.net", "static.pics.org", "media.site.io", "i0.wp.com")
TOKEN_VAR = "SF_DIFF_TEST_TOKEN"


def url_of(i: int) -> str:
    host = HOSTS[i % len(HOSTS)]
    return f"https://{host}/{(i * 7919) % 997:03d}/{i % 13}/image-{i:06d}.jpg?w={(i % 5 + 1) * 128}"


def caption_of(i: int) -> str:
    return f"a photo number {i} of {('a cat', 'a dog', 'the sea', 'a bridge')[i % 4]}"


# --------------------------------------------------------------------------- data


@dataclass
class Sides:
    """Shards of both sides on local disk, and how each side names its key."""

    reference: list[Path]
    derivative: list[Path]
    ref_col: str = "url"
    der_col: str = "URL"

    def args(self, out: Path | str, *extra: str) -> list[str]:
        argv = ["diff", "--out", str(out), "--key", self.der_col, "--reference-key", self.ref_col]
        for p in self.reference:
            argv += ["--reference", str(p)]
        for p in self.derivative:
            argv += ["--derivative", str(p)]
        return [*argv, *extra]


def _split(n: int, fractions: Sequence[float]) -> list[slice]:
    cuts = [0, *(int(n * f) for f in np.cumsum(fractions)[:-1]), n]
    return [slice(a, b) for a, b in itertools.pairwise(cuts)]


def make_sides(root: Path, seed: int = 0, universe: int = 4000) -> Sides:
    """A reference of 3 shards (``url``) and a derivative of 4 shards (``URL``) that share most keys.

    The reference lacks every 11th key of the universe and some more; the derivative holds
    a sample of the universe, keys of its own, nulls, and duplicates within and across shards
    (one absent key is planted in two shards).
    """
    rng = np.random.default_rng(seed)
    gone = {i for i in range(universe) if i % 11 == 3} | set(rng.choice(universe, 60, replace=False).tolist())
    ref_ids: list[int | None] = [i for i in range(universe) if i not in gone]
    ref_ids += rng.choice([i for i in ref_ids if i is not None], 45).tolist()  # duplicates
    ref_ids += [None] * 17
    rng.shuffle(ref_ids)  # type: ignore[arg-type]
    reference = []
    for n, (part, rg, codec) in enumerate(
        zip(_split(len(ref_ids), [0.4, 0.25, 0.35]), (700, 450, 1000), ("zstd", "snappy", "gzip"), strict=True)
    ):
        ids = ref_ids[part]
        table = pa.table(
            {
                "url": pa.array([None if i is None else url_of(i) for i in ids], pa.string()),
                "caption": [None if i is None else caption_of(i) for i in ids],
                "similarity": pa.array(rng.random(len(ids)), pa.float32()),
            }
        )
        reference.append(
            write_shard(root / "ref" / f"part-{n:05d}.parquet", table, row_group_size=rg, compression=codec)
        )

    der_ids: list[int | None] = rng.choice(universe, int(universe * 0.7), replace=False).tolist()
    der_ids += list(range(90_000, 90_150))  # only in the derivative
    der_ids += rng.choice([i for i in der_ids if i is not None], 70).tolist()  # duplicates, spread by the shuffle
    der_ids += [None] * 23
    rng.shuffle(der_ids)  # type: ignore[arg-type]
    planted = min(gone)
    parts = _split(len(der_ids), [0.3, 0.2, 0.2, 0.3])
    derivative = []
    start = 0
    for n, (part, rg) in enumerate(zip(parts, (300, 512, 250, 800), strict=True)):
        ids = der_ids[part] + ([planted] if n in (0, 2) else [])
        table = pa.table(
            {
                "id": pa.array(range(start, start + len(ids)), pa.int64()),
                "URL": pa.array([None if i is None else url_of(i) for i in ids], pa.string()),
                "TEXT": [None if i is None else caption_of(i) for i in ids],
                "WIDTH": pa.array([(0 if i is None else i) % 1024 for i in ids], pa.int32()),
            }
        )
        start += len(ids)
        derivative.append(write_shard(root / "der" / f"{n:03d}.parquet", table, row_group_size=rg))
    return Sides(reference, derivative)


# --------------------------------------------------------------------------- the independent reference


def column(files: Sequence[Path | bytes], name: str) -> list:
    return [v for f in files for v in read_parquet(f).column(name).to_pylist()]


def joined(files: Sequence[Path | bytes], names: Sequence[str], separator: str) -> list[str | None]:
    out: list[str | None] = []
    for f in files:
        table = read_parquet(f)
        cols = [table.column(c).to_pylist() for c in names]
        out += [None if any(v is None for v in row) else separator.join(row) for row in zip(*cols, strict=True)]
    return out


def absent(derivative: Sequence, reference: Sequence) -> list[str]:
    """Sorted distinct non-null derivative keys the reference lacks (Python sorts str by code point = UTF-8 order)."""
    ref = {v for v in reference if v is not None}
    return sorted({v for v in derivative if v is not None and v not in ref})


def counts(values: Sequence) -> dict[str, int]:
    present = [v for v in values if v is not None]
    distinct = len(set(present))
    return {"rows": len(present), "null_keys": len(values) - len(present), "distinct": distinct,
            "duplicates": len(present) - distinct}  # fmt: skip


def duckdb_absent(derivative: Sequence[Path], der_col: str, reference: Sequence[Path], ref_col: str) -> list[str]:
    files = lambda paths: "[" + ", ".join(f"'{p}'" for p in paths) + "]"  # noqa: E731
    sql = (
        f'SELECT DISTINCT d."{der_col}" AS k FROM read_parquet({files(derivative)}) d '
        f'ANTI JOIN read_parquet({files(reference)}) r ON d."{der_col}" = r."{ref_col}" '
        f'WHERE d."{der_col}" IS NOT NULL ORDER BY k'
    )
    return duckdb_rows(sql)


def duckdb_rows(sql: str) -> list:
    """The first column of a query's rows, on a connection of its own: duckdb.sql() would use the
    module's default connection, which another test may have left holding an unfinished result."""
    with duckdb.connect() as con:
        return [row[0] for row in con.sql(sql).fetchall()]


def duckdb_kept_ids(shard: Path, der_col: str, reference: Sequence[Path], ref_col: str) -> list[int]:
    """The row ids a correct filter keeps: a null key, or a key the reference holds."""
    refs = "[" + ", ".join(f"'{p}'" for p in reference) + "]"
    sql = (
        f"SELECT id FROM read_parquet('{shard}') d "
        f'WHERE d."{der_col}" IS NULL OR d."{der_col}" IN (SELECT "{ref_col}" FROM read_parquet({refs})) ORDER BY id'
    )
    return duckdb_rows(sql)


def read_list(path: Path | str, data: bytes | None = None) -> list:
    """The keys of a removal list, read with gzip/zstandard/pyarrow (not streamfilter's loader)."""
    name = str(path)
    data = Path(path).read_bytes() if data is None else data
    if name.endswith(".parquet"):
        table = read_parquet(data)
        assert table.column_names == ["key"]
        return table.column("key").to_pylist()
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    elif name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    text = data.decode("utf-8")
    assert text == "" or text.endswith("\n")
    return text.split("\n")[:-1]


# --------------------------------------------------------------------------- running it


def diff(argv: list[str]) -> int:
    assert argv[0] == "diff"
    return cli.main(argv)


def report_of(path: Path) -> dict:
    return json.loads(path.read_text())


def markers(spill: Path, side: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((spill / side / "chunks").glob("*.json"))}


def marker_stats(spill: Path, side: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((spill / side / "chunks").glob("*.json"))}


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("streamfilter: error: "), err
    return lines[0]


@pytest.fixture
def sides(tmp_path: Path) -> Sides:
    return make_sides(tmp_path / "data")


# --------------------------------------------------------------------------- 1. end to end, local


@pytest.mark.parametrize("name", ["removals.txt", "removals.txt.gz", "removals.txt.zst", "removals.parquet"])
def test_local_list_matches_anti_join_and_run_removes_exactly_those_rows(
    sides: Sides, tmp_path: Path, name: str, capsys
) -> None:
    out = tmp_path / name
    assert diff(sides.args(out, "--report", str(tmp_path / "report.json"))) == 0
    capsys.readouterr()

    der, ref = column(sides.derivative, "URL"), column(sides.reference, "url")
    expected = absent(der, ref)
    assert expected == duckdb_absent(sides.derivative, "URL", sides.reference, "url")
    assert 300 < len(expected) < len([v for v in der if v is not None])  # neither trivial nor everything
    assert read_list(out) == expected
    if name.endswith(".parquet"):
        table = pq.read_table(out)
        assert table.schema.field("key").type in (pa.string(), pa.large_string())
        metadata = json.loads(table.schema.metadata[b"streamfilter.diff"])
        listed = set(expected)
        assert metadata["removals"] == {"keys": len(expected), "rows": sum(v in listed for v in der)}
    elif name.endswith(".txt"):
        assert out.read_text() == "".join(f"{k}\n" for k in expected)

    filtered = tmp_path / "filtered"
    argv = ["run", *map(str, sides.derivative), "--output", str(filtered), "--blocklist", str(out), "--key", "URL"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert files_under(filtered) == [p.name for p in sides.derivative]
    for shard in sides.derivative:
        source = read_parquet(shard)
        kept = read_parquet(filtered / shard.name)
        hit = pc.fill_null(pc.is_in(source.column("URL"), value_set=pa.array(expected, pa.string())), False)
        assert_same_table(kept, source.filter(pc.invert(hit)))
        assert kept.column("id").to_pylist() == duckdb_kept_ids(shard, "URL", sides.reference, "url")


# --------------------------------------------------------------------------- 2. report counts


def test_report_counts_match_independent_counts(sides: Sides, tmp_path: Path, capsys) -> None:
    report_path = tmp_path / "report.json"
    assert diff(sides.args(tmp_path / "removals.txt", "--report", str(report_path))) == 0
    summary = capsys.readouterr().out
    report = report_of(report_path)

    der, ref = column(sides.derivative, "URL"), column(sides.reference, "url")
    expected = absent(der, ref)
    per_shard = [set(column([p], "URL")) - {None} for p in sides.derivative]
    across = {k for k in expected if sum(k in keys for keys in per_shard) > 1}
    assert across, "the data must hold a removal duplicated across derivative shards"
    assert counts(ref)["duplicates"] > 0 and counts(der)["duplicates"] > 0
    assert counts(ref)["null_keys"] > 0 and counts(der)["null_keys"] > 0

    for side, values, files in (("reference", ref, sides.reference), ("derivative", der, sides.derivative)):
        got = report[side]
        assert {k: got[k] for k in ("rows", "null_keys", "distinct", "duplicates")} == counts(values), side
        assert got["shards"] == len(files)
    listed = set(expected)
    removal_rows = sum(1 for v in der if v is not None and v in listed)
    assert removal_rows > len(expected)  # duplicated removals: rows outnumber keys
    assert report["removals"] == {"keys": len(expected), "rows": removal_rows}
    assert report["ok"] is True and report["phase"] == "all"
    assert report["shards_resumed"] == {"reference": 0, "derivative": 0}
    assert report["partitions_resumed"] == 0
    assert report["spill_bytes_written"] > 0
    assert report["comparison_bits"] == 128
    assert 0 <= report["collision_bound"] < 1e-25
    assert f"{len(expected):,} keys the reference lacks ({removal_rows:,} rows)" in summary


# --------------------------------------------------------------------------- 3. per-side key specs


def variant(canonical: str, how: int) -> str:
    """A spelling of ``canonical`` that URL normalization maps back to it."""
    scheme, rest = canonical.split("://", 1)
    host, path = rest.split("/", 1)
    return [
        f"{scheme}://{host.upper()}/{path}",
        f"{scheme}://{host}:443/{path}",
        f"{scheme}://{host}/{path}#frag-{len(path)}",
        f"{scheme.upper()}://{host.title()}:443/{path}#x",
    ][how % 4]


def test_normalize_url_on_both_sides_and_the_list_keeps_raw_keys(tmp_path: Path, capsys) -> None:
    ids = list(range(600))
    ref_ids = [i for i in ids if i % 7]  # the reference lacks every 7th
    # The reference holds canonical URLs; the derivative holds the same URLs spelt otherwise (and some canonical).
    write_shard(tmp_path / "ref" / "a.parquet", pa.table({"url": [url_of(i) for i in ref_ids[:250]]}))
    write_shard(
        tmp_path / "ref" / "b.parquet", pa.table({"url": [url_of(i) for i in ref_ids[250:]]}), row_group_size=90
    )
    spelt = {i: (url_of(i) if i % 5 == 0 else variant(url_of(i), i)) for i in ids}
    write_shard(
        tmp_path / "der" / "x.parquet", pa.table({"id": ids, "URL": [spelt[i] for i in ids]}), row_group_size=128
    )
    sides = Sides([tmp_path / "ref" / "a.parquet", tmp_path / "ref" / "b.parquet"], [tmp_path / "der" / "x.parquet"])

    assert diff(sides.args(tmp_path / "plain.txt")) == 0
    assert diff(sides.args(tmp_path / "norm.parquet", "--normalize", "url")) == 0
    capsys.readouterr()

    # Without normalization, every differently spelt key is missing; with it, only the truly absent ones.
    assert read_list(tmp_path / "plain.txt") == absent(list(spelt.values()), [url_of(i) for i in ref_ids])
    truly_absent = sorted(spelt[i] for i in ids if i % 7 == 0)  # raw derivative spellings
    assert read_list(tmp_path / "norm.parquet") == truly_absent
    assert any(k != url_of(int(k.split("image-")[1][:6])) for k in truly_absent)  # un-normalized keys listed

    # The list as `run --normalize url` applies it: exactly the absent rows go.
    argv = ["run", str(tmp_path / "der" / "x.parquet"), "--output", str(tmp_path / "out"),
            "--blocklist", str(tmp_path / "norm.parquet"), "--key", "URL", "--normalize", "url"]  # fmt: skip
    assert cli.main(argv) == 0
    assert read_parquet(tmp_path / "out" / "x.parquet").column("id").to_pylist() == [i for i in ids if i % 7]


def test_reference_normalize_only_on_the_reference_side(tmp_path: Path, capsys) -> None:
    ids = list(range(300))
    write_shard(tmp_path / "ref.parquet", pa.table({"url": [variant(url_of(i), i) for i in ids if i % 4]}))
    write_shard(tmp_path / "der.parquet", pa.table({"URL": [url_of(i) for i in ids]}))
    sides = Sides([tmp_path / "ref.parquet"], [tmp_path / "der.parquet"])
    assert diff(sides.args(tmp_path / "rm.txt", "--reference-normalize", "url")) == 0
    capsys.readouterr()
    assert read_list(tmp_path / "rm.txt") == sorted(url_of(i) for i in ids if i % 4 == 0)


def test_multi_column_key_with_separator(sides: Sides, tmp_path: Path, capsys) -> None:
    # The derivative's captions differ from the reference's for some rows: those rows' (url, caption) are absent.
    changed = []
    for n, path in enumerate(sides.derivative):
        table = read_parquet(path)
        text = [t if t is None or i % 9 else t + " (edited)" for i, t in enumerate(table.column("TEXT").to_pylist())]
        changed.append(write_shard(tmp_path / "der2" / f"{n}.parquet", table.set_column(2, "TEXT", pa.array(text))))
    multi = Sides(sides.reference, changed, ref_col="url,caption", der_col="URL,TEXT")
    assert diff(multi.args(tmp_path / "rm.parquet", "--key-separator", " | ")) == 0
    capsys.readouterr()

    expected = absent(joined(changed, ["URL", "TEXT"], " | "), joined(sides.reference, ["url", "caption"], " | "))
    url_only = absent(column(changed, "URL"), column(sides.reference, "url"))
    assert len(expected) > len(url_only)
    assert read_list(tmp_path / "rm.parquet") == expected

    argv = ["run", *map(str, changed), "--output", str(tmp_path / "out"), "--blocklist", str(tmp_path / "rm.parquet"),
            "--key", "URL,TEXT", "--key-separator", " | "]  # fmt: skip
    assert cli.main(argv) == 0
    for path in changed:
        keys = joined([path], ["URL", "TEXT"], " | ")
        keep = [i for i, k in enumerate(keys) if k is None or k not in set(expected)]
        source = read_parquet(path)
        assert_same_table(read_parquet(tmp_path / "out" / path.name), source.take(keep))


@pytest.mark.parametrize(
    "separator",
    ["", "|"],
)
def test_int64_hash_column_against_mmh3_64_of_the_reference(tmp_path: Path, separator: str, capsys) -> None:
    def laion_hash(url: str, caption: str) -> int:
        return mmh3.hash64((url + separator + caption).encode("utf-8"))[0]  # signed, as LAION stores it

    ids = list(range(2500))
    ref_ids = [i for i in ids if i % 6 != 1]
    ref_rows = [(url_of(i), caption_of(i)) for i in ref_ids] + [(None, "x"), (url_of(9999), None)]
    for n, part in enumerate((ref_rows[:1100], ref_rows[1100:])):
        urls, caps = zip(*part, strict=True)
        write_shard(tmp_path / "ref" / f"{n}.parquet", pa.table({"url": list(urls), "caption": list(caps)}),
                    row_group_size=400)  # fmt: skip
    der_ids = ids[::2] + ids[1::10]
    hashes = [laion_hash(url_of(i), caption_of(i)) for i in der_ids] + [None, None]
    assert any(h < 0 for h in hashes if h is not None) and any(h > 0 for h in hashes if h is not None)
    derivative = []
    for n, part in enumerate((slice(0, 700), slice(700, None))):
        table = pa.table({"row": list(range(len(hashes)))[part], "hash": pa.array(hashes[part], pa.int64())})
        derivative.append(write_shard(tmp_path / "der" / f"{n}.parquet", table, row_group_size=256))
    sides = Sides(sorted((tmp_path / "ref").glob("*.parquet")), derivative, ref_col="url,caption", der_col="hash")

    argv = sides.args(tmp_path / "rm.txt", "--reference-key-separator", separator, "--reference-key-hash", "mmh3_64")
    assert diff([*argv, "--report", str(tmp_path / "r.json")]) == 0
    err = capsys.readouterr().err
    assert "compared as 64-bit values" in err  # the weaker bound is said, not hidden
    assert report_of(tmp_path / "r.json")["comparison_bits"] == 64

    ref_hashes = {laion_hash(u, c) for u, c in ref_rows if u is not None and c is not None}
    expected = sorted({str(h) for h in hashes if h is not None and h not in ref_hashes})
    assert len(expected) == len({i for i in der_ids if i % 6 == 1})
    assert read_list(tmp_path / "rm.txt") == expected

    argv = ["run", *map(str, derivative), "--output", str(tmp_path / "out"), "--blocklist", str(tmp_path / "rm.txt"),
            "--key", "hash"]  # fmt: skip
    assert cli.main(argv) == 0
    kept = column([tmp_path / "out" / p.name for p in derivative], "row")
    assert kept == [r for r, h in enumerate(hashes) if h is None or h in ref_hashes]


# --------------------------------------------------------------------------- 4. memory and partitions


def test_partition_counts_and_rounds_give_the_same_list(tmp_path: Path, capsys) -> None:
    n = 30_000
    for s in range(2):
        write_shard(tmp_path / "ref" / f"{s}.parquet", pa.table({"url": [url_of(i) for i in range(s, 2 * n, 2)]}),
                    row_group_size=8000)  # fmt: skip
    rng = np.random.default_rng(5)
    der_ids = rng.choice(2 * n + 5000, 24_000, replace=False).tolist()
    for s, part in enumerate((der_ids[:11_000], der_ids[11_000:])):
        table = pa.table({"URL": [url_of(i) for i in part]})
        write_shard(tmp_path / "der" / f"{s}.parquet", table, row_group_size=5000)
    sides = Sides(sorted((tmp_path / "ref").glob("*.parquet")), sorted((tmp_path / "der").glob("*.parquet")))
    expected = sorted(url_of(i) for i in der_ids if i >= 2 * n)
    assert expected == absent(column(sides.derivative, "URL"), column(sides.reference, "url"))

    runs = {
        "default": [],
        "one": ["--partitions", "1"],
        "eight": ["--partitions", "8"],
        # 64 MiB over 16 partitions in flight: 4 MiB a partition, less than these 54,000 keys need.
        "rounds": ["--partitions", "1", "--memory-budget", "64MiB", "--concurrency", "16"],
    }
    reports = {}
    for name, extra in runs.items():
        out = tmp_path / f"{name}.txt"
        assert diff(sides.args(out, "--report", str(tmp_path / f"{name}.json"), *extra)) == 0, name
        assert read_list(out) == expected, name
        reports[name] = report_of(tmp_path / f"{name}.json")
    capsys.readouterr()

    assert reports["one"]["partitions"] == 1 and reports["one"]["resolve_rounds"] == 1
    assert reports["eight"]["partitions"] == 8
    spill8 = tmp_path / "eight.txt.spill"
    assert sorted(p.name for p in (spill8 / "results").glob("*.json")) == [f"p{p:05d}.json" for p in range(8)]
    assert sorted(p.name for p in (spill8 / "reference").glob("p*")) == [f"p{p:05d}" for p in range(8)]
    assert reports["rounds"]["partitions"] == 1 and reports["rounds"]["resolve_rounds"] > 1
    marker = json.loads((tmp_path / "rounds.txt.spill" / "results" / "p00000.json").read_text())
    assert marker["counts"]["rounds"] == reports["rounds"]["resolve_rounds"]
    for name in runs:
        assert reports[name]["removals"] == {"keys": len(expected), "rows": len(expected)}, name
        assert reports[name]["reference"]["rows"] == 2 * n and reports[name]["derivative"]["rows"] == 24_000

    # The resolve itself, in 1 and in 3 rounds over the same spill: the same removals and counts.
    spill = tmp_path / "one.txt.spill"
    files = {
        side: [e[0] for m in markers(spill, side).values() for e in json.loads(m)["files"]["0"]]
        for side in ("reference", "derivative")
    }
    get = lambda name: (spill / name).read_bytes()  # noqa: E731
    one, removals_one = resolve_partition(files["reference"], files["derivative"], get, rounds=1)
    three, removals_three = resolve_partition(files["reference"], files["derivative"], get, rounds=3)
    assert removals_three.equals(removals_one)
    # The removals are located by shard and row; the keys at those rows are the expected ones.
    assert removals_one.num_rows == len(expected)
    by_chunk = {chunk_id(str(p)): p for p in sides.derivative}
    found = []
    for chunk, row in zip(removals_one["chunk"].to_pylist(), removals_one["row"].to_pylist(), strict=True):
        found.append(pq.read_table(by_chunk[chunk], columns=["URL"]).column("URL")[row].as_py())
    assert sorted(found) == expected
    assert {**three.to_dict(), "rounds": 1} == one.to_dict() and three.rounds == 3


# --------------------------------------------------------------------------- 5. resume


def test_resume_rerun_changed_shard_deleted_list_and_overwrite(sides: Sides, tmp_path: Path, capsys) -> None:
    out, report_path = tmp_path / "removals.txt", tmp_path / "report.json"
    spill = tmp_path / "removals.txt.spill"
    argv = sides.args(out, "--report", str(report_path), "--partitions", "4")
    n_ref, n_der = len(sides.reference), len(sides.derivative)
    expected = absent(column(sides.derivative, "URL"), column(sides.reference, "url"))

    assert diff([*argv, "--phase", "partition"]) == 0
    assert "run --phase resolve next" in capsys.readouterr().out
    assert not out.exists()
    assert len(markers(spill, "reference")) == n_ref and len(markers(spill, "derivative")) == n_der

    assert diff(argv) == 0
    report = report_of(report_path)
    assert report["shards_resumed"] == {"reference": n_ref, "derivative": n_der}
    assert report["partitions_resumed"] == 0
    assert read_list(out) == expected
    first_bytes = out.read_bytes()

    # A second run: every shard and partition resumed, nothing spilled but the list rewritten identically.
    before = marker_stats(spill, "derivative")
    assert diff(argv) == 0
    report = report_of(report_path)
    assert report["shards_resumed"] == {"reference": n_ref, "derivative": n_der}
    assert report["partitions_resumed"] == 4
    assert out.read_bytes() == first_bytes
    assert marker_stats(spill, "derivative") == before

    # One derivative shard rewritten with other content: only it is spilled again.
    changed = sides.derivative[1]
    table = read_parquet(changed)
    fresh = pa.array([url_of(50_000 + i) for i in range(table.num_rows // 2)], pa.string())
    write_shard(changed, table.slice(0, len(fresh)).set_column(1, "URL", fresh), row_group_size=200)
    marks_before, stats_before = markers(spill, "derivative"), marker_stats(spill, "derivative")
    ref_before = marker_stats(spill, "reference")
    assert diff(argv) == 0
    report = report_of(report_path)
    assert report["shards_resumed"] == {"reference": n_ref, "derivative": n_der - 1}
    marks_after, stats_after = markers(spill, "derivative"), marker_stats(spill, "derivative")
    rewritten = {k for k in marks_after if marks_after[k] != marks_before[k] or stats_after[k] != stats_before[k]}
    assert len(rewritten) == 1
    assert marker_stats(spill, "reference") == ref_before
    new_expected = absent(column(sides.derivative, "URL"), column(sides.reference, "url"))
    assert new_expected != expected and set(fresh.to_pylist()) <= set(new_expected)
    assert read_list(out) == new_expected
    assert report["removals"]["keys"] == len(new_expected)

    # The list deleted: the rerun writes it again, byte for byte, from resumed partitions.
    kept = out.read_bytes()
    out.unlink()
    assert diff(argv) == 0
    assert out.read_bytes() == kept
    assert report_of(report_path)["partitions_resumed"] == 4

    # --overwrite redoes every step.
    assert diff([*argv, "--overwrite"]) == 0
    report = report_of(report_path)
    assert report["shards_resumed"] == {"reference": 0, "derivative": 0}
    assert report["partitions_resumed"] == 0
    assert marker_stats(spill, "reference") != ref_before
    assert out.read_bytes() == kept
    capsys.readouterr()


def fixed_url(i: int) -> str:
    return f"https://cdn.example.com/a/{i:06d}.jpg"


@pytest.mark.parametrize("side", ["reference", "derivative"])
def test_a_shard_rewritten_with_as_many_rows_is_resolved_again(tmp_path: Path, side: str, capsys) -> None:
    ref = write_shard(tmp_path / "ref.parquet", pa.table({"url": [fixed_url(i) for i in range(1000)]}))
    der_urls = [fixed_url(i) for i in range(900, 1100)]
    der = write_shard(tmp_path / "der.parquet", pa.table({"URL": der_urls}))
    argv = Sides([ref], [der]).args(tmp_path / "rm.txt", "--partitions", "1")
    assert diff(argv) == 0
    assert read_list(tmp_path / "rm.txt") == [fixed_url(i) for i in range(1000, 1100)]

    if side == "reference":  # as many rows, other keys: the reference now holds none of the derivative's
        write_shard(ref, pa.table({"url": [fixed_url(i) for i in range(5000, 6000)]}))
    else:  # one row of the derivative corrected to a key the reference holds
        der_urls[-1] = fixed_url(5)
        write_shard(der, pa.table({"URL": der_urls}))
    assert diff(argv) == 0
    capsys.readouterr()
    assert read_list(tmp_path / "rm.txt") == absent(column([der], "URL"), column([ref], "url"))


# --------------------------------------------------------------------------- 6. a failing shard


def test_a_corrupt_reference_shard_fails_alone_and_a_rerun_finishes(sides: Sides, tmp_path: Path, capsys) -> None:
    out, report_path, spill = tmp_path / "rm.parquet", tmp_path / "report.json", tmp_path / "rm.parquet.spill"
    bad = sides.reference[1]
    good = bad.read_bytes()
    bad.write_bytes(b"this is not a parquet file, only garbage\n" * 40)

    assert diff(sides.args(out, "--report", str(report_path))) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "diff incomplete" in err
    assert not out.exists()
    report = report_of(report_path)
    assert report["ok"] is False and len(report["failures"]) == 1 and str(bad) in report["failures"][0]
    assert len(markers(spill, "reference")) == len(sides.reference) - 1
    assert len(markers(spill, "derivative")) == len(sides.derivative)
    assert not (spill / "results").exists() or not list((spill / "results").iterdir())

    bad.write_bytes(good)
    assert diff(sides.args(out, "--report", str(report_path))) == 0
    capsys.readouterr()
    report = report_of(report_path)
    assert report["ok"] is True
    assert report["shards_resumed"] == {"reference": len(sides.reference) - 1, "derivative": len(sides.derivative)}
    assert read_list(out) == absent(column(sides.derivative, "URL"), column(sides.reference, "url"))


# --------------------------------------------------------------------------- 7. static workers


def owners(sides: Sides, num_workers: int) -> dict[Path, int]:
    """The worker of each input shard, as the product's assignment (``plan.worker_of``) gives it.

    It hashes the shard's URI, here an absolute path under pytest's temp dir: which worker gets
    which shard, and whether one gets them all, changes with where the suite runs.
    """
    return {p: worker_of(Shard(str(p), None, str(p)), num_workers) for p in [*sides.reference, *sides.derivative]}


def test_static_workers_phase_by_phase_give_the_single_run_list(sides: Sides, tmp_path: Path, capsys) -> None:
    assert diff(sides.args(tmp_path / "single.txt", "--partitions", "8")) == 0
    out = tmp_path / "workers.txt"
    spill = tmp_path / "workers.txt.spill"
    base = sides.args(out, "--partitions", "8", "--num-workers", "2")
    owner = owners(sides, 2)

    # Each worker spills its own share, as worker_of assigns it, and leaves the other's alone.
    assert diff([*base, "--phase", "partition", "--worker-index", "0"]) == 0
    first = {**marker_stats(spill, "reference"), **marker_stats(spill, "derivative")}
    assert set(first) == {f"{chunk_id(str(p))}.json" for p, w in owner.items() if w == 0}
    assert diff([*base, "--phase", "partition", "--worker-index", "1"]) == 0
    both = {**marker_stats(spill, "reference"), **marker_stats(spill, "derivative")}
    assert len(both) == len(sides.reference) + len(sides.derivative)
    assert {k: both[k] for k in first} == first

    assert diff([*base, "--phase", "resolve", "--worker-index", "0"]) == 0
    assert sorted(p.name for p in (spill / "results").glob("*.json")) == [f"p{p:05d}.json" for p in range(0, 8, 2)]
    assert diff([*base, "--phase", "resolve", "--worker-index", "1"]) == 0
    assert not out.exists()
    assert diff([*base, "--phase", "merge", "--report", str(tmp_path / "report.json")]) == 0
    capsys.readouterr()

    expected = absent(column(sides.derivative, "URL"), column(sides.reference, "url"))
    assert read_list(out) == expected
    assert out.read_bytes() == (tmp_path / "single.txt").read_bytes()
    report = report_of(tmp_path / "report.json")
    assert report["removals"]["keys"] == len(expected) and report["partitions"] == 8


def test_phase_all_with_several_workers_is_refused(sides: Sides, tmp_path: Path, capsys) -> None:
    assert diff(sides.args(tmp_path / "rm.txt", "--num-workers", "2")) == 2
    assert "--phase partition" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_resolve_before_any_partition_is_refused(sides: Sides, tmp_path: Path, capsys) -> None:
    assert diff(sides.args(tmp_path / "rm.txt", "--phase", "resolve")) == 2
    assert "run the partition phase first" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_resolve_before_every_worker_partitioned_is_refused(sides: Sides, tmp_path: Path, capsys) -> None:
    base = sides.args(tmp_path / "rm.txt", "--partitions", "8", "--num-workers", "2")
    # The worker with the smaller share partitions, so the other's shards (at least 4 of the 7) are
    # missing wherever the suite runs; the hash of the paths may give one worker all of them.
    shares = [sum(w == i for w in owners(sides, 2).values()) for i in (0, 1)]
    early = shares.index(min(shares))
    assert diff([*base, "--phase", "partition", "--worker-index", str(early)]) == 0
    capsys.readouterr()
    assert diff([*base, "--phase", "resolve", "--worker-index", str(1 - early)]) == 2
    assert "not spilled yet" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "rm.txt.spill" / "results").exists()


def test_a_worker_whose_share_is_empty_spills_nothing(tmp_path: Path, capsys) -> None:
    """Where the hash of the paths gives worker 0 every shard, worker 1 has nothing to partition."""
    root = next(
        tmp_path / f"d{i}"
        for i in range(10_000)
        if set(owners(make_sides_paths(tmp_path / f"d{i}"), 2).values()) == {0}
    )
    sides = make_sides(root)
    assert set(owners(sides, 2).values()) == {0}
    out, spill = tmp_path / "rm.txt", tmp_path / "rm.txt.spill"
    base = sides.args(out, "--partitions", "4", "--num-workers", "2")
    assert diff([*base, "--phase", "partition", "--worker-index", "1"]) == 0
    assert markers(spill, "reference") == {} and markers(spill, "derivative") == {}
    capsys.readouterr()
    assert diff([*base, "--phase", "resolve", "--worker-index", "1"]) == 2
    assert "not spilled yet" in one_error_line(capsys.readouterr().err)
    for phase, worker in (("partition", "0"), ("resolve", "0"), ("resolve", "1")):
        assert diff([*base, "--phase", phase, "--worker-index", worker]) == 0
    assert diff([*base, "--phase", "merge"]) == 0
    assert read_list(out) == absent(column(sides.derivative, "URL"), column(sides.reference, "url"))


def make_sides_paths(root: Path) -> Sides:
    """The paths ``make_sides(root)`` writes, without writing them."""
    return Sides(
        [root / "ref" / f"part-{n:05d}.parquet" for n in range(3)],
        [root / "der" / f"{n:03d}.parquet" for n in range(4)],
    )


def test_merge_before_every_partition_is_resolved_is_refused(sides: Sides, tmp_path: Path, capsys) -> None:
    base = sides.args(tmp_path / "rm.txt", "--partitions", "8", "--num-workers", "2")
    for phase, worker in (("partition", "0"), ("partition", "1"), ("resolve", "0")):
        assert diff([*base, "--phase", phase, "--worker-index", worker]) == 0
    capsys.readouterr()
    assert diff([*base, "--phase", "merge"]) == 2
    assert "not resolved yet" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "rm.txt").exists()


# --------------------------------------------------------------------------- 8. stores


def test_reference_and_spill_and_list_on_s3(
    s3_endpoint, s3_client, bucket, sides: Sides, tmp_path: Path, capsys
) -> None:
    for path in sides.reference:
        put_table(s3_client, bucket, f"relaion/{path.name}", read_parquet(path), row_group_size=600)
    argv = ["diff", "--reference", f"s3://{bucket}/relaion/*.parquet", "--key", "URL", "--reference-key", "url",
            "--out", f"s3://{bucket}/lists/removals.txt", "--spill", f"s3://{bucket}/spill/",
            "--report", f"s3://{bucket}/lists/report.json", "--s3-endpoint-url", s3_endpoint,
            "--partitions", "2"]  # fmt: skip
    for path in sides.derivative:
        argv += ["--derivative", str(path)]

    assert diff(argv) == 0
    capsys.readouterr()
    expected = absent(column(sides.derivative, "URL"), column(sides.reference, "url"))
    assert read_list("removals.txt", s3_get(s3_client, bucket, "lists/removals.txt")) == expected
    spilled = s3_keys(s3_client, bucket, "spill/")
    assert "spill/job.json" in spilled
    assert sum(k.startswith("spill/reference/chunks/") for k in spilled) == len(sides.reference)
    assert sum(k.startswith("spill/derivative/chunks/") for k in spilled) == len(sides.derivative)
    assert {k for k in spilled if k.startswith("spill/results/")} == {
        f"spill/results/p{p:05d}.{ext}" for p in range(2) for ext in ("arrow", "json")
    }
    assert not (tmp_path / "lists").exists()

    # Markers on S3 count on a rerun.
    assert diff(argv) == 0
    capsys.readouterr()
    report = json.loads(s3_get(s3_client, bucket, "lists/report.json"))
    assert report["shards_resumed"] == {"reference": len(sides.reference), "derivative": len(sides.derivative)}
    assert report["partitions_resumed"] == 2
    assert read_list("removals.txt", s3_get(s3_client, bucket, "lists/removals.txt")) == expected


def test_reference_over_http_with_a_bearer_token(
    http_server, sides: Sides, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    served, base = http_server.dir(private=True)
    for path in sides.reference:
        (served / path.name).write_bytes(path.read_bytes())
    monkeypatch.setenv(TOKEN_VAR, HTTP_TOKEN)
    argv = ["diff", "--key", "URL", "--reference-key", "url", "--out", str(tmp_path / "rm.parquet"),
            "--report", str(tmp_path / "report.json"),
            "--http-header", f"Authorization: Bearer ${TOKEN_VAR}"]  # fmt: skip
    argv += [x for p in sides.reference for x in ("--reference", base + p.name)]
    argv += [x for p in sides.derivative for x in ("--derivative", str(p))]

    assert diff(argv) == 0
    captured = capsys.readouterr()
    expected = absent(column(sides.derivative, "URL"), column(sides.reference, "url"))
    assert read_list(tmp_path / "rm.parquet") == expected
    report_text = (tmp_path / "report.json").read_text()
    assert json.loads(report_text)["reference"]["shards"] == len(sides.reference)
    spill_text = "".join(p.read_text() for p in (tmp_path / "rm.parquet.spill").rglob("*.json"))
    for text in (captured.out, captured.err, report_text, caplog.text, spill_text):
        assert HTTP_TOKEN not in text


def test_reference_over_http_without_the_token_is_refused(http_server, sides: Sides, tmp_path: Path, capsys) -> None:
    served, base = http_server.dir(private=True)
    (served / "ref.parquet").write_bytes(sides.reference[0].read_bytes())
    argv = ["diff", "--reference", base + "ref.parquet", "--derivative", str(sides.derivative[0]),
            "--key", "URL", "--reference-key", "url", "--out", str(tmp_path / "rm.txt")]  # fmt: skip
    assert diff(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--reference" in line and "401" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_reference_on_the_hub(hub: HubStandin, sides: Sides, tmp_path: Path, capsys) -> None:  # noqa: F811
    repo = tmp_path / "hub-repo"
    for path in sides.reference:
        write_shard(repo / "data" / path.name, read_parquet(path), row_group_size=500)
    (repo / "README.md").write_text("# relaion stand-in\n")
    hub.add_dataset("laion/relaion-diff", repo)
    argv = ["diff", "--reference", "hf://datasets/laion/relaion-diff/data/*.parquet", "--key", "URL",
            "--reference-key", "url", "--out", str(tmp_path / "rm.txt.gz"),
            "--report", str(tmp_path / "r.json")]  # fmt: skip
    argv += [x for p in sides.derivative for x in ("--derivative", str(p))]

    assert diff(argv) == 0
    captured = capsys.readouterr()
    assert read_list(tmp_path / "rm.txt.gz") == absent(column(sides.derivative, "URL"), column(sides.reference, "url"))
    report_text = (tmp_path / "r.json").read_text()
    assert json.loads(report_text)["reference"]["shards"] == len(sides.reference)
    for text in (captured.out, captured.err, report_text):
        assert HF_TEST_TOKEN not in text


# --------------------------------------------------------------------------- 9. usage errors


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--reference", "{data}/ref/part-00000.parquet", "--derivative", "{data}/der/000.parquet"], "--out"),
        (
            [
                "--reference",
                "{data}/ref/part-00000.parquet",
                "--derivative",
                "{data}/der/000.parquet",
                "--spill",
                "{tmp}/spill/",
            ],
            "--out",
        ),
        (
            ["--reference", "{data}/ref.jsonl", "--derivative", "{data}/der/000.parquet", "--out", "{tmp}/rm.txt"],
            "Parquet",
        ),
        (
            [
                "--reference",
                "{data}/ref/part-00000.parquet",
                "--derivative",
                "{data}/der/000.parquet",
                "--out",
                "{tmp}/rm.txt",
                "--partitions",
                "3",
            ],
            "power of two",
        ),
        (
            [
                "--reference",
                "{data}/ref/part-00000.parquet",
                "--derivative",
                "{data}/der/000.parquet",
                "--out",
                "{tmp}/rm.txt",
                "--memory-budget",
                "32MiB",
            ],
            "64 MiB",
        ),
        (["--derivative", "{data}/der/000.parquet", "--out", "{tmp}/rm.txt"], "--reference"),
    ],
)
def test_usage_errors_exit_2_with_one_line_and_write_nothing(
    sides: Sides, tmp_path: Path, argv: list[str], says: str, capsys
) -> None:
    (tmp_path / "data" / "ref.jsonl").write_text('{"url": "https://a.example/x"}\n')
    filled = [a.format(data=tmp_path / "data", tmp=tmp_path) for a in argv]
    before = sorted(p for p in tmp_path.rglob("*"))
    assert diff(["diff", *filled]) == 2
    captured = capsys.readouterr()
    assert says in one_error_line(captured.err)
    assert captured.out == ""
    assert sorted(p for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("flag", ["--concurrency", "--num-workers"])
def test_zero_concurrency_or_workers_is_refused(sides: Sides, tmp_path: Path, flag: str, capsys) -> None:
    assert diff(sides.args(tmp_path / "rm.txt", flag, "0")) == 2
    assert flag in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "rm.txt").exists()


UNSAFE_KEYS = ["https://a.example/line\nbreak.jpg", "https://a.example/trailing.jpg ", "#hash.jpg", ""]


def unsafe_sides(tmp_path: Path, bad: str) -> tuple[Sides, list[str]]:
    """A derivative whose absent keys include ``bad`` and two more that text cannot carry."""
    ref = write_shard(tmp_path / "ref.parquet", pa.table({"url": [url_of(i) for i in range(100)]}))
    der_urls = [url_of(i) for i in range(90, 120)] + [bad, " " + url_of(3), url_of(200) + "\r\n"]
    der = write_shard(tmp_path / "in" / "der.parquet", pa.table({"id": range(len(der_urls)), "URL": der_urls}))
    return Sides([ref], [der]), der_urls


@pytest.mark.parametrize("bad", UNSAFE_KEYS)
def test_text_list_refuses_keys_text_cannot_carry(tmp_path: Path, bad: str, capsys) -> None:
    sides, _ = unsafe_sides(tmp_path, bad)
    assert diff(sides.args(tmp_path / "rm.txt")) == 2
    err = capsys.readouterr().err
    message = [line for line in err.splitlines() if line.startswith("streamfilter: error:")]
    assert len(message) == 1 and ".parquet" in message[0]
    assert not (tmp_path / "rm.txt").exists()


@pytest.mark.parametrize("bad", UNSAFE_KEYS)
def test_parquet_list_carries_any_key_and_round_trips_through_run(tmp_path: Path, bad: str, capsys) -> None:
    sides, der_urls = unsafe_sides(tmp_path, bad)
    assert diff(sides.args(tmp_path / "rm.parquet")) == 0
    capsys.readouterr()
    expected = absent(der_urls, column(sides.reference, "url"))
    assert bad in expected and " " + url_of(3) in expected and url_of(200) + "\r\n" in expected
    assert read_list(tmp_path / "rm.parquet") == expected

    argv = ["run", str(sides.derivative[0]), "--output", str(tmp_path / "out"),
            "--blocklist", str(tmp_path / "rm.parquet"), "--key", "URL"]  # fmt: skip
    assert cli.main(argv) == 0
    capsys.readouterr()
    kept = read_parquet(tmp_path / "out" / "der.parquet").column("URL").to_pylist()
    assert kept == [u for u in der_urls if u not in set(expected)] == [url_of(i) for i in range(90, 100)]


#: Line breaks (all of str.splitlines'), surrounding whitespace, a leading '#', empty, not UTF-8.
TEXT_UNSAFE: list[str | bytes] = ["a\nb", "a\rb", "a\x0bb", "a\x0cb", "a\x1cb", "a\x1db", "a\x1eb", "a\x85b"]
TEXT_UNSAFE += ["a\u2028b", "a\u2029b", " a", "a ", "a\t", "\u3000a", "#a", "", b"\xff\xfe"]


@pytest.mark.parametrize("bad", TEXT_UNSAFE)
def test_the_text_encoder_refuses_what_the_text_loader_would_change(bad: str | bytes) -> None:
    """The refusal itself every key text cannot carry as it is."""
    keys = pa.array(["https://a.example/ok", bad], pa.large_binary() if isinstance(bad, bytes) else pa.large_string())
    with pytest.raises(UsageError, match=r"name a \.parquet file instead"):
        encode_removals(keys, "removals.txt", "spill/", {})


def test_the_text_encoder_keeps_keys_text_can_carry(tmp_path: Path, capsys) -> None:
    """Tabs, inner spaces, a '#' after the start and non-ASCII survive a text list and `run --blocklist` reads them."""
    keys = sorted(["a\tb", "a b", "x#y", "ü/é.jpg", "https://a.example/%20x?q=1&r=#frag"])
    for name in ("rm.txt", "rm.txt.gz", "rm.txt.zst"):
        data = encode_removals(pa.array(keys, pa.large_string()), name, "spill/", {})
        assert read_list(name, data) == keys
    (tmp_path / "rm.txt").write_bytes(encode_removals(pa.array(keys, pa.large_string()), "rm.txt", "spill/", {}))
    urls = [*keys, "kept", None]
    write_shard(tmp_path / "in" / "s.parquet", pa.table({"URL": urls}))
    argv = ["run", str(tmp_path / "in" / "s.parquet"), "--output", str(tmp_path / "out"),
            "--blocklist", str(tmp_path / "rm.txt"), "--key", "URL"]  # fmt: skip
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert read_parquet(tmp_path / "out" / "s.parquet").column("URL").to_pylist() == ["kept", None]


def test_binary_keys_and_empty_shards(tmp_path: Path, capsys) -> None:
    """Non-UTF-8 keys go to a binary Parquet list that `run` applies; shards without rows count as shards."""
    ref = write_shard(tmp_path / "ref" / "a.parquet", pa.table({"url": [url_of(i) for i in range(100)]}))
    ref_empty = write_shard(tmp_path / "ref" / "b.parquet", pa.table({"url": pa.array([], pa.string())}))
    der_keys = [url_of(i).encode() for i in range(90, 110)] + [b"\xff\xfe not utf-8", None]
    der = write_shard(tmp_path / "der" / "a.parquet", pa.table({"URL": pa.array(der_keys, pa.binary())}))
    der_empty = write_shard(tmp_path / "der" / "b.parquet", pa.table({"URL": pa.array([], pa.binary())}))
    sides = Sides([ref, ref_empty], [der, der_empty])
    assert diff(sides.args(tmp_path / "rm.parquet", "--report", str(tmp_path / "r.json"))) == 0
    capsys.readouterr()

    ref_bytes = [u.encode() for u in column([ref], "url")]
    expected = absent(der_keys, ref_bytes)  # bytes sort bytewise, as the list does
    assert b"\xff\xfe not utf-8" in expected
    assert read_list(tmp_path / "rm.parquet") == expected
    report = report_of(tmp_path / "r.json")
    assert report["reference"]["shards"] == 2 and report["derivative"]["shards"] == 2
    assert {k: report["derivative"][k] for k in ("rows", "null_keys", "distinct", "duplicates")} == counts(der_keys)

    argv = ["run", str(der), "--output", str(tmp_path / "out"), "--blocklist", str(tmp_path / "rm.parquet"),
            "--key", "URL"]  # fmt: skip
    assert cli.main(argv) == 0
    capsys.readouterr()
    kept = read_parquet(tmp_path / "out" / "a.parquet").column("URL").to_pylist()
    assert kept == [k for k in der_keys if k is None or k not in set(expected)]


def test_changed_partitions_or_key_spec_on_the_same_spill_redo_the_work(sides: Sides, tmp_path: Path, capsys) -> None:
    """Markers of another partition count or key spec are ignored; the partition count is kept in job.json."""
    out, report_path = tmp_path / "rm.txt", tmp_path / "r.json"
    argv = sides.args(out, "--report", str(report_path))
    expected = absent(column(sides.derivative, "URL"), column(sides.reference, "url"))
    shards = {"reference": len(sides.reference), "derivative": len(sides.derivative)}
    nothing = {"reference": 0, "derivative": 0}

    for extra, resumed, partitions in (
        (["--partitions", "4"], nothing, 4),
        (["--partitions", "2"], nothing, 2),  # another count: every shard spilled again
        ([], shards, 2),  # none given: job.json's count, and the markers of that count
        (["--normalize", "strip"], nothing, 2),  # another key spec: spilled again
    ):
        assert diff([*argv, *extra]) == 0, extra
        report = report_of(report_path)
        assert (report["shards_resumed"], report["partitions"]) == (resumed, partitions), extra
        assert read_list(out) == expected, extra
    assert json.loads((tmp_path / "rm.txt.spill" / "job.json").read_text())["partitions"] == 2
    capsys.readouterr()


# --------------------------------------------------------------------------- 10. Ray


def test_ray_executor_gives_the_local_list(sides: Sides, tmp_path: Path, capsys) -> None:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray is already running in this process")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        report_path = tmp_path / "report.json"
        assert diff(sides.args(tmp_path / "rm.txt", "--executor", "ray", "--partitions", "2",
                               "--report", str(report_path))) == 0  # fmt: skip
    finally:
        ray.shutdown()
    capsys.readouterr()
    expected = absent(column(sides.derivative, "URL"), column(sides.reference, "url"))
    assert read_list(tmp_path / "rm.txt") == expected
    report = report_of(report_path)
    assert report["removals"]["keys"] == len(expected)
    assert report["derivative"]["rows"] == counts(column(sides.derivative, "URL"))["rows"]
    assert report["spill_bytes_written"] > 0


# --------------------------------------------------------------------------- 11. nothing to remove


@pytest.mark.parametrize("name", ["rm.txt", "rm.parquet"])
def test_derivative_inside_the_reference_gives_an_empty_list(sides: Sides, tmp_path: Path, name: str, capsys) -> None:
    ref_urls = set(column(sides.reference, "url")) - {None}
    inside = []
    for path in sides.derivative:
        table = read_parquet(path)
        keep = pc.or_kleene(pc.is_null(table.column("URL")), pc.is_in(table.column("URL"), pa.array(sorted(ref_urls))))
        inside.append(write_shard(tmp_path / "inside" / path.name, table.filter(keep), row_group_size=200))
    empty = Sides(sides.reference, inside)
    assert diff(empty.args(tmp_path / name, "--report", str(tmp_path / "r.json"))) == 0
    capsys.readouterr()
    if name.endswith(".parquet"):
        table = pq.read_table(tmp_path / name)
        assert table.num_rows == 0 and table.column_names == ["key"]
    else:
        assert (tmp_path / name).read_bytes() == b""
    assert report_of(tmp_path / "r.json")["removals"] == {"keys": 0, "rows": 0}


def test_distinct_pairs_is_exact_on_ties_of_the_first_half() -> None:
    """Few values, so first halves repeat with equal and with different second halves: compared with a set."""
    from streamfilter.diff.resolve import distinct_pairs

    rng = np.random.default_rng(11)
    for _ in range(300):
        n = int(rng.integers(0, 80))
        hi = rng.integers(0, 7, n).astype(np.uint64)
        lo = rng.integers(0, 5, n).astype(np.uint64)
        assert distinct_pairs(hi, lo) == len(set(zip(hi.tolist(), lo.tolist(), strict=True)))


def test_a_toml_config_supplies_options_and_flags_win(sides: Sides, tmp_path: Path, capsys) -> None:
    config = tmp_path / "diff.toml"
    references = ", ".join(f'"{p}"' for p in sides.reference)
    derivatives = ", ".join(f'"{p}"' for p in sides.derivative)
    config.write_text(
        f'reference = [{references}]\nderivative = [{derivatives}]\nreference_key = "url"\nkey = "URL"\n'
        f'out = "{tmp_path / "from-config.txt"}"\npartitions = 4\n'
    )
    assert diff(["diff", "--config", str(config), "--out", str(tmp_path / "flag.txt")]) == 0
    capsys.readouterr()
    assert not (tmp_path / "from-config.txt").exists()
    assert read_list(tmp_path / "flag.txt") == absent(column(sides.derivative, "URL"), column(sides.reference, "url"))
    assert json.loads((tmp_path / "flag.txt.spill" / "job.json").read_text())["partitions"] == 4

    config.write_text(config.read_text() + 'memory_limit = "1GiB"\n')
    assert diff(["diff", "--config", str(config)]) == 2
    assert "unknown option 'memory_limit'" in one_error_line(capsys.readouterr().err)


def test_progress_draws_one_live_line_per_phase_and_logs_steps_otherwise() -> None:
    import io

    from streamfilter.diff.progress import DiffProgress

    live = DiffProgress(io.StringIO(), live=True)
    live.start("partition", 2)
    live.add_keys(1_500_000)
    live.step("a.parquet", "done")
    live.step("b.parquet", "corrupt", failed=True)
    live.close()
    text = live.stream.getvalue()
    assert "\r\033[Kdiff partition: 2/2 (1 failed) | 1.5 M keys" in text
    assert "failed b.parquet: corrupt\n" in text and text.endswith("\n")

    logged = DiffProgress(io.StringIO(), live=False)
    logged.start("resolve", 1)
    logged.step("partition 0", "3 removals")
    logged.close()
    assert logged.stream.getvalue() == "diff resolve: 1 to do\ndone partition 0: 3 removals (1/1 resolve)\n"


def _kill_when(proc: subprocess.Popen, ready: Callable[[], int], total: int) -> int:
    """SIGKILL ``proc`` as soon as ``ready()`` (markers written) is positive; returns it at the kill."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        done = ready()
        if done:
            proc.kill()
            proc.wait(timeout=30)
            return done
        time.sleep(0.002)
    proc.kill()
    proc.wait(timeout=30)
    raise AssertionError(f"the diff ended (rc {proc.returncode}) before any of {total} markers was seen")


def test_a_killed_diff_resumes_to_the_same_list(tmp_path: Path, capsys) -> None:
    """SIGKILL in the partition phase, then in the resolve phase: each rerun finishes what was not done."""
    ids = np.arange(600_000)
    urls = pc.binary_join_element_wise("https://k.example/", pa.array(ids).cast(pa.string()), ".jpg", "")
    ref_dir, der_dir = tmp_path / "ref", tmp_path / "der"
    ref_dir.mkdir(), der_dir.mkdir()
    reference = urls.filter(pa.array(ids % 97 != 5))  # lacks every 97th
    for n in range(40):
        pq.write_table(pa.table({"url": reference[n::40]}), ref_dir / f"{n:02d}.parquet")
    for n in range(10):
        pq.write_table(pa.table({"URL": urls[n * 20_000 : (n + 1) * 20_000]}), der_dir / f"{n:02d}.parquet")
    expected = sorted(u for i, u in enumerate(urls[:200_000].to_pylist()) if i % 97 == 5)
    spill = tmp_path / "spill"
    argv = ["diff", "--reference", f"{ref_dir}/*.parquet", "--reference-key", "url", "--derivative",
            f"{der_dir}/*.parquet", "--key", "URL", "--out", str(tmp_path / "rm.txt"), "--spill", str(spill),
            "--concurrency", "1", "--partitions", "64"]  # fmt: skip

    def start(*extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "streamfilter.cli", *argv, *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def spilled() -> int:
        return len(list((spill / "reference" / "chunks").glob("*.json")))

    at_kill = _kill_when(start("--phase", "partition"), spilled, 40)
    assert 0 < at_kill < 40 and not (tmp_path / "rm.txt").exists()
    assert diff([*argv, "--phase", "partition", "--report", str(tmp_path / "p.json")]) == 0
    assert report_of(tmp_path / "p.json")["shards_resumed"]["reference"] >= at_kill

    def resolved() -> int:
        return len(list((spill / "results").glob("*.json")))

    at_kill = _kill_when(start("--phase", "resolve"), resolved, 64)
    assert 0 < at_kill < 64
    assert diff([*argv, "--report", str(tmp_path / "all.json")]) == 0
    capsys.readouterr()
    report = report_of(tmp_path / "all.json")
    assert report["shards_resumed"] == {"reference": 40, "derivative": 10}
    assert report["partitions_resumed"] >= at_kill
    assert read_list(tmp_path / "rm.txt") == expected


def test_a_derivative_shard_changed_after_the_spill_is_refused_at_the_merge(tmp_path: Path, capsys) -> None:
    """The list names the keys at the spilled rows: a shard that no longer holds them there fails the merge.

    The shard is rewritten with two rows swapped, the same size and mtime, so nothing but its content
    tells it from the spilled version.
    """
    urls = [f"https://s.example/{i:06d}.jpg" for i in range(2000)]  # all of one length
    write_shard(tmp_path / "ref" / "0.parquet", pa.table({"url": urls[100:]}))
    der = tmp_path / "der" / "0.parquet"
    options = {"compression": "none", "use_dictionary": False, "write_statistics": False}
    write_shard(der, pa.table({"URL": urls}), **options)
    argv = ["diff", "--reference", str(tmp_path / "ref" / "0.parquet"), "--reference-key", "url",
            "--derivative", str(der), "--key", "URL", "--out", str(tmp_path / "rm.txt")]  # fmt: skip
    assert diff([*argv, "--phase", "partition"]) == 0 and diff([*argv, "--phase", "resolve"]) == 0
    stat = der.stat()
    swapped = urls[1000:1001] + urls[1:1000] + urls[:1] + urls[1001:]  # row 0, a removal, now holds a kept key
    write_shard(der, pa.table({"URL": swapped}), **options)
    os.utime(der, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert der.stat().st_size == stat.st_size
    capsys.readouterr()
    assert diff([*argv, "--phase", "merge"]) == 1
    assert "changed since the diff spilled it" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "rm.txt").exists()
