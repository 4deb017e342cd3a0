"""A fault-injecting proxy in front of a loopback S3 (or HTTP) server, for the reliability tests.

It forwards every request to the real server and, on a schedule drawn from
``random.Random`` seeded per request (seed, request, how often it was seen), answers
some with 503 SlowDown, drops the connection without a reply, cuts a reply's body short
of its Content-Length, or delays it; it fails chosen CompleteMultipartUpload and
CreateMultipartUpload calls, before forwarding them or after (the store acts, the reply
is lost); and its persistent :class:`Rule` s refuse an operation for one key or for all
(``key="*"``), as stores and IAM policies that lack a capability do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import Counter
from collections.abc import AsyncIterator

from aiohttp import ClientSession, web
from multidict import CIMultiDict
from yarl import URL

#: Request headers that concern one hop, not the request; Content-Length is set anew, Expect answered here.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "expect", "content-length"}
)
#: How long a request the ``hang`` rule holds goes unanswered: longer than botocore's read timeout.
HANG_SECONDS = 90.0
S3_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>{code}</Code><Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
)
ERRORS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "unavailable": (503, "ServiceUnavailable", "Service is unable to handle request."),
    "internal": (500, "InternalError", "We encountered an internal error. Please try again."),
    "denied": (403, "AccessDenied", "Access Denied"),
    "no-upload": (404, "NoSuchUpload", "The specified upload does not exist."),
    # How s3rver turns down what it does not implement (UploadPartCopy, ListMultipartUploads; abort: 405).
    "not-implemented": (501, "NotImplemented", "A header you provided implies functionality that is not implemented."),
    "not-allowed": (405, "MethodNotAllowed", "The specified method is not allowed against this resource."),
    # How Backblaze B2, Qumulo and older S3-compatible stores answer botocore's flexible checksums.
    "checksum-header": (400, "InvalidArgument", "Unsupported header 'x-amz-sdk-checksum-algorithm' received."),
}
#: Request headers of S3's flexible checksums (botocore sends them by default since 1.36).
CHECKSUM_HEADERS = ("x-amz-sdk-checksum-algorithm", "x-amz-trailer", "x-amz-checksum-")


def operation(request: web.Request) -> str:
    """The S3 API call a request makes (path-style addressing)."""
    query, method = request.query, request.method
    if method == "POST" and "uploads" in query:
        return "CreateMultipartUpload"
    if method == "POST" and "uploadId" in query:
        return "CompleteMultipartUpload"
    copy = "x-amz-copy-source" in request.headers
    if "uploadId" in query:
        upload_part = "UploadPartCopy" if copy else "UploadPart"
        return {"PUT": upload_part, "DELETE": "AbortMultipartUpload"}.get(method, method)
    if method == "GET" and "uploads" in query:
        return "ListMultipartUploads"
    if method == "GET" and ("list-type" in query or not object_key(request)):
        return "List"
    if method == "PUT" and copy:
        return "CopyObject"
    return {"GET": "GetObject", "HEAD": "HeadObject", "PUT": "PutObject"}.get(method, method)


def object_key(request: web.Request) -> str:
    """The path after the bucket (S3), or after the first segment (HTTP)."""
    return request.path.lstrip("/").partition("/")[2]


def s3_error(kind: str) -> web.Response:
    status, code, message = ERRORS[kind]
    return web.Response(
        status=status, body=S3_ERROR.format(code=code, message=message).encode(), content_type="application/xml"
    )


def drop(request: web.Request) -> web.Response:
    """Close the connection without a reply; the placeholder returned goes nowhere."""
    assert request.transport is not None
    request.transport.abort()
    return web.Response(status=599)


@dataclasses.dataclass(frozen=True)
class Rule:
    """A persistent fault: every request for ``operation`` on ``key`` (any key: ``*``) gets the error ``kind``."""

    operation: str
    key: str
    kind: str


class FaultProxy:
    """An HTTP proxy that forwards to ``upstream`` and injects faults; run its :meth:`app` with :func:`serve`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.url = ""  # set once it is served
        self.seed = 0
        self.rates: dict[str, float] = {}
        #: One per CompleteMultipartUpload, in order: "failed" (before forwarding) or "lost" (after).
        self.complete_faults: list[str] = []
        #: One per CreateMultipartUpload, in order: "lost" (the upload is created, the reply dropped).
        self.create_faults: list[str] = []
        self.rules: list[Rule] = []
        #: Refuse every request carrying a flexible-checksum header, as stores without them do.
        self.refuse_checksums = False
        #: Seconds each request of an operation is held before it is forwarded (a slow store's latency).
        self.hold: dict[str, float] = {}
        #: Requests of each operation being answered now, and the most there were at once.
        self.in_flight: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        #: Requests of one operation that arrived while a request of another was in flight: (new, other).
        self.during: Counter[tuple[str, str]] = Counter()
        #: Faults actually injected, by kind; requests seen, by (operation, key).
        self.injected: Counter[str] = Counter()
        self.calls: Counter[tuple[str, str]] = Counter()
        self._seen: Counter[str] = Counter()
        self._completed: set[str] = set()
        self._session: ClientSession | None = None

    def schedule(self, seed: int, rates: dict[str, float] | None = None) -> None:
        """A new schedule of random faults (none for ``rates=None``); everything else starts afresh."""
        self.seed, self.rates = seed, dict(rates or {})
        self.complete_faults, self.create_faults, self.rules = [], [], []
        self.injected, self.calls, self._seen, self._completed = Counter(), Counter(), Counter(), set()

    @property
    def requests(self) -> int:
        return sum(self.calls.values())

    def _draw(self, request: web.Request, op: str) -> tuple[str | None, random.Random]:
        """The fault for this request: a function of the seed, the request, and its repetition."""
        # Not the bucket: its name is random per test.
        ident = f"{op} {object_key(request)} {request.headers.get('Range', '')} {request.query.get('partNumber', '')}"
        self._seen[ident] += 1
        rng = random.Random(f"{self.seed}|{ident}|{self._seen[ident]}")
        draw, edge = rng.random(), 0.0
        for kind, rate in self.rates.items():
            edge += rate
            if draw < edge:
                return kind, rng
        return None, rng

    async def handle(self, request: web.Request) -> web.StreamResponse:
        op = operation(request)
        self.during.update((op, other) for other, n in self.in_flight.items() if n and other != op)
        self.in_flight[op] += 1
        self.peak[op] = max(self.peak[op], self.in_flight[op])
        try:
            if op in self.hold:
                await asyncio.sleep(self.hold[op])
            return await self._handle(request, op)
        finally:
            self.in_flight[op] -= 1

    async def _handle(self, request: web.Request, op: str) -> web.StreamResponse:
        key = object_key(request)
        self.calls[op, key] += 1
        body = await request.read()
        if self.refuse_checksums and any(h.lower().startswith(CHECKSUM_HEADERS) for h in request.headers):
            self.injected["checksum-header"] += 1
            return s3_error("checksum-header")
        for rule in self.rules:
            if rule.operation == op and rule.key in (key, "*"):
                self.injected[f"persistent {rule.kind}"] += 1
                if rule.kind == "hang":  # a store that takes the request and never answers (bounded here)
                    await asyncio.sleep(HANG_SECONDS)
                    return drop(request)
                return s3_error(rule.kind)
        if op == "CompleteMultipartUpload":
            upload_id = request.query["uploadId"]
            if upload_id in self._completed:
                # The upload was consumed by the completion whose reply we dropped: a retry meets
                # NoSuchUpload, as on AWS or MinIO (moto alone would answer 200 again).
                return s3_error("no-upload")
            if self.complete_faults:
                fault = self.complete_faults.pop(0)
                self.injected[f"complete {fault}"] += 1
                if fault == "failed":
                    return s3_error("internal")
                await self._forward(request, body)
                self._completed.add(upload_id)
                return drop(request)
        if op == "CreateMultipartUpload" and self.create_faults:
            self.injected[f"create {self.create_faults.pop(0)}"] += 1
            await self._forward(request, body)  # the store starts an upload whose id the client never learns
            return drop(request)
        kind, rng = self._draw(request, op)
        if kind == "slowdown":
            self.injected[kind] += 1
            return s3_error("slowdown")
        if kind == "reset":
            self.injected[kind] += 1
            return drop(request)
        if kind == "delay":
            self.injected[kind] += 1
            await asyncio.sleep(rng.uniform(0.05, 0.3))
        status, headers, payload, length = await self._forward(request, body)
        if kind == "truncate" and request.method == "GET" and len(payload) > 1:
            self.injected[kind] += 1
            # The whole length announced, part of the body sent, then the connection closed.
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = len(payload)
            await response.prepare(request)
            await response.write(payload[: rng.randrange(1, len(payload))])
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=599)
        if request.method == "HEAD":  # no body, but the object's length
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = int(length)
            await response.prepare(request)
            return response
        return web.Response(status=status, headers=headers, body=payload)

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, CIMultiDict[str], bytes, str]:
        """The upstream's reply: status, end-to-end headers, body, and Content-Length."""
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        url = URL(self.upstream + request.raw_path, encoded=True)
        async with self._session.request(
            request.method, url, headers=headers, data=body or None, allow_redirects=False, auto_decompress=False
        ) as resp:
            payload = await resp.read()
            kept = CIMultiDict((k, v) for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP)
            return resp.status, kept, payload, resp.headers.get("Content-Length", "0")

    def app(self) -> web.Application:
        # Parts are 8 MiB: well above aiohttp's default 1 MiB request limit.
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)

        async def session(app: web.Application) -> AsyncIterator[None]:
            async with ClientSession() as self._session:
                yield

        app.cleanup_ctx.append(session)
        return app
