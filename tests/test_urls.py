"""streamfilter.urls: the normalization table of the module docstring, case by case, and its idempotence."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfilter.urls import _rebuild, normalize_percent, normalize_urls

CASES = [
    # rules 2-3: scheme and host lowercase; userinfo, path and query keep their case
    ("HTTP://Example.COM/Path/File.JPG", "http://example.com/Path/File.JPG"),
    ("https://WWW.EXAMPLE.ORG/a?Q=Big", "https://www.example.org/a?Q=Big"),
    ("hTtPs://example.com/", "https://example.com/"),
    ("http://User:PassWord@Example.com/x", "http://User:PassWord@example.com/x"),
    ("http://a@b@Host.COM/x", "http://a@b@host.com/x"),  # userinfo ends at the last @
    ("https://BÜCHER.Example/ä", "https://bücher.example/ä"),  # Unicode host lowercase, path untouched
    # rule 4: default ports dropped, others kept
    ("http://example.com:80/a", "http://example.com/a"),
    ("https://example.com:443/a", "https://example.com/a"),
    ("http://example.com:443/a", "http://example.com:443/a"),
    ("https://example.com:80/a", "https://example.com:80/a"),
    ("http://example.com:8080/a", "http://example.com:8080/a"),
    ("http://example.com:080/a", "http://example.com:080/a"),
    ("ftp://Files.Example.com:21/pub", "ftp://files.example.com/pub"),
    ("wss://example.com:443/socket", "wss://example.com/socket"),
    ("http://example.com:/a", "http://example.com/a"),  # empty port
    ("http://[::1]:80/", "http://[::1]/"),
    ("http://[2001:DB8::A]:8080/x", "http://[2001:db8::a]:8080/x"),
    ("http://user@[::1]:80", "http://user@[::1]/"),
    # rule 5: fragment dropped
    ("https://example.com/a#Section-2", "https://example.com/a"),
    ("https://example.com/a?b=c#frag?x=%7e", "https://example.com/a?b=c"),
    ("https://example.com#top", "https://example.com/"),
    # rule 6: empty path
    ("http://A.com", "http://a.com/"),
    ("http://a.com?q=1", "http://a.com/?q=1"),
    ("http://a.com/?", "http://a.com/?"),
    # rule 7: percent-encodings after the authority
    ("HTTPS://Example.COM:443/A%7eB?Q=%7E#frag", "https://example.com/A~B?Q=~"),
    ("http://a.com/%41%42%43?x=%61%2D%2e%5f", "http://a.com/ABC?x=a-._"),  # unreserved decoded, in the query too
    ("http://a.com/a%2fb", "http://a.com/a%2Fb"),  # %2F kept (a reserved "/"), hex uppercased
    ("http://a.com/a%2Fb?x=%3d%26", "http://a.com/a%2Fb?x=%3D%26"),
    ("http://a.com/caf%c3%a9", "http://a.com/caf%C3%A9"),  # non-ASCII stays encoded, uppercase hex
    ("http://a.com/100%25", "http://a.com/100%25"),
    ("http://a.com/100%", "http://a.com/100%25"),  # a lone % becomes %25
    ("http://a.com/%zz%4", "http://a.com/%25zz%254"),
    ("http://a.com/%%341", "http://a.com/%2541"),  # not "%41", which the next pass would turn into "A"
    ("http://A%41.com/%41", "http://a%41.com/A"),  # the authority is not decoded
    ("http://a.com/%20space%20", "http://a.com/%20space%20"),
    # rule 8: everything else kept
    ("https://a.com/ä/ö?q=ü", "https://a.com/ä/ö?q=ü"),
    ("https://a.com/a/../b/./c", "https://a.com/a/../b/./c"),
    ("https://a.com/a+b?c=d+e", "https://a.com/a+b?c=d+e"),
    # rule 1: not scheme://authority... -> unchanged
    ("example.com/Path", "example.com/Path"),
    ("//Example.com/x", "//Example.com/x"),
    ("mailto:Someone@Example.COM", "mailto:Someone@Example.COM"),
    ("HTTP:/example.com", "HTTP:/example.com"),
    ("", ""),
    ("  http://Example.com/ ", "  http://Example.com/ "),  # no whitespace handling here
    ("file:///C:/Some%7ePath", "file:///C:/Some~Path"),
    ("s3://My-Bucket/Key%2fName", "s3://my-bucket/Key%2FName"),
    (None, None),
]


def _normalize(values: list[str | None]) -> list[str | None]:
    return normalize_urls(pa.array(values, pa.large_string())).to_pylist()


@pytest.mark.parametrize(("raw", "want"), CASES, ids=[str(c[0]) for c in CASES])
def test_normalization_table(raw: str | None, want: str | None) -> None:
    assert _normalize([raw]) == [want]


def test_whole_table_at_once_and_idempotent() -> None:
    raws = [raw for raw, _ in CASES]
    once = normalize_urls(pa.array(raws, pa.large_string()))
    assert once.type == pa.large_string()
    assert once.to_pylist() == [want for _, want in CASES]
    assert normalize_urls(once).equals(once)
    # the canonical-row pre-filter is only a shortcut: the full path gives the same answer
    assert _rebuild(pa.array(raws, pa.large_string())).equals(once)


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string(), pa.string_view()], ids=str)
def test_string_types_slices_and_chunks(typ: pa.DataType) -> None:
    raws = [raw for raw, _ in CASES]
    wants = [want for _, want in CASES]
    arr = pa.array(raws, typ)
    assert normalize_urls(arr.slice(3)).to_pylist() == wants[3:]
    chunked = normalize_urls(pa.chunked_array([arr.slice(0, 4), arr.slice(4)]))
    assert isinstance(chunked, pa.ChunkedArray)
    assert chunked.type == pa.large_string()
    assert chunked.to_pylist() == wants


def test_all_canonical_and_all_null_arrays_pass_through() -> None:
    canonical = pa.array(["https://a.com/x", "http://b.org/y?z=%20"], pa.large_string())
    assert normalize_urls(canonical) is canonical
    nulls = pa.array([None, None], pa.large_string())
    assert normalize_urls(nulls).to_pylist() == [None, None]
    assert normalize_urls(pa.array([], pa.large_string())).to_pylist() == []


def test_normalize_percent() -> None:
    assert normalize_percent("/A%7eB?Q=%7E") == "/A~B?Q=~"
    assert normalize_percent("%e2%9c%93%2d") == "%E2%9C%93-"
    assert normalize_percent("no percent") == "no percent"


# URL-ish pieces, so that generated strings hit every rule (not just "returned unchanged").
_PIECES = [*"aAzZ09-._~:/?#[]@!$&'()*+,;= é", "%", "%2f", "%7E", "%41", "%c3", "%%", "%4", ":80", ":443", "Ä"]
url_parts = st.lists(st.sampled_from(_PIECES), max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    scheme=st.sampled_from(["http", "HTTPS", "ftp", "Ws", "x-y", "", "1a"]),
    sep=st.sampled_from(["://", ":/", ""]),
    authority=url_parts,
    rest=url_parts,
)
def test_idempotent_and_prefilter_is_exact(scheme: str, sep: str, authority: str, rest: str) -> None:
    raw = pa.array([scheme + sep + authority + rest, None], pa.large_string())
    once = normalize_urls(raw)
    assert normalize_urls(once).equals(once)
    assert _rebuild(raw).equals(once)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_idempotent_on_any_text(text: str) -> None:
    once = normalize_urls(pa.array([text], pa.large_string()))
    assert normalize_urls(once).equals(once)
