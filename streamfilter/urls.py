"""URL normalization for keys (``--normalize url``), vectorized with pyarrow.compute.

Two spellings of one URL should give one key, so a list built from one crawl matches
rows written by another. The rules are deliberately few and exactly these (RFC 3986
§6.2.2 syntax-based normalization plus §6.2.3 scheme-based port and path rules):

1. Only strings of the form ``scheme://authority[path][?query][#fragment]`` are
   touched: ``scheme`` is a letter followed by letters, digits, ``+``, ``-`` or ``.``;
   the authority runs to the first ``/``, ``?`` or ``#``; the path and query, if any,
   start with ``/`` or ``?``. Anything else (no ``scheme://``, ``mailto:x``,
   ``//host/x``, ``HTTP:/x``, ``1http://x``, ...) is returned unchanged. Nulls stay
   null. Whitespace is not stripped here (``--normalize strip`` does that; a caller
   wanting both chains them).
2. The scheme is lowercased (ASCII).
3. The authority is ``[userinfo@]host[:port]``; userinfo ends at the authority's last
   ``@`` and is kept byte for byte. The host (a name, an IPv4 address or a bracketed
   IPv6 literal such as ``[::1]``) is lowercased with Unicode rules (``utf8_lower``).
   The authority is not percent-decoded: a percent-encoding in a host is rare (IPv6
   zone ids) and is lowercased with the rest of the host.
4. The port is dropped when it is empty (``http://a.com:/``) or exactly the scheme's
   default: ``http`` 80, ``https`` 443, ``ws`` 80, ``wss`` 443, ``ftp`` 21. Any other
   port is kept as written (``:080`` and ``:8080`` stay).
5. The fragment (``#`` and everything after it) is dropped.
6. An empty path becomes ``/``: ``http://A.com`` -> ``http://a.com/`` and
   ``http://a.com?q`` -> ``http://a.com/?q`` (§6.2.3, applied to every scheme).
7. In the path and query (everything after the authority), a percent-encoding of an
   unreserved character (``A-Z a-z 0-9 - . _ ~``, §2.3) is decoded (``%7e`` -> ``~``,
   ``%41`` -> ``A``) and every other percent-encoding gets uppercase hex digits
   (``%2f`` -> ``%2F``, ``%c3%a9`` -> ``%C3%A9``; §6.2.2.1). A ``%`` that is not
   followed by two hex digits becomes ``%25`` (as ``requests.utils.requote_uri``
   does): without that rule ``%%341`` would normalize to ``%41`` and then to ``A``,
   and normalization must be idempotent.
8. Everything else is kept as is: the case of the path and query, non-ASCII
   characters (not percent-encoded), dot segments (``/a/../b`` stays), ``+``, empty
   queries (``http://a.com/?``) and reserved characters.

How: one RE2 match (a DFA, about 5 M rows/s) first picks the rows that are already
in canonical form - lowercase scheme and host, no port, a path, no fragment, no
percent-encoding to change - which is nearly every LAION URL; those are returned as
they are. Rule 7 needs a computed replacement, which RE2 cannot express, so it runs
in Python, but only on rows that contain a ``%`` to change. Of the other rows, those
that only need rule 7 (canonical apart from percent-encodings after the authority)
get it on the whole string; the rest are split into scheme, userinfo, host, port and
path+query by ``extract_regex`` (submatch extraction is slow in RE2, ~0.5 M rows/s,
hence the pre-filters) and rebuilt with Arrow kernels.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_PORTS: dict[str, str] = {"http": "80", "https": "443", "ws": "80", "wss": "443", "ftp": "21"}

# Non-matching rows (null result) are returned unchanged. (?s): a newline is just a byte.
_URL_PATTERN = (
    r"(?s)^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://"
    r"(?P<userinfo>(?:[^/?#]*@)?)"  # greedy: userinfo ends at the last @ of the authority
    r"(?P<host>\[[^/?#\]]*\]|[^/?#:]*)"
    r"(?::(?P<port>[^/?#]*))?"
    r"(?P<rest>(?:[/?][^#]*)?)"
    r"(?:#.*)?$"
)
# A percent-encoding rule 7 leaves alone: uppercase hex, not an unreserved character
# (unreserved: 2D 2E 30-39 41-5A 5F 61-7A 7E).
_KEPT_PERCENT = r"%(?:[0189A-F][0-9A-F]|2[0-9A-CF]|3[A-F]|40|5[B-E]|60|7[B-DF])"
# Rows every rule leaves unchanged: lowercase scheme, at most one @, a lowercase
# reg-name host without port (no IPv6, no non-ASCII), a path, no fragment, and only
# kept percent-encodings. A strict subset of fixed points: anything else takes the
# full path, which returns it unchanged if it needs nothing.
_CANONICAL_PATTERN = (
    r"(?s)^[a-z][a-z0-9+.\-]*://(?:[^/?#@]*@)?[a-z0-9\-._~!$&'()*+,;=]*/(?:[^#%]|" + _KEPT_PERCENT + r")*$"
)
# Rows only rule 7 changes: as canonical, but any percent-encodings after the
# authority, and no % in the authority, so rule 7 can run on the whole string.
_PERCENT_ONLY_PATTERN = r"(?s)^[a-z][a-z0-9+.\-]*://(?:[^/?#@%]*@)?[a-z0-9\-._~!$&'()*+,;=]*/[^#]*$"
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


@functools.cache
def _constants() -> tuple[pa.Array, pa.Scalar, pa.Scalar, pa.Scalar, pa.Scalar]:
    """The scheme:port pairs to drop and the large_string scalars the rebuild joins with.

    Built on first use, not at import: converting Python values makes pyarrow import pandas
    (about 0.16 s) where it is installed, which every run would pay at start-up.
    Scalars typed large_string: a bare Python "" would be a string scalar and match no kernel.
    """
    ports = pa.array([f"{s}:{p}" for s, p in DEFAULT_PORTS.items()], pa.large_string())
    return (ports, *(pa.scalar(s, pa.large_string()) for s in ("", ":", "/", "://")))


def _percent_table() -> dict[str, str]:
    """Every two-hex-digit spelling (any case) -> its decoded unreserved character or ``%XX`` uppercase."""
    table = {}
    for code in range(256):
        upper = f"{code:02X}"
        replacement = chr(code) if chr(code) in _UNRESERVED else "%" + upper
        for spelling in itertools.product(*({c, c.lower()} for c in upper)):
            table["".join(spelling)] = replacement
    return table


_PERCENT = _percent_table()


def normalize_percent(text: str) -> str:
    """Rule 7 on one string: decode unreserved, uppercase the other hex, ``%`` alone -> ``%25``.

    The string is a path+query, or a whole URL whose authority has no ``%``.
    """
    head, *pieces = text.split("%")
    out = [head]
    table = _PERCENT
    for piece in pieces:
        replacement = table.get(piece[:2])
        out.append(replacement + piece[2:] if replacement is not None else "%25" + piece)
    return "".join(out)


def _normalize_percent_rows(rest: pa.Array) -> pa.Array:
    """``rest`` with rule 7 applied to the rows that contain ``%``; the others are left alone."""
    mask = pc.fill_null(pc.match_substring(rest, "%"), False)
    if not pc.any(mask).as_py():
        return rest
    fixed = [normalize_percent(s) for s in rest.filter(mask).to_pylist()]
    return pc.replace_with_mask(rest, mask, pa.array(fixed, pa.large_string()))


def _normalize_chunk(values: pa.Array) -> pa.Array:
    if not pa.types.is_large_string(values.type):
        values = values.cast(pa.large_string())
    return _where(values, pc.match_substring_regex(values, _CANONICAL_PATTERN), None, _rewrite)


def _where(
    values: pa.Array,
    mask: pa.Array,
    if_true: Callable[[pa.Array], pa.Array] | None,
    if_false: Callable[[pa.Array], pa.Array],
) -> pa.Array:
    """``values`` with ``if_true`` applied to the rows where ``mask`` holds, ``if_false`` to the others.

    Each function sees only its own rows (filtered), so rare rows cost nothing to the
    rest; ``None`` leaves rows as they are. Null mask entries count as false.
    """
    mask = pc.fill_null(mask, False)
    count = pc.sum(mask).as_py() or 0
    out = values
    for fn, rows, n in ((if_true, mask, count), (if_false, pc.invert(mask), len(values) - count)):
        if fn is None or n == 0:
            continue
        out = fn(values) if n == len(values) else pc.replace_with_mask(out, rows, fn(values.filter(rows)))
    return out


def _rewrite(values: pa.Array) -> pa.Array:
    """The rows the canonical pattern rejected: rule 7 alone where that suffices, else the full rebuild."""
    return _where(values, pc.match_substring_regex(values, _PERCENT_ONLY_PATTERN), _percent_whole, _rebuild)


def _percent_whole(values: pa.Array) -> pa.Array:
    return pa.array([normalize_percent(s) for s in values.to_pylist()], pa.large_string())


def _rebuild(values: pa.Array) -> pa.Array:
    """Rules 1-7 on every row: parse, normalize each part, join (large_string in and out)."""
    parts = pc.extract_regex(values, _URL_PATTERN)
    if parts.null_count == len(parts):
        return values
    default_scheme_ports, empty, colon, slash, scheme_sep = _constants()
    scheme = pc.ascii_lower(parts.field("scheme"))
    port = parts.field("port")
    default_port = pc.is_in(pc.binary_join_element_wise(scheme, port, colon), value_set=default_scheme_ports)
    keep_port = pc.and_(pc.not_equal(port, empty), pc.invert(default_port))
    rest = _normalize_percent_rows(parts.field("rest"))
    joined = pc.binary_join_element_wise(
        scheme,
        scheme_sep,
        parts.field("userinfo"),
        pc.utf8_lower(parts.field("host")),
        pc.if_else(keep_port, pc.binary_join_element_wise(colon, port, empty), empty),
        pc.if_else(pc.starts_with(rest, "/"), empty, slash),  # rule 6: "" and "?q" get a path of "/"
        rest,
        empty,
    )
    return pc.if_else(pc.is_valid(parts), joined, values)


def normalize_urls(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Each URL in the canonical form of the module docstring; large_string out, nulls preserved.

    Accepts any string type (string, large_string, string_view); a ChunkedArray is
    normalized chunk by chunk and returned as a ChunkedArray.
    """
    if isinstance(values, pa.ChunkedArray):
        return pa.chunked_array([_normalize_chunk(c) for c in values.chunks], type=pa.large_string())
    return _normalize_chunk(values)
