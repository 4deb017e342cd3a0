"""Where a diff keeps its state, under one prefix (local or object storage), and what each object holds.

::

    SPILL/job.json                               the partition count and both key specs (a record)
    SPILL/<side>/chunks/<chunk>.json             one input shard spilled: its identity, counts, files
    SPILL/<side>/p<partition>/<chunk>-<n>.arrow  its keys of one partition (Arrow IPC)
    SPILL/results/p<partition>.arrow             the removals found in one partition
    SPILL/results/p<partition>.json              that partition resolved: its counts

A marker (``.json``) is written only after every object it names, so a marker
that exists describes complete work; an interrupted shard or partition leaves at
most objects that no marker names, and is redone under the same names. Markers
carry a digest of what the work depended on, so a marker from another job (other
partition count, key spec or inputs) is ignored rather than trusted.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

from .. import ledger
from ..store import ObjectInfo

#: Bumped when the layout or the spill tables change: old markers then no longer count.
LAYOUT_VERSION = 2
SIDES = ("reference", "derivative")


def _join(root: str, *parts: str) -> str:
    return root.rstrip("/") + "/" + "/".join(parts)


def job_uri(root: str) -> str:
    return _join(root, "job.json")


def chunk_id(uri: str) -> str:
    """A stable name for one input shard's spill, whatever the listing order."""
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:20]


def chunk_prefix(root: str, side: str) -> str:
    return _join(root, side, "chunks") + "/"


def chunk_marker_uri(root: str, side: str, chunk: str) -> str:
    return _join(root, side, "chunks", f"{chunk}.json")


def spill_name(side: str, partition: int, chunk: str, seq: int) -> str:
    """Relative to the spill root, as markers record it."""
    return f"{side}/p{partition:05d}/{chunk}-{seq:04d}.arrow"


def chunk_of(name: str) -> str:
    """The chunk (input shard) a spill object belongs to, from its name."""
    return name.rsplit("/", 1)[-1].rsplit("-", 1)[0]


def spill_uri(root: str, name: str) -> str:
    return _join(root, name)


def results_prefix(root: str) -> str:
    return _join(root, "results") + "/"


def result_uri(root: str, partition: int) -> str:
    return _join(root, "results", f"p{partition:05d}.arrow")


def result_marker_uri(root: str, partition: int) -> str:
    return _join(root, "results", f"p{partition:05d}.json")


def input_identity(info: ObjectInfo) -> dict:
    """What names one version of an input (the version a receipt records, and where): a marker for
    another version does not count."""
    return {"uri": info.uri, **ledger.input_identity(info)}


def digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def to_ipc(table: pa.Table, compress: bool) -> bytes:
    """One spill object. Raw keys compress well (lz4 is nearly free); random fingerprints do not."""
    options = pa.ipc.IpcWriteOptions(compression="lz4" if compress else None)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
