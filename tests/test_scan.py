"""The two-phase run: shards without hits are copied (or left in place), never rewritten.

The skip decision must never miss a hit, so every placement of a hit that a scan
could get wrong is tried, and each result is compared with the full rewrite
(``scan=False``) and with pyarrow's own filter of the input.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import (
    assert_same_table,
    key_chunk_bytes,
    parquet_bytes,
    put_table,
    random_strings,
    read_parquet,
    reference_filter,
    s3_get,
    s3_keys,
    shard_table,
    write_list,
    write_shard,
)

import streamfilter
from streamfilter import engine
from streamfilter.store.s3 import S3Store

ROWS = 1000


def _with_null_urls(table: pa.Table, rows: list[int]) -> pa.Table:
    urls = table["url"].to_pylist()
    for i in rows:
        urls[i] = None
    return table.set_column(table.schema.get_field_index("url"), "url", pa.array(urls, pa.string()))


#: name -> (row group size, the rows whose URL is listed); a table of ROWS rows each.
CASES = {
    "first_row": (250, [0]),
    "last_row": (250, [ROWS - 1]),
    "last_row_group_only": (300, [950]),  # row groups of 300, 300, 300, 100
    "one_row_row_group": (333, [999]),  # the last row group holds one row
    "many_row_groups": (7, [ROWS // 2]),  # 143 row groups in the footer
    "clean": (250, []),
    "clean_with_null_keys": (250, []),
}


def _write_cases(root: Path) -> tuple[dict[str, Path], list[str]]:
    paths, listed = {}, ["https://listed.but.absent/x.jpg"]
    for i, (name, (rg, rows)) in enumerate(CASES.items()):
        table = shard_table(ROWS, start=i * ROWS, seed=i)
        if name == "clean_with_null_keys":
            table = _with_null_urls(table, [0, 500, ROWS - 1])
        listed += [table["url"][r].as_py() for r in rows]
        paths[name] = write_shard(root / f"{name}.parquet", table, row_group_size=rg)
    return paths, listed


@pytest.mark.parametrize("mode", ["deny", "allow"])
def test_scan_never_misses_a_hit_and_matches_the_full_rewrite(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every shard is scanned here, whatever the share with hits (see the dense-run tests below).
    monkeypatch.setattr(engine, "DENSE_AFTER", 10**9)
    paths, listed = _write_cases(tmp_path / "in")
    if mode == "allow":  # allow: a shard is clean when every row is listed
        listed += [u for u in read_parquet(paths["clean"])["url"].to_pylist()]
    blocklist = write_list(tmp_path / "list.txt", listed)
    inputs = [str(p) for p in paths.values()]

    scanned = streamfilter.run(inputs, output=str(tmp_path / "scan"), blocklist=[str(blocklist)], mode=mode, quiet=True)
    full = streamfilter.run(
        inputs, output=str(tmp_path / "full"), blocklist=[str(blocklist)], mode=mode, scan=False, quiet=True
    )

    assert scanned.ok and full.ok
    for (name, path), s, f in zip(paths.items(), scanned.shards, full.shards, strict=True):
        expected = reference_filter(read_parquet(path), listed, mode=mode)
        out = tmp_path / "scan" / path.name
        assert_same_table(read_parquet(out), expected)
        assert_same_table(read_parquet(tmp_path / "full" / path.name), expected)
        assert (s.rows_in, s.rows_out) == (f.rows_in, f.rows_out) == (ROWS, expected.num_rows)
        assert f.output_via == "rewrite"
        clean = expected.num_rows == ROWS
        if clean:
            assert s.output_via == "byte_copy", name
            assert out.read_bytes() == path.read_bytes(), name  # a copy, not a re-encode
        else:
            assert s.output_via == "rewrite", name
    clean_names = {n for n, s in zip(paths, scanned.shards, strict=True) if s.output_via == "byte_copy"}
    assert clean_names == ({"clean"} if mode == "allow" else {"clean", "clean_with_null_keys"})


def test_receipt_records_a_verified_clean_shard_and_a_rerun_resumes(tmp_path: Path) -> None:
    table = shard_table(ROWS, seed=3)
    src = write_shard(tmp_path / "in" / "a.parquet", table, row_group_size=100)
    blocklist = write_list(tmp_path / "list.txt", ["https://absent.example/x.jpg"])

    first = streamfilter.run(str(src), output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True)
    again = streamfilter.run(str(src), output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True)

    receipt = json.loads((tmp_path / "out" / "_streamfilter" / "receipts" / "a.parquet.json").read_text())
    assert receipt["verified_clean"] is True and receipt["rows_removed"] == 0
    assert first.shards[0].output_via == "byte_copy"
    assert again.shards[0].resumed


def test_in_place_clean_shard_is_not_written(tmp_path: Path) -> None:
    table = shard_table(ROWS, seed=4)
    src = write_shard(tmp_path / "in" / "a.parquet", table, row_group_size=100)
    dirty = write_shard(tmp_path / "in" / "b.parquet", shard_table(ROWS, start=ROWS, seed=5), row_group_size=100)
    listed = [read_parquet(dirty)["url"][10].as_py()]
    blocklist = write_list(tmp_path / "list.txt", listed)
    before = (src.stat().st_mtime_ns, src.stat().st_ino, src.read_bytes())

    report = streamfilter.run([str(src), str(dirty)], in_place=True, blocklist=[str(blocklist)], quiet=True)

    assert report.ok
    assert (src.stat().st_mtime_ns, src.stat().st_ino, src.read_bytes()) == before
    assert [s.output_via for s in report.shards] == ["unchanged", "rewrite"]
    assert report.shards[0].bytes_written == 0
    assert read_parquet(dirty).num_rows == ROWS - 1


def test_clean_shards_on_s3_are_copied_server_side_after_reading_only_the_key_column(
    s3_endpoint, s3_client, bucket, tmp_path: Path
) -> None:
    big = shard_table(20_000, seed=6)
    clean = put_table(s3_client, bucket, "in/clean.parquet", big, row_group_size=4000, compression="zstd")
    dirty_table = shard_table(20_000, start=20_000, seed=7)
    dirty = put_table(s3_client, bucket, "in/dirty.parquet", dirty_table, row_group_size=4000, compression="zstd")
    listed = [dirty_table["url"][19_999].as_py()]
    blocklist = write_list(tmp_path / "list.txt", listed)

    report = streamfilter.run(
        f"s3://{bucket}/in/*.parquet",
        output=f"s3://{bucket}/out/",
        blocklist=[str(blocklist)],
        s3_endpoint_url=s3_endpoint,
        quiet=True,
    )

    assert report.ok
    by_name = {s.input.rsplit("/", 1)[-1]: s for s in report.shards}
    assert by_name["clean.parquet"].output_via == "server_copy"
    assert s3_get(s3_client, bucket, "out/clean.parquet") == clean
    # The clean shard cost its footer and its key column, far less than the object.
    assert by_name["clean.parquet"].bytes_read <= key_chunk_bytes(clean) + 64 * 1024 < len(clean) / 2
    assert by_name["dirty.parquet"].output_via == "rewrite"
    expected = reference_filter(read_parquet(dirty), listed)
    assert_same_table(read_parquet(s3_get(s3_client, bucket, "out/dirty.parquet")), expected)


def test_large_clean_object_is_copied_in_parts(
    s3_endpoint, s3_client, bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CopyObject's 5 GiB limit, scaled down: the multipart UploadPartCopy path is what runs.
    monkeypatch.setattr(S3Store, "copy_object_limit", 5 * 1024**2)
    monkeypatch.setattr(S3Store, "copy_part_size", 5 * 1024**2)
    table = pa.table({"url": random_strings(3000, 16, seed=1), "blob": random_strings(3000, 2000, seed=2)})
    data = parquet_bytes(table, compression="none", row_group_size=1000)
    assert len(data) > 11 * 1024**2
    s3_client.put_object(Bucket=bucket, Key="in/big.parquet", Body=data)
    blocklist = write_list(tmp_path / "list.txt", ["absent"])

    report = streamfilter.run(
        f"s3://{bucket}/in/big.parquet",
        output=f"s3://{bucket}/out/",
        blocklist=[str(blocklist)],
        s3_endpoint_url=s3_endpoint,
        quiet=True,
    )

    assert report.ok and report.shards[0].output_via == "server_copy"
    head = s3_client.head_object(Bucket=bucket, Key="out/big.parquet")
    assert head["ETag"].strip('"').endswith("-3")  # three copied parts
    assert s3_get(s3_client, bucket, "out/big.parquet") == data


def test_clean_shard_from_http_is_byte_copied(http_server, tmp_path: Path) -> None:
    served, base = http_server.dir()
    table = shard_table(ROWS, seed=8)
    src = write_shard(served / "a.parquet", table, row_group_size=100)
    blocklist = write_list(tmp_path / "list.txt", ["https://absent.example/y.jpg"])

    report = streamfilter.run(base + "a.parquet", output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True)

    assert report.ok and report.shards[0].output_via == "byte_copy"
    assert (tmp_path / "out" / "a.parquet").read_bytes() == src.read_bytes()


def _run_dense_then_clean(tmp_path: Path, hits: int, clean: int) -> streamfilter.Report:
    """``hits`` shards with a listed row each, then ``clean`` shards with none, filtered one at a time and
    checked against pyarrow; the run's report."""
    root = tmp_path / "in"
    paths = [write_shard(root / f"{i:03d}.parquet", shard_table(200, start=200 * i, seed=i), row_group_size=50)
             for i in range(hits + clean)]  # fmt: skip
    listed = [read_parquet(p)["url"][7].as_py() for p in paths[:hits]]
    blocklist = write_list(tmp_path / "list.txt", listed)
    report = streamfilter.run([str(p) for p in paths], output=str(tmp_path / "out"), blocklist=[str(blocklist)],
                              concurrency=1, quiet=True)  # fmt: skip
    assert report.ok
    for path in paths:
        assert_same_table(read_parquet(tmp_path / "out" / path.name), reference_filter(read_parquet(path), listed))
    return report


