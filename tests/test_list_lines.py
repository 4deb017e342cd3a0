"""Text lists split on their bytes: the same lines as Python's ``str.splitlines``, the same keys as before.

The reference is Python itself (``bytes.decode`` and ``str.splitlines``) and a Python set; the
large sets' build (duplicates found through sorted hashes) is checked against ``pc.unique``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfilter.sets import exact
from streamfilter.sets.exact import ExactKeySet
from streamfilter.sets.lines import _split_on_newlines, text_lines
from streamfilter.sets.load import text_keys


def reference_keys(data: bytes) -> tuple[list[str], list[int]]:
    """Keys and line indexes by plain Python: trimmed lines, blank and '#' lines skipped."""
    keys, index = [], []
    for i, line in enumerate(data.decode("utf-8").splitlines()):
        key = pc.utf8_trim_whitespace(pa.array([line])).to_pylist()[0]  # Arrow's (Unicode) whitespace
        if key and not key.startswith("#"):
            keys.append(key)
            index.append(i)
    return keys, index


CASES = [
    b"",
    b"\n",
    b"\n\n",
    b"a",
    b"a\n",
    b"a\nb",
    b"a\nb\n",
    b"a\r\nb\r\n",
    b"  a  \n\tb\t\n#c\n\n d \n",
    b"a\rb\n",  # a lone CR splits
    b"a\x0bb\x0cc\x1cd\x1de\x1ef\n",
    "a\u0085b\u2028c\u2029d\n".encode(),
    "h\u00e9llo\nw\u00f6rld\n\u5199\u771f\n".encode(),
    "x\u00e2\u0080\n".encode(),  # the bytes of U+2028's start, but as other characters
    b"a\x00b\n\x00\n",
    b"#only\n# comments\n",
    "\u0085a".encode(),
    "1234567\u0085".encode(),  # a separator straddling a word boundary
    "123456\u2028x".encode(),
    "1234567\u2029x".encode(),
]


@pytest.mark.parametrize("data", CASES)
def test_keys_as_python_reads_them(data: bytes) -> None:
    keys, index = text_keys(data)
    want_keys, want_index = reference_keys(data)
    assert keys.to_pylist() == want_keys
    assert index.to_pylist() == want_index
    assert keys.type == pa.large_string()


@pytest.mark.parametrize(
    "data",
    [
        b"a\nb\n",
        b"a\r\nb",
        "caf\u00e9\nna\u00efve\n".encode(),
        b"x" * 9 + b"\n" + b"y" * 17,
    ],
)
def test_plain_lists_take_the_byte_split(data: bytes) -> None:
    lines = _split_on_newlines(data)
    assert lines is not None
    assert [s.rstrip("\r\n") for s in lines.to_pylist()] == data.decode().splitlines()


@pytest.mark.parametrize(
    "data",
    [b"a\rb", b"a\x0bb", "a\u2028b".encode(), "a\u0085b".encode(), "1234567\u2029".encode(), b"\xff\n"],
)
def test_other_line_boundaries_and_bad_utf8_take_pythons_way(data: bytes) -> None:
    assert _split_on_newlines(data) is None


def test_invalid_utf8_names_the_byte() -> None:
    with pytest.raises(UnicodeDecodeError) as info:
        text_lines(b"ok\nbad \xff here\n")
    assert info.value.start == 7


alphabet = st.sampled_from(["a", "b", " ", "\t", "\n", "\r", "\r\n", "#", "\x0b", "\u00e9", "\u2028", "\u0085", "\x00"])


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(alphabet, max_size=40))
def test_property_same_keys_as_python(pieces: list[str]) -> None:
    data = "".join(pieces).encode()
    keys, index = text_keys(data)
    want_keys, want_index = reference_keys(data)
    assert keys.to_pylist() == want_keys
    assert index.to_pylist() == want_index


def test_large_set_with_duplicates_is_the_distinct_keys() -> None:
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 30_000, 60_000)  # about half are repeats
    members = pc.binary_join_element_wise("https://d.example/", pa.array(ids).cast(pa.string()), "")
    key_set = ExactKeySet(members)
    distinct = pc.unique(members)
    assert key_set.size == len(distinct)
    assert key_set._hashes is not None
    assert np.all(np.diff(key_set._hashes.astype(np.uint64)) >= 0)
    probe = pc.binary_join_element_wise("https://d.example/", pa.array(np.arange(-5, 30_005)).cast(pa.string()), "")
    listed = set(distinct.to_pylist())
    assert key_set.contains(probe).to_pylist() == [p in listed for p in probe.to_pylist()]


def test_large_set_digest_depends_on_content_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exact, "SORTED_DIGEST_UP_TO", 10)
    keys = [f"k{i}" for i in range(exact.HASHED_FROM + 50)]
    a = ExactKeySet(pa.array(keys))
    b = ExactKeySet(pa.array(keys[::-1] + keys[:100]).cast(pa.large_string()))
    c = ExactKeySet(pa.array([*keys[1:], "other"]))
    assert a.digest == b.digest != c.digest
    monkeypatch.setattr(exact, "SORTED_DIGEST_UP_TO", 10**9)
    assert ExactKeySet(pa.array(keys)).digest != a.digest  # the sorted digest: another function


def test_forced_collisions_with_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys in few hash buckets, repeated: duplicates must go, distinct keys of one hash must stay."""
    real = exact._PolyHasher.__call__
    monkeypatch.setattr(exact._PolyHasher, "__call__", lambda self, v: real(self, v) % np.uint64(3))
    monkeypatch.setattr(exact, "SMALL_SET", 2)
    members = pa.array([f"m{i % 40}" for i in range(200)] + ["", "", "m1"])
    key_set = ExactKeySet(members)
    assert key_set.size == 41
    assert sorted(key_set._members(None).cast(pa.large_string()).to_pylist()) == sorted(
        {*(f"m{i}" for i in range(40)), ""}
    )
    probe = pa.array([f"m{i}" for i in range(-3, 45)] + ["", None])
    listed = {*(f"m{i}" for i in range(40)), ""}
    assert key_set.contains(probe).to_pylist() == [p in listed for p in probe.to_pylist()]


@pytest.mark.parametrize("step", [8, 16, 24])
def test_small_steps_find_the_same_lines(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    from streamfilter.sets import lines

    monkeypatch.setattr(lines, "_STEP", step)
    for data in [*CASES, ("x\u00e9y\n" * 11 + "a\u2028b" + "z" * 9).encode(), ("ab\n" * 30).encode()]:
        keys, index = text_keys(data)
        assert (keys.to_pylist(), index.to_pylist()) == reference_keys(data), data


@pytest.mark.parametrize("n", [50, exact.HASHED_FROM + 500])
def test_sets_up_to_the_sorted_limit_keep_the_digest_of_earlier_versions(n: int) -> None:
    """The digest receipts of earlier versions recorded: SHA-256 of the type, the offsets and the bytes of
    the distinct keys in sorted order, computed here with hashlib and Python's sort."""
    import hashlib

    keys = [f"https://d.example/{i * 7919 % n}/é" for i in range(n)] + ["", "a\x00"]
    distinct = sorted({k.encode() for k in keys})
    offsets = np.cumsum([0] + [len(k) for k in distinct]).astype(np.int64)
    h = hashlib.sha256(b"large_binary")
    h.update(offsets.tobytes())
    h.update(b"".join(distinct))
    assert ExactKeySet(pa.array(keys + keys[:10])).digest == "sha256:" + h.hexdigest()
