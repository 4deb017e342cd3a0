"""Progress of a diff's two phases: a live line on a terminal, one log line per step otherwise."""

from __future__ import annotations

import time
from typing import TextIO

from ..progress import StatusLine


class DiffProgress(StatusLine):
    """Counts keys and steps of the phase under way; safe to update from worker threads."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None) -> None:
        super().__init__(stream, live)
        self.phase, self.total, self.done, self.keys, self.failed = "", 0, 0, 0, 0

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

    def line(self) -> str:
        return (
            f"diff {self.phase}: {self.done}/{self.total} ({self.failed} failed) | "
            f"{self.keys / 1e6:.1f} M keys | {self.keys / self._elapsed() / 1e6:.2f} M keys/s"
        )
