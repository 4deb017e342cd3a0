"""Secrets and blocklist keys never leave the process: not in output, logs, tracebacks, reports or receipts.

Every run here carries distinctive fake secrets (AWS credentials in the environment, a
signed query string and user info in URLs, a bearer token from ``--http-header``) and
distinctive list keys that match no row, so none of them can legitimately be in any
output. Each run is then searched everywhere it could have written: stdout, stderr with
``--verbose`` tracebacks, the log, the report and every object under the output prefix
(receipts included), names as well as contents.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard
from conftest import HTTP_TOKEN
from helpers import parquet_bytes, s3_pending_uploads, shard_table, write_list, write_shard

import streamfilter
from streamfilter import cli
from streamfilter.errors import ShardError, redact_text, redact_uri

FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "AKIASFLEAKCHECK7Q2X9",
    "AWS_SECRET_ACCESS_KEY": "sfLeakCheckSecretAccessKey4d1cZq",
    "AWS_SESSION_TOKEN": "sfLeakCheckSessionToken88ab",
    "AWS_SECURITY_TOKEN": "sfLeakCheckSessionToken88ab",  # the legacy name; botocore reads it first
}
SIGNATURE = "SECRETSIG0a1b2c3d4e5f6a7b8c9d"
URL_TOKEN = "urltokLEAKCHECK6e7f"
URL_PASSWORD = "urlpassLEAKCHECK31"
WRONG_TOKEN = "wrongbearerLEAKCHECK52"
#: A query string as a presigned S3 URL carries it (the server ignores it and serves the path).
SIGNED = f"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature={SIGNATURE}&token={URL_TOKEN}"
#: Keys of no row of :func:`shard_table`: in deny mode they cannot be in any output, data included.
LISTED = [f"https://listed.invalid/LEAKCHECK-key-{i:04d}.jpg" for i in range(5)]

SECRETS = {
    "AWS access key id": FAKE_AWS["AWS_ACCESS_KEY_ID"],
    "AWS secret key": FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
    "AWS session token": FAKE_AWS["AWS_SESSION_TOKEN"],
    "URL signature": SIGNATURE,
    "URL token": URL_TOKEN,
    "URL password": URL_PASSWORD,
    "bearer token": HTTP_TOKEN,
    "wrong bearer token": WRONG_TOKEN,
    "blocklist key": "LEAKCHECK-key",  # every listed key holds it
}
TOKEN_VAR = "SF_LEAKCHECK_TOKEN"


@dataclass
class Outputs:
    """Everything one run left behind, by where it was found."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, where: str, content: str | bytes) -> None:
        self.texts[where] = content.decode("latin-1") if isinstance(content, bytes) else content

    def add_tree(self, root: Path) -> None:
        """Every file below ``root``, hidden ones and receipts included: its name and its bytes."""
        for path in sorted(root.rglob("*")) if root.exists() else []:
            rel = path.relative_to(root).as_posix()
            self.add(f"name of {rel}", rel)
            if path.is_file():
                self.add(rel, path.read_bytes())

    def add_s3(self, client, bucket: str, prefix: str) -> None:
        resp = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
        for obj in resp.get("Contents", []):
            self.add(f"name of s3 {obj['Key']}", obj["Key"])
            self.add(f"s3 {obj['Key']}", client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())

    def leaks(self) -> list[str]:
        return [f"{name} in {where}" for where, text in self.texts.items() for name, s in SECRETS.items() if s in text]


def run_in_process(args: list[str], capsys, caplog) -> tuple[int, Outputs]:
    """``cli.main`` with ``--verbose``; the streamfilter logger's debug lines and tracebacks are captured."""
    caplog.set_level(logging.DEBUG, logger="streamfilter")
    code = cli.main(["run", *args, "--verbose"])
    captured = capsys.readouterr()
    found = Outputs()
    found.add("stdout", captured.out)
    found.add("stderr", captured.err)
    found.add("log", caplog.text)
    return code, found


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT")}
    # The checkout under test, wherever pytest was started from.
    env["PYTHONPATH"] = str(Path(streamfilter.__file__).resolve().parents[1])
    return {**env, **extra}


