"""Progress on long runs: a live line on a terminal, plain or JSON log lines otherwise.

It also keeps the run's counters (rows, bytes, shards, retries), which the
metrics file renders for Prometheus.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TextIO

from .ledger import ShardReport


class StatusLine:
    """A status line redrawn in place on a terminal (``live``), or plain log lines otherwise.

    Writes from worker threads are serialized; subclasses say what the line shows.
    """

    def __init__(self, stream: TextIO | None, live: bool | None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._lock = threading.Lock()

    def line(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        if self.live:
            self._draw()
            self._write("\n")

    def _draw(self) -> None:
        self._last_draw = time.monotonic()
        self._write("\r\033[K" + self.line())

    def _elapsed(self) -> float:
        return max(time.monotonic() - self._start, 1e-9)

    def _write(self, text: str) -> None:
        with self._lock:
            self.stream.write(text)
            self.stream.flush()


class Progress(StatusLine):
    """Counts rows and bytes as they flow; safe to update from worker threads."""

    def __init__(
        self,
        total_shards: int,
        stream: TextIO | None = None,
        live: bool | None = None,
        log_format: str = "text",
        on_shard: Callable[[Progress], None] | None = None,
    ) -> None:
        self.json = log_format == "json"
        super().__init__(stream, False if live is None and self.json else live)  # JSON logs are never redrawn
        self.total = total_shards
        self.done = self.failed = self.resumed = 0
        self.rows = self.bytes = 0  # as decoded and read, while shards run
        self.rows_out = self.rows_removed = self.bytes_written = 0
        self.retries = 0
        self._on_shard = on_shard

    @classmethod
    def silent(cls) -> Progress:
        """A progress that prints nothing (API calls with quiet=True, verify)."""
        return cls(0, stream=io.StringIO(), live=False)

    def add(self, rows: int, nbytes: int) -> None:
        with self._lock:
            self.rows += rows
            self.bytes += nbytes
        if self.live and time.monotonic() - self._last_draw > 0.5:
            self._draw()

    def count_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def shard_finished(self, report: ShardReport) -> None:
        with self._lock:
            if report.status == "done":
                self.done += 1
                self.resumed += report.resumed
                self.rows_out += report.rows_out
                self.rows_removed += report.rows_removed
                self.bytes_written += report.bytes_written
            else:
                self.failed += 1
        position = f"{self.done + self.failed}/{self.total}"
        if self.json:
            self.event("shard", **asdict(report), position=position)
        elif self.live:
            self._draw()
            if report.status == "failed":
                self._write(f"\r\033[Kfailed {report.input}: {report.error}\n")
        elif report.resumed:  # nothing was read or written: its counts are the earlier run's
            self._write(f"skipped {report.input} (done by an earlier run) ({position})\n")
        elif report.status == "done":
            self._write(
                f"done {report.input}: {report.rows_in} rows in, {report.rows_removed} removed, "
                f"{report.seconds:.2f} s ({position})\n"
            )
        else:
            self._write(f"failed {report.input}: {report.error} ({position})\n")
        if self._on_shard is not None:
            self._on_shard(self)

    def event(self, kind: str, **fields: object) -> None:
        """One JSON object a line, for log collectors (only with log_format="json")."""
        if self.json:
            self._write(json.dumps({"event": kind, "time": round(time.time(), 3), **fields}) + "\n")

    def line(self) -> str:
        elapsed = self._elapsed()
        skipped = f", {self.resumed} skipped" if self.resumed else ""
        return (
            f"shards {self.done + self.failed}/{self.total} ({self.failed} failed{skipped}) | "
            f"{self.rows / elapsed / 1e6:.2f} M rows/s | {self.bytes / elapsed / 1e6:.1f} MB/s"
        )
