"""Matching ``domain:`` and ``prefix:`` rules: a string table built once, probed by compiled kernels.

A :class:`StringTable` holds distinct byte strings in an open-addressing table keyed by
their XXH3-64 hash. A probe confirms every hash hit by comparing the bytes, so a match
is exact: a hash collision costs a comparison, never a wrong answer.

* :class:`DomainSet`: a host matches when it, or one of its parent suffixes cut at a
  label boundary, is in the table: ``img.example.co.uk`` tries ``img.example.co.uk``,
  ``example.co.uk``; ``badexample.co.uk`` never tries ``example.co.uk``. Only suffixes
  with as many labels as some entry are tried (entries are never public suffixes, so
  ``co.uk`` and ``uk`` are skipped when no entry has fewer than three labels).
* :class:`PrefixSet`: a key matches when one of its leading substrings, of the length
  of some entry, is in the table.

Each kernel walks the Arrow offsets and data buffers of a batch once (numba, ``nogil``),
so threads may share a set; no Python runs per row.
"""

from __future__ import annotations

import hashlib

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..hashing import _buffers, _kernel, _xxh3, hash64
from .fingerprints import _PREFETCH_DISTANCE, prefetch
from .hosts import url_hosts

_DOT, _ZERO, _NINE, _A, _Z, _COLON, _SLASH, _QUERY, _HASH, _AT, _BRACKET = (np.uint8(ord(c)) for c in ".09az:/?#@[")
_LENGTH_MASK = np.uint64((1 << 24) - 1)
#: Dots a host may have on the compiled path (more: the Arrow path, which has no such limit).
_MAX_DOTS = 64
_SCHEME_EXTRA = (np.uint8(ord("+")), np.uint8(ord("-")), np.uint8(ord(".")))


@_kernel
def _fill(hashes, offsets, slots, mask):
    """Each entry's hash, and where its bytes are (offset << 24 | length), in its slot."""
    for e in range(hashes.size):
        h = hashes[e]
        i = h & mask
        while slots[2 * i] != 0:
            i = (i + np.uint64(1)) & mask
        slots[2 * i] = h
        slots[2 * i + 1] = (np.uint64(offsets[e]) << np.uint64(24)) | np.uint64(offsets[e + 1] - offsets[e])


@numba.njit(cache=True, nogil=True, inline="always")  # inlined: a call would count references to its arrays
def _emit(base, data, row, hs, he, min_labels, max_labels, n, rows, starts, lens, hashes):
    """The suffixes of host ``data[hs:he]`` cut at label boundaries with ``min_labels..max_labels``
    labels, appended as candidates from ``n``; returns the new count."""
    # A host whose last label is a number is an IPv4 address (or no valid name): only whole.
    k = he - 1
    while k >= hs and _ZERO <= data[k] <= _NINE:
        k -= 1
    whole_only = k < he - 1 and (k < hs or data[k] == _DOT)
    labels = 0
    j = he
    while j > hs:
        j -= 1
        if j > hs and data[j] != _DOT:
            continue
        start = j + 1 if data[j] == _DOT else j
        labels += 1
        if labels > max_labels:
            break
        if labels >= min_labels and he > start and (not whole_only or start == hs):
            h = _xxh3(base, start, he - start)
            rows[n] = row
            starts[n] = start
            lens[n] = he - start
            hashes[n] = h | np.uint64(h == 0)  # 0 marks an empty slot; entries are stored the same way
            n += 1
    return n


@_kernel
def _url_candidates(offsets, data, min_labels, max_labels, rows, starts, lens, hashes, rare):
    """Parse each lower-cased URL's authority and emit its host's suffixes; flag rows the Arrow path must do.

    One forward pass over scheme and authority records where the host's labels start, so the
    suffixes are cut without reading the host again.
    """
    base = data.ctypes.data
    n = 0
    dots = np.empty(_MAX_DOTS, np.int64)
    for r in range(rare.size):
        s = np.int64(offsets[r])
        e = np.int64(offsets[r + 1])
        if s >= e or not (_A <= data[s] <= _Z):
            continue
        i = s + 1
        while i < e and (_A <= data[i] <= _Z or _ZERO <= data[i] <= _NINE or data[i] in _SCHEME_EXTRA):
            i += 1
        if i + 2 >= e or data[i] != _COLON or data[i + 1] != _SLASH or data[i + 2] != _SLASH:
            continue
        hs = i + 3  # the host starts after the authority's last @
        he = -1  # ...and ends at its first : after that @, or at the authority's end
        q = hs
        nd = 0
        odd = False
        while q < e:
            c = data[q]
            if c == _SLASH or c == _QUERY or c == _HASH:  # noqa: SIM109 (numba: plain compares)
                break
            if c == _DOT:
                if he < 0:
                    if nd == _MAX_DOTS:
                        odd = True
                    else:
                        dots[nd] = q
                        nd += 1
            elif c == _AT:
                hs, he, nd = q + 1, -1, 0
            elif c == _COLON:
                if he < 0:
                    he = q
            elif c >= 128 or c == _BRACKET:
                odd = True
            q += 1
        if odd:
            rare[r] = True
            continue
        if he < 0:
            he = q
        while he > hs and data[he - 1] == _DOT:  # trailing dots: not part of the name
            he -= 1
            nd -= 1
        if he <= hs:
            continue
        # A host whose last label is a number is an IPv4 address (or no valid name): only whole.
        k = he - 1
        while k >= hs and _ZERO <= data[k] <= _NINE:
            k -= 1
        whole_only = k < he - 1 and (k < hs or data[k] == _DOT)
        labels = 1
        d = nd - 1
        while labels <= max_labels:
            start = dots[d] + 1 if d >= 0 else hs
            if labels >= min_labels and he > start and (not whole_only or start == hs):
                h = _xxh3(base, start, he - start)
                rows[n] = r
                starts[n] = start
                lens[n] = he - start
                hashes[n] = h | np.uint64(h == 0)
                n += 1
            if d < 0:
                break
            d -= 1
            labels += 1
    return n


