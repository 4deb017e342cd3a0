"""A remote file's prefetch of a range holding an earlier fetch (a scan's key chunks inside the row group
its rewrite then reads whole) requests only the rest; bytes checked against the file itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from anyio.from_thread import start_blocking_portal
from helpers import (
    FOOTER_WINDOW,
    put_listed_shards,
    read_parquet,
    reference_filter,
    row_group_rows,
    s3_get,
    write_list,
)

import streamfilter
from streamfilter.store import ObjectInfo
from streamfilter.store.bridge import REUSE_BYTES, RangeFile
from streamfilter.store.local import LocalStore

MIB = 1024 * 1024


class CountedStore(LocalStore):
    """A local store that records the byte ranges it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[int, int]] = []

    async def read_range(self, uri: str, start: int, end: int) -> bytes:
        self.requests.append((start, end))
        return await super().read_range(uri, start, end)


@pytest.fixture
def blob(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(3 * MIB)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize(
    ("held", "asked_after"),
    [
        ((0, MIB), [(MIB, 3 * MIB)]),  # at the front: one request for the rest, as before
        ((2 * MIB, 3 * MIB), [(0, 2 * MIB)]),  # at the end: the same
        ((MIB, MIB + REUSE_BYTES), [(0, MIB), (MIB + REUSE_BYTES, 3 * MIB)]),  # in the middle, long enough
        ((MIB, MIB + 100_000), [(0, 3 * MIB)]),  # in the middle and short: the range whole, in one request
    ],
)
def test_a_prefetch_requests_only_what_it_does_not_hold(
    blob: tuple[Path, bytes], held: tuple[int, int], asked_after: list[tuple[int, int]]
) -> None:
    path, data = blob
    store = CountedStore()
    with start_blocking_portal() as portal:
        file = RangeFile(store, ObjectInfo(str(path), len(data)), portal)
        file.prefetch([held])
        file.seek(held[0])
        assert bytes(file.read(held[1] - held[0])) == data[held[0] : held[1]]
        file.prefetch([(0, len(data))])
        file.seek(0)
        whole = bytes(file.read(len(data)))
        file.close()
    assert whole == data
    assert store.requests == [held, *asked_after]
    assert file.bytes_read == sum(end - start for start, end in store.requests)


def test_a_failed_fetch_is_not_reused(blob: tuple[Path, bytes]) -> None:
    path, data = blob

    class FailingOnce(CountedStore):
        async def read_range(self, uri: str, start: int, end: int) -> bytes:
            if not self.requests:
                self.requests.append((start, end))
                raise OSError("reset (injected)")
            return await super().read_range(uri, start, end)

    store = FailingOnce()
    with start_blocking_portal() as portal:
        file = RangeFile(store, ObjectInfo(str(path), len(data)), portal)
        file.prefetch([(0, MIB)])
        with pytest.raises(OSError):
            file.read(MIB)
        file.prefetch([(0, len(data))])
        file.seek(0)
        whole = bytes(file.read(len(data)))
        file.close()
    assert whole == data
    assert store.requests == [(0, MIB), (0, len(data))]


def test_a_scanned_shard_with_hits_reads_its_key_chunks_once(s3_endpoint, s3_client, bucket, tmp_path: Path) -> None:
    # The scan reads the first row group's key chunks and meets a hit; the rewrite then reads that row group
    # whole, from the bytes after them. Before, the key chunks came twice.
    inputs, listed = put_listed_shards(s3_client, bucket, 3, 20_000, 97, row_group_size=20_000)
    report = streamfilter.run(
        f"s3://{bucket}/in/*.parquet",
        output=f"s3://{bucket}/out/",
        blocklist=[str(write_list(tmp_path / "list.txt", listed))],
        s3_endpoint_url=s3_endpoint,
        concurrency=1,
        quiet=True,
    )
    assert report.ok
    for shard, (key, data) in zip(report.shards, sorted(inputs.items()), strict=True):
        out = s3_get(s3_client, bucket, "out/" + key.removeprefix("in/"))
        assert read_parquet(out).equals(reference_filter(read_parquet(data), listed))
        assert row_group_rows(out) == [20_000 - 20_000 // 97 - 1]
        assert shard.bytes_read <= len(data) + FOOTER_WINDOW, (shard.bytes_read, len(data))
