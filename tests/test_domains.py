"""domain: and prefix: rules beside exact keys: hosts, the Public Suffix List, label boundaries, prefixes,
allow mode, reports, refusals, and whole CLI runs checked against a pure-Python reference (urllib.parse)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import idna
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfilter import cli
from streamfilter.errors import UsageError
from streamfilter.keys import KeySpec
from streamfilter.sets.domains import DomainSet, PrefixSet
from streamfilter.sets.hosts import url_hosts
from streamfilter.sets.rules import RuleEntries, domain_entries, rule_key_set, split_rules
from streamfilter.urls import normalize_urls

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def reference_host(url: str | None) -> str | None:
    """The host as the rules compare it, from urllib.parse (independent of the Arrow and compiled paths)."""
    if url is None or not _URL.match(url):
        return None
    netloc = urlsplit(url).netloc
    host = netloc.rpartition("@")[2]
    if host.startswith("["):
        host = host[: host.find("]") + 1]
        try:
            host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            host = host.lower()
    else:
        host = host.split(":", 1)[0]
    host = host.rstrip(".").lower()
    if host and not host.isascii():
        with contextlib.suppress(idna.IDNAError):
            host = idna.encode(host, uts46=True, transitional=False).decode()
    return host or None


def reference_domain_match(url: str | None, domains: set[str]) -> bool:
    host = reference_host(url)
    if host is None:
        return False
    if host.rsplit(".", 1)[-1].isdigit():  # an IPv4 address matches only itself
        return host in domains
    return any(host == d or host.endswith("." + d) for d in domains)


def where(i: int) -> str:
    return f"line {i + 1}"


HOSTS = [
    ("https://Example.COM/a", "example.com"),
    ("https://example.com./x", "example.com"),
    ("https://user:pw@img.Example.co.uk:8080/p?q#f", "img.example.co.uk"),
    ("ftp://u@h@host.org/", "host.org"),
    ("https://a.com?x@y", "a.com"),
    ("https://a.com#frag", "a.com"),
    ("http://a.com:", "a.com"),
    ("https://MÜNCHEN.de/x", "xn--mnchen-3ya.de"),
    ("https://xn--MNCHEN-3ya.de/x", "xn--mnchen-3ya.de"),
    ("https://faß.de/", "xn--fa-hia.de"),  # IDNA 2008: ß is kept, not mapped to ss
    ("https://例え.テスト/", "xn--r8jz45g.xn--zckzah"),
    ("http://1.2.3.4/x", "1.2.3.4"),
    ("http://1.2.3.4:8080", "1.2.3.4"),
    ("http://[2001:DB8:0::1]:80/x", "[2001:db8::1]"),
    ("http://[::1]/", "[::1]"),
    ("http://localhost:8000/x", "localhost"),
    ("HTTP://LOCALHOST", "localhost"),
    ("not a url", None),
    ("mailto:someone@example.com", None),
    ("//example.com/x", None),
    ("https:///path", None),
    ("1http://a.com/", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize(("url", "host"), HOSTS)
def test_hosts_table(url: str | None, host: str | None) -> None:
    assert url_hosts(pa.array([url], pa.large_string())).to_pylist() == [host]
    assert reference_host(url) == host


@pytest.mark.parametrize(("url", "host"), HOSTS)
def test_compiled_path_agrees_with_the_arrow_path(url: str | None, host: str | None) -> None:
    domains = DomainSet(pa.array([host or "unlisted.example", "other.example"]))
    urls = pa.array([url], pa.large_string())
    assert domains.contains_urls(urls).tolist() == [host is not None]
    assert domains.contains_hosts(url_hosts(urls)).tolist() == [host is not None]


_LABEL = st.sampled_from(["a", "b", "ex", "example", "co", "uk", "com", "xn--mnchen-3ya", "ü", "1", "22", "img"])
_HOSTNAME = st.lists(_LABEL, min_size=1, max_size=5).map(".".join)


@settings(max_examples=300, deadline=None)
@given(
    scheme=st.sampled_from(["http", "HTTPS", "ftp", "s3", "a+b"]),
    user=st.sampled_from(["", "u@", "u:p@", "a@b@"]),
    host=_HOSTNAME,
    upper=st.booleans(),
    dot=st.sampled_from(["", ".", ".."]),
    port=st.sampled_from(["", ":80", ":", ":8080"]),
    rest=st.sampled_from(["", "/", "/x/y", "?q=a.com", "#f", "/a@b:c"]),
)
def test_domain_matching_agrees_with_urllib(scheme, user, host, upper, dot, port, rest) -> None:
    url = f"{scheme}://{user}{host.upper() if upper else host}{dot}{port}{rest}"
    listed = {"example.co.uk", "ex.com", "xn--mnchen-3ya.com", "a.b", "1.22.1.1", "img.example.com"}
    domains = DomainSet(pa.array(sorted(listed)))
    urls = pa.array([url], pa.large_string())
    expected = reference_domain_match(url, listed)
    assert domains.contains_urls(urls).tolist() == [expected], url
    assert domains.contains_hosts(url_hosts(urls)).tolist() == [expected], url


def test_label_boundaries() -> None:
    domains = DomainSet(domain_entries(pa.array(["example.co.uk", "192.168.0.1"]), where))
    urls = [
        "https://example.co.uk/",
        "https://img.example.co.uk/",
        "https://a.b.example.co.uk./",
        "https://badexample.co.uk/",
        "https://example.co.uk.evil.com/",
        "https://co.uk/",
        "https://example.co/",
        "http://192.168.0.1/",
        "http://10.192.168.0.1/",
        "http://192.168.0.10/",
    ]
    got = domains.contains_urls(pa.array(urls, pa.large_string())).tolist()
    assert got == [True, True, True, False, False, False, False, True, False, False]


@pytest.mark.parametrize(
    ("entry", "refused"),
    [
        ("co.uk", True),
        ("uk", True),
        ("blogspot.com", True),  # the PSL's private section
        ("github.io", True),
        ("localhost", True),  # a single label is under no known suffix: counted as one
        ("example.co.uk", False),
        ("user.github.io", False),  # under a private suffix: a registrable domain
        ("www.ck", False),  # an exception rule (!www.ck) under *.ck
        ("x.ck", True),  # the wildcard *.ck
        ("Example.CO.UK.", False),
        ("münchen.de", False),
        ("1.2.3.4", False),
        ("[2001:db8::1]", False),
    ],
)
def test_public_suffixes_are_refused(entry: str, refused: bool) -> None:
    if refused:
        with pytest.raises(UsageError, match=r"line 1: .* is a public suffix \(Public Suffix List\)"):
            domain_entries(pa.array([entry]), where)
    else:
        assert len(domain_entries(pa.array([entry]), where)) == 1


def test_domain_entries_are_normalized_to_one_form() -> None:
    got = domain_entries(pa.array(["Example.CO.UK.", "MÜNCHEN.de", "xn--MNCHEN-3ya.de", "[2001:DB8:0::1]"]), where)
    assert got.to_pylist() == ["example.co.uk", "xn--mnchen-3ya.de", "xn--mnchen-3ya.de", "[2001:db8::1]"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("domain:", "names no host"),
        ("domain:   ", "names no host"),
        ("domain:http://x.com", "names a host, not a URL"),
        ("domain:example.com/path", "bare host name"),
        ("domain:example.com:8080", "bare host name"),
        ("domain:user@example.com", "bare host name"),
        ("domain:*.example.com", "without '\\*.'"),
        ("domain:exa mple.com", "bare host name"),
        ("domain:exa$mple.com", "not a valid host name"),
        ("domain:example.123", "never ends in a number"),
        ("domain:[not-ipv6]", "not a valid host name"),
        ("prefix:", "names no URL"),
        ("prefix:example.com/users/", "a URL with a scheme and a host"),
        ("prefix:https:///x", "a URL with a scheme and a host"),
    ],
)
def test_malformed_rules_are_refused_naming_the_line(line: str, message: str) -> None:
    keys = pa.array(["https://exact.example/1", "# not read here", line], pa.large_string())
    with pytest.raises(UsageError, match=rf"^list, line 3: .*{message}"):
        split_rules(keys, None, KeySpec(), lambda i: f"list, line {i + 1}", RuleEntries())


def test_prefixes_with_and_without_normalization() -> None:
    rows = ["HTTP://Host:80/users/123/a", "http://host/users/123/b", "http://host/users/1234", "http://host/users/12",
            "http://HOST/users/123/c"]  # fmt: skip
    # Without normalization the entry is compared as written; with --normalize url both sides are rewritten.
    cases = (("none", [False, False, False, False, True]), ("url", [True, True, False, False, True]))
    for normalize, expected in cases:
        spec = KeySpec(normalize=normalize)
        rules = RuleEntries()
        split_rules(pa.array(["prefix:http://HOST/users/123/"], pa.large_string()), None, spec, where, rules)
        keys = pa.array(rows, pa.large_string())
        keys = normalize_urls(keys) if normalize == "url" else keys
        prefixes = PrefixSet(pa.concat_arrays(rules.prefixes))
        assert prefixes.contains(keys).tolist() == expected, normalize
    # A plain string prefix, as robots.txt's Disallow: without the trailing slash it covers /users/1234 too.
    assert PrefixSet(pa.array(["http://host/users/123"])).contains(pa.array(rows[2:4])).tolist() == [True, False]


def test_digest_covers_every_kind() -> None:
    def digest(exact: list[str], domains: list[str], prefixes: list[str]) -> str:
        from streamfilter.sets.exact import ExactKeySet

        rules = RuleEntries([pa.array(domains, pa.large_string())], [pa.array(prefixes, pa.large_string())])
        return rule_key_set(ExactKeySet(pa.array(exact)) if exact else None, rules).digest

    base = digest(["https://a.com/1"], ["example.com"], ["https://h/u/"])
    assert base == digest(["https://a.com/1"], ["example.com", "example.com"], ["https://h/u/"])
    assert base != digest(["https://a.com/2"], ["example.com"], ["https://h/u/"])
    assert base != digest(["https://a.com/1"], ["example.org"], ["https://h/u/"])
    assert base != digest(["https://a.com/1"], ["example.com"], ["https://h/v/"])
    assert base != digest(["https://a.com/1"], ["https://h/u/"], ["example.com"])  # the kind counts too


# --------------------------------------------------------------------------- whole runs through the CLI

LISTED_DOMAINS = ["example.co.uk", "xn--mnchen-3ya.de", "user.github.io", "10.0.0.1"]
LISTED_PREFIXES = ["https://host.org/users/123/", "http://files.net/a"]
LISTED_EXACT = ["https://keep.com/removed-exactly", "https://img.example.co.uk/also-exact"]


def generated_urls(n: int, seed: int) -> list[str | None]:
    rng = np.random.default_rng(seed)
    hosts = [
        "example.co.uk", "IMG.example.co.uk", "a.b.example.co.uk.", "badexample.co.uk", "example.co.uk.evil.com",
        "münchen.de", "xn--mnchen-3ya.de", "www.MÜNCHEN.de", "muenchen.de", "user.github.io", "other.github.io",
        "10.0.0.1", "110.0.0.1", "10.0.0.10", "[::1]", "localhost", "host.org", "files.net", "keep.com",
    ]  # fmt: skip
    paths = ["/", "/users/123/x.jpg", "/users/1234", "/a", "/abc/d", "/removed-exactly", "/also-exact", ""]
    decor = ["", "u:p@"]
    ports = ["", ":443", ":8080"]
    urls: list[str | None] = []
    for i in range(n):
        if i % 97 == 0:
            urls.append(None)
            continue
        if i % 89 == 0:
            urls.append("not a url at all")
            continue
        scheme = "https" if rng.random() < 0.8 else "http"
        host = hosts[rng.integers(len(hosts))]
        urls.append(
            f"{scheme}://{decor[rng.integers(2)]}{host}{ports[rng.integers(3)]}{paths[rng.integers(len(paths))]}"
        )
    urls += [*LISTED_EXACT, "https://host.org/users/123/", "http://files.net/abc"]
    return urls


def reference_listed(url: str | None) -> str | None:
    """Which kind lists ``url`` (exact, then prefix, then domain), with --normalize none; None if none."""
    if url is None:
        return None
    if url in LISTED_EXACT:
        return "exact"
    if any(url.startswith(p) for p in LISTED_PREFIXES):
        return "prefix"
    return "domain" if reference_domain_match(url, set(LISTED_DOMAINS)) else None


@pytest.fixture
def rule_run(tmp_path: Path):
    shards = []
    for s in range(3):
        urls = generated_urls(700, seed=s)
        table = pa.table({"url": pa.array(urls, pa.string()), "row": pa.array(range(len(urls)), pa.int64())})
        path = tmp_path / "in" / f"{s:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, row_group_size=250)
        shards.append((path, table))
    listing = tmp_path / "list.txt"
    lines = ["# exact keys, domains and prefixes in one list", *LISTED_EXACT]
    lines += [f"domain:{d}" for d in ["Example.CO.UK", "münchen.de", "user.github.io", "10.0.0.1"]]
    lines += [f"prefix:{p}" for p in LISTED_PREFIXES]
    listing.write_text("\n".join(lines) + "\n")
    return tmp_path, shards, listing


@pytest.mark.parametrize("mode", ["deny", "allow"])
def test_cli_run_matches_the_reference(rule_run, mode: str) -> None:
    tmp_path, shards, listing = rule_run
    out, report_path = tmp_path / f"out-{mode}", tmp_path / f"report-{mode}.json"
    code = cli.main(["run", str(tmp_path / "in"), "--output", str(out), "--blocklist", str(listing),
                     "--key", "url", "--mode", mode, "--report", str(report_path)])  # fmt: skip
    assert code == 0
    report = json.loads(report_path.read_text())
    by_input = {Path(s["input"]).name: s for s in report["shards"]}
    totals = {"exact": 0, "domain": 0, "prefix": 0}
    for path, table in shards:
        kinds = [reference_listed(u) for u in table.column("url").to_pylist()]
        keep = [(k is None) == (mode == "deny") for k in kinds]
        expected = table.filter(pa.array(keep))
        got = pq.read_table(out / path.name)
        assert got.column("row").to_pylist() == expected.column("row").to_pylist()
        shard = by_input[path.name]
        counts = {kind: kinds.count(kind) for kind in totals}
        assert shard["removed_by" if mode == "deny" else "kept_by"] == counts
        assert shard["kept_by" if mode == "deny" else "removed_by"] is None
        assert sum(counts.values()) == (shard["rows_removed"] if mode == "deny" else shard["rows_out"])
        assert all(counts.values())  # the generated rows exercise every kind in every shard
        for kind in totals:
            totals[kind] += counts[kind]
    assert report["totals"]["removed_by" if mode == "deny" else "kept_by"] == totals
    # A rerun resumes every shard from its receipt and reports the same counts by kind.
    assert cli.main(["run", str(tmp_path / "in"), "--output", str(out), "--blocklist", str(listing),
                     "--key", "url", "--mode", mode, "--report", str(report_path)]) == 0  # fmt: skip
    rerun = json.loads(report_path.read_text())
    assert all(s["resumed"] for s in rerun["shards"])
    assert [s["removed_by"] for s in rerun["shards"]] == [s["removed_by"] for s in report["shards"]]
    assert [s["kept_by"] for s in rerun["shards"]] == [s["kept_by"] for s in report["shards"]]
    assert rerun["totals"]["removed_by" if mode == "deny" else "kept_by"] == totals


def listed_after_url_normalization(url: str | None) -> bool:
    """The reference for --normalize url: rows and entries rewritten by normalize_urls, then compared."""
    if url is None:
        return False
    (n,) = normalize_urls(pa.array([url], pa.large_string())).to_pylist()
    exact = set(normalize_urls(pa.array(LISTED_EXACT, pa.large_string())).to_pylist())
    prefixes = normalize_urls(pa.array(LISTED_PREFIXES, pa.large_string())).to_pylist()
    return n in exact or any(n.startswith(p) for p in prefixes) or reference_domain_match(n, set(LISTED_DOMAINS))


def test_cli_run_with_url_normalization(rule_run) -> None:
    tmp_path, shards, listing = rule_run
    out = tmp_path / "out-url"
    code = cli.main(["run", str(tmp_path / "in"), "--output", str(out), "--blocklist", str(listing),
                     "--key", "url", "--normalize", "url"])  # fmt: skip
    assert code == 0
    for path, table in shards:
        keep = [not listed_after_url_normalization(u) for u in table.column("url").to_pylist()]
        expected = table.filter(pa.array(keep)).column("row").to_pylist()
        assert pq.read_table(out / path.name).column("row").to_pylist() == expected


def test_exact_only_lists_keep_their_digest(rule_run) -> None:
    """A list without rules gives the same set digest as before rules existed, so receipts stay valid."""
    from streamfilter.sets.exact import ExactKeySet

    tmp_path, _, _ = rule_run
    plain = tmp_path / "plain.txt"
    plain.write_text("\n".join(LISTED_EXACT) + "\n")
    report = tmp_path / "r.json"
    assert cli.main(["run", str(tmp_path / "in"), "--dry-run", "--blocklist", str(plain), "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["set_digest"] == ExactKeySet(pa.array(LISTED_EXACT)).digest
    assert all(s["removed_by"] is None for s in data["shards"])


@pytest.mark.parametrize(
    ("lines", "flags", "message"),
    [
        (["https://a.com/", "domain:co.uk"], [], r"list\.txt, line 2: co\.uk is a public suffix"),
        (["https://a.com/", "", "domain:blogspot.com"], [], r"line 3: blogspot\.com is a public suffix"),
        (["domain:"], [], r"line 1: 'domain:' names no host"),
        (["https://a.com/", "domain:http://x"], [], r"line 2: a domain: rule names a host, not a URL"),
        (["domain:example.com"], ["--key-hash", "xxh3_64"], r"line 1: a domain:/prefix: rule needs the raw URL"),
        (["prefix:https://a.com/x/"], ["--key-hash", "sha256"], r"line 1: a domain:/prefix: rule needs the raw URL"),
        (["domain:example.com"], ["--key", "url,row"], r"line 1: .* needs a key of one column"),
    ],
)
def test_refused_lists_exit_2_with_one_line(rule_run, capsys, lines, flags, message) -> None:
    tmp_path, _, _ = rule_run
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(lines) + "\n")
    out = tmp_path / "refused-out"
    code = cli.main(["run", str(tmp_path / "in"), "--output", str(out), "--blocklist", str(listing), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert re.search(message, err), err
    assert not out.exists()


def test_build_filter_refuses_rules(tmp_path: Path, capsys) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("https://a.com/1\nprefix:https://a.com/users/\n")
    code = cli.main(["build-filter", str(listing), "--key-hash", "xxh3_64", "--out", str(tmp_path / "f.bin")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "line 2: a domain:/prefix: rule cannot go in a filter file" in err
    assert not (tmp_path / "f.bin").exists()


def test_jsonl_dry_run_counts_each_kind(tmp_path: Path) -> None:
    """Rules are a key set like any other: a JSON Lines shard in a dry run counts what each kind would remove."""
    rows = [
        {"meta": {"url": "https://keep.com/removed-exactly"}},
        {"meta": {"url": "https://cdn.Example.co.uk:443/x"}},
        {"meta": {"url": "https://badexample.co.uk/x"}},
        {"meta": {"url": "https://host.org/users/123/a.jpg"}},
        {"meta": {"url": "https://host.org/users/1234"}},
    ]
    shard = tmp_path / "in" / "a.jsonl"
    shard.parent.mkdir()
    shard.write_text("".join(json.dumps(r) + "\n" for r in rows))
    listing = tmp_path / "list.txt"
    listing.write_text("https://keep.com/removed-exactly\ndomain:example.co.uk\nprefix:https://host.org/users/123/\n")
    report = tmp_path / "r.json"
    code = cli.main(["run", str(shard), "--dry-run", "--key", "meta.url", "--blocklist", str(listing),
                     "--report", str(report)])  # fmt: skip
    assert code == 0
    (got,) = json.loads(report.read_text())["shards"]
    assert (got["rows_in"], got["rows_removed"]) == (5, 3)
    assert got["removed_by"] == {"exact": 1, "domain": 1, "prefix": 1}


def test_exact_tag_lists_a_key_that_begins_with_a_rule_tag(tmp_path: Path) -> None:
    """``exact:domain:weird`` is the key ``domain:weird``, not a rule; the tag goes in filter files too."""
    keys = ["domain:weird", "https://weird/", "prefix:x", "https://example.com/a", "exact:plain"]
    shard = tmp_path / "in" / "a.jsonl"
    shard.parent.mkdir()
    shard.write_text("".join(json.dumps({"k": k}) + "\n" for k in keys))
    listing = tmp_path / "list.txt"
    listing.write_text("exact:domain:weird\nexact:prefix:x\ndomain:example.com\n")
    report = tmp_path / "r.json"
    code = cli.main(
        ["run", str(shard), "--dry-run", "--key", "k", "--blocklist", str(listing), "--report", str(report)]
    )
    assert code == 0
    (got,) = json.loads(report.read_text())["shards"]
    assert (got["rows_in"], got["rows_removed"]) == (5, 3)
    assert got["removed_by"] == {"exact": 2, "domain": 1, "prefix": 0}

    listing.write_text("exact:domain:weird\nexact:prefix:x\n")
    built = tmp_path / "f.bin"
    assert cli.main(["build-filter", str(listing), "--key-hash", "xxh3_64", "--out", str(built), "--key", "k"]) == 0
    code = cli.main(["run", str(shard), "--dry-run", "--filter", str(built), "--report", str(report)])
    assert code == 0
    (got,) = json.loads(report.read_text())["shards"]
    assert got["rows_removed"] == 2
