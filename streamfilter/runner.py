"""``streamfilter run`` as a command: a status line, the metrics file, and a graceful stop on a signal.

The engine runs a job given a stop event; this module sets that event on SIGTERM
(what Kubernetes sends) or SIGINT, so the shards in flight get their grace period.
"""

from __future__ import annotations

import logging
import signal

import anyio

from .ledger import Report
from .progress import Progress
from .spec import JobSpec

log = logging.getLogger("streamfilter")


async def run_until_signalled(spec: JobSpec, verbose: bool = False) -> Report:
    """Run the job; SIGTERM or SIGINT stops new shards and gives those in flight a grace period."""
    from .engine import run_job

    stop = anyio.Event()
    on_shard = None
    if spec.metrics_file:
        from .metrics import write_metrics_file

        unwritten: list[str] = []

        def on_shard(progress: Progress) -> None:
            try:
                write_metrics_file(spec.metrics_file, progress)  # type: ignore[arg-type]
            except OSError as exc:  # counters are for watching the run: their loss must not stop it
                if not unwritten:
                    log.warning("streamfilter: warning: the metrics file %s was not written: %s", spec.metrics_file,
                                exc.strerror or exc)  # fmt: skip
                unwritten.append(str(exc))

    progress = Progress(0, log_format=spec.log_format, on_shard=on_shard)

    async def watch_signals() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                stop.set()

    outcome: Report | Exception
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_signals)
        try:
            outcome = await run_job(spec, progress=progress, verbose=verbose, stop=stop)
            if on_shard is not None:
                on_shard(progress)  # the final counts, also when no shard ran
        except Exception as exc:
            outcome = exc  # raised outside the task group, which would wrap it in an ExceptionGroup
        tg.cancel_scope.cancel()
    if isinstance(outcome, Exception):
        raise outcome
    return outcome
