"""Shard formats: each a reader and a writer of batches that knows nothing of keys or stores."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import UsageError, redact_uri

FORMATS = ("auto", "parquet", "jsonl", "webdataset", "img2dataset")
#: Checked in order against the end of the object's name; compressed JSON lines keep their inner extension.
_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".tar": "webdataset",
    **{f"{ext}{comp}": "jsonl" for ext in (".jsonl", ".ndjson") for comp in ("", ".gz", ".zst")},
}


def detect_format(uri: str, requested: str) -> str:
    """The format for one shard: the requested one, or the one its extension names."""
    if requested not in FORMATS:
        raise UsageError(f"--format {requested}: this version handles {', '.join(FORMATS)}")
    name = urlsplit(uri).path.rsplit("/", 1)[-1].lower() if "://" in uri else uri.rsplit("/", 1)[-1].lower()
    if requested == "img2dataset" and not name.endswith(".tar"):
        raise UsageError(
            f"--format img2dataset: name each shard set by its .tar (its .parquet and _stats.json are found beside "
            f"it), not {redact_uri(uri)}"
        )
    if requested != "auto":
        return requested
    for ext, fmt in _EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    raise UsageError(
        f"cannot tell the format of {redact_uri(uri)} from its extension; pass --format parquet, jsonl or webdataset"
    )
