"""streamfilter.hashing against the reference packages (xxhash, mmh3, hashlib) and published vectors.

Expected values never come from the code under test: they come from ``xxhash`` and
``mmh3`` element by element, and from literal vectors published by their authors
(xxHash's ``xsum_sanity_check.c``, mmh3's README), so a change in a reference
package would be noticed too.
"""

from __future__ import annotations

import hashlib
import warnings

import mmh3
import numba.core.caching
import numpy as np
import pyarrow as pa
import pytest
import xxhash

from streamfilter import hashing
from streamfilter.hashing import DIGESTS, HASH64, as_signed, digest, hash64, hash128

MASK64 = 2**64 - 1
REFERENCE = {
    "xxh64": xxhash.xxh64_intdigest,
    "xxh3_64": xxhash.xxh3_64_intdigest,
    "mmh3_64": lambda b: mmh3.hash64(b)[0] & MASK64,
}
BINARY_TYPES = [pa.binary(), pa.large_binary(), pa.binary_view()]
STRING_TYPES = [pa.string(), pa.large_string(), pa.string_view()]


def _random_keys() -> list[bytes]:
    """Every length 0..300 (each XXH3 length class and its edges), block edges of the long loop, random lengths."""
    rng = np.random.default_rng(20240601)
    lengths = [*range(301), 1023, 1024, 1025, 2047, 2048, 2049, 4096 + 7, *rng.integers(241, 5000, 12).tolist()]
    keys = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths]
    keys += [b"\x00" * n for n in (1, 7, 8, 9, 33, 250)]  # zero bytes only
    return keys


KEYS = _random_keys()
TEXTS = ["", "a", "foo", "https://example.com/ä/ö?q=ü", "写真.例え.jp/画像", "🙂" * 40, "x\x00y", "é" * 130, "ñ" * 700]


def expected(keys: list[bytes], algorithm: str) -> np.ndarray:
    return np.array([REFERENCE[algorithm](k) for k in keys], dtype=np.uint64)


def xsum_test_buffer(n: int) -> bytes:
    """xxHash's XSUM_fillTestBuffer: the input of its published sanity vectors."""
    out = bytearray(n)
    gen = 2654435761  # PRIME32
    for i in range(n):
        out[i] = gen >> 56
        gen = (gen * 11400714785074694797) & MASK64  # PRIME64
    return bytes(out)


# Seed-0 entries of XSUM_XXH64_testdata / XSUM_XXH3_testdata (xxHash cli/xsum_sanity_check.c).
XSUM_VECTORS = {
    "xxh64": {
        0: 0xEF46DB3751D8E999,
        1: 0xE934A84ADB052768,
        4: 0x9136A0DCA57457EE,
        14: 0x8282DCC4994E35C8,
        222: 0xB641AE8CB691C174,
    },
    "xxh3_64": {
        0: 0x2D06800538D394C2,
        1: 0xC44BDFF4074EECDB,
        6: 0x27B56A84CD2D7325,
        12: 0xA713DAF0DFBB77E7,
        24: 0xA3FE70BF9D3510EB,
        48: 0x397DA259ECBA1F11,
        80: 0xBCDEFBBB2C47C90A,
        195: 0xCD94217EE362EC3A,
        403: 0xCDEB804D65C6DEA4,
        512: 0x617E49599013CB6B,
        2048: 0xDD59E2C3A5F038E0,
        2099: 0xC6B9D9B3FC9AC765,
        2240: 0x6E73A90539CF2948,
        2367: 0xCB37AEB9E5D361ED,
    },
}


@pytest.mark.parametrize("algorithm", sorted(XSUM_VECTORS))
def test_published_xxhash_vectors(algorithm: str) -> None:
    buffer = xsum_test_buffer(2367)
    lengths = sorted(XSUM_VECTORS[algorithm])
    got = hash64(pa.array([buffer[:n] for n in lengths], pa.binary()), algorithm)
    want = [XSUM_VECTORS[algorithm][n] for n in lengths]
    assert [hex(v) for v in got.tolist()] == [hex(v) for v in want]
    # ...and the reference package agrees with its authors' vectors.
    assert [REFERENCE[algorithm](buffer[:n]) for n in lengths] == want