@_kernel
def _host_candidates(offsets, data, min_labels, max_labels, rows, starts, lens, hashes):
    base = data.ctypes.data
    n = 0
    for r in range(offsets.size - 1):
        n = _emit(base, data, r, np.int64(offsets[r]), np.int64(offsets[r + 1]), min_labels, max_labels, n,
                  rows, starts, lens, hashes)  # fmt: skip
    return n


@_kernel
def _prefix_candidates(offsets, data, lengths, rows, starts, lens, hashes):
    base = data.ctypes.data
    n = 0
    for r in range(offsets.size - 1):
        s = np.int64(offsets[r])
        size = np.int64(offsets[r + 1]) - s
        for length in lengths:
            if length > size:
                break
            h = _xxh3(base, s, length)
            rows[n] = r
            starts[n] = s
            lens[n] = length
            hashes[n] = h | np.uint64(h == 0)
            n += 1
    return n


@_kernel
def _probe(data, rows, starts, lens, hashes, n, slots, mask, ent_data, out):
    """``out[rows[c]] = True`` for every candidate that is an entry. A probe of a large table is a
    cache miss, and so is the entry a hash hit is confirmed against: both are prefetched ahead
    (the slot two distances ahead, the entry its slot names one distance ahead), so misses overlap."""
    d = _PREFETCH_DISTANCE
    for c in range(-2 * d, n):
        a = c + 2 * d
        if a < n:
            prefetch(slots, np.intp(2 * (hashes[a] & mask)))
        b = c + d
        if 0 <= b < n:
            i = hashes[b] & mask
            if slots[2 * i] == hashes[b]:
                prefetch(ent_data, np.intp(slots[2 * i + 1] >> np.uint64(24)))
        if c < 0 or out[rows[c]]:
            continue
        h = hashes[c]
        i = h & mask
        start = starts[c]
        length = lens[c]
        while True:
            sh = slots[2 * i]
            if sh == 0:
                break
            if sh == h:
                where = slots[2 * i + 1]
                if np.int64(where & _LENGTH_MASK) == length:
                    lo = np.int64(where >> np.uint64(24))
                    same = True
                    for k in range(length):
                        if ent_data[lo + k] != data[start + k]:
                            same = False
                            break
                    if same:
                        out[rows[c]] = True
                        break
            i = (i + np.uint64(1)) & mask


class StringTable:
    """Distinct byte strings in an open-addressing hash table (load at most 1/2); read-only once built."""

    def __init__(self, entries: pa.Array) -> None:
        entries = pc.unique(entries.drop_null()).cast(pa.large_binary())
        self.entries = entries.take(pc.sort_indices(entries))
        self.size = len(self.entries)
        hashes = hash64(self.entries, "xxh3_64") if self.size else np.zeros(0, np.uint64)
        hashes |= (hashes == 0).astype(np.uint64)
        offsets, data = _buffers(self.entries) if self.size else (np.zeros(1, np.int64), np.zeros(0, np.uint8))
        self.offsets = offsets - offsets[0]
        self.data = np.ascontiguousarray(data[offsets[0] : offsets[-1]])
        capacity = 1 << max(4, (2 * self.size).bit_length())
        self.mask = np.uint64(capacity - 1)
        if self.size and int(np.diff(self.offsets).max()) >= 1 << 24:
            raise ValueError("an entry of 16 MiB or more")  # lengths take 24 bits of a slot
        self.slots = np.zeros(2 * capacity, dtype=np.uint64)  # (hash, where) pairs: one cache line a probe
        _fill(hashes, self.offsets, self.slots, self.mask)
        self.lengths = np.unique(np.diff(self.offsets)).astype(np.int64)

    def digest(self, tag: str) -> str:
        """SHA-256 of the sorted entries, tagged with their kind: identifies them without showing them."""
        h = hashlib.sha256(tag.encode() + b"\0")
        h.update(self.offsets.tobytes())
        h.update(self.data.tobytes())
        return h.hexdigest()

    def probe(self, data: np.ndarray, candidates: Candidates, n: int, out: np.ndarray) -> None:
        c = candidates
        _probe(data, c.rows, c.starts, c.lens, c.hashes, n, self.slots, self.mask, self.data, out)


