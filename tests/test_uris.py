"""store.uris: the one reading of an object URI's text, checked against hand-written expectations."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamfilter.store.uris import is_local, local_path, object_name, object_path, scheme_of, sibling


@pytest.mark.parametrize(
    ("uri", "scheme", "name"),
    [
        ("data/00001.Parquet", "file", "00001.parquet"),
        ("/abs/dir/x.jsonl.gz", "file", "x.jsonl.gz"),
        ("file:///abs/dir/x.TAR", "file", "x.tar"),
        ("s3://bucket/p/00001.tar", "s3", "00001.tar"),
        ("https://host/p/list.txt.zst?X-Amz-Signature=abc.parquet", "https", "list.txt.zst"),
        ("HTTP://host/a/b.parquet#frag.tar", "http", "b.parquet"),
        ("hf://datasets/org/name@main/data/train-0.parquet", "hf", "train-0.parquet"),
    ],
)
def test_scheme_and_name(uri: str, scheme: str, name: str) -> None:
    assert scheme_of(uri) == scheme
    assert object_name(uri) == name
    assert is_local(uri) == (scheme == "file")


def test_a_signed_query_is_no_part_of_the_path() -> None:
    assert object_path("s3://b/k/list.txt?versionId=1.gz") == "/k/list.txt"


def test_local_path_and_sibling() -> None:
    assert local_path("file:///tmp/a b/x.parquet") == Path("/tmp/a b/x.parquet")
    assert local_path("rel/x.parquet") == Path("rel/x.parquet")
    assert local_path("s3://b/x.parquet") is None
    assert sibling("s3://b/ds/00007.tar", "_stats.json") == "s3://b/ds/00007_stats.json"
    assert sibling("ds/00007.tar", ".parquet") == "ds/00007.parquet"
