"""The run report's JSON is built a shard at a time; its text must be what ``json.dumps`` of the whole
report gives (the standard library is the reference), for a real run's mix of shards and for none."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from helpers import sample, shard_table, write_list, write_shard

import streamfilter
from streamfilter.ledger import Report


def reference_text(report: Report) -> str:
    return json.dumps(asdict(report), indent=2, ensure_ascii=False) + "\n"


def test_report_text_is_the_whole_reports_json(tmp_path: Path) -> None:
    tables = [shard_table(300, start=i * 300, seed=91) for i in range(3)]
    for i, table in enumerate(tables):
        write_shard(tmp_path / "in" / f"café-{i}.parquet", table)
    (tmp_path / "in" / "café-9.parquet").write_bytes(b"PAR1 not parquet at all PAR1")  # fails alone
    listed = sample(tables[0]["url"], 7) + sample(tables[2]["url"], 3)
    blocklist = write_list(tmp_path / "list.txt", [*listed, "domain:nowhere.example"])

    report = streamfilter.run(
        str(tmp_path / "in" / "*.parquet"),
        output=str(tmp_path / "out"),
        blocklist=[str(blocklist)],
        report=str(tmp_path / "report.json"),
        quiet=True,
    )

    statuses = sorted(s.status for s in report.shards)
    assert statuses == ["done", "done", "done", "failed"]
    assert any(s.removed_by for s in report.shards)  # nested dicts in the shards, and non-ASCII names
    assert report.to_json() == reference_text(report)
    assert (tmp_path / "report.json").read_text(encoding="utf-8") == reference_text(report)


def test_report_text_without_shards() -> None:
    report = Report(
        shards=[], key_spec={"columns": ["url"]}, set_digest="d", set_size=0, mode="remove", dry_run=True,
        seconds=0.5, version="0",
    )  # fmt: skip
    assert report.to_json() == reference_text(report)
    assert json.loads(report.to_json())["shards"] == []
