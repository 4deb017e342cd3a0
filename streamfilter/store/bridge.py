"""Blocking file objects over the async stores, for code that runs in worker threads.

pyarrow decodes and encodes Parquet from synchronous file objects in a worker
thread; these adapters forward their I/O to the event loop through an anyio
:class:`BlockingPortal`, so the network stays async while the CPU work runs in
parallel threads (pyarrow releases the GIL).
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import Future
from typing import Protocol

from anyio.from_thread import BlockingPortal

from .objects import ObjectInfo


class RangeReader(Protocol):
    """The one thing a :class:`RangeFile` needs of a store (any :class:`~.base.Store` is one)."""

    async def read_range(self, uri: str, start: int, end: int) -> bytes: ...


class PartWriter(Protocol):
    """The one thing a :class:`PartSink` needs of an upload (any :class:`~.base.Upload` is one)."""

    takes_views: bool

    async def write_part(self, data: bytes) -> None: ...


#: Small reads (footers, page headers) are widened to this many bytes so a
#: Parquet footer costs one request instead of several.
READ_AHEAD = 256 * 1024
#: A range to prefetch that holds an earlier fetch (a scan's key chunks, inside the row group the rewrite
#: then reads whole) requests only the rest. At the range's start or end that is one request, as before; in
#: the middle it is two, which pays only for a held piece at least this long.
REUSE_BYTES = 1024 * 1024


class RangeFile(io.RawIOBase):
    """A read-only, seekable view of a remote object made of ranged reads.

    ``prefetch`` starts fetching byte ranges in the background (the next row group
    while the current one is decoded); only the two latest prefetch generations are
    kept, which bounds memory to about two row groups of compressed bytes.
    """

    def __init__(self, store: RangeReader, info: ObjectInfo, portal: BlockingPortal) -> None:
        super().__init__()
        self._store, self._info, self._portal = store, info, portal
        self._pos = 0
        self._lock = threading.Lock()
        self._generations: list[list[tuple[int, int, Future[bytes]]]] = []
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def size(self) -> int:
        return self._info.size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._info.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def prefetch(self, ranges: list[tuple[int, int]]) -> None:
        with self._lock:
            # A range already held (a small file's row group inside the footer read) is not fetched twice.
            generation = [
                (s, e, self._covering(s, e) or self._around_held(s, e) or self._fetch(s, e)) for s, e in ranges if e > s
            ]
            self._generations.append(generation)
            for stale in self._generations[:-2]:
                for *_, fut in stale:
                    fut.cancel()
            del self._generations[:-2]

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        """Zero-copy: a view into the fetched block, which pyarrow keeps alive while it needs it."""
        with self._lock:
            start = self._pos
            end = self._info.size if size is None or size < 0 else min(self._info.size, start + size)
            if end <= start:
                return b""
            data: memoryview | None = self._cached(start, end)
            if data is None:
                ahead = min(self._info.size, max(end, start + READ_AHEAD))
                fut = self._fetch(start, ahead)
                self._generations.append([(start, ahead, fut)])
                if len(self._generations) > 3:
                    # a read-ahead block must not evict the prefetched row groups
                    del self._generations[-2]
                data = memoryview(fut.result())[: end - start]
            self._pos = end
            return data  # type: ignore[return-value]

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        with self._lock:
            for generation in self._generations:
                for *_, fut in generation:
                    fut.cancel()
            self._generations.clear()
        super().close()

    def _covering(self, start: int, end: int) -> Future[bytes] | None:
        """A held fetch whose bytes start at ``start`` or before and reach ``end``, trimmed to fit."""
        for generation in reversed(self._generations):
            for s, e, fut in generation:
                if s <= start and end <= e:
                    if (s, e) == (start, end):
                        return fut
                    trimmed: Future[bytes] = Future()
                    fut.add_done_callback(lambda f, t=trimmed, a=start - s, b=end - s: _trim(f, t, a, b))
                    return trimmed
        return None

    def _around_held(self, start: int, end: int) -> Future[bytes] | None:
        """``[start, end)`` from the longest fetched piece of it this file holds (see :data:`REUSE_BYTES`) and
        requests for the rest; None if no piece is worth it. Only finished fetches count: one still in
        flight may yet be cancelled with its generation."""
        best: tuple[int, int, int, Future[bytes]] | None = None
        for generation in self._generations:
            for s, e, fut in generation:
                lo, hi = max(s, start), min(e, end)
                if hi <= lo or not fut.done() or fut.cancelled() or fut.exception() is not None:
                    continue
                worth = lo == start or hi == end or hi - lo >= REUSE_BYTES
                if worth and (best is None or hi - lo > best[1] - best[0]):
                    best = (lo, hi, s, fut)
        if best is None:
            return None
        lo, hi, s, fut = best
        held: Future[bytes] = Future()
        held.set_result(fut.result()[lo - s : hi - s])  # its own bytes: the fetch may go with its generation
        pieces = [self._fetch(start, lo)] if start < lo else []
        pieces.append(held)
        if hi < end:
            pieces.append(self._fetch(hi, end))
        return _joined(pieces)

    def _cached(self, start: int, end: int) -> memoryview | None:
        for generation in reversed(self._generations):
            for s, e, fut in generation:
                if s <= start and end <= e:
                    return memoryview(fut.result())[start - s : end - s]
        return None

    def _fetch(self, start: int, end: int) -> Future[bytes]:
        self.bytes_read += end - start
        return self._portal.start_task_soon(self._store.read_range, self._info.uri, start, end)


def _trim(done: Future[bytes], target: Future[bytes], start: int, end: int) -> None:
    if done.cancelled():
        target.cancel()
    elif done.exception() is not None:
        target.set_exception(done.exception())  # type: ignore[arg-type]
    else:
        target.set_result(done.result()[start:end])


def _joined(pieces: list[Future[bytes]]) -> Future[bytes]:
    """One future of the pieces' bytes end to end, settled once all are; cancelling it cancels them."""
    joined: Future[bytes] = Future()
    lock = threading.RLock()  # settling may cancel the pieces, whose callbacks come back here

    def settle(_: Future[bytes]) -> None:
        with lock:
            if joined.done() or not all(piece.done() for piece in pieces):
                return
            failed = next((p for p in pieces if p.cancelled() or p.exception() is not None), None)
            if failed is None:
                joined.set_result(b"".join(piece.result() for piece in pieces))
            elif failed.cancelled():
                joined.cancel()
            else:
                joined.set_exception(failed.exception())  # type: ignore[arg-type]

    joined.add_done_callback(lambda done: [p.cancel() for p in pieces] if done.cancelled() else None)
    for piece in pieces:
        piece.add_done_callback(settle)
    return joined


