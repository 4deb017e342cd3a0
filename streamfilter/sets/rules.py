"""``domain:`` and ``prefix:`` entries in a list, beside exact keys, and the key set that holds all three.

A list line ``domain:example.co.uk`` removes that host and every subdomain of it
(``img.example.co.uk``), on label boundaries (never ``badexample.co.uk``); a line
``prefix:https://host/users/123/`` removes every key that starts with it, after the
same ``--normalize`` as the rows (a plain string prefix, as robots.txt's ``Disallow``:
end it with ``/`` to stop at a path segment). Every other line is an exact key.

Domains are checked once, at load: written as a host (no scheme, path, port or
userinfo), converted like the rows' hosts (:mod:`.hosts`: lower case, no trailing dot,
punycode), and refused when the Public Suffix List (its ICANN and private sections, as
the ``publicsuffixlist`` package ships it) names it a public suffix, so that no one
removes ``co.uk`` or ``blogspot.com`` by accident; a name under no known suffix (a
single label such as ``localhost``) counts as one too. IP addresses are allowed and
match only themselves.

Rules need the raw URL: with a hashed key (``--key-hash``), hex or integer entries, a
filter file or a key of several columns they are refused.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import UsageError
from ..keys import KeySpec, normalize
from .arrays import as_mask, from_numpy
from .hosts import ascii_host, url_hosts
from .keyset import KeySet

DOMAIN, PREFIX = "domain:", "prefix:"
#: Kinds in the order a row is credited to one: the most specific rule that matched.
KINDS = ("exact", "prefix", "domain")
_NAME = r"^[a-z0-9_\-]+(\.[a-z0-9_\-]+)*$"
_IPV4 = r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$"
_NUMERIC_TLD = r"(^|\.)[0-9]+$"


@dataclass
class RuleEntries:
    """The rules found in a run's lists, gathered while they load."""

    domains: list[pa.Array] = field(default_factory=list)
    prefixes: list[pa.Array] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.domains or self.prefixes)


@functools.cache
def _public_suffixes():  # the list is parsed once per process (about 0.1 s), and only by runs with domain rules
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def _first(mask: pa.Array | np.ndarray) -> int | None:
    where = np.flatnonzero(np.asarray(mask, dtype=bool))
    return int(where[0]) if len(where) else None


#: What each malformed domain: value is told.
_NOT_A_URL = "a domain: rule names a host, not a URL; write domain:example.com, or prefix:URL for a path"
_BARE_HOST = "a domain: rule is a bare host name (no path, port or user); write e.g. domain:example.com"
_BAD_NAME = "not a valid host name (letters, digits, '-', '_' and dots, or an IP address); check the line"
_NUMBER = "a host name never ends in a number: give a whole IPv4 address or a domain name"
_WILDCARD = "write domain:example.com without '*.': it covers every subdomain already"
_NOT_A_PREFIX = "a prefix: rule is a URL with a scheme and a host, e.g. prefix:https://example.com/users/1/"


def _refuse_if(mask: pa.Array, where: Callable[[int], str], what: str) -> None:
    bad = _first(as_mask(pc.or_kleene(mask, pc.is_null(mask))))  # a null counts as bad
    if bad is not None:
        raise UsageError(f"{where(bad)}: {what}")


def _rare_entry(host: str) -> str:
    """A non-ASCII name in punycode, an IPv6 literal compressed; "" when it is neither valid."""
    if host.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]" if host.endswith("]") else ""
        except ValueError:
            return ""
    converted = ascii_host(host)
    return converted if converted and converted.isascii() else ""


def domain_entries(values: pa.Array, where: Callable[[int], str]) -> pa.Array:
    """``domain:`` values (the tag removed) as compared hosts; a malformed one or a public suffix is refused."""
    values = pc.utf8_trim_whitespace(values.cast(pa.large_string()))
    _refuse_if(pc.equal(values, ""), where, "'domain:' names no host; write e.g. domain:example.com")
    _refuse_if(pc.match_substring(values, "://"), where, _NOT_A_URL)
    _refuse_if(pc.starts_with(values, "*."), where, _WILDCARD)
    _refuse_if(pc.match_substring_regex(values, r"[/?#@\s]"), where, _BARE_HOST)
    bracketed = pc.starts_with(values, "[")
    _refuse_if(pc.and_(pc.invert(bracketed), pc.match_substring(values, ":")), where, _BARE_HOST)
    hosts = pc.utf8_rtrim(pc.ascii_lower(values), characters=".")
    rare = pc.or_(pc.invert(pc.string_is_ascii(hosts)), bracketed)
    if pc.any(rare).as_py():
        converted = pa.array([_rare_entry(h) for h in hosts.filter(rare).to_pylist()], pa.large_string())
        hosts = pc.replace_with_mask(hosts, rare, converted)
    ipv6 = pc.and_(bracketed, pc.not_equal(hosts, ""))
    ipv4 = pc.match_substring_regex(hosts, _IPV4)
    named = pc.match_substring_regex(hosts, _NAME)
    _refuse_if(pc.invert(pc.or_(pc.or_(named, ipv4), ipv6)), where, _BAD_NAME)
    _refuse_if(pc.and_(pc.invert(ipv4), pc.match_substring_regex(hosts, _NUMERIC_TLD)), where, _NUMBER)
    psl = _public_suffixes()
    names = as_mask(pc.invert(pc.or_(ipv4, ipv6)))
    for i, host in enumerate(hosts.to_pylist()):  # at load only (about 2 us a domain)
        if names[i] and psl.is_public(host):
            raise UsageError(
                f"{where(i)}: {host} is a public suffix (Public Suffix List): a rule for it would remove every "
                "site under it; name the registrable domain, e.g. domain:example." + host
            )
    return hosts


