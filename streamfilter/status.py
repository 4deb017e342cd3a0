"""`streamfilter report OUTPUT`: one view of a run spread over many workers.

The receipts say which shards are done; the reports each worker leaves under the
output prefix say which failed and why; the inputs, when given, say which shards
were expected, so the shards not yet done can be named.
"""

from __future__ import annotations

import json

from .errors import UsageError, redact_uri
from .ledger import WORKER_REPORTS_DIR, json_objects, read_receipts
from .plan import plan_shards
from .store import Stores


async def job_status(output: str, inputs: list[str], stores: Stores) -> dict:
    """Done, failed and not-yet-done shards of the run that writes under ``output``."""
    root = output.rstrip("/") + "/"
    receipts = await read_receipts(root, stores)
    done = {name: r for name, r in receipts.items() if r is not None}
    failed: dict[str, str] = {}
    workers = await json_objects(root + WORKER_REPORTS_DIR + "/", stores)
    for data in workers.values():
        for shard in json.loads(data).get("shards", []):
            name = (shard.get("output") or "").removeprefix(redact_uri(root))
            if shard.get("status") == "failed" and name and name not in done:
                failed[name] = shard.get("error") or "failed"
    expected: list[str] = []
    if inputs:
        plan = await plan_shards(inputs, root, stores, output_inside_input=True)
        expected = [s.name for s in plan.shards]
    if not done and not failed and not expected:
        raise UsageError(f"nothing under {redact_uri(root)}: no receipts and no worker reports; check the prefix")
    not_done = [n for n in expected if n not in done and n not in failed]
    totals = {
        "shards": len(set(expected) | set(done) | set(failed)),
        "done": len(done),
        "failed": len(failed),
        "not_done": len(not_done),
        "workers_reporting": len(workers),
        "rows_in": sum(r.rows_in for r in done.values()),
        "rows_out": sum(r.rows_out for r in done.values()),
        "rows_removed": sum(r.rows_removed for r in done.values()),
        "bytes_written": sum(r.output_size for r in done.values()),
    }
    return {
        "output": redact_uri(root),
        "complete": not failed and not not_done and bool(done),
        "totals": totals,
        "done": sorted(done),
        "failed": [{"shard": n, "error": e} for n, e in sorted(failed.items())],
        "not_done": not_done,
        "set_digests": sorted({r.set_digest for r in done.values()}),
    }
