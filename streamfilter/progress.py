"""Progress on long runs: a live line on a terminal, plain log lines otherwise."""

from __future__ import annotations

import io
import sys
import threading
import time
from typing import TextIO

from .ledger import ShardReport


class Progress:
    """Counts rows and bytes as they flow; safe to update from worker threads."""

    def __init__(self, total_shards: int, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.total = total_shards
        self.done = self.failed = 0
        self.rows = self.bytes = 0
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._lock = threading.Lock()

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

    def shard_finished(self, report: ShardReport) -> None:
        with self._lock:
            if report.status == "done":
                self.done += 1
            else:
                self.failed += 1
        if self.live:
            self._draw()
            if report.status == "failed":
                self._write(f"\r\033[Kfailed {report.input}: {report.error}\n")
        elif report.status == "done":
            self._write(
                f"done {report.input}: {report.rows_in} rows in, {report.rows_removed} removed, "
                f"{report.seconds:.2f} s ({self.done + self.failed}/{self.total})\n"
            )
        else:
            self._write(f"failed {report.input}: {report.error} ({self.done + self.failed}/{self.total})\n")

    def close(self) -> None:
        if self.live:
            self._draw()
            self._write("\n")

    def _draw(self) -> None:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        self._last_draw = time.monotonic()
        self._write(
            f"\r\033[Kshards {self.done + self.failed}/{self.total} ({self.failed} failed) | "
            f"{self.rows / elapsed / 1e6:.2f} M rows/s | {self.bytes / elapsed / 1e6:.1f} MB/s"
        )

    def _write(self, text: str) -> None:
        with self._lock:
            self.stream.write(text)
            self.stream.flush()
