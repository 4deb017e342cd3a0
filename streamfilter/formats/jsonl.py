"""JSON Lines shards: batches of raw lines, plain, gzip or zstd, and a writer in the same codec.

Lines are never re-serialized: a batch is a run of whole lines exactly as they
are in the (decompressed) input, terminators included, so kept lines are written
back byte for byte. The codec is named by the object's extension (``.gz``,
``.zst``) and checked against the first bytes, so a misnamed object fails
plainly instead of as "not JSON". Decompression is streamed with bounded output
per step, so memory does not grow with the shard or with its compression ratio.

A compressed output is one gzip member (zlib level 6, header without name or
time, so reruns give the same bytes) or one zstd frame (level 3, with checksum):
its bytes differ from the input's, its decompressed content is the kept lines.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from ..errors import ShardError
from ..store.uris import object_path

#: Compressed (or plain) bytes read per request.
CHUNK_SIZE = 8 * 1024 * 1024
#: Decompressed bytes per batch of lines (a batch may be larger by one line).
BATCH_BYTES = 8 * 1024 * 1024
#: A longer line is refused rather than held: real JSON lines are KiB, not hundreds of MiB.
MAX_LINE_BYTES = 64 * 1024 * 1024
#: zstd cannot bound one call's output; fed this much at a time, one call yields at most
#: 4 KiB x zstd's largest expansion (128 KiB blocks from 4 bytes) = 128 MiB, typically ~40 KiB.
_ZSTD_FEED = 4 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_OTHER_MAGIC = {b"PAR1": "a Parquet file", b"BZh": "bzip2-compressed", b"\xfd7zXZ\x00": "xz-compressed"}
GZIP_LEVEL = 6
ZSTD_LEVEL = 3


def codec_for(name: str) -> str:
    """ "gzip", "zstd" or "none", by the object's extension."""
    path = object_path(name)
    if path.endswith(".gz"):
        return "gzip"
    if path.endswith((".zst", ".zstd")):
        return "zstd"
    return "none"


