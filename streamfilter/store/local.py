"""Local files: reads through the OS, writes to a temporary name renamed on commit."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import secrets
import threading
from pathlib import Path

import anyio.to_thread
from anyio.from_thread import BlockingPortal

from ..errors import ShardError
from .base import InputFile, ObjectInfo, Store, Upload, check_length


def to_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


class CountingFile(io.FileIO):
    """A plain OS file that counts the bytes read through it."""

    bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)


#: A temporary file of an output being written: ``.NAME.TOKEN.partial`` beside it.
_PARTIAL = re.compile(r"\.(.+)\.[0-9a-f]{12}\.partial")


class StalePartials:
    """The temporary files that killed runs left beside outputs, found by listing each folder once a run.

    Listing the folder for every output, as a glob did, cost a run of n outputs in one folder n^2
    directory entries read (100,000 shards: 10^10). An output's own partials are the only ones removed:
    another worker may be writing other outputs into the same folder.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._folders: dict[str, dict[str, list[str]]] = {}

    def take(self, path: Path) -> list[str]:
        """The partial files of output ``path`` that were there when its folder was first listed."""
        folder = str(path.parent)
        with self._lock:
            by_name = self._folders.get(folder)
            if by_name is None:
                by_name = self._folders[folder] = {}
                with contextlib.suppress(OSError), os.scandir(folder) as entries:
                    for entry in entries:
                        if match := _PARTIAL.fullmatch(entry.name):
                            by_name.setdefault(match.group(1), []).append(entry.path)
            return by_name.pop(path.name, [])


class LocalUpload(Upload):
    takes_views = True

    def __init__(self, uri: str, stale: StalePartials | None = None) -> None:
        super().__init__(uri)
        path = Path(to_path(uri))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Same directory as the target, so the final rename is atomic; created
            # with the usual mode (0666 less umask), which mkstemp would not give.
            for partial in (stale or StalePartials()).take(path):
                Path(partial).unlink(missing_ok=True)  # left by a run that was killed while writing this output
            self._tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.partial")
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:  # e.g. a file where a directory must be, no permission, no space
            raise ShardError(f"cannot write {uri}: {exc.strerror or exc}") from None
        self._file = os.fdopen(fd, "wb")
        self._path = path

    async def write_part(self, data: bytes) -> None:
        await anyio.to_thread.run_sync(self._file.write, data)

    def copy_ranges(self, src: str, ranges: list[tuple[int, int]], head: bytes = b"") -> int:
        """Append ``head``, then byte ranges of the file ``src`` (blocking): long ranges copied by the kernel
        where it can (``copy_file_range``: no byte passes through this process), short ones (and all where
        the kernel refuses) read a buffer at a time and written. Returns the bytes read into this process."""
        self._file.write(head)
        self._file.flush()
        copier = _RangeCopier(self._file.fileno(), self._file.tell())
        with open(src, "rb", buffering=0) as f:
            copier.copy_all(f.fileno(), ranges, src)
        self._file.seek(copier.pos)
        return copier.through_us

    async def commit(self, last: bytes = b"") -> ObjectInfo:
        def finish() -> ObjectInfo:
            self._file.write(last)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self._path)
            st = self._path.stat()
            return ObjectInfo(self.uri, st.st_size, mtime=st.st_mtime)

        try:
            info = await anyio.to_thread.run_sync(finish)
        except OSError as exc:  # e.g. a directory in the way of the rename, a full disk
            raise ShardError(f"cannot write {self.uri}: {exc.strerror or exc}") from None
        self.committed = True
        return info

    async def abort(self) -> None:
        self._file.close()
        Path(self._tmp).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # leave no empty directory made for this output
            self._path.parent.rmdir()


#: errnos of a copy_file_range the kernel or file system does not offer for these two files.
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.EPERM}
#: Bytes read at once for ranges gathered through the process (where the kernel refuses to copy).
_COPY_BUFFER = 8 * 1024 * 1024
#: At most this many buffers in one writev (Linux's IOV_MAX).
_IOV_MAX = 1024