def test_a_dense_run_goes_straight_to_the_rewrite(tmp_path: Path) -> None:
    report = _run_dense_then_clean(tmp_path, hits=12, clean=0)

    assert all(s.output_via == "rewrite" for s in report.shards)
    # The first DENSE_AFTER shards are scanned, and the rewrite takes the scan's decoded keys of the row
    # group it stopped at: no byte is read twice, so each shard reads what a run without the scan reads.
    inputs = sorted(str(p) for p in (tmp_path / "in").iterdir())
    no_scan = streamfilter.run(inputs, output=str(tmp_path / "out2"), blocklist=[str(tmp_path / "list.txt")],
                               concurrency=1, scan=False, quiet=True)  # fmt: skip
    assert [s.bytes_read for s in report.shards] == [s.bytes_read for s in no_scan.shards]


def test_scan_policy_stops_scanning_a_dense_run_but_probes() -> None:
    policy = engine.ScanPolicy()
    assert all(policy.scan_pays() for _ in range(3))  # nothing seen yet
    for _ in range(engine.DENSE_AFTER):
        policy.seen(False)  # a hit
    pays = [policy.scan_pays() for _ in range(3 * engine.PROBE_EVERY)]
    assert pays.count(True) == 3 and pays[engine.PROBE_EVERY - 1]
    for _ in range(engine.DENSE_WINDOW):
        policy.seen(True)  # clean shards again: scanning resumes
    assert all(policy.scan_pays() for _ in range(5))


