"""ExactKeySet on its own: both lookup strategies must equal pyarrow's is_in, exactly."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamfilter.sets import exact
from streamfilter.sets.exact import BATCH_SHARE, HASHED_FROM, SMALL_SET, ExactKeySet


def reference(keys: pa.Array, members: pa.Array) -> list[bool]:
    """Membership by pyarrow alone: nulls are never members."""
    value_set = members.filter(pc.is_valid(members))
    return pc.fill_null(pc.is_in(keys, value_set=value_set), False).to_pylist()


def check(key_set: ExactKeySet, keys: pa.Array, members: pa.Array) -> list[bool]:
    got = key_set.contains(keys)
    assert got.type == pa.bool_()
    assert got.null_count == 0
    assert len(got) == len(keys)
    expected = reference(keys, members)
    assert got.to_pylist() == expected
    return expected


def hashed(key_set: ExactKeySet) -> bool:
    return key_set._hashes is not None


EDGE_KEYS = ["", "a", "a\x00", "\x00a", "\x00", "ab", "ba", "A", " a", "a ", "é", "e\u0301", "😀", "\t"]


@pytest.fixture(scope="module")
def large_members() -> pa.Array:
    n = SMALL_SET + 8_000
    urls = pc.binary_join_element_wise("https://img.example/", pa.array(np.arange(n)).cast(pa.string()), ".jpg", "")
    return pa.concat_arrays([urls, pa.array([*EDGE_KEYS, None, None], pa.string())])


@pytest.fixture(scope="module")
def large_set(large_members: pa.Array) -> ExactKeySet:
    key_set = ExactKeySet(large_members)
    assert hashed(key_set)
    return key_set


def queries(n_members: int) -> pa.Array:
    rng = np.random.default_rng(5)
    ids = rng.integers(-1000, n_members + 50_000, 20_000)
    urls = pc.binary_join_element_wise("https://img.example/", pa.array(ids).cast(pa.string()), ".jpg", "")
    near_misses = ["https://img.example/1.jpg ", "https://img.example/01.jpg", "https://img.example/1.JPG"]
    extra = pa.array([*EDGE_KEYS, "b", "\x00\x00", "aa", *near_misses, None, None, None], pa.string())
    return pa.concat_arrays([extra, urls, extra])


def test_small_set_uses_is_in_and_is_exact() -> None:
    members = pa.array(["x", "", "https://a/1", None, "https://a/1", "é", "\x00"], pa.string())
    key_set = ExactKeySet(members)
    assert not hashed(key_set)
    assert key_set.size == 5  # duplicates and nulls are not members
    keys = pa.array(["x", None, "", "y", "https://a/1", "e\u0301", "\x00", "\x00\x00", "X"], pa.string())
    assert check(key_set, keys, members) == [True, False, True, False, True, False, True, False, False]


def test_strategy_threshold() -> None:
    ids = pa.array(np.arange(SMALL_SET + 1)).cast(pa.string())
    assert not hashed(ExactKeySet(ids.slice(0, HASHED_FROM)))
    assert hashed(ExactKeySet(ids.slice(0, HASHED_FROM + 1)))
    assert hashed(ExactKeySet(ids))
    assert ExactKeySet(ids).contains(pa.array(["0", str(SMALL_SET), str(SMALL_SET + 1)])).to_pylist() == [
        True,
        True,
        False,
    ]


def test_large_set_uses_hashes_and_is_exact(large_set: ExactKeySet, large_members: pa.Array) -> None:
    keys = queries(SMALL_SET + 8_000)
    expected = check(large_set, keys, large_members)
    # The check is not vacuous: both answers occur in quantity.
    assert 10_000 < sum(expected) < len(expected) - 5_000
    assert large_set.size == SMALL_SET + 8_000 + len(EDGE_KEYS)


def test_large_set_on_sliced_and_chunked_arrays(large_set: ExactKeySet, large_members: pa.Array) -> None:
    keys = queries(SMALL_SET + 8_000)
    for start, length in [(1, 100), (7, 9_000), (len(EDGE_KEYS) + 3, 12_345), (len(keys) - 30, 30), (50, 0)]:
        sliced = keys.slice(start, length)
        assert sliced.offset == start
        check(large_set, sliced, large_members)
    # A slice whose data starts mid-buffer and ends with empty strings at the tail.
    tail = pa.array(["https://img.example/3.jpg", "zzz", "", ""], pa.string()).slice(1)
    assert check(large_set, tail, large_members) == [False, True, True]
    chunked = pa.chunked_array([keys.slice(0, 500), keys.slice(500, 700)])
    got = large_set.contains(chunked)
    assert got.to_pylist() == reference(keys.slice(0, 1200), large_members)


def test_large_set_with_large_string_and_binary_keys(large_set: ExactKeySet, large_members: pa.Array) -> None:
    keys = queries(SMALL_SET + 8_000).slice(0, 3_000)
    expected = reference(keys, large_members)
    assert large_set.contains(keys.cast(pa.large_string())).to_pylist() == expected
    assert large_set.contains(keys.cast(pa.binary())).to_pylist() == expected
    assert large_set.contains(keys.cast(pa.large_binary())).to_pylist() == expected
    assert large_set.contains(keys.cast(pa.string_view())).to_pylist() == expected


@pytest.mark.parametrize("small_set", [SMALL_SET, 4])
def test_binary_keys_that_are_not_utf8(monkeypatch: pytest.MonkeyPatch, small_set: int) -> None:
    monkeypatch.setattr(exact, "SMALL_SET", small_set)
    members = pa.array([b"\xff\xfe", b"\x00", b"", b"\x80abc", b"plain", b"\xc3\xa9", None], pa.binary())
    key_set = ExactKeySet(members)
    assert hashed(key_set) == (small_set == 4)
    keys = pa.array([b"\xff\xfe", b"\xff", b"\x00\x00", b"", None, b"\x80abc", b"\x80ab", b"\xc3\xa9"], pa.binary())
    assert check(key_set, keys, members) == [True, False, False, True, False, True, False, True]
    # A string and the bytes of its UTF-8 encoding are the same key.
    assert key_set.contains(pa.array(["é", "plain", "plai"])).to_pylist() == [True, True, False]


@pytest.mark.parametrize("small_set", [0, 3, 50])
def test_hashed_path_with_a_low_threshold(monkeypatch: pytest.MonkeyPatch, small_set: int) -> None:
    monkeypatch.setattr(exact, "SMALL_SET", small_set)
    members = pa.array([*EDGE_KEYS, *(f"k{i}" for i in range(200)), None], pa.string())
    key_set = ExactKeySet(members)
    assert hashed(key_set)
    keys = pa.array([*EDGE_KEYS, *(f"k{i}" for i in range(-20, 260)), None, "k", "k1 ", "kk1"], pa.string())
    expected = check(key_set, keys, members)
    assert sum(expected) == len(EDGE_KEYS) + 200
    check(key_set, keys.slice(5, 100), members)
    check(key_set, pa.array([], pa.string()), members)
    check(key_set, pa.array([None, None], pa.string()), members)


def test_forced_hash_collisions_stay_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every key hashes alike: candidates must still be confirmed by the keys themselves."""

    def constant(self, values: pa.Array) -> np.ndarray:
        return np.full(len(values), 12345, dtype=np.uint64)

    monkeypatch.setattr(exact, "SMALL_SET", 2)
    monkeypatch.setattr(exact._PolyHasher, "__call__", constant)
    members = pa.array([*EDGE_KEYS, *(f"https://c/{i}" for i in range(300)), None], pa.string())
    key_set = ExactKeySet(members)
    assert hashed(key_set)
    assert set(key_set._hashes.tolist()) == {12345}
    keys = pa.array([*EDGE_KEYS[::-1], *(f"https://c/{i}" for i in range(-50, 400, 3)), None, "x"], pa.string())
    expected = check(key_set, keys, members)
    assert 0 < sum(expected) < len(expected)


