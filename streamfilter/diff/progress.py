"""Progress of a diff's two phases: a live line on a terminal, one log line per step otherwise."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


class DiffProgress:
    """Counts keys and steps of the phase under way; safe to update from worker threads."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self._lock = threading.Lock()
        self.phase, self.total, self.done, self.keys, self.failed = "", 0, 0, 0, 0
        self._start = self._last_draw = time.monotonic()

    def start(self, phase: str, total: int) -> None:
        with self._lock:
            self.phase, self.total, self.done, self.keys, self.failed = phase, total, 0, 0, 0
            self._start = time.monotonic()
        if not self.live:
            self._write(f"diff {phase}: {total} to do\n")

    def add_keys(self, n: int) -> None:
        with self._lock:
            self.keys += n
        if self.live and time.monotonic() - self._last_draw > 1.0:
            self._draw()

    def step(self, what: str, detail: str, failed: bool = False) -> None:
        with self._lock:
            self.done += 1
            self.failed += failed
        if self.live:
            self._draw()
            if failed:
                self._write(f"\r\033[Kfailed {what}: {detail}\n")
        else:
            state = "failed" if failed else "done"
            self._write(f"{state} {what}: {detail} ({self.done}/{self.total} {self.phase})\n")

    def finish(self) -> None:
        if self.live:
            self._draw()
            self._write("\n")

    def _draw(self) -> None:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        self._last_draw = time.monotonic()
        self._write(
            f"\r\033[Kdiff {self.phase}: {self.done}/{self.total} ({self.failed} failed) | "
            f"{self.keys / 1e6:.1f} M keys | {self.keys / elapsed / 1e6:.2f} M keys/s"
        )

    def _write(self, text: str) -> None:
        with self._lock:
            self.stream.write(text)
            self.stream.flush()
