"""What a URI says by its text alone: its scheme, whether it is local, its path and name, its siblings.

The one place object URIs are taken apart, so every module reads them the same way
(a signed URL's query is never part of a name; ``file://`` and a bare path are the same
local file). Nothing here touches a store.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

#: Schemes whose URIs may carry a query (a signed URL's token) that is no part of the object's name.
_WITH_QUERY = ("http", "https", "s3", "hf")


def scheme_of(uri: str) -> str:
    """``s3``, ``http``, ``https``, ``hf``, or ``file`` for a local path (with or without ``file://``)."""
    if "://" not in uri:
        return "file"
    return uri.split("://", 1)[0].lower()


def is_local(uri: str) -> bool:
    return scheme_of(uri) == "file"


def local_path(uri: str) -> Path | None:
    """The file system path of a local URI; None for any other."""
    return Path(uri.removeprefix("file://")) if is_local(uri) else None


def object_path(uri: str) -> str:
    """The path part of a URI, lower-cased, by which its kind is told (extension, compression)."""
    if scheme_of(uri) in _WITH_QUERY:
        try:
            return urlsplit(uri).path.lower()
        except ValueError:  # an unparsable URI: its text as it is
            pass
    return uri.lower()


def object_name(uri: str) -> str:
    """The last segment of the path, lower-cased: ``s3://b/p/00001.TAR?x=y`` -> ``00001.tar``."""
    return object_path(uri).rsplit("/", 1)[-1]


def sibling(uri: str, suffix: str) -> str:
    """The object beside ``uri`` with another ending: ``a/00001.tar`` -> ``a/00001.parquet``, ``a/00001_stats.json``."""
    head, slash, name = uri.rpartition("/")
    return f"{head}{slash}{name.split('.', 1)[0]}{suffix}"
