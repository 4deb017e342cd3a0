"""Vectorized hashing of key columns: one 64-bit hash or one digest per element of an Arrow array.

Why implement the 64-bit hashes here rather than call a package: a filter list stores
hashes, so a list written today must match rows hashed next year. The algorithms are
pinned by implementing them ourselves (XXH64, XXH3-64 and the first half of
MurmurHash3_x64_128, all with seed 0), checked in the tests against the reference
packages ``xxhash`` and ``mmh3`` and against literal known vectors.

The kernels are numba functions (``nogil=True``, so callers may run them on threads)
that walk the Arrow offsets and data buffers directly: no Python object per row.
Words are read as unaligned little-endian loads (byte-swapped on a big-endian host),
so a hash does not depend on the machine that computed it.

Compilation: numba compiles each kernel on its first call, about 4 CPU-seconds for
the three (measured on this project's 2-core VM). ``cache=True`` stores the machine
code under ``NUMBA_CACHE_DIR`` when set, else in ``__pycache__`` next to this file,
else in the user cache (``~/.cache/numba``); a later process loads it in about 0.5 s.
The cache is keyed on this file's modification time and the CPU, so editing the
file or moving to another CPU model recompiles. When no cache directory is writable
(read-only image, read-only HOME) numba would raise at import; ``_kernel`` then
warns once and the kernels are compiled in memory in every process. ``warm_up()``
compiles (or loads) every kernel on tiny inputs, so a worker pays that
cost before its first batch rather than inside it.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
import warnings
from collections.abc import Callable

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

HASH64: tuple[str, ...] = ("xxh64", "xxh3_64", "mmh3_64")
DIGESTS: tuple[str, ...] = ("md5", "sha1", "sha256")
DIGEST_SIZES: dict[str, int] = {"md5": 16, "sha1": 20, "sha256": 32}

_U = np.uint64  # every constant is a uint64: mixing int64 into uint64 arithmetic makes numba use float64
_M32 = _U(0xFFFFFFFF)

# XXH64 / XXH3 primes (xxhash.h, XXH_PRIME64_* and XXH_PRIME32_*).
_P64_1 = _U(0x9E3779B185EBCA87)
_P64_2 = _U(0xC2B2AE3D27D4EB4F)
_P64_3 = _U(0x165667B19E3779F9)
_P64_4 = _U(0x85EBCA77C2B2AE63)
_P64_5 = _U(0x27D4EB2F165667C5)
_P32_1 = _U(0x9E3779B1)
_P32_2 = _U(0x85EBCA77)
_P32_3 = _U(0xC2B2AE3D)
_PRIME_MX1 = _U(0x165667919E3779F9)
_PRIME_MX2 = _U(0x9FB21C651E98DF25)
_XXH64_V4 = _U(2**64 - 0x9E3779B185EBCA87)  # seed - PRIME64_1, modulo 2**64, with seed 0

# XXH3_kSecret from xxhash.h (192 bytes, "pseudorandom secret taken directly from FARSH").
_SECRET = np.array(
    [
        0xB8, 0xFE, 0x6C, 0x39, 0x23, 0xA4, 0x4B, 0xBE, 0x7C, 0x01, 0x81, 0x2C, 0xF7, 0x21, 0xAD, 0x1C,
        0xDE, 0xD4, 0x6D, 0xE9, 0x83, 0x90, 0x97, 0xDB, 0x72, 0x40, 0xA4, 0xA4, 0xB7, 0xB3, 0x67, 0x1F,
        0xCB, 0x79, 0xE6, 0x4E, 0xCC, 0xC0, 0xE5, 0x78, 0x82, 0x5A, 0xD0, 0x7D, 0xCC, 0xFF, 0x72, 0x21,
        0xB8, 0x08, 0x46, 0x74, 0xF7, 0x43, 0x24, 0x8E, 0xE0, 0x35, 0x90, 0xE6, 0x81, 0x3A, 0x26, 0x4C,
        0x3C, 0x28, 0x52, 0xBB, 0x91, 0xC3, 0x00, 0xCB, 0x88, 0xD0, 0x65, 0x8B, 0x1B, 0x53, 0x2E, 0xA3,
        0x71, 0x64, 0x48, 0x97, 0xA2, 0x0D, 0xF9, 0x4E, 0x38, 0x19, 0xEF, 0x46, 0xA9, 0xDE, 0xAC, 0xD8,
        0xA8, 0xFA, 0x76, 0x3F, 0xE3, 0x9C, 0x34, 0x3F, 0xF9, 0xDC, 0xBB, 0xC7, 0xC7, 0x0B, 0x4F, 0x1D,
        0x8A, 0x51, 0xE0, 0x4B, 0xCD, 0xB4, 0x59, 0x31, 0xC8, 0x9F, 0x7E, 0xC9, 0xD9, 0x78, 0x73, 0x64,
        0xEA, 0xC5, 0xAC, 0x83, 0x34, 0xD3, 0xEB, 0xC3, 0xC5, 0x81, 0xA0, 0xFF, 0xFA, 0x13, 0x63, 0xEB,
        0x17, 0x0D, 0xDD, 0x51, 0xB7, 0xF0, 0xDA, 0x49, 0xD3, 0x16, 0x55, 0x26, 0x29, 0xD4, 0x68, 0x9E,
        0x2B, 0x16, 0xBE, 0x58, 0x7D, 0x47, 0xA1, 0xFC, 0x8F, 0xF8, 0xB8, 0xD1, 0x7A, 0xD0, 0x31, 0xCE,
        0x45, 0xCB, 0x3A, 0x8F, 0x95, 0x16, 0x04, 0x28, 0xAF, 0xD7, 0xFB, 0xCA, 0xBB, 0x4B, 0x40, 0x7E,
    ],
    dtype=np.uint8,
)  # fmt: skip
_SECRET_SIZE = 192
_STRIPE_LEN = 64
_STRIPES_PER_BLOCK = (_SECRET_SIZE - _STRIPE_LEN) // 8  # XXH_SECRET_CONSUME_RATE = 8
_BLOCK_LEN = _STRIPE_LEN * _STRIPES_PER_BLOCK

# MurmurHash3_x64_128 constants.
_C1 = _U(0x87C37B91114253D5)
_C2 = _U(0x4CF5AD432745937F)
_FMIX1 = _U(0xFF51AFD7ED558CCD)
_FMIX2 = _U(0xC4CEB9FE1A85EC53)


# --------------------------------------------------------------------------- primitives
# Unaligned little-endian loads and the 64x64->128 multiply are LLVM intrinsics: written
# in Python (eight byte loads ORed together, four 32-bit multiplies) they run at 15-35 M
# keys/s instead of 50-65 M keys/s, depending on whether LLVM happens to merge the
# loads, and numba-level inlining to help it triples the compile time.


def _load_le(bits: int):
    """An intrinsic ``(where, index) -> uint64`` reading ``bits // 8`` bytes at any alignment.

    ``where`` is a uint8 array or a raw address (``array.ctypes.data``): helpers take the
    data buffer as an address because passing an array to a function numba does not
    inline costs reference-count updates on every call (it halved the XXH3 rate).
    """

    @intrinsic
    def load(typingctx, where, idx):
        def codegen(context, builder, sig, args):
            if isinstance(sig.args[0], types.Array):
                base = context.make_array(sig.args[0])(context, builder, args[0]).data
            else:
                base = builder.inttoptr(args[0], ir.IntType(8).as_pointer())
            i = context.cast(builder, args[1], sig.args[1], types.intp)
            ptr = builder.bitcast(builder.gep(base, [i]), ir.IntType(bits).as_pointer())
            value = builder.load(ptr, align=1)
            if bits > 8 and sys.byteorder == "big":  # the algorithms are defined on little-endian words
                value = builder.bswap(value)
            return builder.zext(value, ir.IntType(64)) if bits < 64 else value

        if isinstance(where, (types.Array, types.Integer)):
            return types.uint64(where, idx), codegen
        return None

    return load


_r64 = _load_le(64)
_r32 = _load_le(32)
_r8 = _load_le(8)


@intrinsic
def _mul128_fold64(typingctx, a, b):
    """The 128-bit product of two uint64, high half XOR low half (XXH3_mul128_fold64)."""

    def codegen(context, builder, sig, args):
        wide = ir.IntType(128)
        product = builder.mul(builder.zext(args[0], wide), builder.zext(args[1], wide))
        low = builder.trunc(product, ir.IntType(64))
        high = builder.trunc(builder.lshr(product, ir.Constant(wide, 64)), ir.IntType(64))
        return builder.xor(low, high)

    return types.uint64(types.uint64, types.uint64), codegen


@numba.njit
def _rotl(x, r):
    return (x << _U(r)) | (x >> _U(64 - r))


@numba.njit
def _bswap64(x):
    return (
        (x << _U(56))
        | ((x << _U(40)) & _U(0x00FF000000000000))
        | ((x << _U(24)) & _U(0x0000FF0000000000))
        | ((x << _U(8)) & _U(0x000000FF00000000))
        | ((x >> _U(8)) & _U(0x00000000FF000000))
        | ((x >> _U(24)) & _U(0x0000000000FF0000))
        | ((x >> _U(40)) & _U(0x000000000000FF00))
        | (x >> _U(56))
    )


# --------------------------------------------------------------------------- XXH64


@numba.njit
def _xxh64_round(acc, lane):
    acc += lane * _P64_2
    return _rotl(acc, 31) * _P64_1


@numba.njit
def _xxh64_merge(h, v):
    h ^= _xxh64_round(_U(0), v)
    return h * _P64_1 + _P64_4


@numba.njit
def _xxh64(d, p, n):
    end = p + n
    if n >= 32:
        v1 = _P64_1 + _P64_2
        v2 = _P64_2
        v3 = _U(0)
        v4 = _XXH64_V4
        while p + 32 <= end:
            v1 = _xxh64_round(v1, _r64(d, p))
            v2 = _xxh64_round(v2, _r64(d, p + 8))
            v3 = _xxh64_round(v3, _r64(d, p + 16))
            v4 = _xxh64_round(v4, _r64(d, p + 24))
            p += 32
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        h = _xxh64_merge(h, v1)
        h = _xxh64_merge(h, v2)
        h = _xxh64_merge(h, v3)
        h = _xxh64_merge(h, v4)
    else:
        h = _P64_5
    h += _U(n)
    while p + 8 <= end:
        h ^= _xxh64_round(_U(0), _r64(d, p))
        h = _rotl(h, 27) * _P64_1 + _P64_4
        p += 8
    if p + 4 <= end:
        h ^= _r32(d, p) * _P64_1
        h = _rotl(h, 23) * _P64_2 + _P64_3
        p += 4
    while p < end:
        h ^= _r8(d, p) * _P64_5
        h = _rotl(h, 11) * _P64_1
        p += 1
    return _xxh64_avalanche(h)


@numba.njit
def _xxh64_avalanche(h):
    h ^= h >> _U(33)
    h *= _P64_2
    h ^= h >> _U(29)
    h *= _P64_3
    return h ^ (h >> _U(32))


# --------------------------------------------------------------------------- XXH3 (64-bit, seed 0, default secret)


@numba.njit
def _xxh3_avalanche(h):
    h ^= h >> _U(37)
    h *= _PRIME_MX1
    return h ^ (h >> _U(32))


@numba.njit
def _xxh3_rrmxmx(h, n):
    h ^= _rotl(h, 49) ^ _rotl(h, 24)
    h *= _PRIME_MX2
    h ^= (h >> _U(35)) + _U(n)
    h *= _PRIME_MX2
    return h ^ (h >> _U(28))


@numba.njit
def _mix16(d, p, s):
    return _mul128_fold64(_r64(d, p) ^ _r64(_SECRET, s), _r64(d, p + 8) ^ _r64(_SECRET, s + 8))


@numba.njit
def _xxh3_0to16(d, p, n):
    if n > 8:
        lo = _r64(d, p) ^ (_r64(_SECRET, 24) ^ _r64(_SECRET, 32))
        hi = _r64(d, p + n - 8) ^ (_r64(_SECRET, 40) ^ _r64(_SECRET, 48))
        return _xxh3_avalanche(_U(n) + _bswap64(lo) + hi + _mul128_fold64(lo, hi))
    if n >= 4:
        combined = _r32(d, p + n - 4) + (_r32(d, p) << _U(32))
        return _xxh3_rrmxmx(combined ^ (_r64(_SECRET, 8) ^ _r64(_SECRET, 16)), n)
    if n > 0:
        combined = (_r8(d, p) << _U(16)) | (_r8(d, p + (n >> 1)) << _U(24)) | _r8(d, p + n - 1) | (_U(n) << _U(8))
        return _xxh64_avalanche(combined ^ (_r32(_SECRET, 0) ^ _r32(_SECRET, 4)))
    return _xxh64_avalanche(_r64(_SECRET, 56) ^ _r64(_SECRET, 64))


@numba.njit
def _xxh3_17to128(d, p, n):
    acc = _U(n) * _P64_1
    if n > 32:
        if n > 64:
            if n > 96:
                acc += _mix16(d, p + 48, 96)
                acc += _mix16(d, p + n - 64, 112)
            acc += _mix16(d, p + 32, 64)
            acc += _mix16(d, p + n - 48, 80)
        acc += _mix16(d, p + 16, 32)
        acc += _mix16(d, p + n - 32, 48)
    acc += _mix16(d, p, 0)
    acc += _mix16(d, p + n - 16, 16)
    return _xxh3_avalanche(acc)


@numba.njit
def _xxh3_129to240(d, p, n):
    acc = _U(n) * _P64_1
    for i in range(8):
        acc += _mix16(d, p + 16 * i, 16 * i)
    acc = _xxh3_avalanche(acc)
    for i in range(8, n // 16):
        acc += _mix16(d, p + 16 * i, 16 * (i - 8) + 3)  # XXH3_MIDSIZE_STARTOFFSET
    acc += _mix16(d, p + n - 16, 136 - 17)  # XXH3_SECRET_SIZE_MIN - XXH3_MIDSIZE_LASTOFFSET
    return _xxh3_avalanche(acc)


@numba.njit
def _xxh3_lane(d, p, s):
    """One lane of XXH3_accumulate_512: the input word (added to the neighbour) and its keyed product."""
    value = _r64(d, p)
    keyed = value ^ _r64(_SECRET, s)
    return value, (keyed & _M32) * (keyed >> _U(32))


@numba.njit
def _xxh3_stripe(acc, d, p, s):
    # The eight accumulators are a tuple, not an array: an array argument costs
    # reference counting per call and a scratch array per key costs an allocation.
    v0, m0 = _xxh3_lane(d, p, s)
    v1, m1 = _xxh3_lane(d, p + 8, s + 8)
    v2, m2 = _xxh3_lane(d, p + 16, s + 16)
    v3, m3 = _xxh3_lane(d, p + 24, s + 24)
    v4, m4 = _xxh3_lane(d, p + 32, s + 32)
    v5, m5 = _xxh3_lane(d, p + 40, s + 40)
    v6, m6 = _xxh3_lane(d, p + 48, s + 48)
    v7, m7 = _xxh3_lane(d, p + 56, s + 56)
    a0, a1, a2, a3, a4, a5, a6, a7 = acc
    return (
        a0 + m0 + v1,
        a1 + m1 + v0,
        a2 + m2 + v3,
        a3 + m3 + v2,
        a4 + m4 + v5,
        a5 + m5 + v4,
        a6 + m6 + v7,
        a7 + m7 + v6,
    )


@numba.njit
def _xxh3_scramble1(a, s):
    a ^= a >> _U(47)
    a ^= _r64(_SECRET, s)
    return a * _P32_1


@numba.njit
def _xxh3_scramble(acc):
    s = _SECRET_SIZE - _STRIPE_LEN
    a0, a1, a2, a3, a4, a5, a6, a7 = acc
    return (
        _xxh3_scramble1(a0, s),
        _xxh3_scramble1(a1, s + 8),
        _xxh3_scramble1(a2, s + 16),
        _xxh3_scramble1(a3, s + 24),
        _xxh3_scramble1(a4, s + 32),
        _xxh3_scramble1(a5, s + 40),
        _xxh3_scramble1(a6, s + 48),
        _xxh3_scramble1(a7, s + 56),
    )


@numba.njit
def _xxh3_long(d, p, n):
    acc = (_P32_3, _P64_1, _P64_2, _P64_3, _P64_4, _P32_2, _P64_5, _P32_1)
    blocks = (n - 1) // _BLOCK_LEN
    for b in range(blocks):
        for s in range(_STRIPES_PER_BLOCK):
            acc = _xxh3_stripe(acc, d, p + b * _BLOCK_LEN + s * _STRIPE_LEN, s * 8)
        acc = _xxh3_scramble(acc)
    stripes = ((n - 1) - _BLOCK_LEN * blocks) // _STRIPE_LEN
    for s in range(stripes):
        acc = _xxh3_stripe(acc, d, p + blocks * _BLOCK_LEN + s * _STRIPE_LEN, s * 8)
    acc = _xxh3_stripe(acc, d, p + n - _STRIPE_LEN, _SECRET_SIZE - _STRIPE_LEN - 7)  # XXH_SECRET_LASTACC_START
    a0, a1, a2, a3, a4, a5, a6, a7 = acc
    result = _U(n) * _P64_1  # XXH_SECRET_MERGEACCS_START = 11
    result += _mul128_fold64(a0 ^ _r64(_SECRET, 11), a1 ^ _r64(_SECRET, 19))
    result += _mul128_fold64(a2 ^ _r64(_SECRET, 27), a3 ^ _r64(_SECRET, 35))
    result += _mul128_fold64(a4 ^ _r64(_SECRET, 43), a5 ^ _r64(_SECRET, 51))
    result += _mul128_fold64(a6 ^ _r64(_SECRET, 59), a7 ^ _r64(_SECRET, 67))
    return _xxh3_avalanche(result)


@numba.njit
def _xxh3(d, p, n):
    if n <= 16:
        return _xxh3_0to16(d, p, n)
    if n <= 128:
        return _xxh3_17to128(d, p, n)
    if n <= 240:
        return _xxh3_129to240(d, p, n)
    return _xxh3_long(d, p, n)


# --------------------------------------------------------------------------- MurmurHash3_x64_128


@numba.njit
def _fmix64(k):
    k ^= k >> _U(33)
    k *= _FMIX1
    k ^= k >> _U(33)
    k *= _FMIX2
    return k ^ (k >> _U(33))


@numba.njit
def _mmh3_128(d, p, n):
    """MurmurHash3_x64_128 with seed 0, as its two 64-bit halves (h1, h2)."""
    h1 = _U(0)
    h2 = _U(0)
    blocks = n // 16
    for b in range(blocks):
        k1 = _r64(d, p + 16 * b)
        k2 = _r64(d, p + 16 * b + 8)
        h1 ^= _rotl(k1 * _C1, 31) * _C2
        h1 = (_rotl(h1, 27) + h2) * _U(5) + _U(0x52DCE729)
        h2 ^= _rotl(k2 * _C2, 33) * _C1
        h2 = (_rotl(h2, 31) + h1) * _U(5) + _U(0x38495AB5)
    tail = p + 16 * blocks
    rest = n & 15
    if rest > 8:
        k2 = _U(0)
        for i in range(rest - 1, 7, -1):  # bytes 8.. of the tail, little-endian
            k2 = (k2 << _U(8)) | _r8(d, tail + i)
        h2 ^= _rotl(k2 * _C2, 33) * _C1
    if rest > 0:
        k1 = _U(0)
        for i in range(min(rest, 8) - 1, -1, -1):
            k1 = (k1 << _U(8)) | _r8(d, tail + i)
        h1 ^= _rotl(k1 * _C1, 31) * _C2
    h1 ^= _U(n)
    h2 ^= _U(n)
    h1 += h2
    h2 += h1
    h1 = _fmix64(h1)
    h2 = _fmix64(h2)
    h1 += h2
    return h1, h2 + h1


@numba.njit
def _mmh3_64(d, p, n):
    return _mmh3_128(d, p, n)[0]


# --------------------------------------------------------------------------- kernels over Arrow buffers


def _kernel(fn: Callable) -> Callable:
    """``njit(cache=True, nogil=True)``, or without the on-disk cache where numba has nowhere to write it.

    numba raises at decoration time (so at import) when neither ``__pycache__`` next to
    this file nor the user cache directory is writable, e.g. a read-only image with a
    read-only HOME. Such a process compiles in memory on first use instead.
    """
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError as exc:  # "cannot cache function ...: no locator available for file ..."
        if "cannot cache" not in str(exc):
            raise
        # One warning per process (same text and location), not one per kernel.
        warnings.warn(
            "numba has no writable cache directory for streamfilter.hashing (neither __pycache__ nor the user"
            " cache): its kernels are compiled in memory on first use; set NUMBA_CACHE_DIR to keep them",
            stacklevel=1,
        )
        return numba.njit(nogil=True)(fn)


# The kernels pass the data buffer on as its address (see _load_le); ``data`` stays
# referenced by the caller for the whole call.


@_kernel
def _xxh64_many(offsets, data, out):
    base = data.ctypes.data
    for i in range(out.size):
        start = np.int64(offsets[i])
        out[i] = _xxh64(base, start, np.int64(offsets[i + 1]) - start)


@_kernel
def _xxh3_many(offsets, data, out):
    base = data.ctypes.data
    for i in range(out.size):
        start = np.int64(offsets[i])
        out[i] = _xxh3(base, start, np.int64(offsets[i + 1]) - start)


@_kernel
def _mmh3_many(offsets, data, out):
    base = data.ctypes.data
    for i in range(out.size):
        start = np.int64(offsets[i])
        out[i] = _mmh3_64(base, start, np.int64(offsets[i + 1]) - start)


@_kernel
def _mmh3_128_many(offsets, data, out):
    base = data.ctypes.data
    for i in range(out.shape[0]):
        start = np.int64(offsets[i])
        out[i, 0], out[i, 1] = _mmh3_128(base, start, np.int64(offsets[i + 1]) - start)


_KERNELS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], None]] = {
    "xxh64": _xxh64_many,
    "xxh3_64": _xxh3_many,
    "mmh3_64": _mmh3_many,
}
_EMPTY = np.zeros(0, dtype=np.uint8)


def _flat(values: pa.Array) -> pa.Array:
    """The array as one of the four offset-based variable-size types (views cast to large)."""
    t = values.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return values
    if pa.types.is_string_view(t):
        return values.cast(pa.large_string())
    if pa.types.is_binary_view(t):
        return values.cast(pa.large_binary())
    raise TypeError(f"can only hash string or binary arrays, not {t}")


def _buffers(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Numpy views of the offsets (this slice's ``len + 1`` entries, as int64) and of the data buffer.

    32-bit offsets are widened (a copy of 4 bytes a row, a few percent of hashing them):
    one offset type means one compiled signature per kernel, which halves the compile
    time of a process without a numba cache. Keys usually arrive as large types anyway.
    """
    large = pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type)
    dtype = np.dtype(np.int64 if large else np.int32)
    _, offsets_buf, data_buf = values.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=dtype, count=len(values) + 1, offset=values.offset * dtype.itemsize)
    data = _EMPTY if data_buf is None or data_buf.size == 0 else np.frombuffer(data_buf, dtype=np.uint8)
    if offsets[0] < 0 or offsets[-1] > data.size:  # the kernels do not bounds-check; O(1) guard against a bad array
        raise ValueError(f"offsets {offsets[0]}..{offsets[-1]} outside a data buffer of {data.size} bytes")
    return offsets.astype(np.int64, copy=False), data


