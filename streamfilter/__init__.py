"""streamfilter: remove listed rows from dataset shards on object storage, streaming.

>>> report = streamfilter.run(["s3://bucket/laion/*.parquet"], output="s3://bucket/clean/",
...                           blocklist=["s3://bucket/lists/removed.txt"], key="url")
"""

from __future__ import annotations

import os
import sys

# Set before numpy and pyarrow load.
# - numpy's OpenBLAS threads spin after start-up: 2% of a dense run's CPU (perf), and nothing
#   here does linear algebra.
# - pyarrow's default allocator (mimalloc) handed freed pages back and faulted fresh zeroed huge
#   pages in again: 8% of a dense run's CPU went to the kernel's clear_page (perf), and peak RSS
#   was twice the pool's own peak. jemalloc, in pyarrow's Linux wheels, reuses them: peak RSS
#   493 -> 391 MiB and CPU 5.2 -> 4.7 s on the dense benchmark (medians of 6).
# - Where mimalloc stays, it still holds freed pages for a second instead of a few milliseconds:
#   that retention had been a third of peak RSS at concurrency 4 (625 -> 447 MiB, measured).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
if sys.platform == "linux":
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "1000")

from typing import Any

import anyio

from ._version import __version__
from .errors import ShardError, StreamfilterError, UsageError
from .keys import KeySpec
from .ledger import Report, ShardReport
from .spec import JobSpec, build_spec

__all__ = [
    "JobSpec",
    "KeySpec",
    "Report",
    "ShardError",
    "ShardReport",
    "StreamfilterError",
    "UsageError",
    "__version__",
    "arun",
    "run",
]


async def arun(inputs: list[str] | str, *, quiet: bool = False, verbose: bool = False, **options: Any) -> Report:
    """Filter shards; the options are the CLI's long flags with underscores.

    ``blocklist`` and ``http_header`` take lists, ``key`` a column name, a
    comma-separated string or a list. Raises :class:`UsageError` for bad options;
    failed shards are in the returned report.
    """
    from .engine import run_job
    from .progress import Progress

    spec = build_spec({"inputs": [inputs] if isinstance(inputs, str) else list(inputs), **options})
    progress = Progress.silent() if quiet else Progress(0, live=False)
    return await run_job(spec, progress=progress, verbose=verbose)


def run(inputs: list[str] | str, **options: Any) -> Report:
    """The blocking form of :func:`arun`, for scripts and notebooks without a running loop."""
    return anyio.run(lambda: arun(inputs, **options))
