"""Perceptual image hashes (PDQ, 256 bits) matched by Hamming distance, without a linear scan.

A list hash matches an image hash when the two differ in at most ``max_distance``
bits (31 is Meta's documented confident match for PDQ). The index is multi-index
hashing: each 256-bit hash is cut into 16 words of 16 bits, and each word position
keeps the list's entries bucketed by that word's value (a counting sort, built once).
Two hashes within ``D`` bits agree to within ``D // 16`` bits on at least one of the
16 words (pigeonhole), so probing every word's bucket and the buckets of every value
within ``D // 16`` flipped bits finds every match; each candidate's whole distance is
then computed, so the answer is exact, never approximate. With a million list hashes a
bucket holds about 15 of them: a query at ``D = 31`` looks at about 4,000 candidates.
The probe is one compiled loop over a batch of queries (numba, ``nogil``: batches of
several shards run at once); measured on 2,000 queries against a million random list
hashes, numpy's vectorized version of the same probe took 414 µs a query.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import UsageError

BITS = 256
HASH_BYTES = BITS // 8
HEX_DIGITS = BITS // 4
WORDS, WORD_BITS = 16, 16
#: Meta's documented confident match for PDQ.
DEFAULT_MAX_DISTANCE = 31
#: Past 63 bits a probe visits thousands of buckets per word, and PDQ matches that far apart are mostly noise.
MAX_DISTANCE = 63


def parse_hex(entries: pa.Array, where: Callable[[int], str]) -> np.ndarray:
    """List entries (64 hex digits each, most significant first) as a (n, 32) uint8 array.

    ``where(i)`` names entry ``i`` (its line) for the one-line refusal of a malformed hash.
    """
    text = pc.utf8_lower(entries.cast(pa.large_string()))
    valid = pc.and_(pc.equal(pc.utf8_length(text), HEX_DIGITS), pc.match_substring_regex(text, "^[0-9a-f]*$"))
    valid = valid.fill_null(False)
    if valid.false_count:
        bad = pc.indices_nonzero(pc.invert(valid))[0].as_py()
        raise UsageError(
            f"{where(bad)}: not a PDQ hash (a PDQ list holds 64 hex digits a line, the 256 bits most "
            "significant first); fix or remove the line"
        )
    # Every entry is 64 ASCII characters, laid end to end in the data buffer from the first offset on.
    first = np.frombuffer(text.buffers()[1], np.int64)[text.offset]
    digits = np.frombuffer(text.buffers()[2], np.uint8)[first : first + len(text) * HEX_DIGITS]
    nibbles = np.where(digits >= ord("a"), digits - (ord("a") - 10), digits - ord("0")).astype(np.uint8)
    nibbles = nibbles.reshape(len(text), HASH_BYTES, 2)
    return (nibbles[:, :, 0] << 4) | nibbles[:, :, 1]


def from_bits(bits: np.ndarray) -> np.ndarray:
    """Hashes given as bit vectors (..., 256), most significant bit first, as bytes (..., 32)."""
    return np.packbits(bits.astype(np.uint8, copy=False), axis=-1)


def _flip_masks(flips: int) -> np.ndarray:
    """Every 16-bit mask with at most ``flips`` bits set (0 first)."""
    masks = [0]
    for n in range(1, flips + 1):
        masks += [sum(1 << b for b in bits) for bits in itertools.combinations(range(WORD_BITS), n)]
    return np.array(masks, np.uint16)


@numba.njit(cache=True, inline="always")
def _popcount64(x: np.uint64) -> int:
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return int((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@numba.njit(cache=True, nogil=True)
def _nearest(queries16, queries64, masks, order, starts, words64, best):  # pragma: no cover - compiled
    """For each query, the distance to its nearest entry among the candidates its probes find."""
    for i in range(queries16.shape[0]):
        b = best[i]
        for w in range(queries16.shape[1]):
            for m in masks:
                value = queries16[i, w] ^ m
                for p in range(starts[w, value], starts[w, value + 1]):
                    e = order[w, p]
                    d = 0
                    for k in range(queries64.shape[1]):
                        d += _popcount64(queries64[i, k] ^ words64[e, k])
                    if d < b:
                        b = d
        best[i] = b


class PdqKeySet:
    """List hashes, looked up by Hamming distance: a :class:`.keyset.KeySet` whose keys are PDQ hashes."""

    kind = "pdq"

    def __init__(self, hashes: np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE) -> None:
        """``hashes``: (n, 32) uint8, duplicates allowed (they are removed)."""
        if not 0 <= max_distance <= MAX_DISTANCE:
            raise UsageError(f"--max-distance {max_distance}: choose between 0 and {MAX_DISTANCE} bits")
        hashes = np.unique(np.ascontiguousarray(hashes, np.uint8).reshape(-1, HASH_BYTES), axis=0)
        self.max_distance = max_distance
        self.size = len(hashes)
        self.digest = "sha256:" + hashlib.sha256(b"pdq:%d:" % max_distance + hashes.tobytes()).hexdigest()
        self._words64 = np.ascontiguousarray(hashes.view(">u8").astype(np.uint64))  # (n, 4): for the distance
        words = hashes.view(">u2").astype(np.uint16)  # (n, 16): the probe words
        self._masks = _flip_masks(max_distance // WORDS)
        # Per word position: entry numbers ordered by that word's value (a radix sort: 16-bit keys), and
        # where each value's bucket starts.
        self._order = np.ascontiguousarray(np.argsort(words, axis=0, kind="stable").T.astype(np.int32))  # (16, n)
        counts = [np.bincount(words[:, w], minlength=1 << WORD_BITS) for w in range(WORDS)]
        self._starts = np.stack([np.concatenate(([0], np.cumsum(c))) for c in counts]).astype(np.int64)

    def false_match_rate(self) -> float:
        return 0.0  # distances are computed exactly for every candidate

    def distances(self, queries: np.ndarray) -> np.ndarray:
        """The distance from each query hash to its nearest list hash, or -1 when none is within reach.

        ``queries``: (q, 32) uint8. Returns (q,) int16.
        """
        queries = np.ascontiguousarray(queries, np.uint8).reshape(-1, HASH_BYTES)
        best = np.full(len(queries), BITS + 1, np.int64)
        if len(queries) and self.size:
            q16 = np.ascontiguousarray(queries.view(">u2").astype(np.uint16))
            q64 = np.ascontiguousarray(queries.view(">u8").astype(np.uint64))
            _nearest(q16, q64, self._masks, self._order, self._starts, self._words64, best)
        return np.where(best > self.max_distance, -1, best).astype(np.int16)

    def contains(self, keys: pa.Array) -> pa.Array:
        """Keys are hashes as 32-byte binaries: True where one is within ``max_distance`` of the list."""
        if isinstance(keys, pa.ChunkedArray):
            keys = keys.combine_chunks()
        valid = pc.is_valid(keys).to_numpy(zero_copy_only=False)
        data = keys.fill_null(bytes(HASH_BYTES)).cast(pa.binary(HASH_BYTES))
        queries = np.frombuffer(data.buffers()[1], np.uint8)[data.offset * HASH_BYTES :][: len(data) * HASH_BYTES]
        return pa.array((self.distances(queries) >= 0) & valid)
