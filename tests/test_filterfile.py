"""The membership file format: round trips (path/mmap, bytes, stream), the documented layout, every corruption."""

from __future__ import annotations

import hashlib
import io
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamfilter.errors import UsageError
from streamfilter.sets.bloom import BloomFilter
from streamfilter.sets.filterfile import (
    HEADER_READ_BYTES,
    describe,
    header_span,
    load_set,
    read_header,
    write_set,
)
from streamfilter.sets.fingerprints import FingerprintSet

MAX = 2**64 - 1
KEY_SPEC = {"column": "url", "normalize": ["strip", "lower"], "note": "café ☕"}


@pytest.fixture(scope="module")
def hashes() -> np.ndarray:
    return np.random.default_rng(3).integers(0, MAX, 50_000, dtype=np.uint64, endpoint=True)


@pytest.fixture(scope="module")
def absent() -> np.ndarray:
    return np.random.default_rng(4).integers(0, MAX, 50_000, dtype=np.uint64, endpoint=True)


def save(target: Any, structure: FingerprintSet | BloomFilter, key_count: int) -> dict[str, Any]:
    return write_set(
        target,
        structure,
        hash_name="xxh3_64",
        key_spec=KEY_SPEC,
        key_count=key_count,
        target_fpr=getattr(structure, "target_fpr", None),
        created_by="streamfilter test",
    )


