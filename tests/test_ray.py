"""The Ray executor: the same outputs, receipts and report as the local one, one Ray task per shard."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from helpers import (
    assert_same_table,
    corrupt_row_group,
    parquet_bytes,
    put_table,
    read_parquet,
    reference_filter,
    s3_get,
    s3_keys,
    s3_pending_uploads,
    sample,
    sha256_tree,
    shard_table,
    write_list,
    write_shard,
)

import streamfilter
from streamfilter import cli
from streamfilter.engine import run_job
from streamfilter.executors import ray as ray_executor
from streamfilter.progress import Progress
from streamfilter.sets import ExactKeySet
from streamfilter.spec import build_spec

ray = pytest.importorskip("ray")

NAMES = [f"{i:05d}.parquet" for i in range(4)]


def test_without_ray_installed_the_run_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    write_shard(tmp_path / "in" / "0.parquet", shard_table(10, seed=70))
    write_list(tmp_path / "list.txt", ["x"])
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    argv = ["run", str(tmp_path / "in" / "0.parquet"), "--output", str(tmp_path / "out"),
            "--blocklist", str(tmp_path / "list.txt"), "--executor", "ray"]  # fmt: skip
    assert cli.main(argv) == 2
    assert "--executor ray needs Ray: pip install 'streamfilter[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_address_nothing_answers_at_fails_fast(tmp_path: Path, capsys) -> None:
    if ray.is_initialized():
        pytest.skip("Ray is already running in this process")
    write_shard(tmp_path / "in" / "0.parquet", shard_table(10, seed=69))
    write_list(tmp_path / "list.txt", ["x"])
    argv = ["run", str(tmp_path / "in" / "0.parquet"), "--output", str(tmp_path / "out"),
            "--blocklist", str(tmp_path / "list.txt"), "--executor", "ray", "--ray-address", "127.0.0.1:1"]  # fmt: skip
    assert cli.main(argv) == 2
    assert "--ray-address 127.0.0.1:1: nothing answers there" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not ray.is_initialized()


def test_starts_its_own_ray_and_shuts_it_down(tmp_path: Path) -> None:
    """Without a running Ray the run starts a local one, stops it after, and leaves SIGTERM to the caller."""
    if ray.is_initialized():
        pytest.skip("Ray is already running in this process")
    table = shard_table(500, seed=71)
    write_shard(tmp_path / "in" / "0.parquet", table)
    listed = sample(table["url"], 9)
    handler = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        ours = signal.getsignal(signal.SIGTERM)
        report = streamfilter.run(
            [str(tmp_path / "in" / "0.parquet")], output=str(tmp_path / "out"),
            blocklist=[str(write_list(tmp_path / "list.txt", listed))], executor="ray", quiet=True,
        )  # fmt: skip
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert report.ok, report.shards[0].error
    assert not ray.is_initialized()
    assert_same_table(read_parquet(tmp_path / "out" / "0.parquet"), reference_filter(table, listed))


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """One local Ray for the tests below; runs find it running and leave it so."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield
    finally:
        ray.shutdown()


def local_shards(root: Path, seed: int, rows: int = 1500) -> tuple[dict, list[str], Path]:
    tables = {name: shard_table(rows, start=i * rows, seed=seed) for i, name in enumerate(NAMES)}
    for name, table in tables.items():
        write_shard(root / "in" / name, table, row_group_size=500)
    listed = [u for t in tables.values() for u in sample(t["url"], 13)]
    return tables, listed, write_list(root / "list.txt", listed)


def run_on(executor: str, root: Path, blocklist: Path, out: str = "out", **options) -> streamfilter.Report:
    return streamfilter.run(
        [str(root / "in" / "*.parquet")], output=str(root / out), blocklist=[str(blocklist)],
        executor=executor, quiet=True, **options,
    )  # fmt: skip


