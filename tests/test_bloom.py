"""BloomFilter: the Parquet SBBF bit layout, no false negatives, and the false-positive rate it was sized for."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from streamfilter.sets.bloom import BloomFilter, blocks_for, sbbf_fpr

MAX = 2**64 - 1
#: From the Parquet spec (parquet-format BloomFilter.md), written out here rather than imported.
SPEC_SALT = [0x47B6137B, 0x44974D91, 0x8824AD5B, 0xA2B7289D, 0x705495C7, 0x2DF1424B, 0x9EFC4947, 0x5C6BFB31]


def spec_insert(words: dict[int, int], num_blocks: int, h: int) -> None:
    """The spec's block_insert, one key at a time in plain Python."""
    block = ((h >> 32) * num_blocks) >> 32
    key = h & 0xFFFFFFFF
    for i, salt in enumerate(SPEC_SALT):
        words[block * 8 + i] = words.get(block * 8 + i, 0) | 1 << (((key * salt) & 0xFFFFFFFF) >> 27)


def spec_check(words: dict[int, int], num_blocks: int, h: int) -> bool:
    block = ((h >> 32) * num_blocks) >> 32
    key = h & 0xFFFFFFFF
    return all(
        words.get(block * 8 + i, 0) >> (((key * salt) & 0xFFFFFFFF) >> 27) & 1 for i, salt in enumerate(SPEC_SALT)
    )


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.mark.parametrize("num_blocks", [1, 3, 1000, 2**20 + 7])
def test_bit_layout_matches_the_spec(rng: np.random.Generator, num_blocks: int) -> None:
    hashes = np.concatenate([rng.integers(0, MAX, 300, dtype=np.uint64, endpoint=True), np.array([0, MAX], np.uint64)])
    bf = BloomFilter(num_blocks)
    bf.add(hashes)
    words: dict[int, int] = {}  # word number -> bits, only the words that were touched
    for h in hashes.tolist():
        spec_insert(words, num_blocks, h)
    set_words = np.flatnonzero(bf.words)
    assert {int(i): int(bf.words[i]) for i in set_words} == words
    queries = rng.integers(0, MAX, 2000, dtype=np.uint64)
    assert bf.contains(queries).tolist() == [spec_check(words, num_blocks, q) for q in queries.tolist()]


@pytest.mark.parametrize("fpr", [1e-2, 1e-3, 1e-4])
def test_no_false_negatives_and_fpr_near_target(rng: np.random.Generator, fpr: float) -> None:
    keys = rng.integers(0, MAX, 1_000_000, dtype=np.uint64, endpoint=True)
    bf = BloomFilter.from_hashes(keys, fpr)
    assert bf.contains(keys).all()
    # Enough absent queries for ~1000 expected false positives: the estimate's sd is ~3%.
    absent = rng.integers(0, MAX, int(1000 / fpr), dtype=np.uint64, endpoint=True)
    # Not filtered against keys: a random 64-bit query equals one of 1M keys with probability 5e-14.
    measured = bf.contains(absent).mean()
    assert 0.8 * fpr <= measured <= 1.2 * fpr
    assert bf.expected_fpr() == pytest.approx(fpr, rel=0.05)


def test_sizing() -> None:
    # Bits per key of an SBBF at its target rate, as published for Parquet/Impala: ~10.5, 16.9, 26.3.
    for fpr, bits_per_key in [(1e-2, 10.53), (1e-3, 16.89), (1e-4, 26.34)]:
        blocks = blocks_for(10_000_000, fpr)
        assert blocks * 256 / 10_000_000 == pytest.approx(bits_per_key, rel=0.005)
        assert sbbf_fpr(10_000_000 / blocks) <= fpr < sbbf_fpr(10_000_000 / (blocks - 1))
    assert blocks_for(0, 0.01) == 1
    assert blocks_for(1, 0.01) == 1
    assert blocks_for(2_000_000, 1e-3) > blocks_for(1_000_000, 1e-3) > blocks_for(1_000_000, 1e-2)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="false-positive"):
            BloomFilter.for_capacity(10, bad)


def test_fpr_formula_limits() -> None:
    assert sbbf_fpr(0) == 0.0
    # A block with k keys passes a word with probability 1 - (31/32)**k; loads are Poisson(1).
    direct = sum(math.exp(-1) / math.factorial(k) * (1 - (31 / 32) ** k) ** 8 for k in range(60))
    assert sbbf_fpr(1) == pytest.approx(direct, rel=1e-9)
    assert sbbf_fpr(1000) == pytest.approx(1.0, abs=1e-6)
    loads = [0.5, 2, 8, 32, 128]
    assert all(a < b for a, b in zip(map(sbbf_fpr, loads), map(sbbf_fpr, loads[1:]), strict=False))


def test_expected_fpr_of_empty_and_full_filters() -> None:
    bf = BloomFilter(10)
    assert bf.expected_fpr() == 0.0
    assert not bf.contains(np.arange(1000, dtype=np.uint64)).any()
    bf.words[:] = 0xFFFFFFFF
    assert bf.expected_fpr() == 1.0
    half = BloomFilter(2)
    half.words[:8] = 0xFFFFFFFF  # one of two blocks full: half of all random hashes pass
    assert half.expected_fpr() == 0.5


def test_properties_and_read_only() -> None:
    bf = BloomFilter.for_capacity(1000, 0.01)
    assert bf.bits == bf.num_blocks * 256 == bf.size_bytes * 8
    assert bf.hashes_per_key == 8
    assert bf.target_fpr == 0.01
    bf.add(np.zeros(0, dtype=np.uint64))
    assert bf.contains(np.zeros(0, dtype=np.uint64)).shape == (0,)
    frozen = BloomFilter(bf.num_blocks, bf.words.copy())
    frozen.words.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        frozen.add(np.ones(1, dtype=np.uint64))
    with pytest.raises(TypeError, match="uint64"):
        bf.add(np.ones(1, dtype=np.float64))


def test_concurrent_queries_agree(rng: np.random.Generator) -> None:
    keys = rng.integers(0, MAX, 200_000, dtype=np.uint64)
    bf = BloomFilter.from_hashes(keys, 1e-3)
    batches = [np.concatenate([keys[i::8], rng.integers(0, MAX, 50_000, dtype=np.uint64)]) for i in range(8)]
    expected = [bf.contains(b) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            for got, want in zip(pool.map(bf.contains, batches), expected, strict=True):
                np.testing.assert_array_equal(got, want)
