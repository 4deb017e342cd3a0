"""HTTP(S) inputs through aiohttp: HEAD for size and version, Range GETs for bytes.

HTTP is read-only here: outputs, reports and listings need a store that can write
or list, so those operations fail with a message that says so.

Redirects are followed here, not by aiohttp, because aiohttp would send every
configured header except Authorization and Cookie on to another host, and would
follow https to http. We follow at most :data:`MAX_REDIRECTS`, never downgrade, and
send the ``--http-header`` values only to the origin (scheme, host, port) of the URI
they were given for.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from ..errors import UsageError, redact_uri
from .base import ObjectInfo, RetryPolicy, ShortRead, Store, Upload, check_length

MAX_REDIRECTS = 5
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
#: Statuses worth asking again: throttling, and the server or a gateway in front of it failing for now.
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


class BadStatus(Exception):
    """A reply whose status is not the one the request needs."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class RedirectRefused(Exception):
    """A redirect this store will not follow."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


def redirect_target(current: URL, location: str) -> URL:
    """Where a redirect from ``current`` leads, if it may be followed at all."""
    try:
        target = current.join(URL(location))
    except ValueError:
        raise RedirectRefused("redirected to an invalid URL") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise RedirectRefused("redirected to a URL that is not http(s)")
    if current.scheme == "https" and target.scheme != "https":
        raise RedirectRefused("redirected from https to plain http; refused")
    return target


def is_transient(exc: Exception) -> bool:
    if isinstance(exc, BadStatus):
        return exc.status in TRANSIENT_STATUS
    if isinstance(exc, aiohttp.ClientSSLError):
        return False  # a certificate problem does not go away by asking again
    # Refused or reset connections, timeouts, and bodies cut short of their Content-Length.
    return isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | TimeoutError | ShortRead)


def describe(exc: Exception) -> str:
    if isinstance(exc, BadStatus):
        if exc.status == 404:
            return "not found (HTTP 404)"
        if exc.status in (401, 403):
            return f"HTTP {exc.status}; check --http-header credentials"
    if isinstance(exc, BadStatus | RedirectRefused):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class HttpStore(Store):
    writable = False

    def __init__(self, headers: dict[str, str] | None = None, retry: RetryPolicy | None = None) -> None:
        self._headers = headers or {}
        self.retry = retry or RetryPolicy()
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
            # No session-wide headers: _send adds them per request, for their own origin only.
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def _send(self, method: str, uri: str, headers: dict[str, str], read: bool) -> Reply:
        """One request, redirects followed by the rules in the module docstring; the body read if ``read``."""
        url = URL(uri)
        origin = url.origin()
        for _ in range(MAX_REDIRECTS + 1):
            sent = {**(self._headers if url.origin() == origin else {}), **headers}
            async with self._client().request(method, url, headers=sent, allow_redirects=False) as resp:
                location = resp.headers.get("Location")
                if resp.status in REDIRECT_STATUS and location:
                    url = redirect_target(url, location)
                    continue
                body = await resp.read() if read and resp.status in (200, 206) else b""
                return Reply(resp.status, resp.headers, body)
        raise RedirectRefused(f"more than {MAX_REDIRECTS} redirects")

    async def stat(self, uri: str) -> ObjectInfo:
        async def head() -> ObjectInfo:
            reply = await self._send("HEAD", uri, {}, read=False)
            length = reply.headers.get("Content-Length")
            if reply.status != 200:
                raise BadStatus(reply.status, f"HTTP {reply.status}")
            if length is None or not length.isdigit():
                raise BadStatus(reply.status, "HTTP 200 without a Content-Length")
            modified = reply.headers.get("Last-Modified")
            return ObjectInfo(
                uri,
                int(length),
                etag=reply.headers.get("ETag"),
                mtime=parsedate_to_datetime(modified).timestamp() if modified else None,
            )

        return await self.retry.run(f"HEAD {redact_uri(uri)}", head, is_transient, describe)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        raise UsageError(
            f"cannot list {redact_uri(prefix)}: HTTP has no listing; name the objects, "
            "use a brace range {00000..00127} or an @FILE manifest"
        )

    async def read_range(self, uri: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""  # an empty Range header is invalid; nothing to fetch

        # The body is read and its length checked inside the attempt: a body cut short is retried like a reset.
        async def get() -> bytes:
            reply = await self._send("GET", uri, {"Range": f"bytes={start}-{end - 1}"}, read=True)
            if reply.status == 200 and start == 0:
                data = reply.body[:end]  # a server that ignores Range sends it all from byte 0
            elif reply.status == 206:
                data = reply.body
            else:
                raise BadStatus(reply.status, f"HTTP {reply.status} for a Range request")
            return check_length(uri, data, end - start)

        return await self.retry.run(f"GET {redact_uri(uri)}", get, is_transient, describe)

    def open_write(self, uri: str) -> Upload:
        raise UsageError(f"cannot write {redact_uri(uri)}: HTTP is read-only here; write to s3:// or a local path")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
