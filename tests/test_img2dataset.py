"""img2dataset shard sets as one unit: tar, Parquet and _stats.json stay consistent.

Expected tars come from tarfile (wds_helpers.reference_tar), expected Parquet from
pyarrow, expected stats from the input's stats and the listed rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from fault_proxy import FaultProxy
from helpers import assert_same_table, read_parquet, s3_get, s3_keys, serve, write_list
from wds_helpers import drop_listed, entries, make_shard, reference_tar, write_sidecar

import streamfilter


def make_set(root: Path, index: int, n: int, failed: int = 3, **kw) -> tuple[list[str], pa.Table]:
    """``root/{index:05d}.tar`` + ``.parquet`` + ``_stats.json``, as img2dataset writes them."""
    stem = f"{index:05d}"
    urls = make_shard(root / f"{stem}.tar", n, start=index * 1000, seed=index, **kw)
    keys = [f"{index * 1000 + i:09d}" for i in range(n)]
    table = write_sidecar(root / f"{stem}.parquet", urls, keys, failed=failed, seed=index)
    stats = {
        "count": n + failed, "successes": n, "failed_to_download": failed, "failed_to_resize": 0,
        "duration": 12.5, "start_time": 1700000000.0, "end_time": 1700000012.5,
        "status_dict": {"success": n, "404": failed},  # img2dataset's keys: success, or the error message
    }  # fmt: skip
    (root / f"{stem}_stats.json").write_text(json.dumps(stats, indent=4))
    return urls, table


def expected_stats(root: Path, stem: str, table: pa.Table, listed: set[str]) -> dict:
    stats = json.loads((root / f"{stem}_stats.json").read_text())
    removed = table.filter(pa.array([u in listed for u in table["url"].to_pylist()]))
    statuses = removed["status"].to_pylist()
    stats["count"] -= removed.num_rows
    for field, status in (("successes", "success"), ("failed_to_download", "failed_to_download")):
        stats[field] -= statuses.count(status)
    for status, message in zip(statuses, removed["error_message"].to_pylist(), strict=True):
        stats["status_dict"][status if status == "success" else message] -= 1
    stats["status_dict"] = {reason: n for reason, n in stats["status_dict"].items() if n}
    return stats


def check_set(src: Path, out_tar: bytes, out_parquet: pa.Table, out_stats: dict, stem: str, table, listed) -> None:
    kept, expected_bytes = reference_tar(src / f"{stem}.tar", drop_listed(listed))
    assert out_tar == expected_bytes  # byte-identical kept members, in order, tar end blocks
    assert [e.name for e in entries(out_tar)] == [e.name for e in kept]
    keep = pc.invert(pa.array([u in listed for u in table["url"].to_pylist()]))
    assert_same_table(out_parquet, read_parquet(src / f"{stem}.parquet").filter(keep))
    assert out_stats == expected_stats(src, stem, table, listed)


def check_local_sets(src: Path, out: Path, sets: list, listed) -> None:
    """Every set written under the local directory ``out``, checked against its source in ``src``."""
    for i, (_, table) in enumerate(sets):
        stem = f"{i:05d}"
        stats = json.loads((out / f"{stem}_stats.json").read_text())
        check_set(src, (out / f"{stem}.tar").read_bytes(), read_parquet(out / f"{stem}.parquet"), stats, stem,
                  table, listed)  # fmt: skip


def test_local_sets_stay_consistent_and_clean_sets_are_copied(tmp_path: Path) -> None:
    src = tmp_path / "in"
    sets = [make_set(src, i, n=40) for i in range(3)]
    # Set 0: two samples and a failed download; set 1: nothing; set 2: one sample.
    listed = {sets[0][0][3], sets[0][0][39], sets[0][1]["url"][41].as_py(), sets[2][0][0]}
    blocklist = write_list(tmp_path / "list.txt", sorted(listed))

    report = streamfilter.run(
        str(src / "{00000..00002}.tar"), output=str(tmp_path / "out"), blocklist=[str(blocklist)],
        format="img2dataset", quiet=True,
    )  # fmt: skip

    assert report.ok, [s.error for s in report.shards]
    out = tmp_path / "out"
    check_local_sets(src, out, sets, listed)
    s0, s1, s2 = report.shards
    assert (s0.rows_in, s0.rows_removed, s0.members_in, s0.members_out) == (43, 3, 120, 114)
    assert s1.output_via == "byte_copy" and s1.rows_removed == 0
    assert (out / "00001.tar").read_bytes() == (src / "00001.tar").read_bytes()
    assert s2.rows_removed == 1 and s2.output_via == "rewrite"


def test_sets_on_s3_are_assembled_from_copied_ranges(s3_endpoint, s3_client, bucket, tmp_path: Path) -> None:
    src = tmp_path / "in"
    # Samples of 0.5-1.5 MiB, so the kept ranges around a cut are several S3 parts long.
    sets = [make_set(src, i, n=24, jpg_sizes=(500_000, 1_500_000)) for i in range(3)]
    for path in sorted(src.iterdir()):
        s3_client.put_object(Bucket=bucket, Key=f"laion/{path.name}", Body=path.read_bytes())
    # Set 0: one cut (assembled from copies); set 1: clean; set 2: cuts too dense to assemble.
    listed = {sets[0][0][12], *sets[2][0][::3]}
    blocklist = write_list(tmp_path / "list.txt", sorted(listed))
    report = streamfilter.run(
        f"s3://{bucket}/laion/*.tar", output=f"s3://{bucket}/clean/", blocklist=[str(blocklist)],
        format="img2dataset", s3_endpoint_url=s3_endpoint, quiet=True,
    )  # fmt: skip

    assert report.ok, [s.error for s in report.shards]
    hit, clean, dense = report.shards
    assert hit.output_via == "assembled" and clean.output_via == "server_copy" and dense.output_via == "rewrite"
    for i, (_, table) in enumerate(sets):
        stem = f"{i:05d}"
        stats = json.loads(s3_get(s3_client, bucket, f"clean/{stem}_stats.json"))
        parquet = read_parquet(s3_get(s3_client, bucket, f"clean/{stem}.parquet"))
        check_set(src, s3_get(s3_client, bucket, f"clean/{stem}.tar"), parquet, stats, stem, table, listed)
    head = s3_client.head_object(Bucket=bucket, Key="clean/00000.tar")
    assert "-" in head["ETag"]  # a multipart object: copied parts plus uploaded pieces
    # The clean set's tar was never read: the copies are server-side.
    assert sorted(s3_keys(s3_client, bucket, "clean/")) == [
        f"clean/{i:05d}{ext}" for i in range(3) for ext in (".parquet", ".tar", "_stats.json")
    ]
    tar_size = (src / "00000.tar").stat().st_size
    assert hit.bytes_read < 1.6 * tar_size  # read once to find the samples, plus the pieces around one cut


@pytest.mark.parametrize("inputs", ["glob", "braces"])
def test_a_listing_saves_the_siblings_heads(s3_endpoint, s3_client, bucket, tmp_path: Path, inputs: str) -> None:
    """A glob lists the sets, so their .parquet and _stats.json need no HeadObject; a brace range lists
    nothing, and each set asks for both (at once). Counted at a proxy in front of the S3 server."""
    src = tmp_path / "in"
    sets = [make_set(src, i, n=6) for i in range(3)]
    for path in sorted(src.iterdir()):
        s3_client.put_object(Bucket=bucket, Key=f"laion/{path.name}", Body=path.read_bytes())
    listed = {sets[1][0][2]}
    blocklist = write_list(tmp_path / "list.txt", sorted(listed))
    proxy = FaultProxy(s3_endpoint)
    with serve(proxy.app()) as url:
        pattern = "*.tar" if inputs == "glob" else "{00000..00002}.tar"
        report = streamfilter.run(
            f"s3://{bucket}/laion/{pattern}", output=f"s3://{bucket}/clean-{inputs}/", blocklist=[str(blocklist)],
            format="img2dataset", s3_endpoint_url=url, quiet=True,
        )  # fmt: skip

    assert report.ok, [s.error for s in report.shards]
    heads = [key for (op, key), n in proxy.calls.items() for _ in range(n) if op == "HeadObject"]
    inputs_asked = [key for key in heads if key.startswith("laion/")]
    siblings_asked = [key for key in inputs_asked if key.endswith((".parquet", "_stats.json"))]
    assert len(siblings_asked) == (0 if inputs == "glob" else 6), heads
    assert len(inputs_asked) == (0 if inputs == "glob" else 9), heads  # the tars too: listed, or one HEAD each
    for i, (_, table) in enumerate(sets):
        stem = f"{i:05d}"
        stats = json.loads(s3_get(s3_client, bucket, f"clean-{inputs}/{stem}_stats.json"))
        parquet = read_parquet(s3_get(s3_client, bucket, f"clean-{inputs}/{stem}.parquet"))
        tar = s3_get(s3_client, bucket, f"clean-{inputs}/{stem}.tar")
        check_set(src, tar, parquet, stats, stem, table, listed)


def test_incomplete_set_fails_alone(tmp_path: Path) -> None:
    src = tmp_path / "in"
    make_set(src, 0, n=5)
    make_set(src, 1, n=5)
    (src / "00001.parquet").unlink()
    blocklist = write_list(tmp_path / "list.txt", ["https://absent.example/x.jpg"])

    report = streamfilter.run(
        str(src / "*.tar"), output=str(tmp_path / "out"), blocklist=[str(blocklist)], format="img2dataset",
        quiet=True,
    )  # fmt: skip

    ok, bad = report.shards
    assert ok.status == "done" and bad.status == "failed"
    assert "00001" in bad.error and ".parquet" in bad.error and "\n" not in bad.error
    assert not (tmp_path / "out" / "00001.tar").exists()


def test_img2dataset_needs_tar_inputs(tmp_path: Path) -> None:
    src = tmp_path / "in"
    make_set(src, 0, n=3)
    blocklist = write_list(tmp_path / "list.txt", ["x"])
    with pytest.raises(streamfilter.UsageError, match=r"\.tar"):
        streamfilter.run(str(src / "00000.parquet"), output=str(tmp_path / "o"), blocklist=[str(blocklist)],
                         format="img2dataset", quiet=True)  # fmt: skip


def test_sets_served_over_http_are_filtered_into_a_local_prefix(http_server, tmp_path: Path) -> None:
    served, base = http_server.dir()
    sets = [make_set(served, i, n=12) for i in range(2)]
    listed = {sets[0][0][5], sets[0][1]["url"][13].as_py()}  # a sample and a failed download
    blocklist = write_list(tmp_path / "list.txt", sorted(listed))

    report = streamfilter.run(
        [base + "00000.tar", base + "00001.tar"], output=str(tmp_path / "out"), blocklist=[str(blocklist)],
        format="img2dataset", quiet=True,
    )  # fmt: skip

    assert report.ok, [s.error for s in report.shards]
    check_local_sets(served, tmp_path / "out", sets, listed)
    assert [s.output_via for s in report.shards] == ["rewrite", "byte_copy"]