def test_s3_outputs_receipts_and_report_match_the_local_executor(
    ray_instance, s3_endpoint, s3_client, bucket, tmp_path: Path
) -> None:
    tables = {name: shard_table(2000, start=i * 2000, seed=72) for i, name in enumerate(NAMES)}
    for name, table in tables.items():
        put_table(s3_client, bucket, f"in/{name}", table, row_group_size=700)
    listed = [u for t in tables.values() for u in sample(t["url"], 7)]
    blocklist = write_list(tmp_path / "list.txt", listed)

    def run(executor: str) -> streamfilter.Report:
        return streamfilter.run(
            [f"s3://{bucket}/in/*.parquet"], output=f"s3://{bucket}/{executor}/", blocklist=[str(blocklist)],
            executor=executor, s3_endpoint_url=s3_endpoint, quiet=True,
        )  # fmt: skip

    local, on_ray = run("local"), run("ray")

    assert on_ray.ok, [s.error for s in on_ray.shards]
    assert [s.input for s in on_ray.shards] == [f"s3://{bucket}/in/{name}" for name in NAMES]
    assert {**on_ray.totals, "seconds": 0} == {**local.totals, "seconds": 0}
    for name, table in tables.items():
        data = s3_get(s3_client, bucket, f"ray/{name}")
        assert data == s3_get(s3_client, bucket, f"local/{name}")
        expected = reference_filter(table, listed)
        assert_same_table(read_parquet(data), expected)
        for executor in ("ray", "local"):
            receipt = json.loads(s3_get(s3_client, bucket, f"{executor}/_streamfilter/receipts/{name}.json"))
            counts = (receipt["rows_in"], receipt["rows_out"], receipt["rows_removed"], receipt["output_size"])
            assert counts == (table.num_rows, expected.num_rows, table.num_rows - expected.num_rows, len(data))
    assert s3_keys(s3_client, bucket, "ray/") == [f"ray/{name}" for name in NAMES]
    assert s3_pending_uploads(s3_client, bucket) == []


@pytest.mark.parametrize("mode", ["deny", "allow"])
def test_local_files_against_the_reference(ray_instance, tmp_path: Path, mode: str) -> None:
    tables, listed, blocklist = local_shards(tmp_path, seed=73)

    report = run_on("ray", tmp_path, blocklist, mode=mode)

    assert report.ok, [s.error for s in report.shards]
    for shard, (name, table) in zip(report.shards, tables.items(), strict=True):
        expected = reference_filter(table, listed, mode=mode)
        assert_same_table(read_parquet(tmp_path / "out" / name), expected)
        assert (shard.rows_in, shard.rows_out) == (table.num_rows, expected.num_rows)
        assert (tmp_path / "out" / "_streamfilter" / "receipts" / f"{name}.json").exists()
    assert report.totals["rows_out"] == sum(reference_filter(t, listed, mode=mode).num_rows for t in tables.values())


def test_tars_matched_by_image_hash(ray_instance, tmp_path: Path) -> None:
    """--image-hash pdq on Ray: the PDQ index travels to the tasks; outputs against tarfile's reference."""
    from pdq_helpers import encode, make_tar, natural, reference_hash, write_hex_list
    from wds_helpers import reference_tar, sample_key

    (tmp_path / "in").mkdir()
    tars = {
        "00000.tar": {f"a{i}.jpg": encode(natural(i)) for i in range(4)},
        "00001.tar": {f"b{i}.jpg": encode(natural(10 + i)) for i in range(4)},
    }
    for name, images in tars.items():
        make_tar(tmp_path / "in" / name, images)
    listed = write_hex_list(tmp_path / "pdq.txt", [reference_hash(encode(natural(2), quality=60))])

    report = streamfilter.run(
        [str(tmp_path / "in" / "*.tar")], output=str(tmp_path / "out"), blocklist=[str(listed)], image_hash="pdq",
        executor="ray", quiet=True,
    )  # fmt: skip

    assert report.ok, [s.error for s in report.shards]
    for name in tars:
        _, expected = reference_tar(tmp_path / "in" / name, lambda sample: sample_key(sample[0].name) == "a2")
        assert (tmp_path / "out" / name).read_bytes() == expected
    assert [s.images["matched"] for s in report.shards] == [1, 0]  # type: ignore[index]
    assert [s.output_via for s in report.shards] == ["rewrite", "byte_copy"]


def test_a_corrupt_shard_fails_alone_with_one_line(ray_instance, tmp_path: Path) -> None:
    tables, listed, blocklist = local_shards(tmp_path, seed=74)
    bad = tmp_path / "in" / NAMES[2]
    bad.write_bytes(corrupt_row_group(parquet_bytes(tables[NAMES[2]], row_group_size=500), 1))

    report = run_on("ray", tmp_path, blocklist)

    assert [s.status for s in report.shards] == ["done", "done", "failed", "done"]
    error = report.shards[2].error
    assert error and "\n" not in error and NAMES[2] in error
    for name in (NAMES[0], NAMES[1], NAMES[3]):
        assert_same_table(read_parquet(tmp_path / "out" / name), reference_filter(tables[name], listed))
    assert not (tmp_path / "out" / NAMES[2]).exists()
    assert not list((tmp_path / "out").rglob("*.partial"))


