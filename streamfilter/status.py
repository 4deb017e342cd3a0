"""`streamfilter report OUTPUT`: one view of a run spread over many workers.

The receipts say which shards were committed, one listing of the output prefix says
whether each committed output is still there with the size its receipt records, the
reports each worker leaves under the prefix say which shards were planned and which
failed and why, and the inputs, when given, say which shards are expected. "Complete"
means every planned shard has its output present: a receipt alone proves nothing once
its output is gone.
"""

from __future__ import annotations

import json

from .concurrency import gather_limited
from .errors import UsageError, redact_uri
from .ledger import JSON_READS_AT_ONCE, RECEIPTS_DIR, WORKER_REPORTS_DIR, Receipt
from .plan import plan_shards
from .store import ObjectInfo, StoreOptions, Stores


async def _read_json(listed: dict[str, ObjectInfo], prefix: str, stores: Stores) -> dict[str, bytes]:
    """The listed .json objects under ``prefix``, by name relative to it: one ranged read each, sizes known."""
    found = [info for name, info in listed.items() if name.startswith(prefix) and name.endswith(".json")]
    store = stores.for_uri(prefix)

    async def read(info: ObjectInfo) -> bytes:
        return await store.read_range(info.uri, 0, info.size) if info.size else b""

    values = await gather_limited(found, read, JSON_READS_AT_ONCE)
    return {info.uri[len(prefix) :]: data for info, data in zip(found, values, strict=True)}


def _output_problem(receipt: Receipt | None, output: ObjectInfo | None) -> str | None:
    """Why a shard with a receipt does not count as done; None when its output is as recorded."""
    if receipt is None:
        return "its receipt cannot be read"
    if output is None:
        return "its output is missing (the receipt is still there)"
    if output.size != receipt.output_size:
        return f"its output holds {output.size:,} bytes, its receipt records {receipt.output_size:,}"
    return None


async def job_status(output: str, inputs: list[str], stores: Stores) -> dict:
    """Done, failed and not-yet-done shards of the run that writes under ``output``."""
    root = output.rstrip("/") + "/"
    # One listing of the prefix: the outputs, the receipts and the worker reports alike.
    listed = {info.uri: info for info in await stores.for_uri(root).list(root)}
    receipts = {
        name.removesuffix(".json"): Receipt.from_json(data)
        for name, data in (await _read_json(listed, root + RECEIPTS_DIR + "/", stores)).items()
    }
    problems: dict[str, str] = {}
    done: dict[str, Receipt] = {}
    for name, receipt in receipts.items():
        problem = _output_problem(receipt, listed.get(root + name))
        if problem is None and receipt is not None:
            done[name] = receipt
        else:
            problems[name] = problem or "unknown"

    workers = await _read_json(listed, root + WORKER_REPORTS_DIR + "/", stores)
    failed: dict[str, str] = {}
    planned: list[str] = []  # what the workers were given, when no input says what to expect
    for data in workers.values():
        for shard in json.loads(data).get("shards", []):
            name = (shard.get("output") or "").removeprefix(redact_uri(root))
            if not name:
                continue
            planned.append(name)
            if shard.get("status") == "failed" and name not in done:
                failed[name] = shard.get("error") or "failed"
    if inputs:
        plan = await plan_shards(inputs, root, stores, output_inside_input=True)
        expected = [s.name for s in plan.shards]
    else:
        expected = sorted({*planned, *receipts})
    if not receipts and not failed and not expected:
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
        # Shards with a receipt whose output is not what it records: not done, and why.
        "outputs_not_as_recorded": [{"shard": n, "problem": p} for n, p in sorted(problems.items()) if n not in failed],
        "set_digests": sorted({r.set_digest for r in done.values()}),
    }


async def report_status(output: str, inputs: list[str], options: StoreOptions, report: str | None) -> dict:
    """``streamfilter report``: the status of the run under ``output``, also written to ``report`` if given."""
    stores = Stores(options)
    try:
        result = await job_status(output, inputs, stores)
        if report:
            await stores.for_uri(report).put(report, (json.dumps(result, indent=2) + "\n").encode())
        return result
    finally:
        await stores.aclose()