def test_partial_hash_collisions_stay_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys fall into a few hash buckets of different sizes, like a weak hash would make."""
    real = exact._PolyHasher.__call__

    def weak(self, values: pa.Array) -> np.ndarray:
        return real(self, values) % np.uint64(7)

    monkeypatch.setattr(exact, "SMALL_SET", 2)
    monkeypatch.setattr(exact._PolyHasher, "__call__", weak)
    members = pa.array([f"m{i}" for i in range(0, 500, 2)] + [""], pa.string())
    key_set = ExactKeySet(members)
    assert len(set(key_set._hashes.tolist())) == 7
    keys = pa.array([f"m{i}" for i in range(-10, 520)] + ["", None], pa.string())
    expected = check(key_set, keys, members)
    assert sum(expected) == 251


def test_hash_depends_only_on_content() -> None:
    hasher = exact._PolyHasher()
    values = pa.array(["", "abc", "abc", "x" * 1000, "abc", "", "ab", "c", None, "abc"], pa.string())
    h = hasher(values)
    assert h[1] == h[2] == h[4] == h[9]
    assert h[0] == h[5]
    assert len({int(h[1]), int(h[6]), int(h[7]), int(h[3]), int(h[0])}) == 5
    # Same string, other offset in the buffer, other offset width, other chunking.
    for i in range(len(values)):
        if values[i].is_valid:
            assert hasher(values.slice(i, 1))[0] == h[i]
            assert hasher(values.slice(i, 1).cast(pa.large_binary()))[0] == h[i]
    distinct = pa.array([f"https://h/{i}" for i in range(100_000)])
    assert len(np.unique(hasher(distinct))) == 100_000


def test_hashing_steps_do_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    hasher = exact._PolyHasher()
    values = pa.array([f"v{i}" * (i % 5) for i in range(1000)])
    whole = hasher(values)
    monkeypatch.setattr(exact._PolyHasher, "ROWS_PER_STEP", 7)
    assert np.array_equal(exact._PolyHasher()(values), whole)


def test_digest_depends_on_content_only() -> None:
    a = ExactKeySet(pa.array(["b", "a", "a", None, "c"]))
    b = ExactKeySet(pa.array(["c", "b", "a"]).cast(pa.large_string()))
    c = ExactKeySet(pa.array(["a", "b", "d"]))
    d = ExactKeySet(pa.array(["ab", "c"]))
    assert a.digest == b.digest
    assert a.digest != c.digest
    assert ExactKeySet(pa.array(["a", "bc"])).digest != ExactKeySet(pa.array(["ab", "c"])).digest
    assert d.size == 2 and a.size == 3


def test_empty_set_matches_nothing() -> None:
    key_set = ExactKeySet(pa.array([], pa.string()))
    assert key_set.size == 0
    assert key_set.contains(pa.array(["", "a", None])).to_pylist() == [False, False, False]


text = st.text(alphabet=st.sampled_from(["a", "b", "\x00", "é", " "]), max_size=4)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    members=st.lists(st.one_of(st.none(), text), max_size=40),
    keys=st.lists(st.one_of(st.none(), text), max_size=60),
    threshold=st.sampled_from([0, 1, 5, SMALL_SET]),
    start=st.integers(0, 5),
)
def test_property_equals_is_in(members: list, keys: list, threshold: int, start: int) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exact, "SMALL_SET", threshold)
        member_array = pa.array(members, pa.string())
        key_set = ExactKeySet(member_array)
        key_array = pa.array(["pad"] * start + keys, pa.string()).slice(start)
        check(key_set, key_array, member_array)


def test_a_mid_sized_set_answers_small_and_large_batches_alike() -> None:
    # Between HASHED_FROM and SMALL_SET a small batch goes through the sorted hashes, a large one through
    # is_in: both must give the answers a Python set gives.
    members = [f"https://m.example/{i}" for i in range(0, 2 * (HASHED_FROM + 100), 2)]
    key_set = ExactKeySet(pa.array(members))
    assert hashed(key_set) and key_set.size <= SMALL_SET
    listed = set(members)
    for n in (key_set.size // BATCH_SHARE - 1, key_set.size // BATCH_SHARE + 1, 3 * key_set.size):
        probe = [f"https://m.example/{i}" for i in range(n)] + [None]
        assert key_set.contains(pa.array(probe)).to_pylist() == [p in listed for p in probe], n
