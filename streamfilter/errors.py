"""One exception family whose message is the single line a user reads.

Every message says what failed, on which object, and what to do. Messages never
contain credentials, signed URLs or blocklist keys: callers pass object URIs
through :func:`redact_uri` before naming them.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


class StreamfilterError(Exception):
    """A failure with a message fit to show a user as one line."""

    exit_code = 1

    def __str__(self) -> str:
        # Library messages quoted inside ours (pyarrow's, thrift's) may span lines.
        return " ".join(super().__str__().split())


class UsageError(StreamfilterError):
    """Bad flags, configuration or membership set: nothing was written (exit code 2)."""

    exit_code = 2


class ShardError(StreamfilterError):
    """One shard could not be processed; the run goes on with the others."""


def redact_uri(uri: str) -> str:
    """Drop user info and query strings (signed-URL tokens live there) from a URI."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https", "s3") or not (parts.query or "@" in parts.netloc):
        return uri
    host = parts.netloc.rsplit("@", 1)[-1]
    query = "…" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))