#: Candidates (substrings to look up) per kernel call: bounds the scratch arrays to 32 MiB.
CANDIDATES_PER_STEP = 1 << 20


class Candidates:
    """Scratch arrays for one step: the row, start, length and hash of each substring to look up."""

    def __init__(self, size: int) -> None:
        self.rows = np.empty(size, np.int64)
        self.starts = np.empty(size, np.int64)
        self.lens = np.empty(size, np.int64)
        self.hashes = np.empty(size, np.uint64)


def _flat(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One large_string (or large_binary) array."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type):
        return values
    return values.cast(pa.large_binary() if pa.types.is_binary(values.type) else pa.large_string())


def _steps(values: pa.Array, per_row: int) -> list[tuple[int, pa.Array]]:
    rows = max(1, CANDIDATES_PER_STEP // max(1, per_row))
    return [(i, values.slice(i, rows)) for i in range(0, len(values), rows)]


def _buffers_of(chunk: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    offsets, data = _buffers(chunk)
    return offsets, data if data.size else np.zeros(1, np.uint8)


def _valid(values: pa.Array, found: np.ndarray) -> np.ndarray:
    """Null slots may hold any bytes: they never match."""
    if values.null_count:
        found &= values.is_valid().to_numpy(zero_copy_only=False)
    return found


class DomainSet:
    """Hosts (ASCII, lower case, as :mod:`.hosts` gives them) and every subdomain of them."""

    def __init__(self, domains: pa.Array) -> None:
        self.table = StringTable(domains)
        self.size = self.table.size
        labels = pc.add(pc.count_substring(self.table.entries.cast(pa.large_string()), "."), 1)
        self.min_labels = int(pc.min(labels).as_py() or 1)
        self.max_labels = int(pc.max(labels).as_py() or 0)
        self.levels = max(1, self.max_labels - self.min_labels + 1)

    def contains_urls(self, urls: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """A bool per URL: its host, or a parent domain of it, is listed. Not a URL, or null: no match.

        The ASCII lower-cased URLs are parsed by a compiled kernel (scheme, authority, userinfo,
        port, trailing dots: the rules of :mod:`.hosts`); rows with a non-ASCII or bracketed host
        go through :func:`.hosts.url_hosts` (Arrow compute, IDNA, ipaddress).
        """
        urls = _flat(urls)
        out = np.zeros(len(urls), dtype=bool)
        if not self.size or not len(urls):
            return out
        lowered = pc.ascii_lower(urls if pa.types.is_large_string(urls.type) else urls.view(pa.large_string()))
        scratch = Candidates(min(len(urls), CANDIDATES_PER_STEP // self.levels) * self.levels)
        for first, chunk in _steps(lowered, self.levels):
            offsets, data = _buffers_of(chunk)
            found, rare = out[first : first + len(chunk)], np.zeros(len(chunk), dtype=bool)
            c = scratch
            n = _url_candidates(offsets, data, self.min_labels, self.max_labels, c.rows, c.starts, c.lens,
                                c.hashes, rare)  # fmt: skip
            self.table.probe(data, scratch, n, found)
            if rare.any():
                where = np.flatnonzero(rare)
                found[where] = self.contains_hosts(url_hosts(urls.slice(first, len(chunk)).take(where)))
        return _valid(urls, out)

    def contains_hosts(self, hosts: pa.Array) -> np.ndarray:
        """A bool per host (as :func:`.hosts.url_hosts` gives them): it or a parent domain is listed."""
        hosts = _flat(hosts)
        out = np.zeros(len(hosts), dtype=bool)
        if not self.size or not len(hosts):
            return out
        scratch = Candidates(min(len(hosts), CANDIDATES_PER_STEP // self.levels) * self.levels)
        for first, chunk in _steps(hosts, self.levels):
            offsets, data = _buffers_of(chunk)
            c = scratch
            n = _host_candidates(offsets, data, self.min_labels, self.max_labels, c.rows, c.starts, c.lens, c.hashes)
            self.table.probe(data, scratch, n, out[first : first + len(chunk)])
        return _valid(hosts, out)


class PrefixSet:
    """Keys that start with one of the entries, byte for byte."""

    def __init__(self, prefixes: pa.Array) -> None:
        self.table = StringTable(prefixes)
        self.size = self.table.size

    def contains(self, keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
        keys = _flat(keys)
        out = np.zeros(len(keys), dtype=bool)
        lengths = self.table.lengths
        if not self.size or not len(keys):
            return out
        scratch = Candidates(min(len(keys), max(1, CANDIDATES_PER_STEP // len(lengths))) * len(lengths))
        for first, chunk in _steps(keys, len(lengths)):
            offsets, data = _buffers_of(chunk)
            c = scratch
            n = _prefix_candidates(offsets, data, lengths, c.rows, c.starts, c.lens, c.hashes)
            self.table.probe(data, scratch, n, out[first : first + len(chunk)])
        return _valid(keys, out)
