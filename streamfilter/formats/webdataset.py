"""WebDataset tar shards: a streaming reader of members grouped into samples, and a writer of byte spans.

The reader never stages a shard. It reads the archive in large chunks (prefetching
the next one when the file can) and keeps only the chunks that the samples not yet
written still need; a member whose data is larger than a chunk is not held: its
bytes are copied from the source when it is written, or never read at all when it
is dropped. Kept members are not re-encoded: each is written as the exact bytes it
occupies in the input (its PAX or GNU long-name headers, its header, data and
padding), so names, modes, mtimes, owners and extended records all survive.

Decisions, for the record:
- Member names that are absolute or have a ``..`` component are refused, never
  normalized; so are hard links, symbolic links, devices, FIFOs and GNU sparse
  files: a kept link could point at a removed member or outside the extraction
  directory, and img2dataset writes none. Directories and PAX global headers pass
  through, kept, outside any sample.
- The archive must end with its two zero blocks; only zero bytes may follow them.
  Anything else (a cut at a member boundary, concatenated archives) is refused.
- The output ends with two zero blocks padded to a whole 10240-byte record, as
  Python's tarfile and GNU tar write by default, whatever the input's record size.
- Header checksums are checked in batches (one numpy pass over the headers read
  since the last check), before anything is decided from a batch and before any
  other complaint about a header, so a corrupt header is reported as such.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, NoReturn

import numpy as np

from ..errors import ShardError

BLOCK = 512
RECORD = 20 * BLOCK
ZERO_BLOCK = bytes(BLOCK)
#: Bytes read per request; also the size above which a member's data is left unread until written.
CHUNK_SIZE = 8 * 1024 * 1024
#: Largest PAX extended header or GNU long name; real ones are a few hundred bytes.
MAX_EXTENSION_BYTES = 1024 * 1024
#: Largest member whose data is read to decide (a sample's .json); real ones are a few KiB.
MAX_WANTED_BYTES = 64 * 1024 * 1024
#: Most bytes held for one sample: only members smaller than a chunk are held, but a sample may have many.
MAX_SAMPLE_BYTES = 1024**3

#: name, size, typeflag, magic+version, prefix (POSIX ustar layout; the checksum is read in bulk).
_HEADER = struct.Struct("100s24x12s20x1s100x8s80x155s12x")
_POSIX_MAGIC = b"ustar\x0000"
_REGULAR = (b"0", b"\0", b"7")
_DIRECTORY = b"5"
_EXTENSIONS = (b"x", b"L", b"K")
_PAX_GLOBAL = b"g"
_REFUSED = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"6": "a FIFO",
    b"S": "a GNU sparse file",
}
_COMPRESSED = {
    b"\x1f\x8b": "gzip-compressed (a .tar.gz?)",
    b"\x28\xb5\x2f\xfd": "zstd-compressed (a .tar.zst?)",
    b"BZh": "bzip2-compressed",
    b"\xfd7zXZ\x00": "xz-compressed",
    b"PAR1": "a Parquet file",
}


@dataclass(slots=True)
class Member:
    """One archive entry, located by the bytes it occupies in the archive."""

    name: str
    #: Offset of its first header block (PAX or GNU long-name headers included).
    start: int
    #: Offset just past its data's padding.
    end: int
    size: int
    #: "file", "directory", or "global" (a PAX global header): only files belong to samples.
    kind: str = "file"
    #: The data, when the reader was asked for it.
    data: bytes | None = None


@dataclass(slots=True)
class Sample:
    """Consecutive members sharing a key (WebDataset's rule), or one structural entry."""

    #: The name without its extensions (``dir/000123.jpg`` -> ``dir/000123``); None when it has none.
    key: str | None
    start: int
    end: int
    #: The first member's name, for messages.
    first: str
    #: Tar members (a PAX global header is none).
    members: int = 1
    #: A directory or a PAX global header: kept, and not a sample.
    structural: bool = False
    #: Data of the member whose extension is the reader's ``meta`` (the .json, or the image), if any.
    meta: bytes | None = None
    extensions: set[str] = field(default_factory=set)


def split_key(name: str) -> tuple[str | None, str]:
    """WebDataset's key and extension: ``a/b/000123.jpg`` -> (``a/b/000123``, ``jpg``); no key without a dot."""
    base = name.rfind("/") + 1
    dot = name.find(".", base)
    if dot <= base:  # no dot, or a dot file: WebDataset puts such members in no sample
        return None, ""
    return name[:dot], name[dot + 1 :]


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 when the high bit of its first byte is set."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] == 0xFF else value
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _pax_records(data: bytes) -> dict[str, str]:
    """``"%d %s=%s\\n"`` records, the length counting the whole record."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        record = data[space + 1 : pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise ValueError("malformed PAX record")
        key, value = record[:-1].split(b"=", 1)
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _read_exact(source: BinaryIO, n: int) -> bytes | memoryview:
    data = source.read(n)
    if len(data) == n:
        return data
    parts = [bytes(data)]
    got = len(data)
    while got < n:
        more = source.read(n - got)
        if not more:
            break
        parts.append(bytes(more))
        got += len(more)
    return b"".join(parts)


def _checksums_match(blocks: np.ndarray) -> np.ndarray:
    """Per 512-byte header, whether its recorded checksum matches (unsigned or, as some old tars, signed sums)."""
    field = blocks[:, 148:156]
    unsigned = blocks.sum(axis=1, dtype=np.int64) - field.sum(axis=1, dtype=np.int64) + 8 * 32
    # Most writers record six octal digits, then NUL and space: read those in bulk, the rest one by one.
    digits = field[:, :6].astype(np.int64) - ord("0")
    usual = ((digits >= 0) & (digits <= 7)).all(axis=1) & (field[:, 6] == 0)
    recorded = digits @ (8 ** np.arange(5, -1, -1, dtype=np.int64))
    for i in np.flatnonzero(~usual):
        try:
            recorded[i] = _number(field[i].tobytes())
        except ValueError:
            recorded[i] = -1
    ok = recorded == unsigned
    if not ok.all():
        signed = blocks.view(np.int8)
        sums = signed.sum(axis=1, dtype=np.int64) - signed[:, 148:156].sum(axis=1, dtype=np.int64) + 8 * 32
        ok |= recorded == sums
    return ok


class TarReader:
    """Reads a tar archive front to back, holding only the chunks not yet released.

    ``members`` yields entries as their headers are read; ``copy`` writes any byte
    span of the archive (from held chunks, or re-read from the source for data that
    was skipped); ``release`` forgets the chunks before an offset once written.
    """

    def __init__(self, source: BinaryIO, name: str, chunk_size: int | None = None) -> None:
        chunk_size = chunk_size or CHUNK_SIZE
        if chunk_size % BLOCK:
            raise ValueError("chunk_size must be a multiple of 512")
        self.name = name
        self._source = source
        self._chunk_size = chunk_size
        self.size = source.seek(0, io.SEEK_END)
        source.seek(0)
        self._prefetch = getattr(source, "prefetch", None)
        #: Held chunks, in archive order: (offset, bytes).
        self._chunks: list[tuple[int, memoryview]] = []
        self._loaded_end = 0
        self._held = 0
        #: Offsets of the headers read but not yet checksummed.
        self._pending: list[int] = []

    @property
    def held_bytes(self) -> int:
        return self._held

    # -- reading -------------------------------------------------------------------------------

    def _load(self, pos: int) -> None:
        n = min(self._chunk_size, self.size - pos)
        self._source.seek(pos)
        data = _read_exact(self._source, n)
        if len(data) != n:
            raise ShardError(f"{self.name} changed while it was read (it is shorter than {self.size:,} bytes); rerun")
        self._loaded_end = pos + n
        if self._prefetch is not None and self._loaded_end < self.size:
            # After the read, so that this chunk's own fetch is not evicted by the prefetch.
            self._prefetch([(self._loaded_end, min(self.size, self._loaded_end + self._chunk_size))])
        self._chunks.append((pos, memoryview(data)))
        self._held += n

    def _view(self, pos: int, n: int) -> memoryview | bytes:
        """Bytes [pos, pos + n) of the archive, reading further chunks as needed (the caller checked the size)."""
        end = pos + n
        if self._chunks:
            start, buf = self._chunks[-1]
            if start <= pos and end <= start + len(buf):
                return buf[pos - start : end - start]
        while self._loaded_end < end:
            # Skip unread data only when a whole chunk of it would be read for nothing.
            gap = pos - self._loaded_end
            self._load(pos if gap >= self._chunk_size else self._loaded_end)
        parts = []
        for start, buf in self._chunks:
            if start + len(buf) > pos and start < end:
                parts.append(buf[max(pos, start) - start : min(end, start + len(buf)) - start])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def members(self, wanted: str | tuple[str, ...] | None = None, oversized: str = "fail") -> Iterator[Member]:
        """Every entry in order; the data of files whose names end with ``wanted`` is read into ``Member.data``.

        A wanted member over :data:`MAX_WANTED_BYTES` fails the archive, or with ``oversized="empty"`` is
        given empty data (an image too large to hash is then undecodable, not a failed shard)."""
        if self.size == 0:
            raise ShardError(f"{self.name} is empty, not a tar archive; check the object")
        head = bytes(self._view(0, min(BLOCK, self.size)))
        for magic, what in _COMPRESSED.items():
            if head.startswith(magic):
                raise ShardError(f"{self.name} is {what}, not a tar archive; decompress it or fix its name or --format")
        pos = 0
        ext_start: int | None = None
        pax: dict[str, str] = {}
        long_name: bytes | None = None
        unpack = _HEADER.unpack_from
        pending = self._pending
        while True:
            start, buf = self._chunks[-1] if self._chunks else (0, memoryview(b""))
            if start <= pos and pos + BLOCK <= start + len(buf):  # the usual case: in the newest chunk
                name_f, size_f, kind, magic, prefix_f = unpack(buf, pos - start)
            else:
                if pos + BLOCK > self.size:
                    self._truncated(pos, "a header")
                name_f, size_f, kind, magic, prefix_f = unpack(self._view(pos, BLOCK))
            if name_f[0] == 0 and self._view(pos, BLOCK) == ZERO_BLOCK:
                if ext_start is not None:
                    self._fail(pos, "an extended header is followed by the end of the archive")
                self._end_of_archive(pos)
                return
            pending.append(pos)
            if pos == 0:
                self.verify()  # a file that is not a tar at all is told as such at once
            try:
                # The usual field: 11 octal digits and a NUL (or a space).
                size = int(size_f[:11], 8) if size_f[11] in (0, 32) else _number(size_f)
            except ValueError:
                try:
                    size = _number(size_f)
                except ValueError:
                    self._fail(pos, "its size field is not a number")
            if kind in _EXTENSIONS or kind == _PAX_GLOBAL:
                if size > MAX_EXTENSION_BYTES:
                    self._fail(pos, f"an extended header of {size:,} bytes (over {MAX_EXTENSION_BYTES:,})")
                end = self._data_end(pos, size, "an extended header")
                data = bytes(self._view(pos + BLOCK, size))
                if kind == b"L":
                    long_name = data.split(b"\0", 1)[0]
                elif kind in (b"x", _PAX_GLOBAL):
                    try:
                        records = _pax_records(data)
                    except ValueError:
                        self._fail(pos, "its PAX records are malformed")
                    if kind == _PAX_GLOBAL:
                        if {"path", "size"} & records.keys():
                            self._fail(pos, "a PAX global header sets path or size for every member (unsupported)")
                        yield Member("(PAX global header)", pos, end, size, "global")
                        pos = end
                        continue
                    pax.update(records)
                if ext_start is None:
                    ext_start = pos
                pos = end
                continue
            if "size" in pax:
                try:
                    size = int(pax["size"])
                except ValueError:
                    self._fail(pos, "its PAX size record is not a number")
            if "path" in pax:
                name = pax["path"]
            else:
                raw = long_name if long_name is not None else name_f.split(b"\0", 1)[0]
                if long_name is None and magic == _POSIX_MAGIC and prefix_f[0]:
                    raw = prefix_f.split(b"\0", 1)[0] + b"/" + raw
                name = raw.decode("utf-8", "surrogateescape")
            if kind == _DIRECTORY or (kind == b"\0" and name.endswith("/")):  # old tars mark directories so
                entry = "directory"
            elif kind in _REGULAR:
                entry = "file"
            elif kind in _REFUSED:
                self._fail(pos, f"member {name!r} is {_REFUSED[kind]}; tars with links or special files are refused")
            else:
                self._fail(pos, f"member {name!r} has type {kind!r}, which is not supported")
            self._check_name(name, pos)
            end = self._data_end(pos, size, f"member {name!r}")
            data = None
            if wanted is not None and entry == "file" and name.endswith(wanted):
                if size <= MAX_WANTED_BYTES:
                    data = bytes(self._view(pos + BLOCK, size))
                elif oversized == "empty":
                    data = b""
                else:
                    self._fail(pos, f"member {name!r} has {size:,} bytes, over {MAX_WANTED_BYTES:,} to decide by")
            yield Member(name, pos if ext_start is None else ext_start, end, size, entry, data)
            if self.held_bytes > MAX_SAMPLE_BYTES:
                raise ShardError(
                    f"{self.name}: more than {MAX_SAMPLE_BYTES:,} bytes of small members without a decision "
                    f"(near {name!r}); split the shard's samples"
                )
            ext_start, pax, long_name = None, {}, None
            pos = end

    def samples(self, meta: str | tuple[str, ...] | None = "json", oversized: str = "fail") -> Iterator[Sample]:
        """Consecutive members with the same key grouped into samples, in archive order.

        The data of each sample's ``meta`` member (``000123.json``; with several extensions, the
        first member having one of them) is read into ``Sample.meta``; with ``meta=None`` no data
        is read at all.
        """
        metas = (meta,) if isinstance(meta, str) else meta or ()
        current: Sample | None = None
        for m in self.members(tuple("." + e for e in metas) if metas else None, oversized):
            if m.kind != "file":
                if current is not None:
                    yield current
                    current = None
                yield Sample(None, m.start, m.end, m.name, members=int(m.kind == "directory"), structural=True)
                continue
            key, ext = split_key(m.name)
            if current is not None and key is not None and key == current.key:
                if ext in current.extensions:
                    self.verify()
                    raise ShardError(
                        f"{self.name}: member {m.name!r} appears twice in one sample; fix or regenerate the shard"
                    )
                current.extensions.add(ext)
                current.end = m.end
                current.members += 1
                if ext in metas and current.meta is None:
                    current.meta = m.data
                continue
            if current is not None:
                yield current
            current = Sample(key, m.start, m.end, m.name, extensions={ext})
            if key is not None and ext in metas:
                current.meta = m.data
        if current is not None:
            yield current

    def _data_end(self, pos: int, size: int, what: str) -> int:
        if size < 0:
            self._fail(pos, f"{what} has a negative size")
        end = pos + BLOCK + (size + BLOCK - 1) // BLOCK * BLOCK
        if end > self.size:
            self._truncated(pos, what)
        return end

    def _check_name(self, name: str, pos: int) -> None:
        if not name:
            self._fail(pos, "a member has an empty name")
        if name.startswith("/"):
            self._fail(pos, f"member {name!r} has an absolute name; refused, not rewritten")
        if ".." in name and ".." in name.split("/"):
            self._fail(pos, f"member {name!r} has a '..' component; refused, not rewritten")

    def _end_of_archive(self, pos: int) -> None:
        if pos + 2 * BLOCK > self.size:
            self._truncated(pos + BLOCK, "the second end-of-archive block")
        if self._view(pos + BLOCK, BLOCK) != ZERO_BLOCK:
            self._fail(pos, "a lone zero block inside the archive")
        self.verify()
        at = pos + 2 * BLOCK
        while at < self.size:
            n = min(self._chunk_size, self.size - at)
            if at + n <= self._loaded_end:
                tail = bytes(self._view(at, n))
            else:  # past what is held: read without holding it
                self._source.seek(at)
                tail = bytes(_read_exact(self._source, n))
            if tail.count(0) != len(tail):
                raise ShardError(
                    f"{self.name}: data after the end-of-archive blocks at offset {pos:,} (concatenated "
                    "archives?); refused, as it would be dropped: split or repack the shard"
                )
            at += n

    # -- checking ------------------------------------------------------------------------------

    def verify(self) -> None:
        """Check the checksums of the headers read since the last call; raise on the first bad one."""
        if not self._pending:
            return
        offsets = np.array(self._pending, np.int64)
        self._pending.clear()  # in place: members() holds this list
        bad = np.ones(len(offsets), bool)  # a header outside the held chunks would be a bug: reported, not missed
        for start, buf in self._chunks:
            lo, hi = np.searchsorted(offsets, [start, start + len(buf)])
            if lo < hi:
                arr = np.frombuffer(buf, np.uint8)
                blocks = arr[: len(arr) // BLOCK * BLOCK].reshape(-1, BLOCK)[(offsets[lo:hi] - start) // BLOCK]
                bad[lo:hi] = ~_checksums_match(blocks)
        if bad.any():
            pos = int(offsets[np.argmax(bad)])
            hint = "it is not a tar archive" if pos == 0 else "the archive is corrupt"
            raise ShardError(
                f"{self.name}: bad tar header checksum at offset {pos:,}; {hint}, re-download or regenerate it"
            )

    def _fail(self, pos: int, what: str) -> NoReturn:
        self.verify()  # a corrupt header explains whatever else looks wrong
        raise ShardError(f"{self.name}: bad tar entry at offset {pos:,}: {what}; fix or regenerate the shard")

    def _truncated(self, pos: int, what: str) -> NoReturn:
        self.verify()
        raise ShardError(
            f"{self.name} is truncated: it ends at {self.size:,} bytes, inside {what} at offset {pos:,}; "
            "re-download or regenerate it"
        )

    # -- writing -------------------------------------------------------------------------------

    def copy(self, start: int, end: int, write: Callable[[bytes | memoryview], object]) -> None:
        """Write the archive's bytes [start, end): held ones as they are, skipped ones re-read from the source."""
        pos = start
        for cstart, buf in self._chunks:
            cend = cstart + len(buf)
            if cend <= pos:
                continue
            if cstart >= end:
                break
            if cstart > pos:
                self._copy_source(pos, cstart, write)
            lo = max(pos, cstart)
            hi = min(end, cend)
            write(buf[lo - cstart : hi - cstart])
            pos = hi
            if pos >= end:
                return
        if pos < end:
            self._copy_source(pos, end, write)

    def _copy_source(self, start: int, end: int, write: Callable[[bytes | memoryview], object]) -> None:
        while start < end:
            n = min(self._chunk_size, end - start)
            self._source.seek(start)
            data = _read_exact(self._source, n)
            if len(data) != n:
                raise ShardError(f"{self.name} changed while it was read; rerun")
            write(data)
            start += n

    def release(self, before: int) -> None:
        """Forget held chunks that end at or before ``before`` (checksums of their headers are checked first)."""
        self.verify()
        self._chunks = [(s, b) for s, b in self._chunks if s + len(b) > before]
        self._held = sum(len(b) for _, b in self._chunks)


class TarWriter:
    """Writes spans of an input archive, then the end-of-archive blocks padded to a whole record."""

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self.bytes_written = 0

    def write(self, data: bytes | memoryview) -> None:
        self._sink.write(data)
        self.bytes_written += len(data)

    def close(self) -> None:
        end = self.bytes_written + 2 * BLOCK
        self.write(bytes(2 * BLOCK + (-end % RECORD)))