class PartSink(io.RawIOBase):
    """A write-only file that cuts what it is given into parts for an :class:`Upload`.

    The first part is ``first_part`` bytes (at least ``part_size``): an output smaller is
    held and sent whole by the commit, in one request. ``write_part`` blocks this thread
    only while the upload already has its maximum of parts in flight: that is the
    backpressure that bounds memory.
    """

    def __init__(self, upload: PartWriter, part_size: int, portal: BlockingPortal, first_part: int = 0) -> None:
        super().__init__()
        self._upload, self._part_size, self._portal = upload, part_size, portal
        self._next_part = max(part_size, first_part)
        self._buffer = bytearray()
        self.bytes_written = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.bytes_written

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.bytes_written += len(data)
        if not self._buffer and len(data) >= self._next_part:
            # A piece that is a whole part by itself (a large tar member) goes as it is: copying it
            # through the buffer twice was half of a tar shard's time (measured, 632 MB shards).
            self._send(data if isinstance(data, bytes) or self._upload.takes_views else bytes(data))
            return len(data)
        self._buffer += data
        if len(self._buffer) >= self._next_part:
            # Parts may exceed their size by one write: S3 only needs every part but the
            # last to be >= 5 MiB, and handing the whole buffer over avoids a second copy.
            part, self._buffer = bytes(self._buffer), bytearray()
            self._send(part)
        return len(data)

    def _send(self, part: bytes) -> None:
        self._portal.call(self._upload.write_part, part)
        self._next_part = self._part_size

    def remainder(self) -> bytes:
        """What is left after the last whole part: the upload's final, short part."""
        last, self._buffer = bytes(self._buffer), bytearray()
        return last
