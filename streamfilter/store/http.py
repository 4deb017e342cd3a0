"""HTTP(S) inputs through aiohttp: HEAD for size and version, Range GETs for bytes.

HTTP is read-only here: outputs, reports and listings need a store that can write
or list, so those operations fail with a message that says so.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime

import aiohttp

from ..errors import ShardError, UsageError, redact_uri
from .base import ObjectInfo, Store, Upload, check_length


class HttpStore(Store):
    writable = False

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self._headers = headers or {}
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=timeout)
        return self._session

    def _fail(self, what: str, uri: str, cause: str) -> ShardError:
        return ShardError(f"{what} {redact_uri(uri)} failed: {cause}")

    async def stat(self, uri: str) -> ObjectInfo:
        try:
            async with self._client().head(uri, allow_redirects=True) as resp:
                if resp.status == 404:
                    raise self._fail("HEAD", uri, "not found (HTTP 404)")
                if resp.status in (401, 403):
                    raise self._fail("HEAD", uri, f"HTTP {resp.status}; check --http-header credentials")
                if resp.status != 200 or resp.content_length is None:
                    raise self._fail("HEAD", uri, f"HTTP {resp.status} without a Content-Length")
                modified = resp.headers.get("Last-Modified")
                return ObjectInfo(
                    uri,
                    resp.content_length,
                    etag=resp.headers.get("ETag"),
                    mtime=parsedate_to_datetime(modified).timestamp() if modified else None,
                )
        except aiohttp.ClientError as exc:
            raise self._fail("HEAD", uri, f"{type(exc).__name__}: {exc}") from exc

    async def list(self, prefix: str) -> list[ObjectInfo]:
        raise UsageError(
            f"cannot list {redact_uri(prefix)}: HTTP has no listing; name the objects, "
            "use a brace range {00000..00127} or an @FILE manifest"
        )

    async def read_range(self, uri: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""  # an empty Range header is invalid; nothing to fetch
        headers = {"Range": f"bytes={start}-{end - 1}"}
        try:
            async with self._client().get(uri, headers=headers) as resp:
                if resp.status == 200 and start == 0:
                    data = (await resp.read())[:end]
                elif resp.status == 206:
                    data = await resp.read()
                else:
                    raise self._fail("GET", uri, f"HTTP {resp.status} for a Range request")
        except aiohttp.ClientError as exc:
            raise self._fail("GET", uri, f"{type(exc).__name__}: {exc}") from exc
        return check_length(uri, data, end - start)

    def open_write(self, uri: str) -> Upload:
        raise UsageError(f"cannot write {redact_uri(uri)}: HTTP is read-only here; write to s3:// or a local path")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
