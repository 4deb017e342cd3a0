"""S3 and S3-compatible stores (AWS, MinIO, R2, Ceph) through s3fs/aiobotocore.

s3fs supplies the client: the standard AWS credential chain, endpoint and region
handling, and its retry of throttled calls. Every operation is one standard S3
API call (HeadObject, ListObjectsV2, ranged GetObject, multipart upload,
CopyObject), so nothing depends on one vendor's behaviour.
"""

from __future__ import annotations

import contextlib
import os

import anyio
import s3fs

from ..errors import ShardError, redact_uri
from .base import ObjectInfo, Store, Upload, check_length

#: Parts uploaded at once per object: enough to hide one request's latency,
#: few enough that memory stays at (in flight + 1) parts per open output.
PARTS_IN_FLIGHT = 2


def split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if isinstance(exc, PermissionError):
        return "access denied; check the credentials and the bucket policy"
    return f"{type(exc).__name__}: {exc}"


class S3Upload(Upload):
    """A multipart upload, completed only by :meth:`commit`; aborted otherwise.

    An object smaller than one part is sent with a single PutObject at commit,
    which is atomic by itself.
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
        try:
            if not self.committed:
                with anyio.CancelScope(shield=True):
                    with contextlib.suppress(ShardError):  # the original failure is the one to report
                        await self.abort()
        finally:
            assert self._tg is not None
            await self._tg.__aexit__(None, None, None)

    async def write_part(self, data: bytes) -> None:
        self._raise_failed()
        if self._upload_id is None:
            resp = await self._store.call("create_multipart_upload", self.uri, Bucket=self._bucket, Key=self._key)
            self._upload_id = resp["UploadId"]
        await self._slots.acquire()
        self._raise_failed()
        number = len(self._parts) + 1
        self._parts[number] = ""
        assert self._tg is not None
        self._tg.start_soon(self._send, number, data)

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

    async def _drain(self) -> None:
        for _ in range(PARTS_IN_FLIGHT):
            await self._slots.acquire()
        for _ in range(PARTS_IN_FLIGHT):
            self._slots.release()

    def _raise_failed(self) -> None:
        if self._error is not None:
            raise ShardError(f"upload to {redact_uri(self.uri)} failed: {_describe(self._error)}")

    async def commit(self, last: bytes = b"") -> ObjectInfo:
        if self._upload_id is None:
            resp = await self._store.call("put_object", self.uri, Bucket=self._bucket, Key=self._key, Body=last)
        else:
            if last:
                await self.write_part(last)
            await self._drain()
            self._raise_failed()
            parts = [{"PartNumber": n, "ETag": etag} for n, etag in sorted(self._parts.items())]
            resp = await self._store.call(
                "complete_multipart_upload",
                self.uri,
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )
        self.committed = True
        info = await self._store.stat(self.uri)
        return ObjectInfo(self.uri, info.size, etag=resp.get("ETag") or info.etag, version_id=info.version_id)

    async def abort(self) -> None:
        if self._upload_id is None:
            return
        await self._drain()
        await self._store.call(
            "abort_multipart_upload", self.uri, Bucket=self._bucket, Key=self._key, UploadId=self._upload_id
        )
        self._upload_id = None


class S3Store(Store):
    def __init__(self, endpoint_url: str | None = None) -> None:
        endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        self.endpoint_url = endpoint_url
        self._fs = s3fs.S3FileSystem(asynchronous=True, skip_instance_cache=True, endpoint_url=endpoint_url)

    async def call(self, method: str, uri: str, **kwargs: object) -> dict:
        """One S3 API call; failures become a one-line :class:`ShardError`."""
        try:
            return await self._fs._call_s3(method, **kwargs)
        except Exception as exc:
            raise ShardError(f"S3 {method} on {redact_uri(uri)} failed: {_describe(exc)}") from exc

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
        resp = await self.call("get_object", uri, Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")
        try:
            data = await resp["Body"].read()
        except Exception as exc:
            raise ShardError(f"reading {redact_uri(uri)} failed: {_describe(exc)}") from exc
        finally:
            resp["Body"].close()
        return check_length(uri, data, end - start)

    def open_write(self, uri: str) -> Upload:
        return S3Upload(self, uri)

    async def copy(self, src: ObjectInfo, dst: str) -> ObjectInfo:
        # CopyObject is limited to 5 GiB; larger objects take the streamed path.
        if not src.uri.startswith("s3://") or src.size > 5 * 1024**3:
            return await super().copy(src, dst)
        src_bucket, src_key = split(src.uri)
        bucket, key = split(dst)
        await self.call("copy_object", dst, Bucket=bucket, Key=key, CopySource={"Bucket": src_bucket, "Key": src_key})
        return await self.stat(dst)

    async def aclose(self) -> None:
        if self._fs._s3 is not None:
            await self._fs._s3.close()
