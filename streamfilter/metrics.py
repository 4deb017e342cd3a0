"""Run counters in the Prometheus text format, written to a file a collector reads.

The file is replaced atomically after every shard (node_exporter's textfile
collector and similar scrapers never see half a file).
"""

from __future__ import annotations

import os
from pathlib import Path

from .progress import Progress


def render(progress: Progress) -> str:
    lines = []

    def counter(name: str, help_text: str, samples: dict[str, int]) -> None:
        lines.append(f"# HELP streamfilter_{name} {help_text}")
        lines.append(f"# TYPE streamfilter_{name} counter")
        for labels, value in samples.items():
            lines.append(f"streamfilter_{name}{labels} {value}")

    counter("shards_total", "Shards finished, by outcome.", {
        '{status="done"}': progress.done, '{status="failed"}': progress.failed, '{status="resumed"}': progress.resumed,
    })  # fmt: skip
    counter("rows_total", "Rows, as read and as kept or removed in finished shards.", {
        '{kind="read"}': progress.rows, '{kind="kept"}': progress.rows_out, '{kind="removed"}': progress.rows_removed,
    })  # fmt: skip
    counter("bytes_total", "Bytes of shards read and of outputs written.", {
        '{direction="read"}': progress.bytes, '{direction="written"}': progress.bytes_written,
    })  # fmt: skip
    counter("retries_total", "Requests repeated after a transient failure.", {"": progress.retries})
    return "\n".join(lines) + "\n"


def write_metrics_file(path: str, progress: Progress) -> None:
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(render(progress), encoding="utf-8")
    os.replace(tmp, target)
