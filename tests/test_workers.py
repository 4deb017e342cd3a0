"""Static sharding over workers: every shard processed exactly once, whatever the listing order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import (
    assert_same_table,
    files_under,
    parquet_bytes,
    read_parquet,
    reference_filter,
    s3_get,
    sample,
    sha256_tree,
    shard_table,
    write_list,
    write_shard,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfilter import cli
from streamfilter.plan import Shard, worker_share

names = st.lists(st.from_regex(r"[a-z0-9/_\-]{1,30}\.parquet", fullmatch=True), unique=True, max_size=60)


@settings(max_examples=200, deadline=None)
@given(names=names, num_workers=st.integers(1, 17), seed=st.randoms())
def test_every_shard_has_exactly_one_worker_in_any_order(names: list[str], num_workers: int, seed) -> None:
    shards = [Shard(f"s3://bucket/{n}", f"s3://bucket/out/{n}", n) for n in names]
    shares = [worker_share(shards, num_workers, i) for i in range(num_workers)]
    assigned = [s.input for share in shares for s in share]
    assert sorted(assigned) == sorted(s.input for s in shards)  # each exactly once

    shuffled = list(shards)
    seed.shuffle(shuffled)
    reshares = [worker_share(shuffled, num_workers, i) for i in range(num_workers)]
    assert [{s.input for s in share} for share in reshares] == [{s.input for s in share} for share in shares]


def test_two_worker_processes_write_what_one_writes(tmp_path: Path) -> None:
    # Shards go to workers by a hash of their path, and this test's directory is random: with 9 shards,
    # 1 run in 256 would give one worker nothing. The 9 paths are chosen so that each worker has some.
    paths: list[Path] = []
    for i in range(64):
        path = tmp_path / "in" / f"{i:05d}.parquet"
        owners = {len(worker_share([Shard(str(p), None, p.name) for p in [*paths, path]], 2, w)) > 0 for w in (0, 1)}
        if len(paths) < 8 or owners == {True}:
            paths.append(path)
        if len(paths) == 9:
            break
    for i, path in enumerate(paths):
        write_shard(path, shard_table(600, start=i * 600, seed=71), row_group_size=200)
    listed = [f"https://cdn.example.com/photos/{i}.jpg" for i in range(0, 5400, 7)]
    blocklist = write_list(tmp_path / "list.txt", listed)
    base = [sys.executable, "-m", "streamfilter.cli", "run", str(tmp_path / "in" / "*.parquet"), "--blocklist",
            str(blocklist)]  # fmt: skip

    # Each worker learns its index as a pod of an Indexed Job would: from JOB_COMPLETION_INDEX.
    procs = [
        subprocess.Popen(
            [*base, "--output", str(tmp_path / "pair"), "--num-workers", "2"],
            env={**os.environ, "JOB_COMPLETION_INDEX": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    outcomes = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outcomes
    assert cli.main(["run", str(tmp_path / "in" / "*.parquet"), "--blocklist", str(blocklist),
                     "--output", str(tmp_path / "single")]) == 0  # fmt: skip

    single = {k: v for k, v in sha256_tree(tmp_path / "single").items() if not k.startswith("_streamfilter")}
    pair = {k: v for k, v in sha256_tree(tmp_path / "pair").items() if not k.startswith("_streamfilter")}
    assert pair == single and len(single) == 9
    done = [out.decode().strip().split(" shards done")[0] for out, _ in outcomes]
    counts = sorted(int(d.split("/")[0]) for d in done)
    assert sum(counts) == 9 and counts[0] > 0  # both workers did a share
    # 9 outputs, 9 receipts and one report per worker.
    assert len(files_under(tmp_path / "pair", receipts=True)) == 9 + 9 + 2


def test_worker_index_out_of_range_is_a_usage_error(tmp_path: Path, capsys) -> None:
    write_shard(tmp_path / "in" / "a.parquet", shard_table(10, seed=72))
    argv = ["run", str(tmp_path / "in" / "a.parquet"), "--blocklist", str(write_list(tmp_path / "l.txt", ["x"])),
            "--output", str(tmp_path / "out"), "--num-workers", "2", "--worker-index", "2"]  # fmt: skip
    assert cli.main(argv) == 2
    assert "--worker-index 2 with --num-workers 2" in capsys.readouterr().err


def test_report_merges_workers_and_names_what_is_missing(tmp_path: Path, capsys) -> None:
    for i in range(6):
        write_shard(tmp_path / "in" / f"{i:05d}.parquet", shard_table(300, start=i * 300, seed=73))
    (tmp_path / "in" / "00003.parquet").write_bytes(b"corrupt, not parquet")
    blocklist = write_list(tmp_path / "list.txt", ["https://nothing.example/x.jpg"])
    inputs = str(tmp_path / "in" / "*.parquet")
    out = str(tmp_path / "out")

    def worker(index: int) -> int:
        return cli.main(["run", inputs, "--blocklist", str(blocklist), "--output", out, "--num-workers", "3",
                         "--worker-index", str(index)])  # fmt: skip

    codes = [worker(0), worker(1)]  # worker 2 never ran
    capsys.readouterr()
    assert cli.main(["report", out, inputs, "--report", str(tmp_path / "merged.json")]) == 1
    captured = capsys.readouterr()
    merged = json.loads((tmp_path / "merged.json").read_text())

    shares = [worker_share(plan_names(tmp_path), 3, i) for i in range(3)]
    owner = {s.name: i for i, share in enumerate(shares) for s in share}
    expected_failed = ["00003.parquet"] if owner["00003.parquet"] in (0, 1) else []
    expected_not_done = sorted(n for n, i in owner.items() if i == 2)
    assert codes == [1 if owner["00003.parquet"] == i else 0 for i in range(2)]
    assert [f["shard"] for f in merged["failed"]] == expected_failed
    assert merged["not_done"] == expected_not_done
    assert merged["done"] == sorted(set(owner) - set(expected_failed) - set(expected_not_done))
    assert merged["totals"]["workers_reporting"] == 2 and merged["complete"] is False
    assert (
        f"{len(merged['done'])} done, {len(expected_failed)} failed, {len(expected_not_done)} not done" in captured.out
    )
    for name in expected_not_done:
        assert f"not done {name}" in captured.err

    # The missing worker runs, the corrupt shard is replaced: the job is complete.
    write_shard(tmp_path / "in" / "00003.parquet", shard_table(300, start=900, seed=73))
    assert worker(owner["00003.parquet"]) == 0 and worker(2) == 0
    capsys.readouterr()
    assert cli.main(["report", out, inputs]) == 0
    assert "complete: 6 done, 0 failed, 0 not done of 6 shards" in capsys.readouterr().out


def plan_names(tmp_path: Path) -> list[Shard]:
    return [Shard(str(p), None, p.name) for p in sorted((tmp_path / "in").glob("*.parquet"))]


def test_manifest_out_chains_into_the_next_stage_with_json_logs_and_metrics(
    s3_endpoint, s3_client, bucket, tmp_path: Path, capsys
) -> None:
    tables = {f"{i}.parquet": shard_table(400, start=i * 400, seed=74) for i in range(3)}
    for name, table in tables.items():
        s3_client.put_object(Bucket=bucket, Key=f"raw/{name}", Body=parquet_bytes(table))
    first_list = write_list(tmp_path / "first.txt", [u for t in tables.values() for u in sample(t["url"], 4)])
    second_list = write_list(tmp_path / "second.txt", [u for t in tables.values() for u in sample(t["url"], 9)])
    manifest = tmp_path / "stage1.jsonl"
    common = ["--s3-endpoint-url", s3_endpoint, "--log-format", "json"]

    assert cli.main(["run", f"s3://{bucket}/raw/*.parquet", "--output", f"s3://{bucket}/stage1/", "--blocklist",
                     str(first_list), "--manifest-out", str(manifest), "--metrics-file", str(tmp_path / "m.prom"),
                     *common]) == 0  # fmt: skip
    captured = capsys.readouterr()

    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sorted(line["uri"] for line in lines) == [f"s3://{bucket}/stage1/{n}" for n in sorted(tables)]
    for line in lines:
        head = s3_client.head_object(Bucket=bucket, Key=line["uri"].split("/", 3)[3])
        assert (line["bytes"], line["etag"]) == (head["ContentLength"], head["ETag"])
        assert line["rows"] == read_parquet(s3_get(s3_client, bucket, line["uri"].split("/", 3)[3])).num_rows
    events = [json.loads(line) for line in captured.err.splitlines()]
    assert [e["event"] for e in events] == ["shard"] * 3 and all(e["status"] == "done" for e in events)
    summary = json.loads(captured.out)
    assert summary["event"] == "run" and summary["done"] == 3
    metrics = (tmp_path / "m.prom").read_text()
    assert 'streamfilter_shards_total{status="done"} 3' in metrics
    assert f'streamfilter_rows_total{{kind="removed"}} {summary["rows_removed"]}' in metrics
    assert f'streamfilter_bytes_total{{direction="written"}} {summary["bytes_written"]}' in metrics
    assert "streamfilter_retries_total 0" in metrics

    # The next stage reads exactly the committed outputs through the manifest.
    assert cli.main(["run", f"@{manifest}", "--output", f"s3://{bucket}/stage2/", "--blocklist", str(second_list),
                     *common]) == 0  # fmt: skip
    listed = sample_union(first_list, second_list)
    for name, table in tables.items():
        got = read_parquet(s3_get(s3_client, bucket, f"stage2/{name}"))
        assert_same_table(got, reference_filter(table, listed))


def sample_union(*lists: Path) -> list[str]:
    return [line for path in lists for line in path.read_text().splitlines() if line]
