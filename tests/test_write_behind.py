"""A shard alone on the machine encodes each row group beside the decoding of the next (issue 18: every
core to the end of the run); with every core busy it writes in its own thread. Outputs against pyarrow."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    assert_same_table,
    reference_filter,
    reference_row_group_counts,
    row_group_rows,
    sample,
    shard_table,
    write_shard,
)

from streamfilter.concurrency import Cores
from streamfilter.errors import ShardError
from streamfilter.formats import parquet as pqfmt
from streamfilter.keys import KeySpec
from streamfilter.pipelines import Filter, ShardFiles, ShardTools
from streamfilter.pipelines.parquet import filter_shard
from streamfilter.progress import Progress
from streamfilter.sets import ExactKeySet

#: The longest a gated write waits for the reader; the test fails if it had to wait this long.
GATE_SECONDS = 20.0


class GatedSink(io.BytesIO):
    """Holds its first write until the shard's source is read again (or GATE_SECONDS pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: set[str] = set()
        self.writing = False
        self.read_while_writing = threading.Event()

    def write(self, data) -> int:  # type: ignore[override]
        if not self.writers:
            self.writing = True
            self.read_while_writing.wait(GATE_SECONDS)
            self.writing = False
        self.writers.add(threading.current_thread().name)
        return super().write(data)


class WatchedSource(io.FileIO):
    """A shard's file that tells the sink when it is read during the sink's first write."""

    def __init__(self, path: Path, sink: GatedSink) -> None:
        super().__init__(path, "rb")
        self.sink = sink

    def read(self, size: int = -1) -> bytes:
        if self.sink.writing:
            self.sink.read_while_writing.set()
        return super().read(size)

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self.sink.writing:
            self.sink.read_while_writing.set()
        return super().readinto(buffer)


class FailingSink(io.BytesIO):
    """Fails its n-th write; counts every write, also those after the failure."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at, self.writes = fail_at, 0

    def write(self, data) -> int:  # type: ignore[override]
        self.writes += 1
        if self.writes == self.fail_at:
            raise OSError("disk full (injected)")
        return super().write(data)


def shard_and_list(tmp_path: Path) -> tuple[Path, list[str]]:
    table = shard_table(6000, seed=13)
    src = write_shard(tmp_path / "s.parquet", table, row_group_size=1000)
    return src, sample(table["url"], 17, offset=3)


def tools_for(listed: list[str], cores: Cores) -> ShardTools:
    rule = Filter(KeySpec(("url",)), ExactKeySet(pa.array(listed)), "deny")
    return ShardTools(rule, Progress.silent(), cores=cores, cancelled=threading.Event())


@pytest.fixture(autouse=True)
def one_row_group_at_a_time(monkeypatch) -> None:
    # Row groups decoded one by one (not in runs), so there is a next decoding to overlap with.
    monkeypatch.setattr(pqfmt, "DECODE_TOGETHER_BYTES", 0)


def test_a_lone_shard_decodes_the_next_row_group_while_the_last_is_written(tmp_path: Path) -> None:
    src, listed = shard_and_list(tmp_path)
    sink = GatedSink()
    tools = tools_for(listed, Cores(2))
    with WatchedSource(src, sink) as source, tools.cores.busy():  # one shard running on two cores
        counts = filter_shard(ShardFiles(source, sink, "s.parquet", lambda _: source), tools)
    assert sink.read_while_writing.is_set(), "the next row group was not read while the last one was written"
    assert "streamfilter-encode_0" in sink.writers  # the row groups; the footer comes from this thread
    expected = reference_filter(pq.read_table(src), listed)
    out = sink.getvalue()
    assert_same_table(pq.read_table(pa.BufferReader(out)), expected)
    assert row_group_rows(out) == reference_row_group_counts(src, listed)
    assert (counts.rows_in, counts.rows_out) == (6000, expected.num_rows)


def test_with_every_core_busy_the_shard_writes_in_its_own_thread(tmp_path: Path) -> None:
    src, listed = shard_and_list(tmp_path)
    sink = io.BytesIO()
    writers: set[str] = set()
    real_write = sink.write
    sink.write = lambda data: writers.add(threading.current_thread().name) or real_write(data)  # type: ignore[method-assign]
    tools = tools_for(listed, Cores(1))
    with src.open("rb") as source, tools.cores.busy():  # one shard on one core: none spare
        filter_shard(ShardFiles(source, sink, "s.parquet", lambda _: source), tools)
    assert writers == {threading.current_thread().name}
    assert_same_table(pq.read_table(pa.BufferReader(sink.getvalue())), reference_filter(pq.read_table(src), listed))


@pytest.mark.parametrize("fail_at", [1, 3, 8])
def test_a_failed_write_fails_the_shard_and_nothing_is_written_after_it(tmp_path: Path, fail_at: int) -> None:
    src, listed = shard_and_list(tmp_path)
    sink = FailingSink(fail_at)
    tools = tools_for(listed, Cores(2))
    with src.open("rb") as source, tools.cores.busy(), pytest.raises((OSError, ShardError, pa.ArrowException)):
        filter_shard(ShardFiles(source, sink, "s.parquet", lambda _: source), tools)
    writes = sink.writes
    assert writes >= fail_at
    # filter_shard returned only after its encoding thread ended: no write can come later.
    assert not [t for t in threading.enumerate() if t.name.startswith("streamfilter-encode")]
    assert sink.writes == writes