def parse(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The layout as documented, decoded by hand: magic, u16 version, u32 length, JSON, pad to 8, body."""
    magic, version, length = struct.unpack_from("<8sHI", data)
    assert (magic, version) == (b"SFMEMSET", 1)
    header = json.loads(data[14 : 14 + length].decode("utf-8"))
    offset = -(-(14 + length) // 8) * 8
    assert data[14 + length : offset] == b"\0" * (offset - 14 - length)
    return header, data[offset:]


def pack(header: dict[str, Any] | bytes, body: bytes, *, magic: bytes = b"SFMEMSET", version: int = 1) -> bytes:
    """A file built by hand from a header (dict or raw text) and a body."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    pad = b"\0" * (-(14 + len(text)) % 8)
    return struct.pack("<8sHI", magic, version, len(text)) + text + pad + body


@pytest.fixture(scope="module", params=["fingerprints", "bloom"])
def saved(request: pytest.FixtureRequest, hashes: np.ndarray) -> tuple[bytes, FingerprintSet | BloomFilter]:
    if request.param == "fingerprints":
        structure: FingerprintSet | BloomFilter = FingerprintSet.from_hashes(np.concatenate([hashes, hashes[:10]]))
    else:
        structure = BloomFilter.from_hashes(hashes, 1e-3)
    stream = io.BytesIO()
    save(stream, structure, len(hashes))
    return stream.getvalue(), structure


def same_answers(a: FingerprintSet | BloomFilter, b: FingerprintSet | BloomFilter, hashes: np.ndarray) -> None:
    assert b.contains(hashes).all()
    probe = np.concatenate([hashes[:1000], np.random.default_rng(9).integers(0, MAX, 100_000, dtype=np.uint64)])
    np.testing.assert_array_equal(a.contains(probe), b.contains(probe))


# --- round trips and layout ---


def test_layout_as_documented(saved: tuple[bytes, Any], hashes: np.ndarray) -> None:
    data, structure = saved
    header, body = parse(data)
    assert len(body) == header["body_bytes"]
    assert hashlib.sha256(body).hexdigest() == header["body_sha256"]
    assert header["hash"] == "xxh3_64" and header["seed"] == 0 and header["key_spec"] == KEY_SPEC
    assert header["key_count"] == len(hashes) and header["created_by"] == "streamfilter test"
    if header["kind"] == "fingerprints":
        assert header["target_fpr"] is None
        assert header["count"] == len(np.unique(hashes))
        keys = np.frombuffer(body[: 8 * header["count"]], "<u8")
        np.testing.assert_array_equal(keys, np.unique(hashes))
        offsets = np.frombuffer(body[8 * header["count"] :], "<u4")
        assert len(offsets) == 2 ** header["index_bits"] + 1 and offsets[-1] == header["count"]
    else:
        assert header["kind"] == "bloom" and header["target_fpr"] == 1e-3
        assert header["bits"] == header["num_blocks"] * 256 and header["hashes_per_key"] == 8
        np.testing.assert_array_equal(np.frombuffer(body, "<u4"), structure.words)


def test_round_trip_through_a_memory_mapped_path(saved: tuple[bytes, Any], hashes: np.ndarray, tmp_path: Path) -> None:
    data, structure = saved
    path = tmp_path / "set.sfm"
    save(path, structure, len(hashes))
    assert path.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["set.sfm"]  # the temporary file was renamed away
    for verify in (True, False):
        header, loaded = load_set(path, verify=verify)
        assert header == parse(data)[0]
        arrays = [loaded.keys, loaded.index] if isinstance(loaded, FingerprintSet) else [loaded.words]
        for array in arrays:  # zero-copy, read-only views of the mapping
            assert isinstance(array.base, np.memmap) or isinstance(array, np.memmap)
            assert not array.flags.writeable
        same_answers(structure, loaded, hashes)


def test_round_trip_through_bytes(saved: tuple[bytes, Any], hashes: np.ndarray) -> None:
    data, structure = saved
    for buffer in (data, bytearray(data), memoryview(data)):
        header, loaded = load_set(buffer)
        assert header["kind"] == ("bloom" if isinstance(structure, BloomFilter) else "fingerprints")
        same_answers(structure, loaded, hashes)
    _, loaded = load_set(data)
    first = loaded.keys if isinstance(loaded, FingerprintSet) else loaded.words
    assert np.shares_memory(first, np.frombuffer(data, np.uint8))  # no copy of the body


def test_misaligned_buffer_is_copied_not_refused(saved: tuple[bytes, Any], hashes: np.ndarray) -> None:
    data, structure = saved
    _, loaded = load_set(memoryview(bytearray(b"x" + data))[1:])
    same_answers(structure, loaded, hashes)


def test_header_from_a_prefix(saved: tuple[bytes, Any]) -> None:
    data, _ = saved
    header, offset = read_header(data[:HEADER_READ_BYTES])
    assert header == parse(data)[0]
    assert offset == header_span(data[:14]) == len(data) - header["body_bytes"]
    assert offset % 64 == 0  # the writer aligns bodies to cache lines


def test_empty_and_single_key_sets(tmp_path: Path) -> None:
    for keys in ([], [MAX]):
        path = tmp_path / f"s{len(keys)}.sfm"
        save(path, FingerprintSet.from_hashes(np.array(keys, dtype=np.uint64)), len(keys))
        header, loaded = load_set(path)
        assert header["count"] == len(loaded) == len(keys)
        assert loaded.contains(np.array([0, MAX], dtype=np.uint64)).tolist() == [False, bool(keys)]


def test_describe(saved: tuple[bytes, Any]) -> None:
    header, _ = parse(saved[0])
    text = describe(header)
    assert "xxh3_64" in text and '"column": "url"' in text and "50,000" in text and "\n" in text
    if header["kind"] == "bloom":
        assert "bloom" in text and f"{header['bits']:,} bits" in text and "8 hashes per key" in text
        assert "target FPR:    0.001" in text and "expected FPR:  0.001" in text
    else:
        assert "fingerprints" in text and f"{header['count']:,} distinct" in text
        assert "target FPR:    none" in text and "e-15" in text  # 50k / 2**64 per absent key


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="JSON object"):
        write_set(
            tmp_path / "x",
            BloomFilter(1),
            hash_name="h",
            key_spec=["url"],  # type: ignore[arg-type]
            key_count=0,
            target_fpr=None,
            created_by="t",
        )
    with pytest.raises(TypeError, match="FingerprintSet or BloomFilter"):
        save(tmp_path / "y", object(), 0)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# --- corruption: each case is one line naming the file ---


def load_error(data: bytes, tmp_path: Path, *, verify: bool = True) -> str:
    path = tmp_path / "broken.sfm"
    path.write_bytes(data)
    with pytest.raises(UsageError) as info:
        load_set(path, verify=verify)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    with pytest.raises(UsageError) as from_bytes:
        load_set(data, verify=verify, source="s3://bucket/broken.sfm")
    assert "s3://bucket/broken.sfm" in str(from_bytes.value)
    return message


def test_wrong_magic(saved: tuple[bytes, Any], tmp_path: Path) -> None:
    data, _ = saved
    assert "is not a streamfilter membership file" in load_error(b"PAR1" + data[4:], tmp_path)
    assert "is not a streamfilter membership file" in load_error(b'{"kind": "bloom"}', tmp_path)


def test_empty_and_tiny_files(tmp_path: Path) -> None:
    assert "truncated" in load_error(b"", tmp_path)
    assert "truncated" in load_error(b"SFMEMS", tmp_path)
    assert "truncated" in load_error(b"SFMEMSET\x01\x00", tmp_path)
    assert "not a streamfilter membership file" in load_error(b"XY", tmp_path)