def test_a_worker_that_dies_fails_only_its_shard(ray_instance, tmp_path: Path, monkeypatch) -> None:
    _tables, _listed, blocklist = local_shards(tmp_path, seed=75, rows=300)
    original = ray_executor.run_task

    def dies_on_the_second_shard(work, index, shard, *args):  # a local function: Ray ships it by value
        if shard.name == NAMES[1]:
            os._exit(1)
        return original(work, index, shard, *args)

    monkeypatch.setattr(ray_executor, "run_task", dies_on_the_second_shard)
    report = run_on("ray", tmp_path, blocklist)

    assert [s.status for s in report.shards] == ["done", "failed", "done", "done"]
    error = report.shards[1].error
    assert error and "\n" not in error and "Ray worker died" in error
    assert report.shards[1].input.endswith(NAMES[1])
    assert not (tmp_path / "out" / NAMES[1]).exists()


def test_the_key_set_is_put_in_the_object_store_once(ray_instance, tmp_path: Path, monkeypatch) -> None:
    _tables, _listed, blocklist = local_shards(tmp_path, seed=76, rows=300)
    put = ray.put
    put_args: list[object] = []

    def spy(value, *args, **kwargs):
        put_args.append(value)
        return put(value, *args, **kwargs)

    monkeypatch.setattr(ray, "put", spy)
    report = run_on("ray", tmp_path, blocklist)

    assert report.ok and len(report.shards) == len(NAMES)
    # One put, of the work every task runs: it carries the key set.
    assert len(put_args) == 1 and isinstance(put_args[0].key_set, ExactKeySet)


def test_a_rerun_resumes_from_receipts(ray_instance, tmp_path: Path) -> None:
    _tables, _listed, blocklist = local_shards(tmp_path, seed=77, rows=300)
    first = run_on("ray", tmp_path, blocklist)
    before = sha256_tree(tmp_path / "out")

    again = run_on("ray", tmp_path, blocklist)

    assert first.ok and again.ok
    assert [s.resumed for s in again.shards] == [True] * len(NAMES)
    assert [s.rows_removed for s in again.shards] == [s.rows_removed for s in first.shards]
    assert {k: v for k, v in sha256_tree(tmp_path / "out").items() if "/reports/" not in k} == {
        k: v for k, v in before.items() if "/reports/" not in k
    }


def run_stopped(spec, stop_when) -> streamfilter.Report:
    """Run ``spec``, setting the stop event (as SIGTERM does) once ``stop_when()`` is true."""

    async def main() -> streamfilter.Report:
        stop = anyio.Event()

        async def watch() -> None:
            while not stop_when():
                await anyio.sleep(0.02)
            stop.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            report = await run_job(spec, progress=Progress.silent(), stop=stop)
            tg.cancel_scope.cancel()
        return report

    return anyio.run(main)


def test_a_stop_before_the_start_starts_nothing(ray_instance, tmp_path: Path) -> None:
    _tables, _listed, blocklist = local_shards(tmp_path, seed=79, rows=100)
    spec = build_spec({"inputs": [str(tmp_path / "in" / "*.parquet")], "output": str(tmp_path / "out"),
                       "blocklist": [str(blocklist)], "executor": "ray"})  # fmt: skip

    report = run_stopped(spec, lambda: True)

    assert report.interrupted
    assert [s.error for s in report.shards] == [ray_executor.NOT_STARTED] * len(NAMES)
    assert [p for p in (tmp_path / "out").rglob("*") if "_streamfilter" not in p.parts] == []


def test_a_stop_in_flight_commits_nothing_half_done_and_a_rerun_finishes(ray_instance, tmp_path: Path) -> None:
    """Shards in flight when the stop comes give up (grace 0) and those queued never start."""
    table = shard_table(20_000, seed=78)
    data = parquet_bytes(table, row_group_size=10)  # many row groups: a shard takes seconds
    (tmp_path / "in").mkdir()
    for name in NAMES[:3]:  # one more than the two CPUs: one waits in Ray's queue
        (tmp_path / "in" / name).write_bytes(data)
    listed = sample(table["url"], 7)
    blocklist = write_list(tmp_path / "list.txt", listed)
    spec = build_spec({"inputs": [str(tmp_path / "in" / "*.parquet")], "output": str(tmp_path / "out"),
                       "blocklist": [str(blocklist)], "executor": "ray", "grace_seconds": 0})  # fmt: skip

    report = run_stopped(spec, lambda: bool(list((tmp_path / "out").rglob("*.partial"))))

    # Which shards were still in flight depends on scheduling; how each ended does not.
    assert report.interrupted and not report.ok
    for shard, name in zip(report.shards, NAMES, strict=False):
        assert (
            shard.status == "done"
            or shard.error == ray_executor.NOT_STARTED
            or (shard.error and "stopped by a signal before it was finished" in shard.error)
        ), shard.error
        assert (tmp_path / "out" / name).exists() == (shard.status == "done")
    assert not list((tmp_path / "out").rglob("*.partial"))

    again = run_on("ray", tmp_path, blocklist)
    assert again.ok
    for name in NAMES[:3]:
        assert_same_table(read_parquet(tmp_path / "out" / name), reference_filter(table, listed))