def test_published_mmh3_vectors() -> None:
    got = hash64(pa.array([b"foo", b""]), "mmh3_64")
    # mmh3's README: mmh3.hash64("foo") == (-2129773440516405919, 9128664383759220103).
    assert got.tolist() == [16316970633193145697, 0]
    assert as_signed(got).tolist() == [-2129773440516405919, 0]
    assert mmh3.hash64(b"foo")[0] == -2129773440516405919


@pytest.mark.parametrize("typ", BINARY_TYPES, ids=str)
@pytest.mark.parametrize("algorithm", HASH64)
def test_random_binary_keys_match_reference(algorithm: str, typ: pa.DataType) -> None:
    got = hash64(pa.array(KEYS, typ), algorithm)
    assert got.dtype == np.uint64
    np.testing.assert_array_equal(got, expected(KEYS, algorithm))


@pytest.mark.parametrize("typ", STRING_TYPES, ids=str)
@pytest.mark.parametrize("algorithm", HASH64)
def test_strings_hash_their_utf8_bytes(algorithm: str, typ: pa.DataType) -> None:
    got = hash64(pa.array(TEXTS, typ), algorithm)
    np.testing.assert_array_equal(got, expected([t.encode() for t in TEXTS], algorithm))


@pytest.mark.parametrize("typ", [pa.binary(), pa.large_binary()], ids=str)
@pytest.mark.parametrize("algorithm", HASH64)
def test_slices_and_chunks(algorithm: str, typ: pa.DataType) -> None:
    arr = pa.array(KEYS, typ)
    sliced = arr.slice(7, 150).slice(3)  # non-zero offset into shared buffers
    np.testing.assert_array_equal(hash64(sliced, algorithm), expected(KEYS[10:157], algorithm))
    chunked = pa.chunked_array([arr.slice(0, 5), arr.slice(5, 0), arr.slice(5, 300), arr.slice(305)])
    np.testing.assert_array_equal(hash64(chunked, algorithm), expected(KEYS, algorithm))
    assert hash64(pa.chunked_array([], typ), algorithm).shape == (0,)


@pytest.mark.parametrize("algorithm", HASH64)
def test_nulls_hash_to_zero_and_neighbours_are_unaffected(algorithm: str) -> None:
    values = [b"a", None, b"bc" * 50, None, b""]
    got = hash64(pa.array(values, pa.large_binary()).slice(1), algorithm)
    present = [v for v in values[1:] if v is not None]
    assert got[[0, 2]].tolist() == [0, 0]
    np.testing.assert_array_equal(got[[1, 3]], expected(present, algorithm))


@pytest.mark.parametrize("algorithm", HASH64)
def test_empty_inputs(algorithm: str) -> None:
    assert hash64(pa.array([], pa.string()), algorithm).shape == (0,)
    # All-empty strings: Arrow may leave the data buffer empty or absent.
    np.testing.assert_array_equal(hash64(pa.array(["", ""]), algorithm), expected([b"", b""], algorithm))


@pytest.mark.parametrize("typ", [pa.binary(), pa.large_string()], ids=str)
def test_hash128_is_murmurhash3_x64_128(typ: pa.DataType) -> None:
    """Both halves, against the reference package, for every tail length and both block paths."""
    keys = [k for k in KEYS if pa.types.is_binary(typ)] or [t.encode() for t in TEXTS]
    values = [k if pa.types.is_binary(typ) else k.decode() for k in keys]
    got = hash128(pa.chunked_array([pa.array(values[:7], typ), pa.array(values[7:], typ)]))
    assert got.shape == (len(keys), 2) and got.dtype == np.uint64
    want = [mmh3.hash_bytes(k) for k in keys]  # h1 then h2, each little-endian
    assert [g.astype("<u8").tobytes() for g in got] == want
    # The first half is mmh3_64, and a null's pair is (0, 0) without disturbing its neighbours.
    np.testing.assert_array_equal(got[:, 0], hash64(pa.array(values, typ), "mmh3_64"))
    with_null = hash128(pa.array([values[3], None, values[4]], typ))
    assert with_null[1].tolist() == [0, 0]
    np.testing.assert_array_equal(with_null[[0, 2]], got[[3, 4]])