def _chunks(values: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return list(values.chunks) if isinstance(values, pa.ChunkedArray) else [values]


def _hash_chunk(chunk: pa.Array, kernel: Callable, out: np.ndarray) -> None:
    if len(chunk) == 0:
        return
    chunk = _flat(chunk)
    offsets, data = _buffers(chunk)
    kernel(offsets, data, out)
    if chunk.null_count:
        # A null's slot usually hashes b"", but Arrow allows any bytes there: zero it so the
        # output is a function of the logical values only.
        out[~chunk.is_valid().to_numpy(zero_copy_only=False)] = 0


def hash64(values: pa.Array | pa.ChunkedArray, algorithm: str) -> np.ndarray:
    """One uint64 hash per element of a string/binary array (strings hash their UTF-8 bytes).

    ``algorithm`` is one of ``HASH64``: ``xxh64`` (XXH64, seed 0), ``xxh3_64`` (XXH3
    64-bit, seed 0, default secret) or ``mmh3_64`` (the first 64 bits of
    MurmurHash3_x64_128, seed 0, as unsigned bits; ``as_signed`` gives the int64 that
    ``mmh3.hash64(b)[0]`` and LAION's ``hash`` column hold). Nulls hash to 0: the
    caller masks them, 0 is only there to make the output deterministic.
    """
    kernel = _KERNELS.get(algorithm)
    if kernel is None:
        raise ValueError(f"unknown 64-bit hash {algorithm!r}: choose one of {', '.join(HASH64)}")
    out = np.empty(len(values), dtype=np.uint64)
    start = 0
    for chunk in _chunks(values):
        _hash_chunk(chunk, kernel, out[start : start + len(chunk)])
        start += len(chunk)
    return out


def hash128(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """MurmurHash3_x64_128 (seed 0) of every element, as an ``(n, 2)`` uint64 array of its halves (h1, h2).

    The 16 bytes ``h1`` then ``h2``, each little-endian, are what ``mmh3.hash_bytes`` gives;
    ``h1`` alone is ``mmh3_64``. Used where 64 bits are too few: the fingerprints that
    ``streamfilter diff`` compares across billions of keys. Nulls hash to (0, 0).
    """
    out = np.empty((len(values), 2), dtype=np.uint64)
    start = 0
    for chunk in _chunks(values):
        _hash_chunk(chunk, _mmh3_128_many, out[start : start + len(chunk)])
        start += len(chunk)
    return out


def as_signed(h: np.ndarray) -> np.ndarray:
    """The same 64 bits as int64 (a view, no copy): how LAION-5B's ``hash`` column stores mmh3."""
    return h.view(np.int64)


def _digest_chunk(chunk: pa.Array, algorithm: str) -> pa.Array:
    size = DIGEST_SIZES[algorithm]
    typ = pa.binary(size)
    n = len(chunk)
    if n == 0:
        return pa.array([], type=typ)
    chunk = _flat(chunk)
    offsets, data = _buffers(chunk)
    # Slicing one bytes object beats memoryview slices and to_pylist/to_numpy (measured):
    # the per-element cost is dominated by creating the hash object anyway. No threads:
    # hashlib keeps the GIL for inputs shorter than 2048 bytes, i.e. for every URL.
    first, last = int(offsets[0]), int(offsets[-1])
    buf = data[first:last].tobytes()  # only this slice's bytes
    bounds = (offsets - first).tolist()
    new = getattr(hashlib, algorithm)
    digests = b"".join([new(buf[s:e]).digest() for s, e in itertools.pairwise(bounds)])
    validity = pc.is_valid(chunk).buffers()[1] if chunk.null_count else None
    return pa.Array.from_buffers(typ, n, [validity, pa.py_buffer(digests)], null_count=chunk.null_count)


def digest(values: pa.Array | pa.ChunkedArray, algorithm: str) -> pa.Array:
    """The raw ``md5``/``sha1``/``sha256`` digest of every element, as ``binary(16|20|32)``; nulls stay null.

    hashlib per element (about a microsecond each): cryptographic digests are for lists
    that were published as digests; use ``hash64`` when the list format is ours to choose.
    """
    if algorithm not in DIGEST_SIZES:
        raise ValueError(f"unknown digest {algorithm!r}: choose one of {', '.join(DIGESTS)}")
    parts = [_digest_chunk(chunk, algorithm) for chunk in _chunks(values)]
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return pa.array([], type=pa.binary(DIGEST_SIZES[algorithm]))
    return pa.concat_arrays(parts)


def warm_up() -> None:
    """Compile (or load from the cache) every kernel, on tiny inputs of every length class."""
    arr = pa.array([b"", b"abc", b"abcdefgh", b"x" * 16, b"y" * 100, b"z" * 200, b"w" * 1500], pa.large_binary())
    for algorithm in HASH64:
        hash64(arr, algorithm)
    hash128(arr)
