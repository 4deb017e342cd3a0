"""An exact membership set of string keys, built once and queried per batch.

Two lookups, both exact:

* ``pyarrow.compute.is_in`` hashes its value set on each call: for a small set that costs less
  than hashing the batch's keys ourselves (measured: 2,236 keys against 131k URLs, 2.5 ms a call),
  but it is paid per call and grows with the set (40,000 URLs: 2.4 ms against 40,000 keys, 4.4 ms
  against 80,000, 7.1 ms against 131,000);
* sets of more than :data:`HASHED_FROM` keys also keep their keys sorted by a 64-bit hash, and
  those hashes spread over a table (:class:`_SlotTable`), built once, and, once the set has looked
  up twice its size in keys, a bit per key over a cheaper hash of three words of each key
  (:class:`_Prefilter`). A batch's keys are first checked against the bits (about 30 ns a URL),
  which rule out most non-members; the rest (every key, before the bits are built) are hashed whole
  with vectorized numpy (about 60-80 ns a URL), looked up in the sorted hashes (by binary search,
  or through the table when many got through), and every candidate is confirmed by comparing the
  keys themselves, so a hash collision can cost time but never a wrong answer. Sets past
  ``SMALL_SET`` always take this way; smaller ones take it for batches smaller than the set
  divided by :data:`BATCH_SHARE` (40,000 URLs, 1% of them listed, against 80,000 keys: 1.7 ms, 5.2
  ms before the prefilter; 4,000 URLs: 0.3 ms).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..keys import as_bytes
from .arrays import FALSE, as_mask, from_numpy, numbers

SMALL_SET = 131_072
#: Sets past this many keys keep sorted hashes too, for batches small beside them (see the module's doc).
HASHED_FROM = 16_384
BATCH_SHARE = 1
#: Up to this many keys, the ones the prefilter let through are looked up by binary search in the sorted hashes
#: rather than through the slot table.
SEARCHED_UP_TO = 4096
#: A set builds its prefilter once it has looked up this many keys for each key it holds.
PREFILTER_AFTER = 2
#: Sets of up to this many keys have the digest over their keys in sorted order (as every set had before
#: 2026-12); larger ones over their keys in the order of their hashes, which needs no string sort.
SORTED_DIGEST_UP_TO = 131_072
#: A large list with more than this share of repeats keeps a copy of its distinct keys; one with fewer
#: keeps the array it came in (and where each distinct key is in it): no second copy of 100 MB of URLs.
DUPLICATES_COPIED = 0.05

_P = 0x100000001B3  # odd, so invertible modulo 2**64
_P_INV = pow(_P, -1, 1 << 64)


def _power_table(base: int, n: int) -> np.ndarray:
    table = np.full(n, base, dtype=np.uint64)
    table[0] = 1
    return np.cumprod(table, dtype=np.uint64)  # wraps modulo 2**64, as intended


class _PolyHasher:
    """Position-independent polynomial hash of each string, vectorized over a batch.

    Sums ``byte * P**global_position`` over the whole data buffer, reduces per
    string, then multiplies by ``P**-start`` so the value depends only on content;
    the length is mixed in after (so zero bytes count), then MurmurHash3's finalizer.
    Power tables grow on demand to the largest step seen, by doubling.
    """

    #: Rows hashed per step: bounds the power tables and temporaries to a few MiB.
    ROWS_PER_STEP = 2048

    def __init__(self) -> None:
        self._tables = (np.ones(0, dtype=np.uint64), np.ones(0, dtype=np.uint64))

    def _powers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        tables = self._tables  # one read: other threads may swap in larger tables
        if len(tables[0]) < n:
            size = 1 << max(n - 1, 1 << 16).bit_length()  # a power of two: a few sizes, not one a batch
            tables = self._tables = (_power_table(_P, size), _power_table(_P_INV, size))
        return tables

    def __call__(self, values: pa.Array) -> np.ndarray:
        step = self.ROWS_PER_STEP
        parts = [self._hash(values.slice(i, step)) for i in range(0, len(values), step)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)

    def _hash(self, values: pa.Array) -> np.ndarray:
        offsets, data = _offsets_and_data(values)
        if len(data) == 0:
            return np.zeros(len(values), dtype=np.uint64)
        starts = offsets[:-1] - offsets[0]
        lengths = np.diff(offsets)
        pw, ipw = self._powers(len(data) + 1)
        # One zero past the end, so every start (empty strings at the tail too) is a valid index.
        weighted = np.empty(len(data) + 1, dtype=np.uint64)
        weighted[-1] = 0
        np.multiply(data, pw[: len(data)], out=weighted[:-1])  # one pass: widened and weighted
        hashes = np.add.reduceat(weighted, starts)
        hashes *= ipw[starts]
        hashes[lengths == 0] = 0
        hashes ^= lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        return _mix(hashes)


def _mix(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer, in place: a bijection that spreads every input bit over the top
    bits, which place a key in :class:`_SlotTable` (the polynomial sum alone leaves them lumpy)."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


class _SlotTable:
    """Sorted 64-bit hashes spread over a table twice their number, each at or just after the slot its
    top bits name (linear probing with the keys inserted in order, so every run of slots stays sorted).

    A lookup reads the home slot and the few after it until it finds the hash, a larger one or an
    empty slot: a few cache misses per key, where a binary search over 2 million hashes takes 21
    dependent ones (measured, 40,000 URLs against 2M keys: 0.8 ms, against 13 ms by
    ``np.searchsorted``). A slot keeps only the top 32 bits of its hash (16 MiB for 2M keys): a
    match names a candidate, which the full hashes and then the keys confirm.
    """

    def __init__(self, sorted_hashes: np.ndarray) -> None:
        n = len(sorted_hashes)
        bits = min(32, max(4, int(n).bit_length() + 1))  # 2n to 4n slots
        self._shift = np.uint64(64 - bits)
        tags = (sorted_hashes >> np.uint64(32)).astype(np.uint32)
        #: Zero marks an empty slot, so a key whose tag is zero makes every zero tag a candidate instead.
        self.has_zero = bool(n and tags[0] == 0)
        placed = sorted_hashes
        if self.has_zero:  # sorted: the zero tags come first
            zeros = int(np.searchsorted(tags, 1))
            placed, tags = sorted_hashes[zeros:], tags[zeros:]
        # Each at max(its home slot, the previous one's slot + 1), in place: no n-sized temporary but these.
        slot = (placed >> self._shift).astype(np.int64)
        rank = np.arange(len(tags), dtype=np.int64)
        slot -= rank
        np.maximum.accumulate(slot, out=slot)
        slot += rank
        del rank
        end = int(slot[-1]) + 1 if len(tags) else 0
        self._slots = np.zeros(max(end, 1 << bits) + 1, dtype=np.uint32)  # the last slot stays empty
        self._slots[slot] = tags

    def candidates(self, hashes: np.ndarray) -> np.ndarray:
        """The positions in ``hashes`` of the values whose top 32 bits the table holds, in order."""
        want = (hashes >> np.uint64(32)).astype(np.uint32)
        slot = (hashes >> self._shift).astype(np.int64)
        rows = np.arange(len(hashes))
        found = [np.flatnonzero(want == 0)] if self.has_zero else []
        while len(rows):
            seen = self._slots[slot]
            held = seen != 0
            found.append(rows[held & (seen == want)])
            going = held & (seen < want)
            rows, want, slot = rows[going], want[going], slot[going] + 1
        return np.sort(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


_U64 = np.uint64
_K1, _K2, _K3, _K4 = (_U64(k) for k in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93))
#: Half the right shift that keeps the last min(length, 8) bytes of the 8 ending a string, by that length (two
#: shifts of up to 32 bits: a shift by 64 is not defined everywhere).
_HALF_SHIFT = (4 * (8 - np.minimum(np.arange(9), 8))).astype(np.uint64)


def _sampled_hashes(values: pa.Array, step: int = 8192) -> np.ndarray:
    """A 64-bit hash per string from its length and three 8-byte words within it: its last 8 bytes, the
    8 before them and 8 near its middle (a string of 8 to 16 bytes is covered whole, a shorter one by
    its bytes alone).

    A gather of three words a string, not a pass over every byte: about a third of the time of
    :class:`_PolyHasher` (measured, LAION-style URLs: 31-40 ns against 70-80 ns a key). It sees only
    part of a string, so it only rules keys out (see :class:`_Prefilter`); keys that differ only
    outside those words hash alike, which costs time (they go on to the full hash), never an answer.
    """
    offsets, data = _offsets_and_data(values)
    out = np.empty(len(values), dtype=np.uint64)
    for i in range(0, len(values), step):
        o = offsets[i : i + step + 1]
        # Eight zero bytes either side, so that every word read lies in the buffer.
        buf = np.zeros(int(o[-1] - o[0]) + 16, dtype=np.uint8)
        buf[8:-8] = data[o[0] - offsets[0] : o[-1] - offsets[0]]
        words = np.ndarray((len(buf) - 7,), dtype="<u8", buffer=buf, strides=(1,))  # every 8-byte window
        ends = o[1:] - (o[0] - 8)
        lengths = np.diff(o)
        h = words[ends - 8]
        h *= _K1
        at = np.minimum(lengths, 16)
        np.maximum(at, 8, out=at)
        np.subtract(ends, at, out=at)
        word = words[at]
        word *= _K2
        h ^= word
        np.right_shift(lengths, 1, out=at)
        at += 4
        np.minimum(at, lengths, out=at)
        np.maximum(at, 8, out=at)
        np.subtract(ends, at, out=at)
        word = words[at]
        word *= _K3
        h ^= word
        word = lengths.astype(np.uint64)
        word *= _K4
        h ^= word
        short = np.flatnonzero(lengths < 8)
        if len(short):
            # Shorter than a word: its last word with the bytes before the string shifted out, and its length.
            half = _HALF_SHIFT[lengths[short]]
            word = (words[ends[short] - 8] >> half) >> half
            h[short] = word * _K1 ^ lengths[short].astype(np.uint64) * _K4
        out[i : i + len(h)] = _mix(h)
    return out


class _Prefilter:
    """A one-bit-per-key filter over :func:`_sampled_hashes` that rules out most non-members at once.

    A dense batch has few members (1% of its rows in the benchmarks), so the full polynomial hash,
    the slot table and the byte comparison run only on the rows this lets through: members, and
    about 1-2% of the others (64 bits a key; up to :data:`MAX_BITS`, past which more get through).
    """

    MAX_BITS = 1 << 28  # 32 MiB

    def __init__(self, keys: pa.Array) -> None:
        bits = min(self.MAX_BITS, 1 << max(16, (64 * len(keys) - 1).bit_length()))
        self._shift = _U64(64 - (bits.bit_length() - 1))
        self._bits = np.zeros(bits // 64, dtype=np.uint64)
        step = 1 << 20
        for i in range(0, len(keys), step):
            at = _sampled_hashes(keys.slice(i, step), step=1 << 16) >> self._shift
            np.bitwise_or.at(self._bits, (at >> _U64(6)).astype(np.intp), _U64(1) << (at & _U64(63)))

    def passing(self, keys: pa.Array) -> np.ndarray:
        """The positions (ascending) of the keys that may be members."""
        at = _sampled_hashes(keys) >> self._shift
        return np.flatnonzero((self._bits[(at >> _U64(6)).astype(np.intp)] >> (at & _U64(63))) & _U64(1))


class ExactKeySet:
    """Exact membership over a fixed list of keys; safe to share between threads."""

    kind = "exact"

    def false_match_rate(self) -> float:
        return 0.0

    def __init__(self, keys: pa.Array) -> None:
        keys = as_bytes(keys)
        self._hasher = _PolyHasher()
        #: Where the member at each position of the sorted hashes is in ``_keys`` (None: at that position).
        self._order: np.ndarray | None = None
        if keys.null_count:
            keys = keys.filter(pc.is_valid(keys))
        if len(keys) <= min(HASHED_FROM, SMALL_SET):
            keys, hashes = pc.unique(keys), None
        else:
            order, hashes = _unique_by_hash(keys, self._hasher(keys))
            if len(order) < len(keys) * (1 - DUPLICATES_COPIED) or len(order) <= min(HASHED_FROM, SMALL_SET):
                keys = keys.take(from_numpy(order))  # a list of many repeats: only the distinct keys kept
            else:
                self._order = order.astype(np.uint32) if len(keys) < 1 << 32 else order
            if len(order) <= min(HASHED_FROM, SMALL_SET):
                hashes = None
        self.size = len(keys) if self._order is None else len(self._order)
        self._keys, self._hashes = keys, hashes
        self._table = _SlotTable(hashes) if hashes is not None else None
        #: Built once the set has looked up PREFILTER_AFTER keys for each it holds (see _lookup_hashed).
        self._prefilter: _Prefilter | None = None
        self._looked_up = 0
        # The sorted digest is the one earlier versions wrote, so receipts made with them stay valid; past
        # SORTED_DIGEST_UP_TO keys, sorting the strings would cost more than the rest of the set's build.
        if hashes is None or self.size <= SORTED_DIGEST_UP_TO:
            self.digest = _digest(self._members(None))
        else:
            self.digest = _hash_order_digest(keys, self._order)

    def _members(self, positions: np.ndarray | None) -> pa.Array:
        """The members at ``positions`` of the hash order (all of them: None)."""
        if self._order is None:
            return self._keys if positions is None else self._keys.take(from_numpy(positions))
        return self._keys.take(from_numpy(self._order if positions is None else self._order[positions]))

    def contains(self, keys: pa.Array) -> pa.Array:
        """A boolean per key, never null: null keys are never members."""
        keys = as_bytes(keys)
        if self._hashes is None or (self.size <= SMALL_SET and len(keys) * BATCH_SHARE >= self.size):
            found = pc.is_in(keys, value_set=self._keys)  # repeats in a value set change nothing
        else:
            found = self._lookup_hashed(keys)
        return pc.fill_null(found, FALSE) if found.null_count else found

    def _lookup_hashed(self, keys: pa.Array) -> pa.Array:
        prefilter = self._prefilter
        if prefilter is None:
            # The prefilter costs about what it saves on twice the set's size in keys (2 million URLs: 0.2 s to
            # build, 55 ns a key saved), so a run that looks up fewer keys than that never builds it. Threads
            # may race here: at worst two build it, and either answers alike.
            self._looked_up += len(keys)
            if self._looked_up < PREFILTER_AFTER * self.size:
                return from_numpy(self._confirm(keys))
            prefilter = self._prefilter = _Prefilter(self._keys)
        result = np.zeros(len(keys), dtype=bool)
        maybe = prefilter.passing(keys)
        if len(maybe) == len(keys):
            result = self._confirm(keys)
        elif len(maybe):
            result[maybe] = self._confirm(keys.take(from_numpy(maybe)))
        return from_numpy(result)

    def _confirm(self, keys: pa.Array) -> np.ndarray:
        """Membership of ``keys`` by their full hash among the set's, each candidate confirmed by its bytes."""
        assert self._hashes is not None and self._table is not None
        hashes = self._hasher(keys)
        if len(keys) <= SEARCHED_UP_TO:
            # Few keys (what the prefilter let through): a binary search each costs less than the table's probe loop.
            lo = np.searchsorted(self._hashes, hashes, side="left")
            counts = np.searchsorted(self._hashes, hashes, side="right") - lo
            rows = np.flatnonzero(counts)
            lo, counts = lo[rows], counts[rows]
        else:
            rows = self._table.candidates(hashes)
            lo = np.searchsorted(self._hashes, hashes[rows], side="left")
            counts = np.searchsorted(self._hashes, hashes[rows], side="right") - lo
        result = np.zeros(len(keys), dtype=bool)
        if not len(rows):
            return result
        candidates = keys.take(from_numpy(rows))
        if counts.max() == 1:  # one member a hash, as almost always: compared pairwise
            confirmed = pc.equal(candidates, self._members(lo))
        else:
            # Every set entry sharing a candidate's hash, gathered without a loop.
            first = np.repeat(lo - np.cumsum(counts) + counts, counts)
            same_hash = first + np.arange(counts.sum())
            confirmed = pc.is_in(candidates, value_set=self._members(same_hash))
        result[rows] = as_mask(confirmed)
        return result


