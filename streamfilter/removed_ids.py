"""``--removed-ids-out``: the removed rows' global positions, so an index built before the cleaning can drop them.

clip-retrieval and autofaiss number the vectors of a folder by its files in name
order, then by row: vector ``k`` of the index is row ``k - offset`` of the file
whose rows start at ``offset``. The embedding sets of a run, in name order, give
the same numbering; a faiss index built from the uncleaned vectors then drops the
removed ones with ``index.remove_ids(np.load(FILE))``.

The positions travel on each set's report as an attribute that is not one of its
fields, so they never enter the JSON report, logs or receipts.
"""

from __future__ import annotations

import io

import numpy as np

from .errors import StreamfilterError
from .ledger import ShardReport
from .store import Stores

_ATTRIBUTE = "removed_positions"


def attach(report: ShardReport, positions: np.ndarray) -> None:
    """Keep the removed rows' positions within the set (int64) with its report."""
    setattr(report, _ATTRIBUTE, positions.astype(np.int64, copy=False))


def global_ids(reports: list[ShardReport], flag: str = "--removed-ids-out") -> np.ndarray:
    """The removed rows of every set, numbered across the sets in name order; one-line error when unknown."""
    offset, parts = 0, [np.zeros(0, np.int64)]
    for report in sorted(reports, key=lambda r: r.input):
        if report.status != "done":
            raise StreamfilterError(
                f"{flag} not written: {report.input} failed, so the positions after its rows are unknown; "
                "fix it and rerun"
            )
        positions = getattr(report, _ATTRIBUTE, None)
        if positions is None and report.rows_removed:
            raise StreamfilterError(
                f"{flag} not written: {report.input} was cleaned by an earlier run, whose removed positions "
                "this run did not see; rerun with --overwrite"
            )
        if positions is not None:
            parts.append(positions + offset)
        offset += report.rows_in
    return np.concatenate(parts)


async def write_removed_ids(reports: list[ShardReport], uri: str, stores: Stores) -> int:
    """Write the global positions as an int64 .npy at ``uri``; returns how many."""
    ids = global_ids(reports)
    buffer = io.BytesIO()
    np.save(buffer, ids, allow_pickle=False)
    try:
        await stores.for_uri(uri).put(uri, buffer.getvalue())
    except StreamfilterError as exc:
        raise StreamfilterError(f"writing --removed-ids-out failed: {exc}") from exc
    return len(ids)
