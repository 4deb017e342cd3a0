"""S3 and S3-compatible stores (AWS, MinIO, R2, Ceph) through s3fs/aiobotocore.

s3fs supplies the client: the standard AWS credential chain, endpoint and region
handling. Every operation is one standard S3 API call (HeadObject, ListObjectsV2,
ranged GetObject, multipart upload, CopyObject), so nothing depends on one
vendor's behaviour.

Retries are ours, not botocore's or s3fs's: one :class:`RetryPolicy` repeats a whole
request, a GET together with reading and checking its body (botocore cannot retry a
body cut short after the headers arrived), with the configured cap on the backoff
(botocore's is fixed at 20 s), and with exactly ``retries + 1`` attempts (s3fs's
wrapper would multiply botocore's). botocore runs in "standard" mode with a single
attempt per call. Not "adaptive": aiobotocore's client-side rate limiter waits on an
asyncio Condition that cancellation can leave held, after which throttled requests
stopped answering to their cancel scopes (a shard failed with "cannot wait on
un-acquired lock" under fault injection, and 1,600 throttled reads under short cancel
scopes never finished; tests/test_s3_throttling.py).
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import logging
import os
import platform
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import aiobotocore
import aiobotocore.session
import aiohttp
import anyio
import botocore.utils
import s3fs
from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.parsers import ResponseParserError
from s3fs.errors import translate_boto_error

from .._version import __version__
from ..errors import ShardError, redact_uri
from .base import ObjectInfo, Refused, RetryPolicy, ShortRead, Store, Upload, check_length, stream_copy

log = logging.getLogger("streamfilter")

#: Parts uploaded at once per object: enough to hide one request's latency,
#: few enough that memory stays at (in flight + 1) parts per open output.
PARTS_IN_FLIGHT = 2


def split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


#: Error codes S3 and its look-alikes use for "try again later".
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
    }
)
#: HTTP statuses that are transient whatever the code (a HEAD reply has no body, hence no code).
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
#: Failures on the way: connection refused or reset, timeouts, bodies cut short, replies
#: that do not parse (a proxy's or throttler's page instead of S3's XML).
TRANSIENT_ERRORS = (
    BotoConnectionError,
    HTTPClientError,
    IncompleteReadError,
    ResponseParserError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientConnectionError,
    ConnectionError,
    TimeoutError,
    ShortRead,
)


#: Replies that mean "this endpoint (or this IAM policy) will not do that operation", as opposed to a
#: failure of one request: s3rver answers 501 NotImplemented to UploadPartCopy and ListMultipartUploads
#: and 405 to AbortMultipartUpload; a policy without s3:ListBucketMultipartUploads answers 403.
REFUSED_CODES = frozenset({"NotImplemented", "XNotImplemented", "MethodNotAllowed", "AccessDenied"})
REFUSED_STATUS = frozenset({403, 405, 501})
#: Longest wait for the abort of a failed upload; it runs shielded from cancellation, so it needs its own end
#: (an abort takes milliseconds: this only bounds a stop, which Kubernetes follows with SIGKILL).
ABORT_SECONDS = 10.0


def error_code(exc: BaseException | None) -> str | None:
    """The S3 error code (``NoSuchUpload``, ``SlowDown``, ...) of a botocore error, else None."""
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code")
    return None


def is_refusal(exc: BaseException | None) -> bool:
    """True when ``exc`` (or the botocore error it wraps) is the endpoint refusing the operation itself."""
    if isinstance(exc, ShardError):
        exc = exc.__cause__
    if not isinstance(exc, ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error_code(exc) in REFUSED_CODES or status in REFUSED_STATUS


def is_transient(exc: Exception) -> bool:
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return error_code(exc) in TRANSIENT_CODES or status in TRANSIENT_STATUS
    if isinstance(exc, aiohttp.ClientSSLError):
        return False  # a certificate problem does not go away by asking again
    return isinstance(exc, TRANSIENT_ERRORS)


def _describe(exc: Exception) -> str:
    if error_code(exc) == "NoSuchUpload":
        return "NoSuchUpload: the multipart upload is gone (aborted or completed)"
    translated = translate_boto_error(exc)
    if isinstance(translated, FileNotFoundError):
        return "not found"
    if isinstance(translated, PermissionError):
        return "access denied; check the credentials and the bucket policy"
    if isinstance(exc, ClientError):
        # str(exc) would add botocore's "(reached max retries: 0)", which is not the whole story here.
        return f"{error_code(exc)}: {exc.response.get('Error', {}).get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


def parse_timestamp(value: str) -> datetime:
    """A timestamp of an S3 reply, as botocore's parser reads it, without dateutil for the two forms S3
    sends: ISO 8601 in XML bodies (a listing's every object, CopyObject) and RFC 1123 in headers
    (Last-Modified). dateutil takes 36-70 us a value: a listing page of 1,000 objects parsed in 52 ms with
    it, 15 ms without (a run over 500,000 shards lists them, and their receipts)."""
    try:
        parsed = datetime.fromisoformat(value) if value[:1].isdigit() else email.utils.parsedate_to_datetime(value)
        if parsed.tzinfo is not None:
            return parsed
    except (ValueError, TypeError, IndexError):
        pass
    return botocore.utils.parse_timestamp(value)  # anything else (epoch seconds, no zone), as before


def multipart_etag(part_etags: list[str]) -> str | None:
    """The ETag S3 gives the object completed from these parts: MD5 of their binary MD5s, '-', their count.

    None when a part's ETag is not an MD5 (SSE-KMS, SSE-C), where no such check is possible.
    """
    try:
        digests = b"".join(bytes.fromhex(etag.strip('"')) for etag in part_etags)
    except ValueError:
        return None
    if len(digests) != 16 * len(part_etags):
        return None
    return f"{hashlib.md5(digests).hexdigest()}-{len(part_etags)}"


class S3Upload(Upload):
    """A multipart upload, completed only by :meth:`commit`; aborted otherwise.

    An object smaller than one part is sent with a single PutObject at commit,
    which is atomic by itself. Parts are sent in the background, at most
    ``PARTS_IN_FLIGHT`` at once; on failure they are cancelled before the abort, so
    nothing waits on a part that will never be sent.
    """

    def __init__(self, store: S3Store, uri: str) -> None:
        super().__init__(uri)
        self._store = store
        self._bucket, self._key = split(uri)
        self._upload_id: str | None = None
        self._parts: dict[int, str] = {}
        self._slots = anyio.Semaphore(PARTS_IN_FLIGHT)
        self._error: BaseException | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> S3Upload:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._tg is not None
        if not self.committed:
            self._tg.cancel_scope.cancel()  # the parts in flight are of no use to an aborted upload
        try:
            await self._tg.__aexit__(None, None, None)
        finally:
            if not self.committed:
                # Shielded, so a cancelled run still cleans up; bounded, so cleaning up never hangs it.
                upload_id = self._upload_id
                with anyio.move_on_after(ABORT_SECONDS, shield=True) as scope:
                    with contextlib.suppress(ShardError):  # the original failure is the one to report
                        await self.abort()
                if scope.cancelled_caught and upload_id is not None:
                    self._store.gave_up_abort(self.uri, upload_id)

    async def write_part(self, data: bytes) -> None:
        await self._start_part(self._send, data)

    async def copy_part(self, src: ObjectInfo, start: int, end: int) -> None:
        """Add bytes ``[start, end)`` of another S3 object as the next part, copied server-side.

        UploadPartCopy moves no bytes through us. ``CopySourceIfMatch`` pins the version
        that was read: if the source changed since, the copy fails instead of mixing versions.
        A refusal raises :class:`Refused` (here or at the next part or commit).
        """
        if not self._store.ranged_copy:
            raise Refused(f"{redact_uri(self.uri)}: the store refused UploadPartCopy earlier in this run", "copy_part")
        await self._start_part(self._send_copy, src, start, end)

    async def _start_part(self, send: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Number the next part and send it in the background once a slot is free (the backpressure)."""
        self._raise_failed()
        if self._upload_id is None:
            await self._create()
        await self._slots.acquire()
        try:
            self._raise_failed()  # a part that failed while this one waited for its slot
        except BaseException:
            self._slots.release()
            raise
        number = len(self._parts) + 1
        self._parts[number] = ""
        assert self._tg is not None
        self._tg.start_soon(send, number, *args)

    async def _send_copy(self, number: int, src: ObjectInfo, start: int, end: int) -> None:
        bucket, key = split(src.uri)
        pinned = {"CopySourceIfMatch": src.etag} if src.etag else {}
        try:
            resp = await self._store.call(
                "upload_part_copy",
                self.uri,
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                CopySource={"Bucket": bucket, "Key": key},
                CopySourceRange=f"bytes={start}-{end - 1}",
                **pinned,
            )
            self._parts[number] = resp["CopyPartResult"]["ETag"]
        except Exception as exc:  # surfaced by the next write_part or commit
            if is_refusal(exc):
                self._store.refused("ranged_copy", "UploadPartCopy", "outputs are streamed instead of assembled")
                why = _describe(exc)
                exc = Refused(f"{redact_uri(self.uri)}: the store refused UploadPartCopy ({why})", "copy_part")
            self._error = self._error or exc
        finally:
            self._slots.release()

    async def _send(self, number: int, data: bytes) -> None:
        try:
            resp = await self._store.call(
                "upload_part",
                self.uri,
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=data,
            )
            self._parts[number] = resp["ETag"]
        except Exception as exc:  # surfaced by the next write_part or commit
            self._error = self._error or exc
        finally:
            self._slots.release()

    async def _create(self) -> None:
        resp = await self._store.call("create_multipart_upload", self.uri, Bucket=self._bucket, Key=self._key)
        self._upload_id = resp["UploadId"]  # known before anything else can fail: the abort needs it
        await self._store.sweep_unfinished(self.uri, self._upload_id)

    async def _drain(self) -> None:
        for _ in range(PARTS_IN_FLIGHT):
            await self._slots.acquire()
        for _ in range(PARTS_IN_FLIGHT):
            self._slots.release()

    def _raise_failed(self) -> None:
        if self._error is not None:
            if isinstance(self._error, ShardError):
                raise self._error
            raise ShardError(f"upload to {redact_uri(self.uri)} failed: {_describe(self._error)}") from self._error

    async def commit(self, last: bytes = b"") -> ObjectInfo:
        if self._upload_id is None:
            self._raise_failed()
            resp = await self._store.call("put_object", self.uri, Bucket=self._bucket, Key=self._key, Body=last)
        else:
            if last:
                await self.write_part(last)
            await self._drain()
            self._raise_failed()
            parts = [{"PartNumber": n, "ETag": etag} for n, etag in sorted(self._parts.items())]
            try:
                resp = await self._store.call(
                    "complete_multipart_upload",
                    self.uri,
                    Bucket=self._bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": parts},
                )
            except ShardError as failure:
                resp = await self._completed_anyway([p["ETag"] for p in parts], failure)
        self.committed = True
        info = await self._store.stat(self.uri)
        return ObjectInfo(self.uri, info.size, etag=resp.get("ETag") or info.etag, version_id=info.version_id)

    async def _completed_anyway(self, part_etags: list[str], failure: ShardError) -> dict:
        """After a failed completion, accept the object if it is exactly these parts; else re-raise.

        A completion can succeed with its reply lost; the retry then meets NoSuchUpload
        (or keeps failing) although the object is whole. Its ETag tells: S3 derives a
        multipart object's ETag from its parts' MD5s, so a match means these bytes.
        """
        expected = multipart_etag(part_etags)
        try:
            etag = (await self._store.stat(self.uri)).etag
        except ShardError:
            etag = None  # not there (or not reachable): the completion failure stands
        if expected is None or etag is None or etag.strip('"') != expected:
            raise failure
        log.info("%s: completion reply lost; the object's ETag shows it complete", redact_uri(self.uri))
        # Normally a no-op (the completion consumed the upload); it clears the upload if not. The object is
        # whole either way, so a refused or failed abort is no failure of this commit, nor an abandoned upload.
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            with contextlib.suppress(ShardError):
                await self._store.abort_upload(self.uri, upload_id, record=False)
        return {"ETag": etag}

    async def abort(self) -> None:
        """Abort the upload this object created. Its parts in flight are cancelled first (by the
        context manager) or finished (after a commit), so this waits on nothing but the request."""
        if self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        await self._store.abort_upload(self.uri, upload_id)


def user_agent() -> str:
    """The User-Agent of streamfilter's S3 requests. It names the tool in the store's access logs (an
    audit of a removal can find its requests), and, given whole, spares botocore building its own, from
    a dozen sanitized parts, twice a request: 0.95 -> 0.80 ms of client CPU a ranged GET on s3rver, 1.14
    -> 1.03 ms a small PUT (medians of 4 x 500; a whole sparse run, ~530 requests, showed no difference
    through its noise). An app id (``AWS_SDK_UA_APP_ID``) is kept."""
    parts = {
        "streamfilter": __version__,
        "aiobotocore": aiobotocore.__version__,
        "Python": platform.python_version(),
        platform.system() or "os": platform.release(),
        "app": os.environ.get("AWS_SDK_UA_APP_ID", ""),
    }
    # Each name and version a header token, as botocore makes its own (RFC 9110 tchar). botocore appends
    # its session's extra, botocore/VERSION, itself.
    return " ".join(f"{_token(name)}/{_token(value)}" for name, value in parts.items() if value)


def _token(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9!#$%&'*+.^_`|~-]", "-", text)


#: S3's smallest part but the last.
MIN_PART_BYTES = 5 * 1024 * 1024


class S3Store(Store):
    #: CopyObject's limit; larger objects are copied in parts. Tests lower it to exercise that path.
    copy_object_limit = 5 * 1024**3
    #: Parts of a copy of a larger object: 100 parts for the largest object S3 holds would be
    #: 50 GiB each, over the part limit, so 1 GiB parts (5 TiB / 10,000 parts = 525 MiB minimum).
    copy_part_size = 1024**3
    #: A multipart upload is three more requests than a PutObject (creation, second part, completion), and
    #: some stores then join the parts on their own disk: an output of less than two parts goes whole.
    #: (Measured on s3rver, dense snappy shards of 9 MB out: 11% less wall time, a third less server CPU.)
    single_request_bytes = 16 * 1024 * 1024

    def __init__(self, endpoint_url: str | None = None, retry: RetryPolicy | None = None) -> None:
        endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        self.endpoint_url = endpoint_url
        self.retry = retry or RetryPolicy()
        # Capabilities: on until the endpoint refuses one, then off for the rest of the run.
        self.server_side_copy = True  # CopyObject
        self.ranged_copy = True  # UploadPartCopy
        self.lists_uploads = True  # ListMultipartUploads, for the sweep of unfinished uploads
        self.aborts_uploads = True  # AbortMultipartUpload
        #: Uploads this run created and could not abort, by key: (output URI, upload id).
        self._abandoned: list[tuple[str, str]] = []
        session = aiobotocore.session.AioSession()
        session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_timestamp)
        self._fs = s3fs.S3FileSystem(
            asynchronous=True,
            skip_instance_cache=True,
            session=session,
            endpoint_url=endpoint_url,
            config_kwargs={
                # One attempt per botocore call; see the module docstring.
                "retries": {"total_max_attempts": 1, "mode": "standard"},
                # botocore's 10 would queue a sparse run's shards at their waits (engine.STORE_WAITS: 32 at
                # the default concurrency) behind one another's connections.
                "max_pool_connections": 64,
                "user_agent": user_agent(),
                # botocore sends CRC32 checksum headers on every upload, and asks for checksums on every GET,
                # by default since 1.36; Backblaze B2, Qumulo and older Ceph and MinIO refuse those headers.
                # Only where S3 requires them (as before 1.36), unless the environment says otherwise; it also
                # saved 8% of a dense S3 run's CPU (medians of 4, s3rver). Lengths are checked either way.
                "request_checksum_calculation": os.environ.get("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required"),
                "response_checksum_validation": os.environ.get("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required"),
            },
        )

    def refused(self, capability: str, operation: str, fallback: str) -> None:
        """Turn ``capability`` off for the rest of the run, saying so once."""
        if getattr(self, capability):
            setattr(self, capability, False)
            log.warning("the S3 endpoint refused %s; for the rest of this run %s", operation, fallback)

    async def sweep_unfinished(self, uri: str, ours: str) -> None:
        """Abort every other unfinished upload of this exact key; a courtesy, never a failure.

        They are left by a run killed mid-upload (SIGKILL, eviction) or started by a
        create whose reply was lost; either way no one will complete them, and they
        cost storage until aborted. One writer per output key is the rule (static
        sharding gives each shard to one worker), so none of them is live. A store
        or policy that refuses the listing skips the sweep for the rest of the run.
        """
        if not self.lists_uploads:
            return
        bucket, key = split(uri)
        try:
            resp = await self.call("list_multipart_uploads", uri, Bucket=bucket, Prefix=key)
        except ShardError as exc:
            if is_refusal(exc):
                self.refused(
                    "lists_uploads",
                    "ListMultipartUploads",
                    "unfinished uploads left by killed runs are not swept (a lifecycle rule can remove them)",
                )
            else:
                log.warning("%s; unfinished uploads of this key are not swept", exc)
            return
        for upload in resp.get("Uploads", []):
            if upload["Key"] == key and upload["UploadId"] != ours:
                log.info("aborting an unfinished upload of %s left by an earlier attempt", redact_uri(uri))
                with contextlib.suppress(ShardError):  # told by abort_upload; the sweep goes on
                    await self.abort_upload(uri, upload["UploadId"])

    async def abort_upload(self, uri: str, upload_id: str, *, record: bool = True) -> None:
        """Abort one multipart upload; one the store refuses to abort is recorded for the report, unless
        ``record`` is off (an upload already completed, aborted only in case it was not)."""
        if not self.aborts_uploads:
            if record:
                self._abandoned.append((uri, upload_id))
            return
        bucket, key = split(uri)
        try:
            await self.call("abort_multipart_upload", uri, Bucket=bucket, Key=key, UploadId=upload_id)
        except ShardError as exc:
            # Gone already: an earlier attempt aborted it with its reply lost, or it was completed.
            if error_code(exc.__cause__) == "NoSuchUpload":
                return
            if is_refusal(exc):
                self.refused(
                    "aborts_uploads",
                    "AbortMultipartUpload",
                    "uploads of failed outputs stay unfinished; the report lists them (abandoned_uploads)",
                )
            if record:
                self._abandoned.append((uri, upload_id))
            raise

    def gave_up_abort(self, uri: str, upload_id: str) -> None:
        """An abort that did not finish in time: the upload may be left, so the report names it."""
        log.warning("the abort of an upload of %s did not finish; the report lists it", redact_uri(uri))
        self._abandoned.append((uri, upload_id))

    def abandoned_uploads(self, uris: set[str]) -> list[dict[str, str]]:
        return [{"uri": redact_uri(uri), "upload_id": upload_id} for uri, upload_id in self._abandoned if uri in uris]

    async def once(self, method: str, **kwargs: Any) -> dict:
        """One S3 API call, one attempt: straight to the botocore client, past s3fs's own retry wrapper."""
        client = await self._fs.set_session()
        return await getattr(client, method)(**kwargs)

    async def retrying(self, method: str, uri: str, attempt: Callable[[], Awaitable[Any]]) -> Any:
        """``attempt`` repeated under the retry policy; failures become a one-line :class:`ShardError`."""
        return await self.retry.run(f"S3 {method} on {redact_uri(uri)}", attempt, is_transient, _describe)

    async def call(self, method: str, uri: str, **kwargs: Any) -> dict:
        """One S3 API call, retried while it fails transiently."""
        return await self.retrying(method, uri, lambda: self.once(method, **kwargs))

    async def stat(self, uri: str) -> ObjectInfo:
        bucket, key = split(uri)
        resp = await self.call("head_object", uri, Bucket=bucket, Key=key)
        mtime = resp.get("LastModified")
        return ObjectInfo(
            uri,
            int(resp["ContentLength"]),
            etag=resp.get("ETag"),
            version_id=resp.get("VersionId"),
            mtime=mtime.timestamp() if mtime else None,
        )

    async def list(self, prefix: str) -> list[ObjectInfo]:
        bucket, key = split(prefix)
        found: list[ObjectInfo] = []
        token: dict[str, str] = {}
        while True:
            resp = await self.call("list_objects_v2", prefix, Bucket=bucket, Prefix=key, **token)
            for obj in resp.get("Contents", []):
                found.append(
                    ObjectInfo(
                        f"s3://{bucket}/{obj['Key']}",
                        int(obj["Size"]),
                        etag=obj.get("ETag"),
                        mtime=obj["LastModified"].timestamp(),
                    )
                )
            if not resp.get("IsTruncated"):
                return found
            token = {"ContinuationToken": resp["NextContinuationToken"]}

    async def read_range(self, uri: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""  # an empty Range header is invalid; nothing to fetch
        bucket, key = split(uri)

        # The body is read and its length checked inside the attempt: a body cut short is retried like a reset.
        async def get() -> bytes:
            resp = await self.once("get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")
            try:
                data = await resp["Body"].read()
            finally:
                resp["Body"].close()
            return check_length(uri, data, end - start)

        return await self.retrying("get_object", uri, get)

    def open_write(self, uri: str) -> Upload:
        return S3Upload(self, uri)

    async def copy(self, src: ObjectInfo, dst: str) -> tuple[ObjectInfo, bool]:
        """Copy server-side, so no byte passes through this process; streamed where the store refuses.

        CopyObject takes objects up to 5 GiB; larger ones are assembled from UploadPartCopy
        parts. Either way the copy is pinned to the source version ``src`` describes.
        Returns the copy and whether its bytes were streamed through this process.
        """
        if src.uri.startswith("s3://") and src.size > self.copy_object_limit and self.ranged_copy:
            try:
                return await self._copy_in_parts(src, dst), False
            except Refused:
                pass  # learned: later copies go straight to the stream
        elif src.uri.startswith("s3://") and src.size <= self.copy_object_limit and self.server_side_copy:
            try:
                return await self._copy_object(src, dst), False
            except ShardError as exc:
                if not is_refusal(exc):
                    raise
                # A denial that reading would meet too fails the stream below with its own line.
                self.refused("server_side_copy", "CopyObject", "clean shards are copied as byte streams")
        return await stream_copy(self, src, self, dst), True

    async def _copy_in_parts(self, src: ObjectInfo, dst: str) -> ObjectInfo:
        async with self.open_write(dst) as upload:
            assert isinstance(upload, S3Upload)
            for start in range(0, src.size, self.copy_part_size):
                await upload.copy_part(src, start, min(src.size, start + self.copy_part_size))
            return await upload.commit()

    async def _copy_object(self, src: ObjectInfo, dst: str) -> ObjectInfo:
        src_bucket, src_key = split(src.uri)
        bucket, key = split(dst)
        pinned = {"CopySourceIfMatch": src.etag} if src.etag else {}
        resp = await self.call(
            "copy_object", dst, Bucket=bucket, Key=key, CopySource={"Bucket": src_bucket, "Key": src_key}, **pinned
        )
        # The reply says what a HEAD would (a sparse run makes one copy per clean shard: a request saved
        # each); the size is the source's, since the copy was pinned to that version.
        result = resp.get("CopyObjectResult", {})
        if "ETag" not in result or "LastModified" not in result:
            return await self.stat(dst)
        mtime = result["LastModified"].timestamp()
        return ObjectInfo(dst, src.size, etag=result["ETag"], version_id=resp.get("VersionId"), mtime=mtime)

    async def put(self, uri: str, data: bytes, *, confirm: bool = True) -> ObjectInfo:
        if confirm or len(data) >= self.part_size:
            return await super().put(uri, data)
        bucket, key = split(uri)
        resp = await self.call("put_object", uri, Bucket=bucket, Key=key, Body=data)
        return ObjectInfo(uri, len(data), etag=resp.get("ETag"), version_id=resp.get("VersionId"))

    async def assemble(
        self, src: ObjectInfo, ranges: list[tuple[int, int]], tail: bytes, dst: str, head: bytes = b""
    ) -> tuple[ObjectInfo, int]:
        """Write ``dst`` as ``head``, the byte ranges of ``src`` in order, then ``tail``; returns it and the
        bytes fetched.

        A range of 5 MiB or more becomes UploadPartCopy parts (no byte passes through us);
        shorter ranges, and the bytes needed to bring a piece up to S3's 5 MiB part minimum,
        are read and uploaded. So a tar with a few samples removed moves a few MiB per cut,
        not the whole object. A ``head`` (a rewritten file header) starts the first piece, which the
        first range then fills up to a part. The rest of a range too short to be copied joins the piece
        before it, and without a ``tail`` the last range is copied whatever its length (the last part
        may be short). :class:`Refused` (nothing written) when the store turns UploadPartCopy down.
        """
        if not self.ranged_copy:
            return await super().assemble(src, ranges, tail, dst, head)
        fetched = 0
        async with self.open_write(dst) as upload:
            assert isinstance(upload, S3Upload)
            piece = bytearray(head)
            for i, (start, end) in enumerate(ranges):
                last = i == len(ranges) - 1 and not tail  # the object's last part may be short: copied too
                pos = start
                while pos < end:
                    if not piece and (end - pos >= MIN_PART_BYTES or last):
                        stop = min(end, pos + self.copy_part_size)
                        if 0 < end - stop < MIN_PART_BYTES and not last:  # never leave a tail too short to be a part
                            stop = end - MIN_PART_BYTES
                        await upload.copy_part(src, pos, stop)
                        pos = stop
                        continue
                    stop = min(end, pos + MIN_PART_BYTES - len(piece))
                    if 0 < end - stop < MIN_PART_BYTES and not last:  # a rest too short to copy joins this piece
                        stop = end
                    piece += await self.read_range(src.uri, pos, stop)
                    fetched += stop - pos
                    pos = stop
                    if len(piece) >= MIN_PART_BYTES:
                        await upload.write_part(bytes(piece))
                        piece.clear()
            return await upload.commit(bytes(piece) + tail), fetched

    async def aclose(self) -> None:
        if self._fs._s3 is not None:
            await self._fs._s3.close()
