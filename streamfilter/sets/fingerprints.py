"""An exact set of 64-bit key fingerprints: sorted unique ``uint64`` values plus a radix index.

Keys arrive already hashed to 64 bits (xxh3_64 of a URL, the first 8 bytes of a digest, ...).
The set answers "was this 64-bit value listed?" exactly; two different keys with the same
64-bit hash are the only false positives, and :func:`collision_bound` gives their expected
number for a run.

Layout, chosen for lookups from random, mostly absent queries:

* ``keys``: the distinct values, sorted ascending (8 bytes per key);
* ``index``: ``2**index_bits + 1`` ``uint32`` offsets into ``keys``; bucket ``b`` holds the keys
  whose top ``index_bits`` bits equal ``b``, ``keys[index[b]:index[b + 1]]``.
  ``index_bits = bit_length(n) - 2`` gives 2-4 keys per bucket (one cache line) for uniformly
  distributed hashes and costs 1-2 bytes per key.

A lookup is then two dependent memory reads (index entry, then keys) instead of the ~log2(n)
cache misses of a binary search over the whole array (``np.searchsorted`` on random needles runs
at ~1 M keys/s against 10 M keys). The kernel also prefetches both reads a few queries ahead, so
the misses of successive queries overlap: measured ~2x over the plain loop (see
``benchmarks/membership.py``). Buckets larger than a few keys (non-uniform "hashes" such as
small integers) fall back to a binary search inside the bucket, so skew costs time, never
correctness.

Both arrays may be read-only views of a memory-mapped file (see :mod:`.filterfile`); nothing is
rebuilt or copied on load, and queries allocate only their output, so any number of threads may
query one set at once (the kernels release the GIL).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: Offsets are uint32, so a set holds at most this many keys (32 GiB of fingerprints).
MAX_KEYS = 2**32 - 1
#: Queries between issuing a prefetch and using its line: enough to cover a DRAM miss with
#: two cores' worth of other work going on; 8-32 measured within noise of each other.
_PREFETCH_DISTANCE = 16
#: Buckets longer than this are searched by bisection rather than scanned.
_SCAN_LIMIT = 16


@intrinsic
def prefetch(typingctx, arr, i):
    """Hint the CPU to fetch ``arr[i]`` into cache (LLVM ``llvm.prefetch``, read, high locality).

    A hint only: it never faults, so the caller need not bounds-check beyond staying in the array.
    """
    sig = types.void(arr, types.intp)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


def index_bits_for(n_keys: int) -> int:
    """Radix bits for ``n_keys`` keys: 2-4 keys per bucket, 1-2 bytes of index per key."""
    return min(max(0, int(n_keys).bit_length() - 2), 32)


def as_hashes(h: np.ndarray) -> np.ndarray:
    """``h`` as a contiguous uint64 array; int64 is reinterpreted (hashes are bit patterns)."""
    arr = np.asarray(h)
    if arr.dtype == np.int64:
        arr = arr.view(np.uint64)
    elif arr.dtype != np.uint64:
        raise TypeError(f"expected an array of 64-bit hashes (uint64), got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D array of hashes, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def collision_bound(n_set: int, n_queries: int) -> float:
    """Expected number of absent keys among ``n_queries`` whose 64-bit hash equals some member's.

    Each absent query collides with one of ``n_set`` uniformly random 64-bit values with
    probability ``n_set / 2**64``; in allow mode such a row would be kept wrongly (deny mode:
    removed wrongly). E.g. 100 M listed keys and 10 G rows give about 0.05.
    """
    return float(n_queries) * float(n_set) / 2.0**64


@numba.njit(cache=True, nogil=True)
def _compact_sorted(a):
    """Drop repeats from sorted ``a`` in place; return the number of distinct values kept in front."""
    if a.size == 0:
        return 0
    m = 1
    for i in range(1, a.size):
        v = a[i]
        if v != a[m - 1]:
            a[m] = v
            m += 1
    return m


@numba.njit(cache=True, nogil=True)
def _build_index(keys, bits):
    """Offsets of each radix bucket in sorted ``keys``: one sequential pass."""
    nb = 1 << bits
    index = np.empty(nb + 1, dtype=np.uint32)
    shift = np.uint64(63 - bits)
    b = 0
    for i in range(keys.size):
        kb = (keys[i] >> np.uint64(1)) >> shift  # two shifts: bits == 0 must give bucket 0, not x >> 64
        while b <= kb:
            index[b] = i
            b += 1
    while b <= nb:
        index[b] = keys.size
        b += 1
    return index


@numba.njit(cache=True, nogil=True, inline="always")
def _bucket_contains(keys, lo, hi, x):
    if hi - lo > _SCAN_LIMIT:  # skewed input: bisect to the first key >= x
        while lo < hi:
            mid = (lo + hi) >> 1
            if keys[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        return lo < keys.size and keys[lo] == x
    for j in range(lo, hi):
        k = keys[j]
        if k >= x:  # sorted: the first key not below x decides
            return k == x
    return False


@numba.njit(cache=True, nogil=True)
def _contains(keys, index, bits, queries, out):
    """``out[i] = queries[i] in keys``, software-pipelined: index and key lines are prefetched ahead."""
    n = keys.size
    if n == 0:
        out[:] = False
        return
    shift = np.uint64(63 - bits)
    one = np.uint64(1)
    d = _PREFETCH_DISTANCE
    m = queries.size
    for i in range(-2 * d, m):
        a = i + 2 * d
        if a < m:  # stage 1: the index entry of a query two distances ahead
            prefetch(index, np.intp((queries[a] >> one) >> shift))
        c = i + d
        if 0 <= c < m:  # stage 2: its index line has arrived; fetch the start of its bucket
            prefetch(keys, np.intp(min(index[(queries[c] >> one) >> shift], n - 1)))
        if i >= 0:
            x = queries[i]
            b = (x >> one) >> shift
            # min(): a corrupt index (loaded without checksum verification) must not read out of bounds.
            hi = min(np.intp(index[b + 1]), n)
            lo = min(np.intp(index[b]), hi)
            out[i] = _bucket_contains(keys, lo, hi, x)


class FingerprintSet:
    """Sorted distinct 64-bit fingerprints with a radix index; exact, vectorized, thread-safe lookups.

    Build with :meth:`from_hashes`; load from a file with :func:`.filterfile.load_set`.
    """

    def __init__(self, keys: np.ndarray, index: np.ndarray, index_bits: int) -> None:
        """Wrap arrays already in the set's layout (no copy, no check of sortedness)."""
        if keys.dtype != np.uint64 or keys.ndim != 1 or not keys.flags.c_contiguous:
            raise ValueError("keys must be a contiguous 1-D uint64 array")
        if not 0 <= index_bits <= 32:
            raise ValueError(f"index_bits must be in [0, 32], got {index_bits}")
        if index.dtype != np.uint32 or index.shape != ((1 << index_bits) + 1,) or not index.flags.c_contiguous:
            raise ValueError(f"index must be a contiguous uint32 array of 2**{index_bits} + 1 offsets")
        if len(keys) > MAX_KEYS:
            raise ValueError(f"a fingerprint set holds at most {MAX_KEYS} keys, got {len(keys)}")
        if int(index[0]) != 0 or int(index[-1]) != len(keys):
            raise ValueError("index does not span the keys: first offset must be 0 and last the key count")
        self.keys = keys
        self.index = index
        self.index_bits = int(index_bits)

    @classmethod
    def from_hashes(cls, h: np.ndarray, *, copy: bool = True) -> FingerprintSet:
        """Build from 64-bit hashes; repeats are allowed and stored once.

        Memory: with ``copy=True`` (default) the input is copied, sorted in place and compacted,
        so the build needs 8 bytes per input key plus the index (1-2 bytes per key) beyond the
        input: ~0.93 GiB for 100 M keys. With ``copy=False`` the caller's array (uint64,
        contiguous) is sorted and compacted *in place* and the set keeps a view of its front:
        only the index is allocated. Either way, if many repeats were dropped the kept prefix
        is copied so the set does not pin a much larger buffer.
        """
        arr = as_hashes(h)
        if copy and isinstance(h, np.ndarray) and np.may_share_memory(arr, h):
            arr = arr.copy()
        arr.sort()  # numpy's default (intro/SIMD) quicksort sorts in place without a buffer
        m = _compact_sorted(arr)
        keys = arr[:m]
        if m < 0.75 * len(arr):
            keys = keys.copy()
        return cls.from_sorted(keys)

    @classmethod
    def from_sorted(cls, keys: np.ndarray) -> FingerprintSet:
        """Build from keys that are already sorted and distinct (not checked): only the index is built."""
        keys = np.ascontiguousarray(keys, dtype=np.uint64)
        if len(keys) > MAX_KEYS:
            raise ValueError(f"a fingerprint set holds at most {MAX_KEYS} keys, got {len(keys)}")
        bits = index_bits_for(len(keys))
        return cls(keys, _build_index(keys, bits), bits)

    def contains(self, h: np.ndarray) -> np.ndarray:
        """Boolean array: whether each hash is in the set. Releases the GIL; safe from many threads."""
        queries = as_hashes(h)
        out = np.empty(len(queries), dtype=np.bool_)
        _contains(self.keys, self.index, self.index_bits, queries, out)
        return out

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def size_bytes(self) -> int:
        """Bytes held by the keys and the index (also the file body size)."""
        return self.keys.nbytes + self.index.nbytes

    # --- file format hooks (used by .filterfile) ---

    def header_fields(self) -> dict[str, int]:
        """Kind-specific header fields for :mod:`.filterfile`."""
        return {"count": len(self.keys), "index_bits": self.index_bits}

    def body_parts(self) -> list[np.ndarray]:
        """The body, in file order: keys then index, both little-endian."""
        return [self.keys.astype("<u8", copy=False), self.index.astype("<u4", copy=False)]

    @staticmethod
    def body_size(count: int, index_bits: int) -> int:
        """Body bytes for a set of ``count`` keys and a ``2**index_bits``-bucket index."""
        return 8 * count + 4 * ((1 << index_bits) + 1)

    @classmethod
    def from_body(cls, body: np.ndarray, count: int, index_bits: int) -> FingerprintSet:
        """Views of a file body (uint8, 8-byte aligned, e.g. memory-mapped); no copy on little-endian hosts."""
        keys = body[: 8 * count].view("<u8").astype(np.uint64, copy=False)
        index = body[8 * count :].view("<u4").astype(np.uint32, copy=False)
        return cls(keys, index, index_bits)