def run_subprocess(args: list[str], env: dict[str, str]) -> tuple[int, Outputs]:
    proc = subprocess.run(
        [sys.executable, "-m", "streamfilter.cli", "run", *args, "--verbose"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    found = Outputs()
    found.add("stdout", proc.stdout)
    found.add("stderr", proc.stderr)
    return proc.returncode, found


def serve_inputs(http_server) -> tuple[Path, str, str]:
    """A public directory with a good, a corrupt and (by name) a missing shard, and a private one."""
    served, base = http_server.dir()
    write_shard(served / "good.parquet", shard_table(1200, seed=61), row_group_size=400)
    (served / "corrupt.parquet").write_bytes(b"PAR1" + b"\x00garbage" * 200 + b"PAR1")
    private, private_base = http_server.dir(private=True)
    write_shard(private / "p.parquet", shard_table(800, start=5000, seed=62))
    write_list(served / "list.txt", ["# keys", *LISTED])
    return served, base, private_base


def http_run_args(base: str, private_base: str, out: Path, report: Path) -> list[str]:
    return [
        base + "good.parquet",
        base + "corrupt.parquet",
        base + "gone.parquet",
        private_base + "p.parquet",
        "--output",
        str(out),
        "--blocklist",
        base + "list.txt" + SIGNED,
        "--report",
        str(report),
        "--http-header",
        f"Authorization: Bearer ${TOKEN_VAR}",
    ]


def check_http_run(code: int, found: Outputs, out: Path, report: Path) -> None:
    assert code == 1, found.texts["stderr"]
    shards = {s["input"].rsplit("/", 1)[-1]: s for s in json.loads(report.read_text())["shards"]}
    assert {n: s["status"] for n, s in shards.items()} == {
        "good.parquet": "done",
        "corrupt.parquet": "failed",
        "gone.parquet": "failed",
        "p.parquet": "done",
    }
    found.add("report", report.read_text())
    found.add_tree(out)
    assert found.leaks() == []


# --- HTTP: signed list URL, bearer token, failing shards ----------------------------------------------


def test_http_run_leaks_nothing(http_server, tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    _, base, private_base = serve_inputs(http_server)
    monkeypatch.setenv(TOKEN_VAR, HTTP_TOKEN)
    out, report = tmp_path / "out", tmp_path / "report.json"

    code, found = run_in_process(http_run_args(base, private_base, out, report), capsys, caplog)

    check_http_run(code, found, out, report)


def test_http_run_in_a_subprocess_leaks_nothing(http_server, tmp_path: Path) -> None:
    _, base, private_base = serve_inputs(http_server)
    out, report = tmp_path / "out", tmp_path / "report.json"
    env = subprocess_env(**{TOKEN_VAR: HTTP_TOKEN}, **FAKE_AWS)

    code, found = run_subprocess(http_run_args(base, private_base, out, report), env)

    assert "Traceback" in found.texts["stderr"]  # --verbose: the failing shards' tracebacks are in the search
    check_http_run(code, found, out, report)


def test_wrong_bearer_token_leaks_nothing(http_server, tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    _, base, private_base = serve_inputs(http_server)
    monkeypatch.setenv(TOKEN_VAR, WRONG_TOKEN)
    out, report = tmp_path / "out", tmp_path / "report.json"

    code, found = run_in_process(
        [
            private_base + "p.parquet",
            "--output",
            str(out),
            "--blocklist",
            base + "list.txt" + SIGNED,
            "--report",
            str(report),
            "--http-header",
            f"Authorization: Bearer ${TOKEN_VAR}",
        ],
        capsys,
        caplog,
    )

    assert code == 1
    (shard,) = json.loads(report.read_text())["shards"]
    assert "401" in shard["error"]
    found.add("report", report.read_text())
    found.add_tree(out)
    assert found.leaks() == []


def test_signed_input_url_leaks_nothing(http_server, tmp_path: Path, capsys, caplog) -> None:
    """A presigned input URL; whether it is accepted or refused, its signature goes nowhere."""
    _, base, _ = serve_inputs(http_server)
    out, report = tmp_path / "out", tmp_path / "report.json"
    blocklist = write_list(tmp_path / "list.txt", LISTED)

    code, found = run_in_process(
        [
            base + "good.parquet" + SIGNED,
            "--format",
            "parquet",
            "--output",
            str(out),
            "--blocklist",
            str(blocklist),
            "--report",
            str(report),
        ],
        capsys,
        caplog,
    )

    assert code in (0, 1, 2)
    if report.exists():
        found.add("report", report.read_text())
    found.add_tree(out)
    assert found.leaks() == []


def test_compressed_lists_behind_signed_urls_load(http_server, tmp_path: Path) -> None:
    """A signed URL's query is no part of the name: ``.txt.gz?sig`` is gzip, ``.csv.zst?sig:col`` a CSV column."""
    served, base = http_server.dir()
    table = shard_table(1000, seed=60)
    first, second = table["url"].to_pylist()[::50], table["url"].to_pylist()[7::50]
    (served / "a.txt.gz").write_bytes(gzip.compress(("\n".join(first) + "\n").encode()))
    csv = "why,link\n" + "".join(f"x,{key}\n" for key in second)
    (served / "b.csv.zst").write_bytes(zstandard.ZstdCompressor().compress(csv.encode()))
    src = write_shard(tmp_path / "in" / "s.parquet", table)

    report = streamfilter.run(
        [str(src)],
        output=str(tmp_path / "out"),
        blocklist=[base + "a.txt.gz" + SIGNED, base + "b.csv.zst" + SIGNED + ":link"],
        quiet=True,
    )

    assert report.ok
    assert report.set_size == len(set(first + second))
    assert report.shards[0].rows_removed == len(set(first + second))
    assert SIGNATURE not in report.to_json()


# --- lists that cannot be used: the message names the list, never its keys or its URL's secrets ----------


def failing_lists(tmp_path: Path, base: str, private_base: str) -> dict[str, str]:
    good = LISTED[0]
    (tmp_path / "bad-row.csv").write_text(f"url,why\n{LISTED[1]},x\n{good},one,too many\n")
    (tmp_path / "headerless.csv").write_text("\n".join(LISTED) + "\n")
    (tmp_path / "plain-named.txt.gz").write_text("\n".join(LISTED) + "\n")
    (tmp_path / "latin1.txt").write_bytes(f"{LISTED[2]}\ncaf\xe9 {LISTED[3]}\n".encode("latin-1"))
    (tmp_path / "truncated.txt.zst").write_bytes(zstandard.ZstdCompressor().compress("\n".join(LISTED).encode())[:-6])
    return {
        "missing over signed HTTP": base + "none.txt" + SIGNED,
        "401 over signed HTTP": private_base + "list.txt" + SIGNED,
        "user info over HTTP": base.replace("http://", f"http://leakuser:{URL_PASSWORD}@") + "none.txt",
        "csv row with too many fields": f"{tmp_path}/bad-row.csv:url",
        "csv without a header row": f"{tmp_path}/headerless.csv:url",
        "plain text named .gz": str(tmp_path / "plain-named.txt.gz"),
        "not UTF-8": str(tmp_path / "latin1.txt"),
        "truncated zstd": str(tmp_path / "truncated.txt.zst"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing over signed HTTP",
        "401 over signed HTTP",
        "user info over HTTP",
        "csv row with too many fields",
        "csv without a header row",
        "plain text named .gz",
        "not UTF-8",
        "truncated zstd",
    ],
)
def test_unusable_list_leaks_nothing(http_server, tmp_path: Path, capsys, caplog, case: str) -> None:
    _, base, private_base = serve_inputs(http_server)
    src = write_shard(tmp_path / "in" / "s.parquet", shard_table(100, seed=63))
    source = failing_lists(tmp_path, base, private_base)[case]

    code, found = run_in_process(
        [str(src), "--output", str(tmp_path / "out"), "--blocklist", source, "--report", str(tmp_path / "r.json")],
        capsys,
        caplog,
    )

    assert code == 2
    assert found.texts["stderr"].startswith("streamfilter: error: ")
    assert "Traceback" in found.texts["log"]  # --verbose: the traceback is part of the search
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.json").exists()
    assert found.leaks() == []


# --- S3 with credentials in the environment ---------------------------------------------------------------


def put_s3_inputs(client, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="in/good.parquet", Body=parquet_bytes(shard_table(1500, seed=64)))
    client.put_object(Bucket=bucket, Key="in/corrupt.parquet", Body=b"PAR1" + b"\x01" * 500 + b"PAR1")
    client.put_object(Bucket=bucket, Key="lists/keys.txt.gz", Body=gzip.compress("\n".join(LISTED).encode()))


def s3_run_args(bucket: str, endpoint: str, extra_list: str) -> list[str]:
    return [
        f"s3://{bucket}/in/good.parquet",
        f"s3://{bucket}/in/corrupt.parquet",
        f"s3://{bucket}/in/missing.parquet",
        "--output",
        f"s3://{bucket}/out/",
        "--blocklist",
        f"s3://{bucket}/lists/keys.txt.gz",
        "--blocklist",
        extra_list,
        "--report",
        f"s3://{bucket}/reports/run.json",
        "--s3-endpoint-url",
        endpoint,
    ]


def check_s3_run(code: int, found: Outputs, client, bucket: str) -> None:
    assert code == 1, found.texts["stderr"]
    report = client.get_object(Bucket=bucket, Key="reports/run.json")["Body"].read()
    statuses = {s["input"]: s["status"] for s in json.loads(report)["shards"]}
    assert statuses == {
        f"s3://{bucket}/in/good.parquet": "done",
        f"s3://{bucket}/in/corrupt.parquet": "failed",
        f"s3://{bucket}/in/missing.parquet": "failed",
    }
    assert s3_pending_uploads(client, bucket) == []
    found.add_s3(client, bucket, "reports/")
    found.add_s3(client, bucket, "out/")


def test_s3_run_with_credentials_leaks_nothing(
    s3_endpoint, s3_client, bucket, http_server, monkeypatch, capsys, caplog
) -> None:
    for name, value in FAKE_AWS.items():
        monkeypatch.setenv(name, value)  # moto accepts any credentials
    put_s3_inputs(s3_client, bucket)
    served, base = http_server.dir()
    write_list(served / "more.txt", LISTED[2:])
    # User info and a signed query in one list URL (the test server ignores both).
    signed_list = base.replace("http://", f"http://leakuser:{URL_PASSWORD}@") + "more.txt" + SIGNED

    code, found = run_in_process(s3_run_args(bucket, s3_endpoint, signed_list), capsys, caplog)

    check_s3_run(code, found, s3_client, bucket)
    assert found.leaks() == []


@pytest.fixture(scope="module")
def s3_subprocess_run(s3_endpoint, s3_client, http_server) -> tuple[int, Outputs]:
    """One ``--verbose`` run in a subprocess whose environment holds the fake credentials."""
    bucket = "sf-test-leakcheck-subprocess"
    s3_client.create_bucket(Bucket=bucket)
    put_s3_inputs(s3_client, bucket)
    served, base = http_server.dir()
    write_list(served / "more.txt", LISTED[2:])
    args = s3_run_args(bucket, s3_endpoint, base + "more.txt" + SIGNED)

    code, found = run_subprocess(args, subprocess_env(**FAKE_AWS))

    check_s3_run(code, found, s3_client, bucket)
    return code, found


def test_s3_subprocess_outputs_and_report_leak_nothing(s3_subprocess_run) -> None:
    _, found = s3_subprocess_run
    assert [leak for leak in found.leaks() if not leak.endswith(" in stderr")] == []


def test_s3_subprocess_verbose_stderr_leaks_nothing(s3_subprocess_run) -> None:
    _, found = s3_subprocess_run
    assert "Traceback" in found.texts["stderr"]
    assert found.leaks() == []


# --- the redaction every message goes through ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (f"https://h.example/a/b.parquet{SIGNED}", "https://h.example/a/b.parquet?…"),
        (f"http://leakuser:{URL_PASSWORD}@h.example:8080/x.txt", "http://h.example:8080/x.txt"),
        (f"HTTPS://u:{URL_PASSWORD}@h.example/x.txt{SIGNED}#frag", "https://h.example/x.txt?…"),
        (f"s3://bucket/key.parquet?versionId=v1&token={URL_TOKEN}", "s3://bucket/key.parquet?…"),
        (f"https://h.example/x.txt#token={URL_TOKEN}", "https://h.example/x.txt"),
        ("s3://bucket/plain/key.parquet", "s3://bucket/plain/key.parquet"),
        ("/local/path/with?question.parquet", "/local/path/with?question.parquet"),
    ],
)
def test_redact_uri(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


def test_library_text_inside_a_message_is_redacted() -> None:
    """aiohttp and botocore name the URL they failed on, query included; quoting them must not leak it."""
    signed = f"https://h.example/x.parquet{SIGNED}"
    library = f"ClientResponseError: 403, message='Forbidden', url='{signed}'"
    error = ShardError(f"GET {redact_uri(signed)} failed: {library} (see {signed}).\nretry")

    text = str(error)

    assert text == (
        "GET https://h.example/x.parquet?… failed: ClientResponseError: 403, message='Forbidden', "
        "url='https://h.example/x.parquet?…' (see https://h.example/x.parquet?…). retry"
    )
    assert SIGNATURE not in repr(error) and URL_TOKEN not in repr(error)
    assert (
        redact_text(f"a http://u:{URL_PASSWORD}@h/p, and s3://b/k?t={URL_TOKEN}; done")
        == "a http://h/p, and s3://b/k?…; done"
    )


def test_user_info_input_url_leaks_nothing(http_server, tmp_path: Path, capsys, caplog) -> None:
    _, base, _ = serve_inputs(http_server)
    out, report = tmp_path / "out", tmp_path / "report.json"
    blocklist = write_list(tmp_path / "list.txt", LISTED)

    code, found = run_in_process(
        [
            base.replace("http://", f"http://leakuser:{URL_PASSWORD}@") + "good.parquet",
            "--output",
            str(out),
            "--blocklist",
            str(blocklist),
            "--report",
            str(report),
        ],
        capsys,
        caplog,
    )

    assert code == 0, found.texts["stderr"]
    found.add("report", report.read_text())
    found.add_tree(out)
    assert found.leaks() == []
