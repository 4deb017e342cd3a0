"""CLIP embedding sets on the loopback S3 endpoint: streamed, assembled from server-side copies, and the
fallback when the endpoint refuses UploadPartCopy; and a faiss index built before the cleaning drops the
removed vectors with ``--removed-ids-out``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from emb_helpers import check_output, expected_outputs, listed_of, make_set_files, write_files
from fault_proxy import FaultProxy, Rule
from helpers import s3_get, s3_keys, serve, write_list

import streamfilter


def put_sets(client, bucket: str, prefix: str, sets: list[dict[str, bytes]]) -> None:
    for files in sets:
        for rel, data in files.items():
            client.put_object(Bucket=bucket, Key=f"{prefix}{rel}", Body=data)


def run_s3(inputs: str, endpoint: str, tmp_path: Path, listed: set[str], **options) -> streamfilter.Report:
    blocklist = write_list(tmp_path / "list.txt", sorted(listed))
    return streamfilter.run(inputs, blocklist=[str(blocklist)], format="embeddings", s3_endpoint_url=endpoint,
                            quiet=True, **options)  # fmt: skip


def check_s3(client, bucket: str, prefix: str, sets: list[dict[str, bytes]], listed: set[str], tmp_path: Path) -> None:
    for files in sets:
        for rel, expected in expected_outputs(files, listed).items():
            data = s3_get(client, bucket, prefix + rel)
            local = tmp_path / "fetched" / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            check_output(rel, data, expected, local)


def test_small_sets_on_s3_are_streamed_and_clean_sets_copied(s3_endpoint, s3_client, bucket, tmp_path: Path) -> None:
    sets = [make_set_files(i, rows=60, dtype="float32") for i in range(3)]
    put_sets(s3_client, bucket, "laion/", sets)
    listed = listed_of(sets, {0: [5, 6], 2: [59]})

    report = run_s3(f"s3://{bucket}/laion/metadata/metadata_*.parquet", s3_endpoint, tmp_path, listed,
                    output=f"s3://{bucket}/out/")  # fmt: skip

    assert report.ok, [s.error for s in report.shards]
    via = {s.input.rsplit("/", 1)[1]: s.output_via for s in report.shards}
    assert via == {"metadata_0000.parquet": "rewrite", "metadata_0001.parquet": "server_copy",
                   "metadata_0002.parquet": "rewrite"}  # fmt: skip
    check_s3(s3_client, bucket, "out/", sets, listed, tmp_path)
    assert sorted(k for k in s3_keys(s3_client, bucket, "out/")) == sorted(f"out/{r}" for f in sets for r in f)


def big_sets() -> list[dict[str, bytes]]:
    """float32 x 768 x 4000 rows: 12 MiB a .npy, so kept ranges of 5 MiB and more are copied server-side."""
    return [make_set_files(i, rows=4000, dim=768, dtype="float32") for i in range(2)]


def test_big_sets_on_s3_are_assembled_from_copied_ranges(s3_endpoint, s3_client, bucket, tmp_path: Path) -> None:
    sets = big_sets()
    put_sets(s3_client, bucket, "in/", sets)
    listed = listed_of(sets, {0: [3990, 3991], 1: [0]})
    ids = f"s3://{bucket}/removed.npy"

    report = run_s3(f"s3://{bucket}/in/", s3_endpoint, tmp_path, listed, output=f"s3://{bucket}/out/",
                    removed_ids_out=ids)  # fmt: skip

    assert report.ok, [s.error for s in report.shards]
    assert {s.output_via for s in report.shards} == {"assembled"}
    vectors = sum(len(v) for f in sets for k, v in f.items() if k.endswith(".npy"))
    # Per .npy, about one 5 MiB piece (the new header and the bytes filling its part) passes through us.
    npy_files = sum(k.endswith(".npy") for f in sets for k in f)
    metadata = sum(len(v) for f in sets for k, v in f.items() if k.endswith(".parquet"))
    assert report.totals["bytes_read"] <= npy_files * 5.1 * 2**20 + 2 * metadata < vectors
    check_s3(s3_client, bucket, "out/", sets, listed, tmp_path)
    assert np.load(io.BytesIO(s3_get(s3_client, bucket, "removed.npy"))).tolist() == [3990, 3991, 4000]


def test_cuts_with_long_kept_ranges_fetch_only_the_header_piece(s3_endpoint, s3_client, bucket, tmp_path) -> None:
    """Cuts with 5 MiB or more kept between them, 10 MiB before the first (the header piece takes 5), and
    anything after the last (the object's last part may be short) are all server-side copies: each .npy
    costs its 5 MiB header piece alone."""
    # Rows of 3,072 bytes. Set 0: 7,000 rows, cut at 3,500 (10.3 MiB before) and 5,300 (5.2 MiB between,
    # 5.0 MiB after); set 1: 4,000 rows, cut at 3,600 (10.5 MiB before, 1.2 MiB after).
    sets = [make_set_files(0, rows=7000, dim=768, dtype="float32", text=False),
            make_set_files(1, rows=4000, dim=768, dtype="float32", text=False)]  # fmt: skip
    put_sets(s3_client, bucket, "in/", sets)
    listed = listed_of(sets, {0: [3500, 5300], 1: [3600]})

    report = run_s3(f"s3://{bucket}/in/", s3_endpoint, tmp_path, listed, output=f"s3://{bucket}/out/")

    assert report.ok, [s.error for s in report.shards]
    assert {s.output_via for s in report.shards} == {"assembled"}
    npy_files = sum(k.endswith(".npy") for f in sets for k in f)
    metadata = sum(len(v) for f in sets for k, v in f.items() if k.endswith(".parquet"))
    # Each header piece: 5 MiB less the header; each header read: at most 4 KiB; the metadata, read twice.
    assert report.totals["bytes_read"] <= npy_files * (5 * 2**20 + 4096) + 3 * metadata
    check_s3(s3_client, bucket, "out/", sets, listed, tmp_path)


def test_a_short_rest_beside_the_header_piece_joins_it(s3_endpoint, s3_client, bucket, tmp_path) -> None:
    """A cut 7.8 MiB into the rows leaves 2.8 MiB after the header's 5 MiB piece: too short to be copied,
    so it joins that piece (7.8 MiB fetched), rather than starting a second piece that would pull 5 MiB
    more from the range after the cut; that range (4.1 MiB, the file's last) is copied."""
    sets = [make_set_files(0, rows=4000, dim=768, dtype="float32", text=False)]  # rows of 3,072 bytes
    put_sets(s3_client, bucket, "in/", sets)
    listed = listed_of(sets, {0: [2650]})

    report = run_s3(f"s3://{bucket}/in/", s3_endpoint, tmp_path, listed, output=f"s3://{bucket}/out/")

    assert report.ok, [s.error for s in report.shards]
    assert {s.output_via for s in report.shards} == {"assembled"}
    metadata = len(sets[0]["metadata/metadata_0000.parquet"])
    assert report.totals["bytes_read"] <= 2650 * 3072 + 4096 + 3 * metadata
    check_s3(s3_client, bucket, "out/", sets, listed, tmp_path)


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(s3_endpoint)
    with serve(proxy.app()) as proxy.url:
        yield proxy


def test_refused_upload_part_copy_falls_back_to_streaming(proxy: FaultProxy, s3_client, bucket, tmp_path) -> None:
    proxy.rules = [Rule("UploadPartCopy", "*", "not-implemented")]
    sets = big_sets()
    put_sets(s3_client, bucket, "in/", sets)
    listed = listed_of(sets, {0: [10], 1: [3999]})

    report = run_s3(f"s3://{bucket}/in/", proxy.url, tmp_path, listed, output=f"s3://{bucket}/out/",
                    retries=1, retry_max_seconds=0.05)  # fmt: skip

    assert report.ok, [s.error for s in report.shards]
    assert {s.output_via for s in report.shards} == {"rewrite"}
    assert sum(n for (op, _), n in proxy.calls.items() if op == "UploadPartCopy") >= 1
    check_s3(s3_client, bucket, "out/", sets, listed, tmp_path)
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_faiss_index_drops_the_removed_vectors(tmp_path: Path) -> None:
    faiss = pytest.importorskip("faiss")
    root = tmp_path / "emb"
    sets = [make_set_files(i, rows=200, dim=32, dtype="float16") for i in range(3)]
    for files in sets:
        write_files(root, files)
    listed = listed_of(sets, {0: [0, 199], 1: [50, 51, 52], 2: [7]})
    removed_ids = tmp_path / "removed_ids.npy"
    blocklist = write_list(tmp_path / "list.txt", sorted(listed))
    report = streamfilter.run(str(root), blocklist=[str(blocklist)], format="embeddings", output=str(tmp_path / "out"),
                              removed_ids_out=str(removed_ids), quiet=True)  # fmt: skip
    assert report.ok
    # The index as autofaiss builds it from the uncleaned folder: files in name order, then rows.
    files = sorted((root / "img_emb").glob("*.npy"))
    vectors = np.concatenate([np.load(f) for f in files]).astype("float32")
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(32), 32, 4)
    index.train(vectors)
    index.add(vectors)
    index.nprobe = 4  # every list: exact answers

    index.remove_ids(np.load(removed_ids))  # the README's line

    removed = np.load(removed_ids)
    assert index.ntotal == len(vectors) - 6 == len(vectors) - len(removed)
    _, found = index.search(vectors[removed], 1)
    assert not set(found.ravel().tolist()) & set(removed.tolist())
    kept = np.setdiff1d(np.arange(len(vectors)), removed)[:50]
    _, found = index.search(vectors[kept], 1)
    assert found.ravel().tolist() == kept.tolist()
