"""Object stores behind one interface, chosen by URI scheme."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from ..errors import ShardError, UsageError, redact_uri
from .base import ObjectInfo, Refused, RetryPolicy, Store, Upload, stream_copy
from .bridge import PartSink, RangeFile
from .uris import scheme_of

__all__ = [
    "ObjectInfo",
    "PartSink",
    "RangeFile",
    "Refused",
    "RetryPolicy",
    "Store",
    "StoreOptions",
    "Stores",
    "Upload",
    "expand_header",
    "scheme_of",
]


@dataclass(frozen=True)
class StoreOptions:
    s3_endpoint_url: str | None = None
    http_headers: dict[str, str] = field(default_factory=dict)
    #: Attempts after the first for one request that failed transiently (throttling, 5xx,
    #: a dropped connection, a timeout, a truncated body); other failures are never retried.
    retries: int = 5
    #: Cap, in seconds, on one backoff sleep between attempts.
    retry_max_seconds: float = 20.0

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise UsageError(f"--retries {self.retries!r}: expected a whole number, 0 or more")
        if isinstance(self.retry_max_seconds, bool) or not isinstance(self.retry_max_seconds, int | float):
            raise UsageError(f"--retry-max-seconds {self.retry_max_seconds!r}: expected a number of seconds")
        if not 0 <= self.retry_max_seconds < float("inf"):
            raise UsageError(f"--retry-max-seconds {self.retry_max_seconds!r}: expected 0 or more seconds")

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(self.retries, float(self.retry_max_seconds))


def expand_header(header: str) -> tuple[str, str]:
    """Parse ``'Name: value'``, expanding ``$VAR``/``${VAR}`` so tokens stay out of shell history."""
    name, sep, value = header.partition(":")
    if not sep or not name.strip():
        raise UsageError(f"--http-header {name.strip()!r}: expected 'Name: value'")
    missing = [m for m in re.findall(r"\$\{?(\w+)\}?", value) if m not in os.environ]
    if missing:
        raise UsageError(f"--http-header {name.strip()}: environment variable ${missing[0]} is not set")
    return name.strip(), os.path.expandvars(value.strip())


#: Copies whose bytes pass through this process at once, over all of a run's stores: clean shards wait on
#: their copies outside the decode slots (engine.STORE_WAITS), and a byte copy to S3 holds about three
#: 8 MiB parts, so 32 of them would hold 768 MiB.
BYTE_COPIES = 4


class Stores:
    """One store per scheme for the length of a run; close with :meth:`aclose`."""

    def __init__(self, options: StoreOptions | None = None, on_retry: Callable[[], None] | None = None) -> None:
        self._options = options or StoreOptions()
        self._retry = dataclasses.replace(self._options.retry, on_retry=on_retry)
        self._stores: dict[str, Store] = {}
        self._byte_copies = anyio.CapacityLimiter(BYTE_COPIES)

    def for_uri(self, uri: str) -> Store:
        scheme = {"https": "http"}.get(scheme_of(uri), scheme_of(uri))
        if scheme not in self._stores:
            store = self._stores[scheme] = self._make(scheme, uri)
            store.byte_copies = self._byte_copies
        return self._stores[scheme]

    def _make(self, scheme: str, uri: str) -> Store:
        if scheme == "file":
            from .local import LocalStore

            return LocalStore()
        if scheme == "s3":
            from .s3 import S3Store

            return S3Store(self._options.s3_endpoint_url, self._retry)
        if scheme == "http":
            from .http import HttpStore

            return HttpStore(self._options.http_headers, self._retry)
        if scheme == "hf":
            from .hf import HfStore

            return HfStore(self._retry)
        raise UsageError(f"unsupported URI scheme {scheme}://; use s3://, http(s)://, hf:// or a local path")

    async def copy(self, src: ObjectInfo, dst: str) -> tuple[ObjectInfo, bool]:
        """Copy ``src`` to ``dst``, server-side when both are on the same store that can.

        Returns the new object and whether its bytes passed through this process; a copy whose
        size is not the source's is a :class:`ShardError`.
        """
        source, target = self.for_uri(src.uri), self.for_uri(dst)
        if source is target:
            written, streamed = await target.copy(src, dst)
        else:
            written, streamed = await stream_copy(source, src, target, dst), True
        if written.size != src.size:
            raise ShardError(
                f"{redact_uri(dst)} holds {written.size} bytes after copying {src.size}; the store lost data, run again"
            )
        return written, streamed

    def abandoned_uploads(self, uris: set[str]) -> list[dict[str, str]]:
        """Uploads of ``uris`` left unfinished because the store refused to abort them."""
        return [upload for store in self._stores.values() for upload in store.abandoned_uploads(uris)]

    async def aclose(self) -> None:
        for store in self._stores.values():
            await store.aclose()
        self._stores.clear()