def test_a_run_whose_hits_thin_out_scans_again(tmp_path: Path) -> None:
    """Hits in the first shards only (a takedown list): the probes find the clean ones and scanning resumes,
    so most clean shards are still copied rather than rewritten."""
    report = _run_dense_then_clean(tmp_path, hits=6, clean=30)

    vias = [s.output_via for s in report.shards]
    assert vias[:6] == ["rewrite"] * 6
    assert vias[-20:] == ["byte_copy"] * 20  # scanning resumed well before these


@pytest.mark.parametrize("kind", ["parquet", "img2dataset"])
def test_clean_shards_wait_for_their_copies_outside_the_decode_slots(
    kind: str, s3_endpoint, s3_client, bucket, tmp_path: Path
) -> None:
    """A clean shard's (or set's) copies and receipt hold no decoded data: on a store slow to answer, many
    shards wait on their copies at once, not only the few allowed to scan or rewrite (at concurrency 1,
    two, each copying one object, or an img2dataset set's three)."""
    from fault_proxy import FaultProxy
    from helpers import serve
    from test_img2dataset import make_set

    shards = 12
    if kind == "parquet":
        for i in range(shards):
            put_table(s3_client, bucket, f"in/{i:02d}.parquet", shard_table(300, start=300 * i, seed=i))
        inputs, fmt, most_before = f"s3://{bucket}/in/*.parquet", "auto", 2
    else:
        for i in range(shards):
            make_set(tmp_path / "sets", i, n=4)
        for path in sorted((tmp_path / "sets").iterdir()):
            s3_client.upload_file(str(path), bucket, f"in/{path.name}")
        inputs, fmt, most_before = f"s3://{bucket}/in/*.tar", "img2dataset", 6
    originals = {k: s3_get(s3_client, bucket, k) for k in s3_keys(s3_client, bucket, "in/")}
    blocklist = write_list(tmp_path / "list.txt", ["https://not-in-any-shard.example/x.jpg"])
    proxy = FaultProxy(s3_endpoint)
    proxy.hold["CopyObject"] = 2.0  # long enough that several shards are scanned while one copy waits
    with serve(proxy.app()) as proxy.url:
        report = streamfilter.run(
            inputs,
            output=f"s3://{bucket}/out/",
            blocklist=[str(blocklist)],
            s3_endpoint_url=proxy.url,
            concurrency=1,
            format=fmt,
            quiet=True,
        )
    assert report.ok, [s.error for s in report.shards if s.error]
    assert [s.output_via for s in report.shards] == ["server_copy"] * shards
    for key, data in originals.items():
        assert s3_get(s3_client, bucket, "out/" + key.removeprefix("in/")) == data
    # Before, a shard held its slot through its copies: never more than ``most_before`` at once.
    assert proxy.peak["CopyObject"] > most_before, proxy.peak


