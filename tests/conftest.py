"""Loopback servers the integration tests run against: a moto S3 endpoint and an aiohttp file server.

Both are real network servers on 127.0.0.1 with ephemeral ports, started once per
session and stopped at the end. Each test gets its own bucket / directory so tests
stay independent of each other's objects.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from aiohttp import web
from helpers import serve
from moto.server import ThreadedMotoServer

#: Paths under this prefix of the HTTP server require ``Authorization: Bearer <HTTP_TOKEN>``.
PRIVATE_PREFIX = "/private/"
HTTP_TOKEN = "tok-9f8e7d6c5b4a-not-a-real-secret"

_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
#: Variables that would point the code at a real account or another endpoint.
_AWS_UNSET = (
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server on loopback; yields its endpoint URL."""
    mp = pytest.MonkeyPatch()
    for name, value in _AWS_ENV.items():
        mp.setenv(name, value)
    for name in _AWS_UNSET:
        mp.delenv(name, raising=False)
    # No ~/.aws files may leak in: point the config lookups at empty files.
    empty = tmp_path_factory.mktemp("aws") / "empty"
    empty.write_text("")
    mp.setenv("AWS_CONFIG_FILE", str(empty))
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        mp.undo()


@pytest.fixture(scope="session")
def s3_client(s3_endpoint: str):
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3_client) -> str:
    """A fresh, empty bucket for one test."""
    name = f"sf-test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


@dataclass
class HttpServer:
    root: Path
    url: str

    def dir(self, name: str | None = None, private: bool = False) -> tuple[Path, str]:
        """A fresh directory served by this server, and its base URL (ending in '/')."""
        name = name or uuid.uuid4().hex[:12]
        rel = (PRIVATE_PREFIX.strip("/") + "/" + name) if private else name
        path = self.root / rel
        path.mkdir(parents=True)
        return path, f"{self.url}/{rel}/"


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    """aiohttp's static file handler (HEAD and Range supported) over a temp dir, in its own thread.

    Everything under ``/private/`` answers 401 unless the request carries the bearer token.
    """
    root = tmp_path_factory.mktemp("http-root")
    (root / PRIVATE_PREFIX.strip("/")).mkdir()

    @web.middleware
    async def require_token(request: web.Request, handler):
        authorized = request.headers.get("Authorization") == f"Bearer {HTTP_TOKEN}"
        if request.path.startswith(PRIVATE_PREFIX) and not authorized:
            return web.Response(status=401, text="unauthorized")
        return await handler(request)

    app = web.Application(middlewares=[require_token])
    app.router.add_static("/", root)
    with serve(app) as url:
        yield HttpServer(root, url)


@pytest.fixture(autouse=True)
def _no_stray_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests always name the S3 endpoint explicitly; an inherited one must not stand in for it."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cwd_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reverse-order",
        action="store_true",
        help="run the collected tests last to first: a test that needs another to run before it fails",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--reverse-order"):
        items.reverse()


def pytest_configure(config: pytest.Config) -> None:
    # A test must never reach a real AWS account, whatever the machine's environment.
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
