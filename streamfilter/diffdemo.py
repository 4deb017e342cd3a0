"""The worked example of ``streamfilter diff``: an original, a cleaned reference, a derivative, and the check.

- ``original/``: LAION-style shards (``url``, ``caption``, ...), several million rows.
- ``reference/``: the original without a known set of rows (2,236 of them, as many as
  Re-LAION-5B removed), re-sharded, and with some of the rows it keeps spelled
  differently but equivalently (``:443`` added, a ``#fragment`` appended), as a
  re-crawl or another tool might have written them.
- ``derivative/``: built from the original with its own columns (``URL``, ``TEXT``, ...)
  and shard layout: 80% of the original's rows plus every removed one.
- ``expected-removals.txt``: the known set, for the check.

The diff with URL normalization on both sides finds exactly the known set; without
it, the respelled rows would be reported too, which is why ``--normalize url`` exists.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .demo import laion_table
from .errors import UsageError

REMOVED = 2_236
#: Fewest rows of the original: it must hold the removed rows and leave a reference and a derivative
#: of some size beside them.
MIN_ROWS = 10_000


def _respell(urls: pa.Array, rng: np.random.Generator) -> pa.Array:
    """Equivalent spellings: the default port made explicit for half, a fragment for the other half."""
    port = pc.replace_substring_regex(urls, r"^(https://[^/]+)/", r"\1:443/")
    fragment = pc.binary_join_element_wise(urls, "#top", "")
    return pc.if_else(pa.array(rng.random(len(urls)) < 0.5), port, fragment)


def write_diff_demo(root: Path, rows: int = 3_000_000, seed: int = 7) -> dict[str, int]:
    """Write the three datasets and the expected removals under ``root``; returns their sizes.

    Memory grows with ``rows``: the original is built whole (3,000,000 rows peak at about 1.7 GiB).
    """
    if rows < MIN_ROWS:
        raise UsageError(f"{rows:,} rows are too few: the diff demo needs at least {MIN_ROWS:,}")
    rng = np.random.default_rng(seed)
    original = laion_table(rows, seed=seed)
    pq.write_table(original, _fresh(root / "original") / "part-00000.parquet", row_group_size=250_000)
    removed = np.zeros(rows, dtype=bool)
    removed[rng.choice(rows, REMOVED, replace=False)] = True
    respelled = ~removed & (rng.random(rows) < 0.002)

    reference = original.filter(pa.array(~removed)).select(["url", "caption", "similarity"])
    kept_respelled = pa.array(respelled[~removed])
    url = reference.column("url").combine_chunks()
    new_url = pc.if_else(kept_respelled, _respell(url, rng), url)
    reference = reference.set_column(0, "url", new_url)
    _write_shards(reference, _fresh(root / "reference"), shards=4, row_group_size=200_000)

    in_derivative = removed | (rng.random(rows) < 0.8)
    derivative = original.filter(pa.array(in_derivative))
    derivative = pa.table(
        {
            "URL": derivative.column("url"),
            "TEXT": derivative.column("caption"),
            "similarity": derivative.column("similarity"),
            "punsafe": derivative.column("punsafe"),
        }
    )
    _write_shards(derivative, _fresh(root / "derivative"), shards=7, row_group_size=100_000)

    known = sorted(original.column("url").filter(pa.array(removed)).to_pylist())
    (root / "expected-removals.txt").write_text("".join(f"{u}\n" for u in known), encoding="utf-8")
    return {
        "original": rows,
        "reference": reference.num_rows,
        "respelled": int(respelled.sum()),
        "derivative": derivative.num_rows,
        "removed": REMOVED,
    }


def _fresh(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.parquet"):
        old.unlink()
    return directory


def _write_shards(table: pa.Table, directory: Path, shards: int, row_group_size: int) -> None:
    per = -(-table.num_rows // shards)
    for i in range(shards):
        part = table.slice(i * per, per)
        pq.write_table(part, directory / f"{i:05d}.parquet", row_group_size=row_group_size, compression="zstd")


def run_diff_demo(directory: str, rows: int) -> int:
    """Write the data, diff, remove, and check both steps with pyarrow; exit code 0 when both are exact."""
    from . import run
    from .diff import build_diff_spec, diff
    from .diff.progress import DiffProgress

    root = Path(directory)
    sizes = write_diff_demo(root, rows)
    print(
        f"wrote under {root}/: original {sizes['original']:,} rows; reference {sizes['reference']:,} rows "
        f"(lacks {sizes['removed']:,}, {sizes['respelled']:,} respelled); derivative {sizes['derivative']:,} rows"
    )
    removals = root / "removals.parquet"
    options = {
        "reference": [f"{root}/reference/*.parquet"], "reference_key": "url", "reference_normalize": "url",
        "derivative": [f"{root}/derivative/*.parquet"], "key": "URL", "normalize": "url",
        "out": str(removals), "spill": f"{root}/spill/", "report": f"{root}/diff-report.json", "overwrite": True,
    }  # fmt: skip
    report = diff(build_diff_spec(options), DiffProgress(io.StringIO(), live=False))
    found = pq.read_table(removals).column("key").to_pylist()
    expected = (root / "expected-removals.txt").read_text(encoding="utf-8").splitlines()
    print(f"diff: {report['removals']['keys']:,} keys the reference lacks; expected {len(expected):,}: "
          f"{'exactly those' if found == expected else 'MISMATCH'}")  # fmt: skip
    result = run(
        [f"{root}/derivative/*.parquet"], output=str(root / "clean"), blocklist=[str(removals)], key="URL", quiet=True
    )
    print(result.summary())
    left = pq.read_table(root / "clean", columns=["URL"]).column("URL")
    remaining = pc.sum(pc.is_in(left, value_set=pa.array(expected))).as_py() or 0
    rows_ok = len(left) == sizes["derivative"] - len(expected)
    print(f"checked with pyarrow: {remaining} removed URLs remain, {len(left):,} rows kept")
    print(f"removal list: {removals}\ndiff report: {root / 'diff-report.json'}\ncleaned shards: {root / 'clean'}/")
    return 0 if found == expected and remaining == 0 and rows_ok and result.ok else 1