def _unique_by_hash(keys: pa.Array, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the distinct keys are, ordered by (hash, bytes), and their hashes: no string sort but
    within equal hashes.

    Sorting 64-bit hashes and comparing only the keys that share a hash finds the duplicates
    in a fraction of the time of a hash table or a sort of the strings (2M URLs: 0.3 s against
    0.8 s for ``pc.unique`` and 1.2 s for ``pc.sort_indices``).
    """
    order = np.argsort(hashes)
    hashes = hashes[order]
    ties = hashes[1:] == hashes[:-1]
    if ties.any():
        # Keys sharing a hash (duplicates, or collisions) sorted by their bytes within their hash, so the
        # order is a function of the set alone and duplicates are neighbours.
        shared = np.zeros(len(hashes), dtype=bool)
        shared[1:] |= ties
        shared[:-1] |= ties
        at = np.flatnonzero(shared)
        rows = order[at]
        tied = pa.Table.from_arrays([from_numpy(hashes[at]), keys.take(from_numpy(rows))], names=["h", "k"])
        by_key = numbers(pc.sort_indices(tied, sort_keys=[("h", "ascending"), ("k", "ascending")]))
        order[at] = rows[by_key]
        tied = tied.take(from_numpy(by_key))
        same = ties[at[1:] - 1] & (at[1:] == at[:-1] + 1)  # neighbours in one run of equal hashes
        duplicate = np.zeros(len(at), dtype=bool)
        duplicate[1:] = same & as_mask(pc.equal(tied["k"].slice(1), tied["k"].slice(0, len(at) - 1)))
        if duplicate.any():
            keep = np.ones(len(hashes), dtype=bool)
            keep[at[duplicate]] = False
            order, hashes = order[keep], hashes[keep]
    return order, hashes


#: Keys read per step when a large set's digest reads them in hash order.
_DIGEST_STEP = 65_536


def _hash_order_digest(keys: pa.Array, order: np.ndarray | None) -> str:
    """A digest of a set from its keys in (hash, bytes) order (``keys.take(order)``, read a step at a time)."""
    offsets, data = _offsets_and_data(keys)
    lengths = np.diff(offsets)
    if order is not None:
        lengths = lengths[order]
    h = hashlib.sha256(b"hash-ordered\0" + str(keys.type).encode())
    h.update(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64).tobytes())
    if order is None:
        h.update(data)
    else:
        for i in range(0, len(order), _DIGEST_STEP):
            h.update(_offsets_and_data(keys.take(from_numpy(order[i : i + _DIGEST_STEP])))[1])
    return "sha256:" + h.hexdigest()


def _offsets_and_data(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The value offsets (as int64, starting anywhere) and the bytes they index."""
    large = pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type)
    offset_type = np.dtype(np.int64 if large else np.int32)
    buffers = values.buffers()
    offsets = np.frombuffer(
        buffers[1], dtype=offset_type, count=len(values) + 1, offset=values.offset * offset_type.itemsize
    ).astype(np.int64)
    if buffers[2] is None:
        return offsets, np.zeros(0, dtype=np.uint8)
    return offsets, np.frombuffer(buffers[2], dtype=np.uint8)[offsets[0] : offsets[-1]]


def _digest(unique: pa.Array) -> str:
    """A digest of the set's content, independent of list order and duplicates."""
    ordered = unique.take(pc.sort_indices(unique))
    offsets, data = _offsets_and_data(ordered)
    h = hashlib.sha256(str(ordered.type).encode())
    h.update((offsets - offsets[0]).tobytes())
    h.update(data.tobytes())
    return "sha256:" + h.hexdigest()
