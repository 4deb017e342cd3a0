"""What a run did, shard by shard: the report that proves what was removed."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

Status = Literal["done", "failed"]


@dataclass
class ShardReport:
    input: str
    output: str | None
    status: Status = "failed"
    rows_in: int = 0
    rows_out: int = 0
    rows_removed: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Report:
    shards: list[ShardReport]
    key_spec: dict
    set_digest: str
    set_size: int
    mode: str
    dry_run: bool
    seconds: float
    version: str
    totals: dict = field(init=False)

    def __post_init__(self) -> None:
        done = [s for s in self.shards if s.status == "done"]
        self.totals = {
            "shards": len(self.shards),
            "done": len(done),
            "failed": len(self.shards) - len(done),
            "rows_in": sum(s.rows_in for s in done),
            "rows_out": sum(s.rows_out for s in done),
            "rows_removed": sum(s.rows_removed for s in done),
            "bytes_read": sum(s.bytes_read for s in self.shards),
            "bytes_written": sum(s.bytes_written for s in done),
            "seconds": round(self.seconds, 3),
        }

    @property
    def ok(self) -> bool:
        return self.totals["failed"] == 0

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def summary(self) -> str:
        t = self.totals
        verb = "would remove" if self.dry_run else "removed"
        line = (
            f"{t['done']}/{t['shards']} shards done, {t['failed']} failed; {verb} {t['rows_removed']:,} "
            f"of {t['rows_in']:,} rows; {t['bytes_read'] / 1e6:,.1f} MB read, "
            f"{t['bytes_written'] / 1e6:,.1f} MB written in {t['seconds']:.1f} s"
        )
        return line