def test_laion_style_signed_hash() -> None:
    """LAION-5B's ``hash`` column: ``mmh3.hash64((url + caption).encode())[0]``, a signed int64."""
    urls = ["https://example.com/a.jpg", "http://images.example.org/ü/1.png"]
    captions = ["a dog", "ein Hund, der läuft"]
    joined = [u + c for u, c in zip(urls, captions, strict=True)]
    want = [mmh3.hash64(k.encode())[0] for k in joined]
    keys = pa.array(joined)
    assert as_signed(hash64(keys, "mmh3_64")).tolist() == want


def test_rejects_unknown_algorithms_and_types() -> None:
    with pytest.raises(ValueError, match="xxh3_64"):
        hash64(pa.array(["a"]), "crc32")
    with pytest.raises(TypeError, match="int64"):
        hash64(pa.array([1, 2]), "xxh3_64")
    with pytest.raises(ValueError, match="sha256"):
        digest(pa.array(["a"]), "sha512")


@pytest.mark.parametrize("typ", [pa.binary(), pa.large_binary(), pa.binary_view()], ids=str)
@pytest.mark.parametrize("algorithm", DIGESTS)
def test_digests_match_hashlib(algorithm: str, typ: pa.DataType) -> None:
    keys = KEYS[:40] + KEYS[-5:]
    values = [None if i % 7 == 3 else k for i, k in enumerate(keys)]
    arr = pa.array(values, typ)
    size = hashlib.new(algorithm).digest_size
    for sample, plain in ((arr, values), (arr.slice(5), values[5:])):
        got = digest(sample, algorithm)
        assert got.type == pa.binary(size)
        assert got.to_pylist() == [None if v is None else hashlib.new(algorithm, v).digest() for v in plain]


@pytest.mark.parametrize("algorithm", DIGESTS)
def test_digests_of_strings_and_chunks(algorithm: str) -> None:
    arr = pa.array(TEXTS, pa.large_string())
    chunked = pa.chunked_array([arr.slice(0, 2), arr.slice(2, 0), arr.slice(2)])
    want = [hashlib.new(algorithm, t.encode()).digest() for t in TEXTS]
    assert digest(chunked, algorithm).to_pylist() == want
    assert digest(pa.array([], pa.string()), algorithm).to_pylist() == []


def test_known_digest_vectors() -> None:
    got = {a: digest(pa.array(["abc"]), a)[0].as_py().hex() for a in DIGESTS}
    assert got == {  # FIPS 180 / RFC 1321 test vectors
        "md5": "900150983cd24fb0d6963f7d28e17f72",
        "sha1": "a9993e364706816aba3e25717850c26c9cd0d89d",
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    }


def _plus_one(x: int) -> int:
    return x + 1


def test_unwritable_numba_cache_compiles_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only install with a read-only HOME: numba finds no cache directory; we must not fail at import."""

    def unwritable(self: object) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(numba.core.caching._CacheLocator, "ensure_cache_path", unwritable)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernel = hashing._kernel(_plus_one)
    assert kernel(41) == 42
    assert any("NUMBA_CACHE_DIR" in str(w.message) for w in caught)


def test_warm_up_compiles_every_kernel() -> None:
    hashing.warm_up()
    for kernel in hashing._KERNELS.values():
        assert len(kernel.signatures) == 1  # offsets are always int64: one compilation per kernel
