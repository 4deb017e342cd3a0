"""img2dataset-style WebDataset shards for the tests, and the tarfile-based reference they are checked against.

The reference never calls streamfilter: it lists the input with Python's tarfile,
groups members into samples by WebDataset's rule, drops the samples whose .json
``url`` is listed, and builds the expected output bytes from the input's own
bytes (each kept member from its first header block to the end of its padded
data), closed by two zero blocks and padded to a 10240-byte record.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass
class Entry:
    """What tarfile says about one member, data included."""

    name: str
    data: bytes
    mode: int
    mtime: float
    uname: str
    gname: str
    uid: int
    gid: int
    type: bytes
    offset: int
    end: int


_JFIF = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01"


def payload(rng: random.Random, size: int) -> bytes:
    """JPEG-like bytes: the SOI/JFIF marker, a random body, the EOI marker."""
    return _JFIF + rng.randbytes(max(0, size - len(_JFIF) - 2)) + b"\xff\xd9"


def make_shard(
    path: Path,
    n: int,
    *,
    start: int = 0,
    seed: int = 0,
    big: Sequence[int] = (),
    big_size: int = 9 * 1024 * 1024,
    fmt: int = tarfile.GNU_FORMAT,
    prefix: str = "",
    jpg_sizes: tuple[int, int] = (200, 30_000),
) -> list[str]:
    """Write an img2dataset-style tar (``{key}.jpg``, ``.json``, ``.txt`` per sample); returns the urls.

    Samples whose index is in ``big`` get a ``big_size``-byte image (larger than an S3 part).
    """
    rng = random.Random(seed * 1_000_003 + start)
    urls = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=fmt) as tf:
        for i in range(n):
            key = f"{start + i:09d}"
            url = f"https://img.example/{seed}/{start + i}.jpg"
            urls.append(url)
            size = big_size if i in big else rng.randint(*jpg_sizes)
            meta = {"url": url, "caption": f"a photo number {start + i}", "key": key, "status": "success"}
            members = [
                ("jpg", payload(rng, size)),
                ("json", json.dumps(meta).encode()),
                ("txt", meta["caption"].encode()),
            ]
            for ext, data in members:
                info = tarfile.TarInfo(f"{prefix}{key}.{ext}")
                info.size = len(data)
                info.mtime = 1_600_000_000 + rng.randint(0, 10**8)
                info.mode = rng.choice([0o644, 0o600, 0o640])
                info.uname, info.gname = rng.choice([("alice", "staff"), ("bob", "users"), ("", "")])
                info.uid, info.gid = rng.randint(0, 2000), rng.randint(0, 2000)
                tf.addfile(info, io.BytesIO(data))
    return urls


def add_members(path: Path, members: Iterable[tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT) -> None:
    """Write a tar of ``(name, data)`` members exactly as named (``..`` and absolute names included)."""
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_650_000_000
            tf.addfile(info, io.BytesIO(data))


def entries(source: Path | bytes) -> list[Entry]:
    data = source if isinstance(source, bytes) else source.read_bytes()
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for info in tf:
            content = tf.extractfile(info).read() if info.isreg() else b""
            end = info.offset_data + (info.size + 511) // 512 * 512
            out.append(
                Entry(
                    info.name,
                    content,
                    info.mode,
                    info.mtime,
                    info.uname,
                    info.gname,
                    info.uid,
                    info.gid,
                    info.type,
                    info.offset,
                    end,
                )
            )
    return out


def sample_key(name: str) -> str | None:
    base = name.rsplit("/", 1)[-1]
    if "." not in base or base.startswith("."):
        return None
    return name[: len(name) - len(base)] + base.split(".", 1)[0]


def samples_of(items: list[Entry]) -> list[list[Entry]]:
    """WebDataset's grouping: consecutive members with the same key."""
    groups: list[list[Entry]] = []
    for item in items:
        key = sample_key(item.name)
        if groups and key is not None and sample_key(groups[-1][0].name) == key:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def url_of(sample: list[Entry]) -> str | None:
    """The ``url`` of the sample's ``{key}.json``."""
    for item in sample:
        if item.name.rsplit("/", 1)[-1].split(".", 1)[-1] == "json":
            return json.loads(item.data).get("url")
    return None


def reference_tar(source: Path | bytes, drop: Callable[[list[Entry]], bool]) -> tuple[list[Entry], bytes]:
    """Kept entries and the expected output bytes; ``drop(sample) -> bool`` says which samples go."""
    raw = source if isinstance(source, bytes) else source.read_bytes()
    kept = [item for sample in samples_of(entries(raw)) if not drop(sample) for item in sample]
    body = b"".join(raw[item.offset : item.end] for item in kept)
    end = len(body) + 1024
    return kept, body + bytes(1024 + (-end % 10240))


def drop_listed(listed: Iterable[str]) -> Callable[[list[Entry]], bool]:
    listed = set(listed)
    return lambda sample: url_of(sample) in listed


def assert_same_entries(actual: list[Entry], expected: list[Entry]) -> None:
    assert [e.name for e in actual] == [e.name for e in expected]
    for a, e in zip(actual, expected, strict=True):
        assert (a.data, a.mode, a.mtime, a.uname, a.gname, a.uid, a.gid, a.type) == (
            e.data,
            e.mode,
            e.mtime,
            e.uname,
            e.gname,
            e.uid,
            e.gid,
            e.type,
        ), a.name


def write_sidecar(path: Path, urls: Sequence[str], keys: Sequence[str], failed: int = 0, seed: int = 0) -> pa.Table:
    """An img2dataset shard Parquet: a row per sample plus ``failed`` rows for failed downloads."""
    rng = random.Random(seed)
    extra = [f"https://img.example/failed/{seed}/{i}.jpg" for i in range(failed)]
    extra_keys = [f"9{seed:04d}{i:04d}" for i in range(failed)]
    n = len(urls) + failed
    table = pa.table(
        {
            "url": list(urls) + extra,
            "caption": [f"caption {i}" for i in range(n)],
            "key": list(keys) + extra_keys,
            "status": ["success"] * len(urls) + ["failed_to_download"] * failed,
            "error_message": [None] * len(urls) + ["404"] * failed,
            "width": [rng.randint(64, 512) for _ in range(n)],
            "height": [rng.randint(64, 512) for _ in range(n)],
        }
    )
    pq.write_table(table, path)
    return table
