"""streamfilter: remove listed rows from dataset shards on object storage, streaming.

>>> report = streamfilter.run(["s3://bucket/laion/*.parquet"], output="s3://bucket/clean/",
...                           blocklist=["s3://bucket/lists/removed.txt"], key="url")
"""

from __future__ import annotations

import io
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

from typing import TYPE_CHECKING, Any

import anyio

# The subpackage first, while it is light: importing it sets the attribute ``streamfilter.diff`` to the
# package, which the function ``diff`` below then replaces for good (imported later, it would shadow it).
from . import diff as _diff_package  # noqa: F401
from ._version import __version__
from .errors import ShardError, StreamfilterError, UsageError
from .keys import KeySpec
from .ledger import Report, ShardReport
from .spec import JobSpec, build_spec

if TYPE_CHECKING:
    from .diff.spec import DiffSpec
    from .sets.keyset import KeySet


def __getattr__(name: str) -> Any:
    """``DiffSpec`` and ``KeySet`` on first use: importing the diff and the sets at start would cost
    every command a quarter of a second (measured) for names most never touch."""
    if name == "DiffSpec":
        from .diff.spec import DiffSpec

        return DiffSpec
    if name == "KeySet":
        from .sets.keyset import KeySet

        return KeySet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DiffSpec",
    "JobSpec",
    "KeySet",
    "KeySpec",
    "Report",
    "ShardError",
    "ShardReport",
    "StreamfilterError",
    "UsageError",
    "__version__",
    "adiff",
    "arun",
    "diff",
    "run",
]


async def arun(
    inputs: JobSpec | list[str] | str, *, quiet: bool = False, verbose: bool = False, **options: Any
) -> Report:
    """Filter shards; returns the run's report (failed shards are in it, not raised).

    Either a :class:`JobSpec`, or the inputs and the CLI's long flags with underscores as
    options: ``blocklist`` and ``http_header`` take lists, ``key`` a column name, a
    comma-separated string or a list. Raises :class:`UsageError` for bad options.
    """
    from .engine import run_job
    from .progress import Progress

    if isinstance(inputs, JobSpec):
        if options:
            raise UsageError(f"run: options {sorted(options)} given beside a JobSpec; put them in the spec")
        spec = inputs
    else:
        spec = build_spec({"inputs": [inputs] if isinstance(inputs, str) else list(inputs), **options})
    progress = Progress.silent() if quiet else Progress(0, live=False)
    return await run_job(spec, progress=progress, verbose=verbose)


def run(inputs: JobSpec | list[str] | str, **options: Any) -> Report:
    """The blocking form of :func:`arun`, for scripts and notebooks without a running loop."""
    return anyio.run(lambda: arun(inputs, **options))


async def adiff(spec: DiffSpec | None = None, *, quiet: bool = False, **options: Any) -> dict:
    """List the derivative's keys that a cleaned reference lacks; returns the diff's report.

    Either a :class:`DiffSpec`, or the ``streamfilter diff`` flags with underscores as options
    (``reference`` and ``derivative`` take lists of URIs, ``out`` the removal list).
    """
    from .diff.job import adiff as run_diff
    from .diff.progress import DiffProgress
    from .diff.spec import build_diff_spec

    if spec is None:
        spec = build_diff_spec(options)
    elif options:
        raise UsageError(f"diff: options {sorted(options)} given beside a DiffSpec; put them in the spec")
    return await run_diff(spec, DiffProgress(io.StringIO(), live=False) if quiet else None)


def diff(spec: DiffSpec | None = None, **options: Any) -> dict:
    """The blocking form of :func:`adiff`."""
    return anyio.run(lambda: adiff(spec, **options))