def _what(head: bytes) -> str | None:
    if head.startswith(_GZIP_MAGIC):
        return "gzip-compressed"
    if head.startswith(_ZSTD_MAGIC) or (len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18"):
        return "zstd-compressed"
    for magic, what in _OTHER_MAGIC.items():
        if head.startswith(magic):
            return what
    return None


@dataclass
class LineBatch:
    """Whole lines as in the input; only the shard's last batch may end without a newline."""

    data: bytes
    #: 1-based number of the batch's first line in the shard.
    first_line: int
    #: Input (compressed) bytes read so far, for progress.
    bytes_read: int


def _chunks(source: BinaryIO, chunk_size: int) -> Iterator[bytes | memoryview]:
    """The object front to back, the next chunk prefetched when the file can."""
    size = source.seek(0, io.SEEK_END)
    prefetch = getattr(source, "prefetch", None)
    pos = 0
    while pos < size:
        n = min(chunk_size, size - pos)
        source.seek(pos)
        data = source.read(n)
        if not data:
            break
        pos += len(data)
        if prefetch is not None and pos < size:
            prefetch([(pos, min(size, pos + chunk_size))])
        yield data


class _Gunzip:
    """Concatenated gzip members (as pigz and bgzip write), zero padding after them allowed."""

    def __init__(self) -> None:
        self._d: zlib._Decompress | None = zlib.decompressobj(31)
        self._padding = False

    def feed(self, data: bytes | memoryview, limit: int) -> Iterator[bytes]:
        data = bytes(data)
        while data:
            if self._d is None:
                if self._padding or data[0] == 0:
                    self._padding = True
                    if data.count(0) != len(data):
                        raise ValueError("data after the end of the gzip stream")
                    return
                self._d = zlib.decompressobj(31)
            d = self._d
            while True:
                out = d.decompress(data, limit)
                if out:
                    yield out
                if d.eof:
                    data, self._d = d.unused_data, None
                    break
                data = d.unconsumed_tail
                if not data and len(out) < limit:
                    return

    def close(self) -> None:
        if self._d is not None:
            raise ValueError("the gzip stream ends early: the object is truncated")


class _Unzstd:
    """Concatenated zstd frames (skippable frames included), fed in small pieces to bound each step."""

    def __init__(self) -> None:
        self._dctx = zstandard.ZstdDecompressor()
        self._d = self._dctx.decompressobj()
        self._fresh = True

    def feed(self, data: bytes | memoryview, limit: int) -> Iterator[bytes]:
        view = memoryview(data)
        for i in range(0, len(view), _ZSTD_FEED):
            piece = bytes(view[i : i + _ZSTD_FEED])
            while piece:
                self._fresh = False
                out = self._d.decompress(piece)
                if out:
                    yield out
                if not self._d.eof:
                    break
                piece = self._d.unused_data
                self._d, self._fresh = self._dctx.decompressobj(), True

    def close(self) -> None:
        if not self._fresh:
            raise ValueError("the zstd stream ends inside a frame: the object is truncated")


class JsonLinesReader:
    """Reads a JSON Lines object in batches of whole lines."""

    def __init__(self, source: BinaryIO, name: str, codec: str | None = None, batch_bytes: int | None = None) -> None:
        self.name = name
        self.codec = codec or codec_for(name)
        self._source = source
        self._batch_bytes = batch_bytes or BATCH_BYTES

    def _decoded(self) -> Iterator[tuple[bytes | memoryview, int]]:
        """Decompressed blocks, each with the input bytes read so far."""
        decoder = _Gunzip() if self.codec == "gzip" else _Unzstd() if self.codec == "zstd" else None
        read = 0
        for chunk in _chunks(self._source, CHUNK_SIZE):
            if read == 0:
                self._check_magic(bytes(chunk[:8]))
            read += len(chunk)
            if decoder is None:
                yield chunk, read
                continue
            try:
                for block in decoder.feed(chunk, self._batch_bytes):
                    yield block, read
            except (zlib.error, zstandard.ZstdError, ValueError) as exc:
                raise ShardError(
                    f"{self.name}: cannot decompress it as {self.codec} ({exc}); check the object"
                ) from None
        if decoder is not None:
            if read == 0:
                raise ShardError(f"{self.name} is empty, not a {self.codec} stream; check the object")
            try:
                decoder.close()
            except ValueError as exc:
                raise ShardError(f"{self.name}: {exc}; re-download or regenerate it") from None

    def _check_magic(self, head: bytes) -> None:
        found = _what(head)
        expected = {"gzip": "gzip-compressed", "zstd": "zstd-compressed"}.get(self.codec)
        if found != expected and (expected is not None or found is not None):
            said = "plain JSON lines" if expected is None else f"{self.codec}-compressed"
            actual = found or "not compressed"
            raise ShardError(
                f"{self.name} is {actual}, but its name says {said}; fix its name or pass --format to match"
            )

    def batches(self) -> Iterator[LineBatch]:
        """Runs of whole lines of about ``batch_bytes``; the last line may lack its newline."""
        pending: list[bytes | memoryview] = []
        held = 0
        line = 1
        read = 0
        for block, read in self._decoded():
            pending.append(block)
            held += len(block)
            if held < self._batch_bytes:
                continue
            data = b"".join(pending)
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                if held > MAX_LINE_BYTES:
                    raise ShardError(
                        f"{self.name}: line {line} is longer than {MAX_LINE_BYTES:,} bytes; refused (is it JSON lines?)"
                    )
                pending = [data]
                continue
            batch = LineBatch(data[:cut], line, read)
            line += batch.data.count(b"\n")
            pending, held = [data[cut:]], len(data) - cut
            yield batch
        data = b"".join(pending)
        if data:
            yield LineBatch(data, line, read)


class JsonLinesWriter:
    """Writes kept lines to the sink in the input's codec."""

    def __init__(self, sink: BinaryIO, codec: str) -> None:
        self._sink = sink
        if codec == "gzip":
            self._compressor: zlib._Compress | zstandard.ZstdCompressionObj | None = zlib.compressobj(
                GZIP_LEVEL, zlib.DEFLATED, 31
            )
        elif codec == "zstd":
            self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compressobj()
        else:
            self._compressor = None

    def write(self, data: bytes | memoryview) -> None:
        if self._compressor is None:
            self._sink.write(data)
        else:
            out = self._compressor.compress(data)
            if out:
                self._sink.write(out)

    def close(self) -> None:
        if self._compressor is not None:
            self._sink.write(self._compressor.flush())