def prefix_entries(values: pa.Array, spec: KeySpec, where: Callable[[int], str]) -> pa.Array:
    """``prefix:`` values (the tag removed), normalized like the rows' keys; each must be a URL with a host."""
    values = pc.utf8_trim_whitespace(values.cast(pa.large_string()))
    _refuse_if(pc.equal(values, ""), where, "'prefix:' names no URL; write e.g. prefix:https://example.com/users/1/")
    _refuse_if(pc.is_null(url_hosts(values)), where, _NOT_A_PREFIX)
    return normalize(values, spec.normalize)


def refuse_rules(keys: pa.Array, where: Callable[[int], str], why: str) -> None:
    """Stops a load that cannot hold rules (``why`` says why) at the first rule line."""
    if not pa.types.is_large_string(keys.type) and not pa.types.is_string(keys.type):
        return
    tagged = pc.or_(pc.starts_with(keys, DOMAIN), pc.starts_with(keys, PREFIX))
    bad = _first(as_mask(tagged))
    if bad is not None:
        raise UsageError(f"{where(bad)}: a domain:/prefix: rule {why}")


def _rules_usable(spec: KeySpec) -> str | None:
    """Why ``spec`` cannot run rules, or None."""
    if spec.hash != "none" or spec.entries != "raw":
        return "needs the raw URL as the key: drop --key-hash/--blocklist-hash, or list the rule in a run without them"
    if len(spec.columns) != 1:
        return "needs a key of one column holding the URL (--key url)"
    return None


def split_rules(
    keys: pa.Array, lines: pa.Array | None, spec: KeySpec, where: Callable[[int], str], into: RuleEntries
) -> tuple[pa.Array, pa.Array | None]:
    """Take the rule lines out of one list's entries into ``into``; returns the exact keys and their lines."""
    if not pa.types.is_large_string(keys.type):
        return keys, lines
    present = pc.is_valid(keys)  # nulls are no rules (and_kleene: a null and false is false)
    is_domain = pc.and_kleene(pc.starts_with(keys, DOMAIN), present)
    is_prefix = pc.and_kleene(pc.starts_with(keys, PREFIX), present)
    tagged = pc.or_(is_domain, is_prefix)
    if not pc.any(tagged).as_py():
        return keys, lines
    why = _rules_usable(spec)
    if why is not None:
        refuse_rules(keys, where, why)
    for mask, tag, bucket in ((is_domain, DOMAIN, into.domains), (is_prefix, PREFIX, into.prefixes)):
        rows = pc.indices_nonzero(mask)
        if len(rows):
            values = pc.utf8_slice_codeunits(keys.filter(mask), len(tag))
            at = functools.partial(lambda r, i: where(r[i].as_py()), rows)
            bucket.append(domain_entries(values, at) if tag == DOMAIN else prefix_entries(values, spec, at))
    plain = pc.invert(tagged)
    return keys.filter(plain), (lines.filter(plain) if lines is not None else None)


class RuleKeySet:
    """Exact keys, ``domain:`` and ``prefix:`` rules as one key set: a key is in it when any part matches.

    Exact: no false matches. ``classify`` also says which kind matched each row, for the report.
    """

    kind = "exact"

    def __init__(self, exact: KeySet | None, domains: pa.Array, prefixes: pa.Array) -> None:
        # Imported here: its compiled kernels (numba) load only for runs whose lists hold rules.
        from .domains import DomainSet, PrefixSet

        self.exact = exact
        self.domains = DomainSet(domains)
        self.prefixes = PrefixSet(prefixes)
        self.sizes = {"exact": exact.size if exact else 0, "domain": self.domains.size, "prefix": self.prefixes.size}
        self.size = sum(self.sizes.values())
        h = hashlib.sha256(b"streamfilter rules v1\0")
        h.update(((exact.digest if exact else "none") + "\0").encode())
        h.update(self.domains.table.digest("domain").encode())
        h.update(self.prefixes.table.digest("prefix").encode())
        self.digest = "sha256:" + h.hexdigest()

    def false_match_rate(self) -> float:
        return 0.0

    def classify(self, keys: pa.Array) -> tuple[np.ndarray, dict[str, int]]:
        """A bool per key (listed by any kind), and how many keys each kind matched, each key
        credited once: to its exact key, else its prefix, else its domain."""
        n = len(keys)
        exact = as_mask(self.exact.contains(keys)) if self.exact is not None and self.exact.size else np.zeros(n, bool)
        prefix = self.prefixes.contains(keys) if self.prefixes.size else np.zeros(n, bool)
        domain = self.domains.contains_urls(keys) if self.domains.size else np.zeros(n, bool)
        hit = exact | prefix | domain
        counts = {"exact": int(exact.sum()), "prefix": int((prefix & ~exact).sum())}
        counts["domain"] = int(hit.sum()) - counts["exact"] - counts["prefix"]
        return hit, counts

    def contains(self, keys: pa.Array) -> pa.Array:
        return from_numpy(self.classify(keys)[0])


def rule_key_set(exact: KeySet | None, rules: RuleEntries) -> RuleKeySet:
    empty = pa.array([], pa.large_string())
    domains = pa.concat_arrays([d.cast(pa.large_string()) for d in rules.domains]) if rules.domains else empty
    prefixes = pa.concat_arrays([p.cast(pa.large_string()) for p in rules.prefixes]) if rules.prefixes else empty
    return RuleKeySet(exact, domains, prefixes)
