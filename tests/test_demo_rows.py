"""`streamfilter demo --diff --rows N`: a count too small for the example is a usage error of one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamfilter import cli
from streamfilter.diffdemo import MIN_ROWS


@pytest.mark.parametrize("rows", ["0", "10", str(MIN_ROWS - 1), "-5", "many"])
def test_too_few_or_no_rows_is_refused_in_one_line(tmp_path: Path, rows: str, capsys) -> None:
    assert cli.main(["demo", "--diff", str(tmp_path / "demo"), "--rows", rows]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("streamfilter: error: argument --rows: ") and "Traceback" not in err
    assert not (tmp_path / "demo").exists()


def test_the_smallest_count_runs_and_says_where_its_results_are(tmp_path: Path, capsys) -> None:
    root = tmp_path / "demo"
    assert cli.main(["demo", "--diff", str(root), "--rows", f"{MIN_ROWS:,}"]) == 0
    out = capsys.readouterr().out
    assert "2,236 keys the reference lacks; expected 2,236: exactly those" in out
    said = dict(line.split(": ", 1) for line in out.splitlines()[-3:])
    assert said == {
        "removal list": str(root / "removals.parquet"),
        "diff report": str(root / "diff-report.json"),
        "cleaned shards": f"{root / 'clean'}/",
    }
    assert (root / "removals.parquet").is_file() and (root / "diff-report.json").is_file()
    assert sorted(p.name for p in (root / "clean").glob("*.parquet")) == [f"{i:05d}.parquet" for i in range(7)]


def test_the_help_says_what_the_default_costs(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default 3,000,000" in help_text and "1.7 GiB of memory" in help_text