class _RangeCopier:
    """Byte ranges appended to one output file: each by ``copy_file_range`` until the kernel refuses it for
    these files (another file system, an old kernel), then gathered through one bounded buffer.

    The kernel's copy won even for ranges of a few rows, where one syscall a range looked costly: 8 and
    16 sets of 96 and 24 MiB .npy with 5% of rows cut at random (ranges of 30 KiB on average), 4 runs each
    interleaved, load 3.9: 1.36 s and 1.78 s (0.63-0.68 s of system CPU) against 1.45 s and 2.07 s
    (0.55-1.33 s) for reading 8 MiB at a time and writing the kept slices with one pwritev.
    """

    def __init__(self, out: int, pos: int) -> None:
        self.out, self.pos = out, pos
        self.kernel = hasattr(os, "copy_file_range")
        self.through_us = 0
        self._buffer: memoryview | None = None

    def copy_all(self, src: int, ranges: list[tuple[int, int]], name: str) -> None:
        i = 0
        while i < len(ranges) and self.kernel:
            if not self.kernel_copy(src, *ranges[i], name):
                break
            i += 1
        while i < len(ranges):
            start, end = ranges[i]
            if end - start > _COPY_BUFFER:
                self.read_write(src, start, end, name)
                i += 1
                continue
            j = i + 1  # the ranges that fit one buffer with the bytes between them
            while j < len(ranges) and ranges[j][1] - start <= _COPY_BUFFER:
                j += 1
            self.gather(src, ranges[i:j], name)
            i = j

    def gather(self, src: int, ranges: list[tuple[int, int]], name: str) -> None:
        """Ranges within one buffer's span of ``src``: one read, then gathering writes of the kept slices."""
        if self._buffer is None:
            self._buffer = memoryview(bytearray(_COPY_BUFFER))
        lo, hi = ranges[0][0], ranges[-1][1]
        if os.preadv(src, [self._buffer[: hi - lo]], lo) != hi - lo:
            raise ShardError(f"short read from {name}: it ends before byte {hi}; it changed, run again")
        self.through_us += hi - lo
        views = [self._buffer[start - lo : end - lo] for start, end in ranges]
        done = 0  # views written whole
        while done < len(views):
            n = os.pwritev(self.out, views[done : done + _IOV_MAX], self.pos)
            self.pos += n
            while done < len(views) and n >= len(views[done]):
                n -= len(views[done])
                done += 1
            if n:  # a short write ended inside this view: its rest goes next
                views[done] = views[done][n:]

    def kernel_copy(self, src: int, start: int, end: int, name: str) -> bool:
        """One range by ``copy_file_range``. False where the kernel refuses it before a byte is copied;
        refused midway, the rest goes through the buffer."""
        first = start
        while start < end:
            try:
                n = os.copy_file_range(src, self.out, end - start, start, self.pos)
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                self.kernel = False
                if start == first:
                    return False
                self.read_write(src, start, end, name)
                return True
            if n == 0:
                raise ShardError(f"short read from {name}: it ends before byte {end}; it changed, run again")
            start, self.pos = start + n, self.pos + n
        return True

    def read_write(self, src: int, start: int, end: int, name: str) -> None:
        """A range longer than the buffer, a buffer at a time."""
        while start < end:
            data = os.pread(src, min(end - start, _COPY_BUFFER), start)
            if not data:
                raise ShardError(f"short read from {name}: it ends before byte {end}; it changed, run again")
            n = os.pwrite(self.out, data, self.pos)
            self.through_us += n
            start, self.pos = start + n, self.pos + n


class LocalStore(Store):
    # A local write needs no large parts: small ones keep memory per output low.
    part_size = 1024 * 1024
    kernel_copy = True

    def __init__(self) -> None:
        self._stale = StalePartials()

    async def stat(self, uri: str) -> ObjectInfo:
        try:
            st = os.stat(to_path(uri))
        except FileNotFoundError:
            raise ShardError(f"not found: {uri}; check the path") from None
        except OSError as exc:
            raise ShardError(f"cannot read {uri}: {exc.strerror}") from None
        if not os.path.isfile(to_path(uri)):
            raise ShardError(f"input is not a file: {uri}")
        return ObjectInfo(uri, st.st_size, mtime=st.st_mtime)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        def walk() -> list[ObjectInfo]:
            root = to_path(prefix)
            top = root if os.path.isdir(root) else os.path.dirname(root) or "."
            scheme = "file://" if prefix.startswith("file://") else ""
            found = []
            for dirpath, _dirs, files in os.walk(top):
                for name in files:
                    path = os.path.join(dirpath, name)
                    if path.startswith(root) and not name.endswith(".partial"):
                        st = os.stat(path)
                        found.append(ObjectInfo(scheme + path, st.st_size, mtime=st.st_mtime))
            return sorted(found, key=lambda info: info.uri)

        return await anyio.to_thread.run_sync(walk)

    async def read_range(self, uri: str, start: int, end: int) -> bytes:
        def read() -> bytes:
            with open(to_path(uri), "rb") as f:
                return os.pread(f.fileno(), end - start, start)

        return check_length(uri, await anyio.to_thread.run_sync(read), end - start)

    def open_write(self, uri: str) -> Upload:
        return LocalUpload(uri, self._stale)

    async def assemble(
        self, src: ObjectInfo, ranges: list[tuple[int, int]], tail: bytes, dst: str, head: bytes = b""
    ) -> tuple[ObjectInfo, int]:
        """``head``, the ranges of ``src`` and ``tail`` into ``dst`` (see :meth:`LocalUpload.copy_ranges`);
        returns the output and the bytes read into this process."""
        async with LocalUpload(dst, self._stale) as upload:
            try:
                through_us = await anyio.to_thread.run_sync(upload.copy_ranges, to_path(src.uri), ranges, head)
            except OSError as exc:  # e.g. a full disk, the input removed meanwhile
                raise ShardError(f"cannot write {dst} from {src.uri}: {exc.strerror or exc}") from None
            return await upload.commit(tail), through_us

    def open_input(self, info: ObjectInfo, portal: BlockingPortal) -> InputFile:
        return CountingFile(to_path(info.uri), "rb")  # type: ignore[return-value]
