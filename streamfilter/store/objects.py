"""What a store knows of one object: the one value every store module and the file bridge share."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows of one object; ``etag``/``mtime`` identify its version."""

    uri: str
    size: int
    etag: str | None = None
    version_id: str | None = None
    mtime: float | None = None
