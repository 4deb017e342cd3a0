"""The S3 tests' scenario against a second S3 implementation: s3rver, the npm package, on loopback.

s3rver checks request signatures (its own key pair, S3RVER/S3RVER) and does not
implement everything moto does: it answers 501 NotImplemented to UploadPartCopy and
ListMultipartUploads. Every format must still come out exact, through the fallbacks.
Skipped, with the reason, where Node.js or npm is missing or s3rver cannot be installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from test_refused import run_every_format

#: Pinned: its quirks are what this test knows of it.
S3RVER = "s3rver@3.7.1"
SERVE_JS = Path(__file__).parent / "s3rver" / "serve.js"
#: s3rver's built-in credentials; it refuses requests signed with any other.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "S3RVER", "AWS_SECRET_ACCESS_KEY": "S3RVER"}


def s3rver_modules() -> Path:
    """node_modules holding s3rver: installed once into a cache folder (``STREAMFILTER_NPM_CACHE``)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("s3rver tests need Node.js and npm, which this machine lacks")
    root = Path(os.environ.get("STREAMFILTER_NPM_CACHE", Path.home() / ".cache" / "streamfilter-tests" / "npm"))
    modules = root / "node_modules"
    if not (modules / "s3rver" / "package.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(
                ["npm", "install", "--prefix", str(root), "--no-audit", "--no-fund", "--silent", S3RVER],
                check=True, capture_output=True, timeout=600,
            )  # fmt: skip
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip(f"s3rver could not be installed from npm ({type(exc).__name__})")
    return modules


@pytest.fixture(scope="module")
def s3rver_endpoint(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[str]:
    """An s3rver on a free loopback port, storing under a temp folder; yields its endpoint URL.

    ``s3_endpoint`` is asked for only for the test environment it sets up (no real account, no ~/.aws).
    """
    modules = s3rver_modules()
    data = tmp_path_factory.mktemp("s3rver")
    env = {**os.environ, "NODE_PATH": str(modules)}
    with subprocess.Popen(
        ["node", str(SERVE_JS), str(data)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    ) as server:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        assert port.isdigit(), "s3rver did not start"
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            assert server.stdin is not None
            server.stdin.close()  # serve.js closes the server and exits
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()


def test_every_format_on_s3rver(s3rver_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_SECURITY_TOKEN", raising=False)
    # A session of its own: boto3.client() would reuse the default session, whose credentials (moto's) are
    # resolved once, by the first test that made a client, whatever the environment says now.
    client = boto3.session.Session().client("s3", endpoint_url=s3rver_endpoint, region_name="us-east-1")
    bucket = f"sf-test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)

    shards, stderr = run_every_format(client, bucket, s3rver_endpoint, tmp_path)

    # s3rver copies objects but not ranges: the clean sets are copied server-side, the cut tar is streamed.
    assert shards["clean.parquet"]["output_via"] == "server_copy"
    assert shards["00001.tar"]["output_via"] == "server_copy"
    assert shards["00000.tar"]["output_via"] == "rewrite"
    assert "refused UploadPartCopy" in stderr
    # s3rver answers 405 to AbortMultipartUpload too: the assembly's upload is named for the user to clean up.
    abandoned = [(name, u["uri"]) for name, s in shards.items() for u in s["abandoned_uploads"]]
    assert abandoned == [("00000.tar", f"s3://{bucket}/clean-sets/00000.tar")], abandoned
