"""One exception family whose message is the single line a user reads.

Every message says what failed, on which object, and what to do. Messages never
contain credentials, signed URLs or blocklist keys: callers pass object URIs
through :func:`redact_uri` before naming them, and every message is passed
through :func:`redact_text` as well, which catches URIs quoted inside library
errors (aiohttp's and botocore's name the URL they failed on, query included).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

#: URIs of the schemes we read, as they appear inside free text; stops at whitespace, quotes and the
#: '…' that :func:`redact_uri` leaves for a query, so text after a redacted URI is kept.
_URI_IN_TEXT = re.compile(r"\b(?:https?|s3)://[^\s'\"<>`…]+", re.IGNORECASE)
#: Punctuation that ends a sentence or closes a bracket is not part of the URI before it.
_TRAILING = ".,;:!)]}"


class StreamfilterError(Exception):
    """A failure with a message fit to show a user as one line."""

    exit_code = 1

    def __str__(self) -> str:
        # Library messages quoted inside ours (pyarrow's, thrift's) may span lines.
        return redact_text(" ".join(super().__str__().split()))

    def __repr__(self) -> str:  # args hold the unredacted text
        return f"{type(self).__name__}({str(self)!r})"


class UsageError(StreamfilterError):
    """Bad flags, configuration or membership set: nothing was written (exit code 2)."""

    exit_code = 2


class ShardError(StreamfilterError):
    """One shard could not be processed; the run goes on with the others."""


def redact_uri(uri: str) -> str:
    """Drop user info and query strings (signed-URL tokens live there) from a URI."""
    try:
        parts = urlsplit(uri)
    except ValueError:  # e.g. an unbalanced '[' in the host: say nothing of it beyond the scheme
        return uri.split("://", 1)[0] + "://…" if "://" in uri else uri
    if parts.scheme not in ("http", "https", "s3") or not (parts.query or parts.fragment or "@" in parts.netloc):
        return uri
    host = parts.netloc.rsplit("@", 1)[-1]
    query = "…" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def redact_text(text: str) -> str:
    """``text`` with every http(s):// and s3:// URI in it passed through :func:`redact_uri`."""

    def redact(match: re.Match[str]) -> str:
        uri = match.group(0)
        stripped = uri.rstrip(_TRAILING)
        return redact_uri(stripped) + uri[len(stripped) :]

    return _URI_IN_TEXT.sub(redact, text)