def test_a_scan_prefetches_its_footer_and_key_chunks_before_its_decode_slot(
    s3_endpoint, s3_client, bucket, tmp_path: Path
) -> None:
    """On a store slow to answer, shards waiting for a decode slot already read their footers and request
    their key chunks, so more reads are in flight than decode slots (at concurrency 1, two); each clean
    shard still reads its footer and key chunks once, nothing more."""
    from fault_proxy import FaultProxy
    from helpers import serve

    inputs = {}
    for i in range(12):
        inputs[i] = put_table(s3_client, bucket, f"in/{i:02d}.parquet", shard_table(2000, start=2000 * i, seed=i))
    blocklist = write_list(tmp_path / "list.txt", ["https://not-in-any-shard.example/x.jpg"])
    proxy = FaultProxy(s3_endpoint)
    proxy.hold["GetObject"] = 0.5
    with serve(proxy.app()) as proxy.url:
        report = streamfilter.run(
            f"s3://{bucket}/in/*.parquet",
            output=f"s3://{bucket}/out/",
            blocklist=[str(blocklist)],
            s3_endpoint_url=proxy.url,
            concurrency=1,
            quiet=True,
        )
    assert report.ok, [s.error for s in report.shards if s.error]
    for i, data in inputs.items():
        assert s3_get(s3_client, bucket, f"out/{i:02d}.parquet") == data
        shard = report.shards[i]
        assert shard.output_via == "server_copy"
        assert shard.bytes_read <= key_chunk_bytes(data) + 64 * 1024
    # Before, a shard read only once it had its slot: never more than two reads at once.
    assert proxy.peak["GetObject"] > 2, proxy.peak


def test_a_rewritten_shard_waits_for_its_commit_outside_its_slots(
    s3_endpoint, s3_client, bucket, tmp_path: Path, monkeypatch
) -> None:
    """Completing an upload is a wait on the store (the last parts, the completion, its check): on a store
    slow to complete, the next shard reads and decodes meanwhile instead of waiting for the slot (at
    concurrency 1, nothing was read while a completion was in flight). Outputs against pyarrow."""
    from fault_proxy import FaultProxy
    from helpers import put_listed_shards, serve

    monkeypatch.setattr(S3Store, "part_size", 5 * 1024 * 1024)  # these outputs are multipart uploads
    monkeypatch.setattr(S3Store, "single_request_bytes", 0)
    inputs, listed = put_listed_shards(s3_client, bucket, 4, 60_000, 101, row_group_size=20_000)
    assert all(len(data) > S3Store.part_size for data in inputs.values())
    proxy = FaultProxy(s3_endpoint)
    proxy.hold["CompleteMultipartUpload"] = 1.5  # a completion the next shard's reads can overlap
    with serve(proxy.app()) as proxy.url:
        report = streamfilter.run(
            f"s3://{bucket}/in/*.parquet",
            output=f"s3://{bucket}/out/",
            blocklist=[str(write_list(tmp_path / "list.txt", listed))],
            s3_endpoint_url=proxy.url,
            concurrency=1,
            quiet=True,
        )
    assert report.ok, [s.error for s in report.shards if s.error]
    for key, data in inputs.items():
        out = read_parquet(s3_get(s3_client, bucket, "out/" + key.removeprefix("in/")))
        assert_same_table(out, reference_filter(read_parquet(data), listed))
    assert proxy.peak["CompleteMultipartUpload"] == 1  # the commits stay within --concurrency
    assert proxy.during["GetObject", "CompleteMultipartUpload"] > 0, proxy.during
