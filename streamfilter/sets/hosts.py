"""The host of each URL, vectorized with Arrow compute: what ``domain:`` rules are matched against.

A host is compared in one form, ASCII and lower case:

* the authority is what follows ``scheme://`` up to the first ``/``, ``?`` or ``#``
  (the scheme as :mod:`streamfilter.urls` takes it: a letter, then letters, digits,
  ``+``, ``-``, ``.``); anything else has no host (null) and no ``domain:`` rule matches it;
* userinfo (up to the authority's last ``@``) and the port are dropped;
* the host is lower-cased and trailing dots are stripped (``Example.COM.`` -> ``example.com``);
* a host with non-ASCII characters is converted to punycode with IDNA 2008 and UTS #46
  mapping, as browsers do (``MÜNCHEN.de`` -> ``xn--mnchen-3ya.de``). Entries are
  converted the same way, so a Unicode row matches a punycode entry and the other way
  round. A row's host gets the mapping and punycode without IDNA 2008's validity checks
  (five times cheaper; an invalid label gets a punycode no checked entry has);
* an IPv6 literal keeps its brackets, in the compressed form of :mod:`ipaddress`
  (``[2001:DB8:0::1]`` -> ``[2001:db8::1]``); an IPv4 address is compared as written.

How: ``split_pattern`` on ``/`` (three splits) gives the scheme and the authority; rows
whose authority is plain (ASCII, no ``@ : ? # [ ]``, no trailing dot) are only
``ascii_lower``-ed, which is nearly every row. The others go through one RE2 extraction,
``utf8_lower`` and ``utf8_rtrim``; only their non-ASCII hosts and IPv6 literals are
converted in Python, once per distinct host.
"""

from __future__ import annotations

import functools
import ipaddress

import idna
import pyarrow as pa
import pyarrow.compute as pc

_SCHEME = r"^[A-Za-z][A-Za-z0-9+.\-]*:$"
#: Any of these in an authority sends the row to the full extraction.
_SPECIAL = r"[@:?#\[\]]"
#: userinfo ends at the authority's last @ (greedy), which ends at ? or # when no / came first.
_HOST = r"(?s)^(?:[^?#]*@)?(?P<host>\[[^?#\]]*\]|[^?#:]*)"


@functools.cache
def _empty_lists() -> pa.Scalar:
    """Built on first use: converting Python values at import makes pyarrow import pandas (~0.16 s)."""
    return pa.scalar(["", "", ""], pa.list_(pa.large_string()))


def ascii_host(host: str, strict: bool = True) -> str | None:
    """One host (already without userinfo and port) in the compared form, or None if it has none.

    Used for the list's entries (``strict``: IDNA 2008's checks too) and for the rare rows the
    vectorized path does not settle.
    """
    host = host.strip().rstrip(".").lower()
    if not host:
        return None
    if host.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1].split('%', 1)[0]).compressed}]" if host.endswith("]") else host
        except ValueError:
            return host
    if host.isascii():
        return host
    try:
        if not strict:
            # UTS #46 mapping, then punycode per label: what idna.encode gives a valid name, without
            # its validity checks (a fifth of the cost). An invalid label still gets its own punycode,
            # which no (checked) entry has, since punycode is one-to-one.
            mapped = idna.uts46_remap(host, std3_rules=False, transitional=False).rstrip(".")
            return ".".join(label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")
                            for label in mapped.split("."))  # fmt: skip
        return idna.encode(host, uts46=True, std3_rules=False, transitional=False).decode("ascii").rstrip(".")
    except (idna.IDNAError, UnicodeError, ValueError):
        return host


def _convert_rare(hosts: pa.Array) -> pa.Array:
    """IDN and IPv6 hosts through :func:`ascii_host`, once per distinct value; the rest untouched."""
    rare = pc.fill_null(pc.or_(pc.invert(pc.string_is_ascii(hosts)), pc.starts_with(hosts, "[")), False)
    if not pc.any(rare).as_py():
        return hosts
    subset = hosts.filter(rare)
    distinct = pc.unique(subset)
    converted = pa.array([ascii_host(h, strict=False) for h in distinct.to_pylist()], pa.large_string())
    return pc.replace_with_mask(hosts, rare, converted.take(pc.index_in(subset, value_set=distinct)))


def _full_extraction(authorities: pa.Array) -> pa.Array:
    """Userinfo, port, query or fragment right after the host, case, trailing dots, IDN, IPv6."""
    host = pc.struct_field(pc.extract_regex(authorities, _HOST), [0])
    host = pc.utf8_rtrim(pc.utf8_lower(host), characters=".")
    return _convert_rare(host)


def url_hosts(urls: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The host of each URL as described in the module docstring (large_string); null where none."""
    if isinstance(urls, pa.ChunkedArray):
        urls = urls.combine_chunks()
    if pa.types.is_large_binary(urls.type) or pa.types.is_binary(urls.type):
        urls = urls.cast(pa.large_binary()).view(pa.large_string())  # invalid UTF-8 stays opaque bytes below
    elif not pa.types.is_large_string(urls.type):
        urls = urls.cast(pa.large_string())
    parts = pc.split_pattern(urls, "/", max_splits=3)
    whole = pc.greater_equal(pc.list_value_length(parts), 3)
    if not pc.all(pc.fill_null(whole, False)).as_py():
        parts = pc.if_else(pc.fill_null(whole, False), parts, _empty_lists())
    scheme, slashes, authority = (pc.list_element(parts, i) for i in range(3))
    is_url = pc.and_(
        pc.and_(whole, pc.equal(slashes, "")),
        pc.match_substring_regex(scheme, _SCHEME),
    )
    plain = pc.and_(
        pc.and_(pc.string_is_ascii(authority), pc.invert(pc.ends_with(authority, "."))),
        pc.invert(pc.match_substring_regex(authority, _SPECIAL)),
    )
    hosts = pc.ascii_lower(authority)
    rest = pc.fill_null(pc.and_(is_url, pc.invert(plain)), False)
    if pc.any(rest).as_py():
        hosts = pc.replace_with_mask(hosts, rest, _full_extraction(authority.filter(rest)))
    keep = pc.and_(pc.fill_null(is_url, False), pc.not_equal(hosts, ""))
    return pc.if_else(keep, hosts, pa.scalar(None, pa.large_string()))
