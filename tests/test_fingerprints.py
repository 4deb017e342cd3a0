"""FingerprintSet: exact membership of 64-bit hashes, checked against np.isin and Python sets."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfilter.sets.fingerprints import FingerprintSet, collision_bound, index_bits_for

MAX = 2**64 - 1
EXTREMES = [0, 1, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**63 + 1, MAX - 1, MAX]


def u64(values) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def check(members: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Build from ``members``, query, compare with np.isin and a Python set; return the answer."""
    fs = FingerprintSet.from_hashes(members)
    got = fs.contains(queries)
    assert got.dtype == np.bool_ and got.shape == queries.shape
    np.testing.assert_array_equal(got, np.isin(queries, members))
    as_set = set(members.tolist())
    assert got.tolist() == [q in as_set for q in queries.tolist()]
    assert len(fs) == len(as_set)
    return got


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


def test_random_members_with_duplicates(rng: np.random.Generator) -> None:
    members = rng.integers(0, MAX, 200_000, dtype=np.uint64, endpoint=True)
    members = np.concatenate([members, members[:50_000], u64(EXTREMES)])  # repeats and extremes
    rng.shuffle(members)
    absent = rng.integers(0, MAX, 300_000, dtype=np.uint64, endpoint=True)
    queries = np.concatenate([absent, members[:100_000], u64(EXTREMES), u64(EXTREMES) ^ np.uint64(1)])
    rng.shuffle(queries)
    got = check(members, queries)
    assert got.sum() >= 100_000 + len(EXTREMES)


def test_extremes_alone() -> None:
    check(u64([0, MAX]), u64(EXTREMES))
    check(u64([MAX]), u64([0, MAX, MAX - 1]))
    check(u64([0]), u64([0, 1, MAX]))


def test_empty_set() -> None:
    fs = FingerprintSet.from_hashes(np.zeros(0, dtype=np.uint64))
    assert len(fs) == 0
    assert fs.contains(u64(EXTREMES)).tolist() == [False] * len(EXTREMES)
    assert fs.contains(np.zeros(0, dtype=np.uint64)).shape == (0,)


def test_single_key_repeated() -> None:
    fs = FingerprintSet.from_hashes(u64([12345] * 10))
    assert len(fs) == 1
    assert fs.contains(u64([12345, 12344, 12346, 0, MAX])).tolist() == [True, False, False, False, False]


def test_keys_sharing_a_radix_bucket(rng: np.random.Generator) -> None:
    # 4096 random keys give 2**10 buckets; 40 keys differing only in their low bits share one bucket
    # (longer than the linear-scan limit), the rest are spread out.
    base = np.uint64(0xDEADBEEF00000000)
    crowded = base + u64(range(0, 80, 2))
    members = np.concatenate([rng.integers(0, MAX, 4096, dtype=np.uint64), crowded])
    fs = FingerprintSet.from_hashes(members)
    shift = 64 - fs.index_bits
    assert len({int(k) >> shift for k in crowded}) == 1
    queries = np.concatenate([u64(range(int(base) - 3, int(base) + 85)), members])
    check(members, queries)


def test_skewed_small_integers() -> None:
    # Not hashes: every key falls in bucket 0, so lookups bisect one long bucket.
    members = u64(range(0, 20_000, 3))
    check(members, u64(range(0, 21_000)))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(EXTREMES) | st.integers(0, MAX) | st.integers(0, 40), max_size=60),
    st.lists(st.sampled_from(EXTREMES) | st.integers(0, MAX) | st.integers(0, 40), max_size=60),
)
def test_matches_python_set(members: list[int], extra: list[int]) -> None:
    check(u64(members), u64(members + extra))


def test_copy_leaves_input_alone_and_in_place_sorts_it(rng: np.random.Generator) -> None:
    h = rng.integers(0, MAX, 1000, dtype=np.uint64)
    before = h.copy()
    FingerprintSet.from_hashes(h)
    np.testing.assert_array_equal(h, before)
    fs = FingerprintSet.from_hashes(h, copy=False)
    assert np.shares_memory(fs.keys, h)
    np.testing.assert_array_equal(h, np.sort(before))


def test_many_repeats_do_not_pin_the_input_buffer() -> None:
    h = u64([7, 3, 3, 7] * 1000)
    fs = FingerprintSet.from_hashes(h, copy=False)
    assert fs.keys.tolist() == [3, 7]
    assert not np.shares_memory(fs.keys, h)


def test_input_types() -> None:
    fs = FingerprintSet.from_hashes(np.array([-1, 0, 5], dtype=np.int64))  # int64 is reinterpreted as bits
    assert fs.contains(u64([MAX, 0, 5, 4])).tolist() == [True, True, True, False]
    assert fs.contains(np.array([-1], dtype=np.int64)).tolist() == [True]
    assert fs.contains(u64([0, 1, 5, 9])[::2]).tolist() == [True, True]  # strided queries
    with pytest.raises(TypeError, match="uint64"):
        fs.contains(np.array([1.0]))
    with pytest.raises(TypeError, match="uint64"):
        FingerprintSet.from_hashes(np.array([1, 2], dtype=np.uint32))


def test_sorted_unique_layout_and_size(rng: np.random.Generator) -> None:
    h = rng.integers(0, MAX, 10_000, dtype=np.uint64)
    fs = FingerprintSet.from_hashes(np.concatenate([h, h]))
    np.testing.assert_array_equal(fs.keys, np.unique(h))
    assert fs.index_bits == index_bits_for(len(fs)) == 12  # 10,000 keys: 2-4 per bucket
    assert fs.size_bytes == 8 * len(fs) + 4 * (2**12 + 1)
    # The index is the bucket boundaries, recomputed here by bisection.
    buckets = np.arange(2**12 + 1, dtype=object) << (64 - 12)
    expected = [int(np.searchsorted(fs.keys, np.uint64(min(b, MAX)))) for b in buckets[:-1]] + [len(fs)]
    assert fs.index.tolist() == expected


def test_concurrent_queries_agree(rng: np.random.Generator) -> None:
    members = rng.integers(0, MAX, 100_000, dtype=np.uint64)
    fs = FingerprintSet.from_hashes(members)
    batches = [np.concatenate([members[i::8][:5000], rng.integers(0, MAX, 20_000, dtype=np.uint64)]) for i in range(8)]
    expected = [np.isin(b, members) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            for got, want in zip(pool.map(fs.contains, batches), expected, strict=True):
                np.testing.assert_array_equal(got, want)


def test_collision_bound() -> None:
    assert collision_bound(0, 10**9) == 0.0
    assert collision_bound(2**32, 2**32) == pytest.approx(1.0)
    assert collision_bound(100_000_000, 10_000_000_000) == pytest.approx(1e18 / 2**64)


def test_constructor_rejects_a_broken_index() -> None:
    keys = u64([1, 2, 3])
    with pytest.raises(ValueError, match="span"):
        FingerprintSet(keys, np.array([0, 2], dtype=np.uint32), 0)
    with pytest.raises(ValueError, match="offsets"):
        FingerprintSet(keys, np.array([0, 3], dtype=np.uint64), 0)
