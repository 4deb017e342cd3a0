"""S3 endpoints that refuse operations moto accepts: every format still completes, exactly, and nothing hangs.

Real stores and IAM policies turn operations down: s3rver answers 501 NotImplemented to
UploadPartCopy and ListMultipartUploads and 405 to AbortMultipartUpload; a policy without
``s3:ListBucketMultipartUploads`` answers 403 to the listing. A proxy in front of the
loopback moto server refuses chosen operations for every key, and the CLI runs in a
subprocess with a timeout of its own, so a run that would hang fails the test instead.
Expected outputs come from pyarrow, tarfile and json, never from the engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from fault_proxy import FaultProxy, Rule
from helpers import (
    assert_same_table,
    put_table,
    random_strings,
    read_parquet,
    reference_filter,
    s3_get,
    s3_keys,
    s3_pending_uploads,
    sample,
    serve,
    shard_table,
    write_list,
)
from test_img2dataset import check_set, make_set
from wds_helpers import drop_listed, make_shard, reference_tar

from streamfilter.store.s3 import S3Store

#: A run that takes longer than this has hung (a healthy one takes seconds).
RUN_TIMEOUT = 240

LIST = Rule("ListMultipartUploads", "*", "not-implemented")
LIST_DENIED = Rule("ListMultipartUploads", "*", "denied")
PART_COPY = Rule("UploadPartCopy", "*", "not-implemented")
COPY = Rule("CopyObject", "*", "not-implemented")
ABORT = Rule("AbortMultipartUpload", "*", "not-allowed")
#: The inputs of the run over every format but img2dataset, under ``in/``.
FORMAT_INPUTS = ("big.parquet", "clean.parquet", "hits.jsonl", "clean.jsonl", "wds.tar")
CASES = {
    "list-not-implemented": [LIST],
    "list-denied": [LIST_DENIED],
    "upload-part-copy": [PART_COPY],
    "copy-object": [COPY],
    "abort": [ABORT],
    "all": [LIST, PART_COPY, COPY, ABORT],
}


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(s3_endpoint)
    with serve(proxy.app()) as proxy.url:
        yield proxy


def cli_run(*args: str, endpoint: str, report: Path) -> subprocess.CompletedProcess:
    """``streamfilter run`` in a subprocess; the timeout turns a hang into a failure."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT")}
    command = [sys.executable, "-m", "streamfilter.cli", "run", *args, "--s3-endpoint-url", endpoint]
    return subprocess.run(
        [*command, "--report", str(report), "--retries", "1", "--retry-max-seconds", "0.05"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env,
    )  # fmt: skip


def jsonl_bytes(urls: list[str]) -> bytes:
    return b"".join(json.dumps({"url": u, "n": i}).encode() + b"\n" for i, u in enumerate(urls))


def put_formats(client, bucket: str, tmp_path: Path) -> tuple[dict[str, bytes], set[str]]:
    """Under ``in/``: a Parquet shard big enough for a multipart output and a clean one, a JSON Lines
    shard with hits and a clean one, a WebDataset tar with hits; the listed keys."""
    # About 18 MB: its output is over S3Store.single_request_bytes, so a multipart upload.
    big = pa.table({"url": random_strings(240_000, 32, seed=5), "id": pa.array(range(240_000), pa.int64())})
    inputs = {
        "big.parquet": put_table(client, bucket, "in/big.parquet", big, compression="none", use_dictionary=False),
        "clean.parquet": put_table(client, bucket, "in/clean.parquet", shard_table(2000, start=10**6, seed=6)),
    }
    assert len(inputs["big.parquet"]) > S3Store.single_request_bytes + 1024 * 1024
    listed = set(sample(big["url"], 499, offset=7))
    urls = [f"https://jsonl.example/{i}" for i in range(300)]
    listed |= set(urls[::17])
    inputs["hits.jsonl"] = jsonl_bytes(urls)
    inputs["clean.jsonl"] = jsonl_bytes([f"https://clean.example/{i}" for i in range(50)])
    tar_urls = make_shard(tmp_path / "wds.tar", 40, seed=8)
    listed |= set(tar_urls[::9])
    inputs["wds.tar"] = (tmp_path / "wds.tar").read_bytes()
    for name in ("hits.jsonl", "clean.jsonl", "wds.tar"):
        client.put_object(Bucket=bucket, Key=f"in/{name}", Body=inputs[name])
    return inputs, listed


def check_formats(client, bucket: str, inputs: dict[str, bytes], listed: set[str], tmp_path: Path) -> None:
    for name in ("big.parquet", "clean.parquet"):
        expected = reference_filter(read_parquet(inputs[name]), listed)
        assert_same_table(read_parquet(s3_get(client, bucket, f"out/{name}")), expected)
    for name in ("hits.jsonl", "clean.jsonl"):
        lines = inputs[name].splitlines(keepends=True)
        kept = b"".join(line for line in lines if json.loads(line)["url"] not in listed)
        assert s3_get(client, bucket, f"out/{name}") == kept
    (tmp_path / "ref.tar").write_bytes(inputs["wds.tar"])
    _, expected_tar = reference_tar(tmp_path / "ref.tar", drop_listed(listed))
    assert s3_get(client, bucket, "out/wds.tar") == expected_tar


def run_every_format(client, bucket: str, endpoint: str, tmp_path: Path) -> tuple[dict[str, dict], str]:
    """Every format through ``endpoint`` into ``out/`` and ``clean-sets/``, each output checked against
    its reference; the report's shards, by input name, and what the runs wrote to stderr."""
    inputs, listed = put_formats(client, bucket, tmp_path)
    src = tmp_path / "sets"
    # Set 0: one cut in a tar of about 16 MiB (assembled where UploadPartCopy works); set 1: clean.
    sets = [make_set(src, i, n=16, jpg_sizes=(500_000, 1_500_000)) for i in range(2)]
    for path in sorted(src.iterdir()):
        client.put_object(Bucket=bucket, Key=f"sets/{path.name}", Body=path.read_bytes())
    set_listed = {sets[0][0][8]}
    blocklist = write_list(tmp_path / "list.txt", sorted(listed | set_listed))

    uris = [f"s3://{bucket}/in/{name}" for name in FORMAT_INPUTS]
    proc = cli_run(*uris, "--output", f"s3://{bucket}/out/", "--blocklist", str(blocklist), "--key", "url",
                   endpoint=endpoint, report=tmp_path / "formats.json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc_sets = cli_run(f"s3://{bucket}/sets/{{00000..00001}}.tar", "--format", "img2dataset",
                        "--output", f"s3://{bucket}/clean-sets/", "--blocklist", str(blocklist), "--key", "url",
                        endpoint=endpoint, report=tmp_path / "sets.json")  # fmt: skip
    assert proc_sets.returncode == 0, proc_sets.stderr

    check_formats(client, bucket, inputs, listed, tmp_path)
    for i, (_, table) in enumerate(sets):
        stem = f"{i:05d}"
        out = f"clean-sets/{stem}"
        stats = json.loads(s3_get(client, bucket, f"{out}_stats.json"))
        parquet = read_parquet(s3_get(client, bucket, f"{out}.parquet"))
        check_set(src, s3_get(client, bucket, f"{out}.tar"), parquet, stats, stem, table, set_listed)
    assert sorted(s3_keys(client, bucket, "out/")) == sorted(f"out/{name}" for name in FORMAT_INPUTS)
    shards = {Path(s["input"]).name: s for s in json.loads((tmp_path / "formats.json").read_text())["shards"]}
    shards |= {Path(s["input"]).name: s for s in json.loads((tmp_path / "sets.json").read_text())["shards"]}
    return shards, proc.stderr + proc_sets.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_format_completes_when_the_store_refuses(
    case: str, proxy: FaultProxy, s3_client, bucket: str, tmp_path: Path
) -> None:
    proxy.rules = list(CASES[case])
    shards, stderr = run_every_format(s3_client, bucket, proxy.url, tmp_path)

    # The path each output took says which capability was refused.
    copied = "byte_copy" if COPY in proxy.rules else "server_copy"
    assert {shards[n]["output_via"] for n in ("clean.parquet", "00001.tar")} == {copied}
    assert shards["00000.tar"]["output_via"] == ("rewrite" if PART_COPY in proxy.rules else "assembled")
    assert shards["big.parquet"]["output_via"] == "rewrite"

    # Learned once per run: a refusal is met again only by requests already in flight when it came.
    for rule in (LIST, LIST_DENIED, PART_COPY):
        if rule in proxy.rules:
            met = sum(n for (op, _), n in proxy.calls.items() if op == rule.operation)
            assert met <= 2, (rule, met)  # a listing per run; two parts in flight in the one assembly
    if LIST in proxy.rules or LIST_DENIED in proxy.rules:
        assert stderr.count("refused ListMultipartUploads") <= 2, stderr

    # No upload left behind, except the ones the report names because the store refused to abort them.
    abandoned = [u for s in shards.values() for u in s["abandoned_uploads"]]
    pending = {(u["Key"], u["UploadId"]) for u in s3_pending_uploads(s3_client, bucket)}
    assert pending == {(u["uri"].split("/", 3)[3], u["upload_id"]) for u in abandoned}
    # Only the refused assembly's upload, when its abort is refused too: the user must abort it.
    assert len(abandoned) == (ABORT in proxy.rules and PART_COPY in proxy.rules)


def test_every_format_completes_on_a_store_without_flexible_checksums(
    proxy: FaultProxy, s3_client, bucket: str, tmp_path: Path
) -> None:
    """botocore sends CRC32 checksum headers by default since 1.36, which B2, Qumulo and older Ceph and
    MinIO refuse; streamfilter asks for checksums only where S3 requires them."""
    proxy.refuse_checksums = True
    run_every_format(s3_client, bucket, proxy.url, tmp_path)  # every output checked against its reference
    assert proxy.injected["checksum-header"] == 0


def test_sigterm_ends_a_run_whose_request_never_returns(
    proxy: FaultProxy, s3_client, bucket: str, tmp_path: Path
) -> None:
    """A part upload that the store takes and never answers: SIGTERM still ends the run soon after the grace
    period (botocore alone would wait 60 s for the reply, then retry), with the upload aborted and a report."""
    _, listed = put_formats(s3_client, bucket, tmp_path)
    blocklist = write_list(tmp_path / "list.txt", sorted(listed))
    proxy.rules = [Rule("UploadPart", "out/big.parquet", "hang")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT")}
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "streamfilter.cli", "run", f"s3://{bucket}/in/big.parquet", "--output",
               f"s3://{bucket}/out/", "--blocklist", str(blocklist), "--key", "url", "--s3-endpoint-url", proxy.url,
               "--report", str(report), "--grace-seconds", "1"]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as run:
        for _ in range(600):  # until the part is held by the proxy (at most 60 s)
            if proxy.calls["UploadPart", "out/big.parquet"] or run.poll() is not None:
                break
            time.sleep(0.1)
        assert proxy.calls["UploadPart", "out/big.parquet"], run.communicate(timeout=10)
        run.send_signal(signal.SIGTERM)
        try:
            # Grace (1 s), give-up (2 s) and the abort: seconds. Without the cancellation, over 60 s.
            _, stderr = run.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            run.kill()
            pytest.fail("the run did not end within 45 s of SIGTERM")
    assert run.returncode == 143, stderr
    written = json.loads(report.read_text())
    assert written["interrupted"] and written["shards"][0]["status"] == "failed"
    assert "stopped by a signal" in written["shards"][0]["error"]
    assert s3_pending_uploads(s3_client, bucket) == []
    assert s3_keys(s3_client, bucket, "out/big.parquet") == []


def test_a_lost_completion_reply_commits_where_aborts_are_refused(
    proxy: FaultProxy, s3_client, bucket: str, tmp_path: Path
) -> None:
    """The completion succeeds with its reply lost, its retry meets NoSuchUpload, the object's ETag shows it
    whole; the courtesy abort that follows is refused (405): the output still counts as committed."""
    inputs, listed = put_formats(s3_client, bucket, tmp_path)
    blocklist = write_list(tmp_path / "list.txt", sorted(listed))
    proxy.complete_faults = ["lost"]
    proxy.rules = [ABORT]
    proc = cli_run(f"s3://{bucket}/in/big.parquet", "--output", f"s3://{bucket}/out/", "--blocklist", str(blocklist),
                   "--key", "url", endpoint=proxy.url, report=tmp_path / "report.json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proxy.injected["complete lost"] == 1
    (shard,) = json.loads((tmp_path / "report.json").read_text())["shards"]
    assert shard["status"] == "done" and shard["abandoned_uploads"] == []
    expected = reference_filter(read_parquet(inputs["big.parquet"]), listed)
    assert_same_table(read_parquet(s3_get(s3_client, bucket, "out/big.parquet")), expected)
    assert s3_pending_uploads(s3_client, bucket) == []
