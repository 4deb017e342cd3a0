"""The one small interface every object store implements.

Callers never branch on the protocol: they ask :class:`Stores` for the store that
serves a URI and use the same five operations everywhere (fsspec's lesson).
"""

from __future__ import annotations

import abc
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, Self, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from ..errors import ShardError, StreamfilterError, redact_uri
from .objects import ObjectInfo

log = logging.getLogger("streamfilter")

T = TypeVar("T")

#: The first backoff sleep is drawn from [0, this); the range doubles with every retry, up to the cap.
RETRY_BASE_SECONDS = 0.5


class InputFile(Protocol):
    """A readable, seekable binary file that counts the bytes it fetched."""

    bytes_read: int

    def read(self, size: int = -1, /) -> bytes: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...
    def tell(self) -> int: ...
    def close(self) -> None: ...


class Upload(abc.ABC):
    """An object being written: nothing is visible under its name before :meth:`commit`.

    Use it as an async context manager; leaving the block without a commit aborts.
    ``write_part`` takes parts of at least ``Store.part_size`` (the last, short part goes to ``commit``) and
    returns as soon as the part is queued, so at most a bounded number are in flight.
    """

    #: True when ``write_part`` is done with its data by the time it returns, so it may be given a
    #: view into a reader's buffer instead of a copy (local files; not S3, which sends in the background).
    takes_views: bool = False

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.committed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if not self.committed:
            await self.abort()

    @abc.abstractmethod
    async def write_part(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def commit(self, last: bytes = b"") -> ObjectInfo: ...

    @abc.abstractmethod
    async def abort(self) -> None: ...


class Store(abc.ABC):
    """Object I/O for one URI scheme."""

    # Capabilities. A store states what it can do; a capability the endpoint refuses at run time is
    # turned off for the rest of the run (the store learns it once), and callers take the fallback.

    #: True when :meth:`copy` within this store moves no bytes through this process.
    server_side_copy: bool = False
    #: Bounds the copies whose bytes pass through this process (each holds a part read and its upload's
    #: parts in flight); ``Stores`` gives all of a run's stores one. None: unbounded.
    byte_copies: anyio.CapacityLimiter | None = None

    #: True when :meth:`assemble` copies byte ranges of its objects server-side (S3's UploadPartCopy).
    ranged_copy: bool = False

    #: True when :meth:`assemble` copies byte ranges of any length within this machine (local files:
    #: ``copy_file_range`` and gathering writes), so it pays for any number of cuts; no part minimum applies.
    kernel_copy: bool = False

    #: False for read-only stores (HTTP): outputs and reports cannot go there.
    writable: bool = True

    #: Parts handed to :meth:`Upload.write_part` have this size (S3 needs >= 5 MiB).
    part_size: int = 8 * 1024 * 1024
    #: An output smaller than this is held and sent whole at commit, in one request; a larger one's first
    #: part is this size. 0: ``part_size``.
    single_request_bytes: int = 0

    @abc.abstractmethod
    async def stat(self, uri: str) -> ObjectInfo:
        """Size and version identity of one object; :class:`ShardError` if it is missing."""

    @abc.abstractmethod
    async def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose URI starts with ``prefix`` (recursively)."""

    @abc.abstractmethod
    async def read_range(self, uri: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of an object; the length is checked."""

    @abc.abstractmethod
    def open_write(self, uri: str) -> Upload:
        """Start an atomic write of ``uri``."""

    async def copy(self, src: ObjectInfo, dst: str) -> tuple[ObjectInfo, bool]:
        """Copy an object of this store; returns the copy and whether its bytes passed through this process.

        Stores that can copy server-side override this.
        """
        return await stream_copy(self, src, self, dst), True

    async def assemble(
        self, src: ObjectInfo, ranges: list[tuple[int, int]], tail: bytes, dst: str, head: bytes = b""
    ) -> tuple[ObjectInfo, int]:
        """Write ``dst`` as ``head``, the byte ranges of ``src`` in order, then ``tail``; returns it and the
        bytes fetched.

        Only stores with :attr:`ranged_copy` implement it; :class:`Refused` when the endpoint turns it down.
        """
        raise Refused(f"{redact_uri(dst)}: this store cannot copy byte ranges server-side", "assemble")

    def abandoned_uploads(self, uris: set[str]) -> list[dict[str, str]]:
        """Unfinished uploads of ``uris`` this run could not abort (the store refused), for the report."""
        return []

    async def read_all(self, uri: str) -> bytes:
        info = await self.stat(uri)
        return await self.read_range(uri, 0, info.size)

    async def put(self, uri: str, data: bytes, *, confirm: bool = True) -> ObjectInfo:
        """Write a small object whole. ``confirm=False``: the caller needs no ObjectInfo read back
        (a receipt), so stores that would ask for it (S3: a HEAD) may skip that request."""
        async with self.open_write(uri) as upload:
            return await upload.commit(data)

    def open_input(self, info: ObjectInfo, portal: BlockingPortal) -> InputFile:
        """A blocking, seekable file over the object for decoders running in worker threads."""
        from .bridge import RangeFile

        return RangeFile(self, info, portal)

    async def aclose(self) -> None:
        """Release connections."""


@dataclass(frozen=True)
class RetryPolicy:
    """How many times, and how patiently, one request is repeated after a transient failure."""

    #: Attempts after the first.
    retries: int = 5
    #: Cap on one backoff sleep, in seconds.
    max_seconds: float = 20.0
    #: Told of every retry (the run's retry counter); not part of the policy's identity.
    on_retry: Callable[[], None] | None = field(default=None, compare=False)

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0-based).

        Full jitter (uniform from zero up to the exponential bound) spreads out the
        retries of the many requests that failed together, instead of sending them
        back in lockstep into the same overload.
        """
        return random.uniform(0.0, min(self.max_seconds, RETRY_BASE_SECONDS * 2.0 ** min(retry, 32)))

    async def run(
        self,
        what: str,
        attempt: Callable[[], Awaitable[T]],
        transient: Callable[[Exception], bool],
        describe: Callable[[Exception], str],
    ) -> T:
        """Await ``attempt()`` until it succeeds, fails for good, or the retries are spent.

        ``what`` names the request (its URI redacted) in logs and in the :class:`ShardError`
        raised at the end, whose ``__cause__`` is the last failure (callers look at its code).
        An error of ours raised by ``attempt`` keeps its message.
        """
        retry = 0
        while True:
            try:
                return await attempt()
            except Exception as exc:
                retryable = transient(exc)
                if retry >= self.retries or not retryable:
                    if retry == 0 and isinstance(exc, StreamfilterError):
                        raise
                    message = str(exc) if isinstance(exc, StreamfilterError) else f"{what} failed: {describe(exc)}"
                    if retry:
                        message += f" (gave up after {retry + 1} attempts)" if retryable else f" (attempt {retry + 1})"
                    raise ShardError(message) from exc
                delay = self.backoff(retry)
                # The type only: library messages may quote a signed URL.
                log.debug("%s: %s, retry %d of %d in %.2f s", what, type(exc).__name__, retry + 1, self.retries, delay)
            retry += 1
            if self.on_retry is not None:
                self.on_retry()
            await anyio.sleep(delay)


class Refused(ShardError):
    """The endpoint refused an operation the run can do without (a missing capability, a narrow
    IAM policy): the store has turned the capability off for the run and the caller falls back."""

    def __init__(self, message: str, operation: str) -> None:
        super().__init__(message)
        self.operation = operation


class ShortRead(ShardError):
    """Fewer bytes arrived than were asked for: transient over a network, so stores retry it."""


def check_length(uri: str, data: bytes, expected: int) -> bytes:
    """Guard against truncated bodies: a short read must never pass as data."""
    if len(data) != expected:
        raise ShortRead(
            f"short read from {redact_uri(uri)}: got {len(data)} of {expected} bytes; "
            "the object changed or the connection dropped, run again"
        )
    return data


async def stream_copy(source: Store, src: ObjectInfo, target: Store, dst: str) -> ObjectInfo:
    """Copy bytes as they are, part by part (no decoding), between any two stores; atomic at the target."""
    async with target.byte_copies or contextlib.nullcontext(), target.open_write(dst) as upload:
        pos = 0
        while src.size >= target.single_request_bytes and src.size - pos > target.part_size:
            await upload.write_part(await source.read_range(src.uri, pos, pos + target.part_size))
            pos += target.part_size
        return await upload.commit(await source.read_range(src.uri, pos, src.size))