def test_unknown_version(saved: tuple[bytes, Any], tmp_path: Path) -> None:
    header, body = parse(saved[0])
    assert "format version 2" in load_error(pack(header, body, version=2), tmp_path)


def test_header_not_json(saved: tuple[bytes, Any], tmp_path: Path) -> None:
    _, body = parse(saved[0])
    assert "not valid JSON" in load_error(pack(b'{"kind": "bloom",', body), tmp_path)
    assert "not valid JSON" in load_error(pack(b"\xff\xfe", body), tmp_path)
    assert "not a JSON object" in load_error(pack(b"[1, 2]", body), tmp_path)


def test_header_cut_short(saved: tuple[bytes, Any]) -> None:
    data, _ = saved
    with pytest.raises(
        UsageError, match=r"example.com/set.sfm has a truncated header: needs the first \d+ bytes, got 40"
    ):
        read_header(data[:40], source="https://example.com/set.sfm")


@pytest.mark.parametrize("field", ["kind", "hash", "seed", "key_spec", "key_count", "body_bytes", "body_sha256"])
def test_missing_common_field(saved: tuple[bytes, Any], tmp_path: Path, field: str) -> None:
    header, body = parse(saved[0])
    del header[field]
    message = load_error(pack(header, body), tmp_path)
    assert f"missing field '{field}'" in message or (field == "kind" and "kind None" in message)


def test_missing_kind_field_and_wrong_types(saved: tuple[bytes, Any], tmp_path: Path) -> None:
    header, body = parse(saved[0])
    size_field = "num_blocks" if header["kind"] == "bloom" else "count"
    assert f"field '{size_field}' of the wrong type" in load_error(pack({**header, size_field: None}, body), tmp_path)
    without = {k: v for k, v in header.items() if k != size_field}
    assert f"missing field '{size_field}'" in load_error(pack(without, body), tmp_path)
    assert "wrong type" in load_error(pack({**header, "key_count": "many"}, body), tmp_path)
    assert "wrong type" in load_error(pack({**header, "target_fpr": True}, body), tmp_path)
    assert "negative" in load_error(pack({**header, "key_count": -1}, body), tmp_path)
    assert "kind 'cuckoo'" in load_error(pack({**header, "kind": "cuckoo"}, body), tmp_path)
    assert "body_bytes" in load_error(pack({**header, "body_bytes": header["body_bytes"] + 8}, body), tmp_path)


def test_truncated_body(saved: tuple[bytes, Any], tmp_path: Path) -> None:
    data, _ = saved
    message = load_error(data[:-1000], tmp_path, verify=False)
    assert "is truncated" in message and "header says" in message
    assert "is truncated" in load_error(data[: header_span(data[:14])], tmp_path, verify=False)


def test_extra_bytes_after_body(saved: tuple[bytes, Any], tmp_path: Path) -> None:
    assert "size mismatch" in load_error(saved[0] + b"\0" * 8, tmp_path, verify=False)


def test_checksum_mismatch(saved: tuple[bytes, Any], tmp_path: Path, hashes: np.ndarray) -> None:
    data = bytearray(saved[0])
    data[-5] ^= 0x10  # one bit, deep in the body
    assert "checksum mismatch" in load_error(bytes(data), tmp_path)
    _, loaded = load_set(bytes(data), verify=False)  # unverified: loads; answers may be wrong
    assert loaded.contains(hashes).shape == hashes.shape


def test_unverified_corrupt_index_never_reads_out_of_bounds(hashes: np.ndarray, tmp_path: Path) -> None:
    stream = io.BytesIO()
    fs = FingerprintSet.from_hashes(hashes)
    save(stream, fs, len(hashes))
    header, body = parse(stream.getvalue())
    offsets = np.frombuffer(body[8 * len(fs) :], "<u4").copy()
    offsets[1:-1] = np.uint32(2**32 - 1)  # every inner offset far past the end
    broken = pack(header, body[: 8 * len(fs)] + offsets.tobytes())
    _, loaded = load_set(broken, verify=False)
    assert loaded.contains(hashes).dtype == np.bool_
    offsets[0] = 5
    message = load_error(pack(header, body[: 8 * len(fs)] + offsets.tobytes()), tmp_path, verify=False)
    assert "inconsistent" in message


def test_unknown_header_fields_are_ignored(saved: tuple[bytes, Any], hashes: np.ndarray) -> None:
    header, body = parse(saved[0])
    loaded_header, loaded = load_set(pack({**header, "future_field": {"x": 1}}, body))
    assert loaded_header["future_field"] == {"x": 1}
    assert loaded.contains(hashes).all()
