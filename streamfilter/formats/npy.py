"""NumPy ``.npy`` files as fixed-size rows after a header: parsed, rewritten and cut without decoding.

A 2-dimensional C-order array of a plain dtype is a header followed by ``rows``
records of ``row_bytes`` each, so which bytes to keep follows from a row mask
alone: the vectors are never decoded, and never unpickled (NumPy's header readers
evaluate a literal; object dtypes are refused before any data is read).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from numpy.lib import format as npformat

from ..errors import ShardError

MAGIC = b"\x93NUMPY"
#: Bytes fetched first: the magic, the version, the header length and, for every file np.save writes, the header.
FIRST_BYTES = 4096
#: NumPy refuses longer headers as unsafe to evaluate (``max_header_size``); so do we.
MAX_HEADER_BYTES = 10_000


@dataclass(frozen=True)
class NpyHeader:
    """What the header says, and where the rows lie."""

    version: tuple[int, int]
    dtype: np.dtype
    shape: tuple[int, ...]
    #: Offset of the first row: the magic, version, length field and header text, padded.
    data_offset: int

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    @property
    def size(self) -> int:
        """The file's size when its rows are all there."""
        return self.data_offset + self.rows * self.row_bytes


def header_length(first: bytes, name: str) -> int:
    """Bytes the header occupies (its data offset), from the first 12 bytes; checks magic and version."""
    if len(first) < 10 or not first.startswith(MAGIC):
        raise ShardError(f"{name} is not a NumPy .npy file (no magic); check the embedding set")
    version = (first[6], first[7])
    if version == (1, 0):
        prefix, (text,) = 10, struct.unpack("<H", first[8:10])
    elif version in ((2, 0), (3, 0)) and len(first) >= 12:
        prefix, (text,) = 12, struct.unpack("<I", first[8:12])
    else:
        raise ShardError(f"{name}: .npy format version {version[0]}.{version[1]} is not one NumPy writes; rewrite it")
    if text > MAX_HEADER_BYTES:
        raise ShardError(
            f"{name}: its .npy header claims {text} bytes, more than the {MAX_HEADER_BYTES} NumPy reads safely; "
            "the file is damaged or not from np.save, rewrite it"
        )
    return prefix + text


def parse_header(head: bytes, size: int, name: str) -> NpyHeader:
    """The header of a .npy whose first bytes are ``head`` (at least :func:`header_length`) and size ``size``.

    Refuses what cannot be cut by rows: Fortran order, object and structured dtypes, other than 2
    dimensions, and a size other than the header's rows (a truncated file, or one with trailing bytes).
    """
    offset = header_length(head, name)
    if len(head) < offset:
        raise ShardError(f"{name} is truncated inside its .npy header ({size} bytes); fetch it again")
    fp = io.BytesIO(head[:offset])
    version = npformat.read_magic(fp)
    try:
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fp, max_header_size=MAX_HEADER_BYTES)
        else:  # 3.0 differs from 2.0 only by UTF-8 field names, which the structured dtypes refused below need
            shape, fortran, dtype = npformat.read_array_header_2_0(fp, max_header_size=MAX_HEADER_BYTES)
    except (ValueError, SyntaxError) as exc:
        raise ShardError(f"{name}: its .npy header does not parse ({' '.join(str(exc).split())[:120]})") from None
    if fortran:
        raise ShardError(f"{name} is in Fortran order; its rows are not contiguous, save it in C order (np.save)")
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise ShardError(f"{name} holds an object or structured dtype ({dtype}); only plain numeric vectors are cut")
    if len(shape) != 2:
        raise ShardError(f"{name} has shape {shape}; an embedding file is 2-dimensional (rows, dim)")
    header = NpyHeader(version, dtype, tuple(shape), offset)
    if size != header.size:
        what = "truncated" if size < header.size else "longer than its header says"
        raise ShardError(
            f"{name} is {what}: {size} bytes, its header says {header.size} ({header.rows} rows of "
            f"{header.row_bytes} bytes); fetch it again"
        )
    return header


def rewritten_header(header: NpyHeader, rows: int) -> bytes:
    """The header for ``rows`` rows: same version, dtype and order, and the same length where it fits,
    so the data stays at the offset (and alignment) it had."""
    shape = (rows, *header.shape[1:])
    text = f"{{'descr': {npformat.dtype_to_descr(header.dtype)!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
    prefix = 10 if header.version == (1, 0) else 12
    room = header.data_offset - prefix
    if len(text) + 1 > room:  # cannot happen for fewer rows; kept for safety: pad to NumPy's alignment
        room = len(text) + 1 + (-(prefix + len(text) + 1) % npformat.ARRAY_ALIGN)
    body = (text.ljust(room - 1) + "\n").encode("latin1")
    length = struct.pack("<H" if prefix == 10 else "<I", len(body))
    return MAGIC + bytes(header.version) + length + body


def kept_runs(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends (exclusive) of the runs of True in a row mask."""
    edges = np.diff(np.concatenate(([0], keep.view(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def kept_byte_ranges(header: NpyHeader, keep: np.ndarray) -> list[tuple[int, int]]:
    """The byte ranges of the kept rows, merged: what an output copies from its input, in order."""
    starts, ends = kept_runs(keep)
    offset, row = header.data_offset, header.row_bytes
    return list(zip((offset + starts * row).tolist(), (offset + ends * row).tolist(), strict=True))


def select_rows(data: bytes, row_bytes: int, keep: np.ndarray) -> bytes:
    """The kept rows of a block of whole rows, as bytes (rows are moved, never decoded)."""
    return np.frombuffer(data, np.uint8).reshape(-1, row_bytes)[keep].tobytes()
