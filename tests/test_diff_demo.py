"""`streamfilter demo --diff`: the README's worked example runs; its outcome is checked against the data."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from streamfilter import cli


def test_the_worked_example_finds_exactly_the_known_rows_and_run_removes_them(tmp_path: Path, capsys) -> None:
    root = tmp_path / "demo"
    assert cli.main(["demo", "--diff", str(root), "--rows", "120000"]) == 0
    out = capsys.readouterr().out
    assert "2,236 keys the reference lacks; expected 2,236: exactly those" in out

    # The truth, from the data itself rather than from the diff: what the derivative has and the
    # reference lacks once both are compared by URL. Respelled URLs are in the reference, so the
    # truth without normalization is larger by the respelled rows that the derivative holds.
    expected = (root / "expected-removals.txt").read_text(encoding="utf-8").splitlines()
    assert len(expected) == 2236
    reference = set(ds.dataset(root / "reference").to_table(columns=["url"]).column("url").to_pylist())
    derivative = ds.dataset(root / "derivative").to_table(columns=["URL"]).column("URL").to_pylist()
    assert sorted(set(expected)) == expected and set(expected) <= set(derivative)
    assert not set(expected) & reference
    respelled_in_derivative = {u for u in derivative if u not in reference} - set(expected)
    assert respelled_in_derivative, "the example must exercise URL normalization"

    assert pq.read_table(root / "removals.parquet").column("key").to_pylist() == expected
    clean = ds.dataset(root / "clean").to_table(columns=["URL"]).column("URL")
    assert len(clean) == len(derivative) - len(expected)
    assert not set(clean.to_pylist()) & set(expected)

    report = json.loads((root / "diff-report.json").read_text())
    assert report["removals"] == {"keys": 2236, "rows": 2236}
    assert report["reference"]["rows"] == len(reference) and report["derivative"]["rows"] == len(derivative)
