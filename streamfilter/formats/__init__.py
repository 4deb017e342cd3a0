"""Shard formats: each a reader and a writer of batches that knows nothing of keys or stores."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ..errors import UsageError, redact_uri
from ..store.uris import object_name
from .embedding_set import is_member, is_metadata

FORMATS = ("auto", "parquet", "jsonl", "webdataset", "img2dataset", "embeddings")
#: Checked in order against the end of the object's name; compressed JSON lines keep their inner extension.
_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".tar": "webdataset",
    **{f"{ext}{comp}": "jsonl" for ext in (".jsonl", ".ndjson") for comp in ("", ".gz", ".zst")},
}
#: What lies beside an img2dataset set's ``N.tar`` (the same rule as ``pipelines.sibling``).
IMG2DATASET_MEMBERS = (".parquet", "_stats.json")


def _name(uri: str) -> str:
    return object_name(uri)


def format_by_extension(uri: str) -> str | None:
    """The format an object's name claims, or None when no format claims it."""
    name = _name(uri)
    return next((fmt for ext, fmt in _EXTENSIONS.items() if name.endswith(ext)), None)


def detect_format(uri: str, requested: str) -> str:
    """The format for one shard: the requested one, or the one its extension names."""
    if requested not in FORMATS:
        raise UsageError(f"--format {requested}: this version handles {', '.join(FORMATS)}")
    if requested == "img2dataset" and not _name(uri).endswith(".tar"):
        raise UsageError(
            f"--format img2dataset: name each shard set by its .tar (its .parquet and _stats.json are found beside "
            f"it), not {redact_uri(uri)}"
        )
    if requested == "embeddings" and not is_metadata(uri):
        raise UsageError(
            f"--format embeddings: name each set by its metadata Parquet (ROOT/metadata/metadata_N.parquet, its .npy "
            f"files are found beside it) or the set's root as a folder, not {redact_uri(uri)}"
        )
    if requested != "auto":
        return requested
    fmt = format_by_extension(uri)
    if fmt is None:
        raise UsageError(
            f"cannot tell the format of {redact_uri(uri)} from its extension; "
            "pass --format parquet, jsonl or webdataset"
        )
    return fmt


def set_member(tar: str, suffix: str) -> str:
    """``a/00001.tar`` -> ``a/00001.parquet`` / ``a/00001_stats.json``: the objects of its img2dataset set."""
    head, slash, name = tar.rpartition("/")
    return f"{head}{slash}{name.split('.', 1)[0]}{suffix}"


@dataclass
class FolderShards:
    """Which objects of a folder are shards, and why the others are not."""

    shards: list[str] = field(default_factory=list)
    #: Reason -> the objects skipped for it.
    skipped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    #: ``.tar`` objects with both img2dataset members beside them.
    sets: list[str] = field(default_factory=list)


def folder_shards(uris: list[str], requested: str | None) -> FolderShards:
    """The shards among a folder's objects, told apart by extension.

    ``requested`` is ``--format``: ``auto`` takes every object a format claims (each runs with
    its own); a named format takes the objects it claims (``img2dataset``: the ``.tar`` of each
    set, whose ``.parquet`` and ``_stats.json`` belong to it); None takes what ``auto`` takes
    but counts a complete img2dataset set as one shard, its ``.tar`` (for naming a run's shards
    without knowing its format).
    """
    present = set(uris)
    out = FolderShards()
    out.sets = [
        u for u in uris if _name(u).endswith(".tar") and all(set_member(u, s) in present for s in IMG2DATASET_MEMBERS)
    ]
    members: set[str] = set()
    if requested in ("img2dataset", None):
        members = {set_member(t, s) for t in out.sets for s in IMG2DATASET_MEMBERS}
    for uri in uris:
        fmt = format_by_extension(uri)
        claimed = fmt is not None and requested in ("auto", None, fmt)
        if requested == "embeddings":
            claimed = is_metadata(uri)
        if uri in members or (requested == "embeddings" and is_member(uri)):
            out.skipped["img2dataset set members" if uri in members else "embedding set vectors"].append(uri)
        elif claimed or (requested == "img2dataset" and fmt == "webdataset"):
            out.shards.append(uri)
        elif fmt is None:
            out.skipped["no format claims"].append(uri)
        else:
            out.skipped[f"not claimed by --format {requested}"].append(uri)
    return out
