"""`streamfilter verify`: re-read committed outputs and prove the run did what its receipts say.

Each receipt names an output. The outputs are read again (key columns only) and
matched against the list: in deny mode no row may match, in allow mode every row
must, and the row count must be the one the receipt recorded. The .npy files of an
embedding set are checked by their headers: present, whole, and as many rows as
the set's metadata.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import StreamfilterError, UsageError, redact_uri
from .ledger import Receipt, Report, read_receipts
from .progress import Progress
from .spec import JobSpec
from .store import Stores


@dataclass
class Verdict:
    output: str
    ok: bool
    rows: int
    problem: str | None = None


async def load_receipts(output_prefix: str, stores: Stores) -> list[Receipt]:
    receipts = await read_receipts(output_prefix, stores)
    unreadable = sorted(name for name, receipt in receipts.items() if receipt is None)
    if unreadable:
        raise StreamfilterError(f"the receipt of {unreadable[0]} is unreadable; rerun the job to rewrite it")
    if not receipts:
        raise UsageError(
            f"no receipts under {redact_uri(output_prefix)}: nothing to verify (was the job run with this output?)"
        )
    return [r for r in receipts.values() if r is not None]


async def verify_outputs(spec: JobSpec, *, progress: Progress | None = None) -> list[Verdict]:
    """Check every output that has a receipt under ``spec.output`` against the list in ``spec``."""
    from .engine import run_job  # the dry-run pipeline does the reading and matching

    assert spec.output is not None
    stores = Stores(spec.stores)
    try:
        receipts = await load_receipts(spec.output, stores)
    finally:
        await stores.aclose()
    fmt = spec.format
    if fmt == "auto" and any(r.format == "img2dataset" for r in receipts):
        fmt = "img2dataset"  # a set's rows are its Parquet's, not its tar's samples
    dry = dataclasses.replace(
        spec, inputs=tuple(r.output for r in receipts), output=None, dry_run=True, report=None, format=fmt
    )
    report: Report = await run_job(dry, progress=progress)
    by_output = {s.input: s for s in report.shards}
    verdicts = []
    for receipt in receipts:
        shard = by_output[receipt.output]
        problem = None
        if shard.status != "done":
            problem = shard.error
        elif shard.rows_removed:
            what = "listed keys remain" if spec.mode == "deny" else "rows with unlisted keys remain"
            problem = f"{shard.rows_removed} {what}"
        elif shard.rows_in != receipt.rows_out:
            problem = f"{shard.rows_in} rows, the receipt says {receipt.rows_out}"
        verdicts.append(Verdict(receipt.output, problem is None, shard.rows_in, problem))
    await check_vectors(spec, verdicts)
    return verdicts


async def check_vectors(spec: JobSpec, verdicts: list[Verdict]) -> None:
    """The .npy files beside each embedding set's metadata that passed: a problem fails its verdict."""
    from .formats.embedding_set import is_metadata
    from .pipelines.embeddings import vectors_problem

    sets = [v for v in verdicts if v.ok and is_metadata(v.output)]
    if not sets:
        return
    stores = Stores(spec.stores)
    try:
        for verdict in sets:
            verdict.problem = await vectors_problem(stores, verdict.output, verdict.rows)
            verdict.ok = verdict.problem is None
    finally:
        await stores.aclose()
