"""The exact set's prefilter (sampled hashes, one bit a key): it may only rule keys out, never a member.

Expected answers come from pyarrow's is_in (or a Python set), never from the set under test.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from streamfilter.sets import exact
from streamfilter.sets.exact import HASHED_FROM, ExactKeySet


@pytest.fixture(autouse=True)
def prefilter_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The prefilter built on a set's first lookup by hash, not after twice its size in keys."""
    monkeypatch.setattr(exact, "PREFILTER_AFTER", 0)


def reference(keys: pa.Array, members: pa.Array) -> list[bool]:
    value_set = members.filter(pc.is_valid(members))
    return pc.fill_null(pc.is_in(keys, value_set=value_set), False).to_pylist()


def random_strings(rng: np.random.Generator, n: int, max_len: int) -> list[bytes]:
    alphabet = np.frombuffer(b"ab\x00\xff/.:xyz", dtype=np.uint8)
    lengths = rng.integers(0, max_len + 1, n)
    return [alphabet[rng.integers(0, len(alphabet), k)].tobytes() for k in lengths]


def test_sampled_hash_depends_on_a_string_alone() -> None:
    # The same strings between other neighbours, at other offsets, sliced, split in steps: the same hashes.
    rng = np.random.default_rng(1)
    values = random_strings(rng, 3_000, 40)
    order = rng.permutation(len(values))
    first = exact._sampled_hashes(pa.array(values, pa.large_binary()))
    shuffled = exact._sampled_hashes(pa.array([values[i] for i in order], pa.binary()))
    assert np.array_equal(first[order], shuffled)
    padded = pa.array([b"\xff" * 50, *values, b"\xff" * 50], pa.binary()).slice(1, len(values))
    assert np.array_equal(exact._sampled_hashes(padded), first)
    assert np.array_equal(exact._sampled_hashes(padded, step=7), first)
    assert len(exact._sampled_hashes(pa.array([], pa.binary()))) == 0


def test_strings_alike_where_sampled_are_still_told_apart() -> None:
    # Keys of 40 bytes that differ only in bytes 0-11 (none of the three sampled words reaches there):
    # they all pass the prefilter once one of them is a member, and the full hash and bytes decide.
    tail = b"/same/middle/and/the/same/end.jpg"[-28:]
    members = [b"%012d" % i + tail for i in range(0, 2 * (HASHED_FROM + 10), 2)]
    probes = [b"%012d" % i + tail for i in range(0, 2 * (HASHED_FROM + 10), 3)]
    assert len(set(exact._sampled_hashes(pa.array(members + probes, pa.binary())).tolist())) == 1
    key_set = ExactKeySet(pa.array(members, pa.binary()))
    probe_array = pa.array([*probes, None, b""], pa.binary())
    for batch in (probe_array, probe_array.slice(5, 1_000)):
        assert key_set.contains(batch).to_pylist() == reference(batch, pa.array(members, pa.binary()))
    assert key_set._prefilter is not None


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string(), pa.binary(), pa.large_binary()])
def test_short_long_and_null_keys_answer_as_is_in(kind: pa.DataType) -> None:
    rng = np.random.default_rng(7)
    raw = random_strings(rng, HASHED_FROM + 3_000, 30)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        raw = [r.replace(b"\xff", b"~") for r in raw]  # valid UTF-8
    members = pa.array([r.decode() if kind in (pa.string(), pa.large_string()) else r for r in raw], kind)
    key_set = ExactKeySet(members)
    # Members, strings one byte off them (last, first and a middle byte), strings of every short length, nulls.
    probes = list(raw[::7])
    probes += [r[:-1] + b"!" for r in raw[::11] if r] + [b"!" + r[1:] for r in raw[::13] if r]
    probes += [r[: len(r) // 2] + b"!" + r[len(r) // 2 + 1 :] for r in raw[::17] if len(r) > 2]
    probes += [b"a" * k for k in range(20)] + [b"\x00" * k for k in range(20)]
    if kind in (pa.string(), pa.large_string()):
        probes = [p.replace(b"\xff", b"~").decode() for p in probes]
    array = pa.array([*probes, None, *probes[:50], None], kind)
    for batch in (array, array.slice(3), array.slice(0, 10)):
        assert key_set.contains(batch).to_pylist() == reference(batch, members)
    assert key_set._prefilter is not None


def test_most_non_members_are_ruled_out() -> None:
    # What the prefilter is for: URLs not in the set mostly never reach the full hash.
    def urls(ids: np.ndarray) -> pa.Array:
        return pc.binary_join_element_wise("https://a.example/img/", pa.array(ids).cast(pa.string()), ".jpg", "")

    members, others = urls(np.arange(50_000)), urls(np.arange(50_000, 90_000))
    key_set = ExactKeySet(members)
    assert not any(key_set.contains(others).to_pylist())
    assert all(key_set.contains(members.slice(0, 4_000)).to_pylist())
    assert key_set._prefilter is not None
    passed = key_set._prefilter.passing(exact.as_bytes(others))
    assert len(passed) < 0.1 * len(others)


def test_answers_alike_before_and_after_the_prefilter_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    # A set builds its prefilter only after looking up twice its size in keys: every answer on the way equal.
    monkeypatch.setattr(exact, "PREFILTER_AFTER", 2)
    rng = np.random.default_rng(3)
    members = pa.array([b"%d:" % i + r for i, r in enumerate(random_strings(rng, HASHED_FROM + 100, 24))])
    key_set = ExactKeySet(members)
    assert key_set._hashes is not None
    probes = pa.concat_arrays([members.slice(0, 2_000), pa.array(random_strings(rng, 4_000, 24), pa.binary())])
    expected = reference(probes, members)
    built_at = None
    for i in range(12):
        assert key_set.contains(probes).to_pylist() == expected
        if built_at is None and key_set._prefilter is not None:
            built_at = i
    assert built_at is not None and (built_at + 1) * len(probes) >= 2 * key_set.size
