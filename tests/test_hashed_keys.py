"""Hashed keys end to end: LAION's mmh3 hash, hex digests, URL normalization, filter files.

Expected rows come from pyarrow filters over hashes computed with the reference
packages (mmh3, hashlib, xxhash), never from streamfilter's own hashing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mmh3
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import xxhash
from helpers import assert_same_table, files_under, read_parquet, shard_table, write_list, write_shard

import streamfilter
from streamfilter.cli import main


def _laion(n: int, seed: int) -> pa.Table:
    """A LAION-style table with its `hash` column computed as LAION did, by the mmh3 package."""
    table = shard_table(n, seed=seed)
    caption = pc.fill_null(table["caption"], "")
    table = table.set_column(table.schema.get_field_index("caption"), "caption", caption)
    urls, captions = table["url"].to_pylist(), table["caption"].to_pylist()
    hashes = [mmh3.hash64((u + c).encode("utf-8"))[0] for u, c in zip(urls, captions, strict=True)]
    return table.append_column("hash", pa.array(hashes, pa.int64()))


def _keep(table: pa.Table, column: str, listed: set) -> pa.Table:
    hit = pa.array([v in listed for v in table[column].to_pylist()])
    return table.filter(pc.invert(hit))


def test_laion_hash_column_matches_mmh3_of_url_and_caption(tmp_path: Path) -> None:
    table = _laion(2000, seed=1)
    src = write_shard(tmp_path / "in" / "a.parquet", table, row_group_size=500)
    chosen = table["hash"].to_pylist()[::37]
    # Signed decimal as LAION prints it, and the same bits as an unsigned hex integer.
    lines = [str(h) for h in chosen[::2]] + [hex(h % 2**64) for h in chosen[1::2]]
    blocklist = write_list(tmp_path / "hashes.txt", lines)

    by_text = streamfilter.run(
        str(src), output=str(tmp_path / "a"), blocklist=[str(blocklist)], key="url,caption", key_separator="",
        key_hash="mmh3_64", blocklist_hash="int", quiet=True,
    )  # fmt: skip
    by_column = streamfilter.run(
        str(src), output=str(tmp_path / "b"), blocklist=[str(blocklist)], key="hash", blocklist_hash="int", quiet=True
    )

    expected = _keep(table, "hash", set(chosen))
    assert by_text.ok and by_column.ok
    assert_same_table(read_parquet(tmp_path / "a" / "a.parquet"), expected)
    assert_same_table(read_parquet(tmp_path / "b" / "a.parquet"), expected)
    assert by_text.totals["rows_removed"] == len(chosen)


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256"])
def test_hex_digest_list_against_hashed_urls(tmp_path: Path, algorithm: str) -> None:
    table = shard_table(1500, seed=2)
    src = write_shard(tmp_path / "in" / "a.parquet", table)
    chosen = table["url"].to_pylist()[::50]
    digests = [getattr(hashlib, algorithm)(u.encode()).hexdigest() for u in chosen]
    blocklist = write_list(tmp_path / "digests.txt", [d.upper() if i % 2 else d for i, d in enumerate(digests)])

    report = streamfilter.run(
        str(src), output=str(tmp_path / "out"), blocklist=[str(blocklist)], key_hash=algorithm,
        blocklist_hash="hex", quiet=True,
    )  # fmt: skip

    assert report.ok
    assert_same_table(read_parquet(tmp_path / "out" / "a.parquet"), _keep(table, "url", set(chosen)))


def test_digest_column_matched_without_rehashing(tmp_path: Path) -> None:
    table = shard_table(1000, seed=3)
    sha = [hashlib.sha256(u.encode()).hexdigest() for u in table["url"].to_pylist()]
    table = table.drop_columns([c for c in table.column_names if c == "sha256"])
    table = table.append_column("sha256", pa.array(sha, pa.string()))
    src = write_shard(tmp_path / "in" / "a.parquet", table)
    chosen = sha[::40]
    blocklist = write_list(tmp_path / "digests.txt", [d.upper() for d in chosen])

    report = streamfilter.run(
        str(src), output=str(tmp_path / "out"), blocklist=[str(blocklist)], key="sha256", blocklist_hash="hex",
        quiet=True,
    )  # fmt: skip

    assert report.ok and report.totals["rows_removed"] == len(chosen)
    assert_same_table(read_parquet(tmp_path / "out" / "a.parquet"), _keep(table, "sha256", set(chosen)))


def test_url_normalization_matches_lists_written_differently(tmp_path: Path) -> None:
    urls = ["https://Example.com/A/b.jpg", "http://x.org:80/p?q=1#frag", "http://y.net/%7Euser/pic.png", "http://z.io/"]
    table = pa.table({"url": urls, "n": list(range(4))})
    src = write_shard(tmp_path / "in" / "a.parquet", table)
    listed = ["HTTPS://EXAMPLE.COM:443/A/b.jpg#x", "http://X.ORG/p?q=1", "http://y.net/~user/pic.png"]
    blocklist = write_list(tmp_path / "list.txt", listed)

    plain = streamfilter.run(str(src), output=str(tmp_path / "p"), blocklist=[str(blocklist)], quiet=True)
    normalized = streamfilter.run(
        str(src), output=str(tmp_path / "n"), blocklist=[str(blocklist)], normalize="url", quiet=True
    )

    assert plain.totals["rows_removed"] == 0
    assert read_parquet(tmp_path / "n" / "a.parquet")["n"].to_pylist() == [3]
    assert normalized.totals["rows_removed"] == 3


def test_bad_hex_entry_is_refused_naming_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_shard(tmp_path / "in" / "a.parquet", shard_table(100, seed=4))
    good = hashlib.sha256(b"x").hexdigest()
    blocklist = write_list(tmp_path / "digests.txt", ["# digests", good, "", "not-hex-at-all"])

    code = main(["run", str(src), "--output", str(tmp_path / "out"), "--blocklist", str(blocklist),
                 "--key-hash", "sha256", "--blocklist-hash", "hex"])  # fmt: skip

    err = capsys.readouterr().err
    assert code == 2
    assert "digests.txt, line 4" in err and "hex" in err and "not-hex-at-all" not in err
    assert files_under(tmp_path / "out") == []


def _build(tmp_path: Path, keys: list[str], *extra: str) -> Path:
    blocklist = write_list(tmp_path / "list.txt", keys)
    out = tmp_path / "list.sfm"
    assert main(["build-filter", str(blocklist), "--out", str(out), *extra]) == 0
    return out


def test_bloom_filter_file_removes_every_listed_row(tmp_path: Path) -> None:
    table = shard_table(20_000, seed=5)
    src = write_shard(tmp_path / "in" / "a.parquet", table, row_group_size=5000)
    listed = table["url"].to_pylist()[::10]
    bloom = _build(tmp_path, listed, "--fpr", "0.01")

    report = streamfilter.run(str(src), output=str(tmp_path / "out"), filter=str(bloom), key_hash="xxh3_64", quiet=True)

    out = read_parquet(tmp_path / "out" / "a.parquet")
    assert report.ok and report.set_kind == "bloom"
    assert not set(out["url"].to_pylist()) & set(listed)  # no false negative
    # False positives: innocent rows removed, about 1% of the 18,000 unlisted ones.
    wrongly_removed = 18_000 - out.num_rows
    assert 0 <= wrongly_removed < 18_000 * 0.02
    assert report.set_digest.startswith("sha256:")


def test_fingerprint_file_in_allow_mode_reports_its_collision_bound(tmp_path: Path) -> None:
    table = shard_table(3000, seed=6)
    src = write_shard(tmp_path / "in" / "a.parquet", table)
    listed = table["url"].to_pylist()[::3]
    fingerprints = _build(tmp_path, listed, "--kind", "fingerprints")
    expected = table.filter(pa.array([u in set(listed) for u in table["url"].to_pylist()]))

    report = streamfilter.run(
        str(src), output=str(tmp_path / "out"), filter=str(fingerprints), key_hash="xxh3_64", mode="allow",
        report=str(tmp_path / "report.json"), quiet=True,
    )  # fmt: skip

    assert report.ok and report.set_kind == "fingerprints"
    assert_same_table(read_parquet(tmp_path / "out" / "a.parquet"), expected)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert 0 < saved["false_matches_bound"] < 1e-9
    assert not any(u in (tmp_path / "report.json").read_text() for u in listed)  # keys never in the report


def test_bloom_filter_in_allow_mode_needs_explicit_acceptance(tmp_path: Path, capsys) -> None:
    table = shard_table(1000, seed=7)
    src = write_shard(tmp_path / "in" / "a.parquet", table)
    bloom = _build(tmp_path, table["url"].to_pylist()[::2], "--fpr", "0.001")
    args = ["run", str(src), "--output", str(tmp_path / "out"), "--filter", str(bloom), "--key-hash", "xxh3_64",
            "--mode", "allow", "--report", str(tmp_path / "r.json")]  # fmt: skip

    assert main(args) == 2
    assert "--accept-false-positives" in capsys.readouterr().err
    assert files_under(tmp_path / "out") == []
    assert main([*args, "--accept-false-positives"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["false_matches_bound"] > 0


@pytest.mark.parametrize("damage", ["truncate", "magic", "key_spec"])
def test_bad_filter_file_is_refused_before_any_shard(tmp_path: Path, damage: str, capsys) -> None:
    src = write_shard(tmp_path / "in" / "a.parquet", shard_table(500, seed=8))
    bloom = _build(tmp_path, ["https://a.example/1.jpg", "https://b.example/2.jpg"] * 50)
    data = bloom.read_bytes()
    key_hash = "xxh3_64"
    if damage == "truncate":
        bloom.write_bytes(data[: len(data) - 40])
    elif damage == "magic":
        bloom.write_bytes(b"NOTMAGIC" + data[8:])
    else:
        key_hash = "xxh64"

    capsys.readouterr()
    code = main(["run", str(src), "--output", str(tmp_path / "out"), "--filter", str(bloom), "--key-hash", key_hash])

    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "list.sfm" in err
    assert files_under(tmp_path / "out") == []


def test_inspect_reads_a_filter_on_s3(s3_endpoint, s3_client, bucket, tmp_path: Path, capsys) -> None:
    bloom = _build(tmp_path, [f"https://k.example/{i}.jpg" for i in range(1000)], "--fpr", "0.001")
    s3_client.put_object(Bucket=bucket, Key="filters/list.sfm", Body=bloom.read_bytes())
    capsys.readouterr()

    assert main(["inspect", f"s3://{bucket}/filters/list.sfm", "--s3-endpoint-url", s3_endpoint]) == 0

    out = capsys.readouterr().out
    assert "bloom" in out and "xxh3_64" in out and "1,000" in out and "0.001" in out


def test_xxh3_of_the_key_is_what_the_filter_holds(tmp_path: Path) -> None:
    # The filter's keys are xxh3_64 of the UTF-8 key, as python-xxhash computes it: a list of
    # such integers finds the same rows as the raw list.
    table = shard_table(800, seed=9)
    src = write_shard(tmp_path / "in" / "a.parquet", table)
    chosen = table["url"].to_pylist()[::8]
    ints = write_list(tmp_path / "ints.txt", [str(xxhash.xxh3_64_intdigest(u.encode())) for u in chosen])

    report = streamfilter.run(
        str(src), output=str(tmp_path / "out"), blocklist=[str(ints)], key_hash="xxh3_64", blocklist_hash="int",
        quiet=True,
    )  # fmt: skip

    assert report.ok
    assert_same_table(read_parquet(tmp_path / "out" / "a.parquet"), _keep(table, "url", set(chosen)))


def test_key_spec_names_the_hashes_the_hashing_module_has() -> None:
    from streamfilter import hashing, keys

    assert (keys.DIGESTS, keys.HASH64) == (hashing.DIGESTS, hashing.HASH64)


def test_build_filter_streams_parquet_on_s3_and_text_in_pieces(
    s3_endpoint, s3_client, bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    from streamfilter.sets import build

    monkeypatch.setattr(build, "TEXT_PIECE", 4096)  # many pieces, lines cut across them
    table = shard_table(6000, seed=10)
    urls = table["url"].to_pylist()
    in_parquet, in_text = urls[:3000], urls[3000:4500]
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"u": in_parquet}), buf, row_group_size=700)
    s3_client.put_object(Bucket=bucket, Key="lists/a.parquet", Body=buf.getvalue().to_pybytes())
    text = write_list(tmp_path / "b.txt", ["# listed urls", *in_text])
    src = write_shard(tmp_path / "in" / "a.parquet", table)
    out = tmp_path / "f.sfm"

    code = main(["build-filter", f"s3://{bucket}/lists/a.parquet:u", str(text), "--kind", "fingerprints",
                 "--out", str(out), "--s3-endpoint-url", s3_endpoint])  # fmt: skip
    report = streamfilter.run(str(src), output=str(tmp_path / "out"), filter=str(out), key_hash="xxh3_64", quiet=True)

    assert code == 0 and report.ok
    assert_same_table(read_parquet(tmp_path / "out" / "a.parquet"), _keep(table, "url", set(in_parquet + in_text)))


def test_build_filter_names_the_line_of_a_bad_entry_past_the_first_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from streamfilter.sets import build

    monkeypatch.setattr(build, "TEXT_PIECE", 100)
    lines = [f"{i:016x}" for i in range(1, 50)]
    lines[36] = "zz-not-hex"
    text = write_list(tmp_path / "hashes.txt", lines)

    code = main(["build-filter", str(text), "--blocklist-hash", "hex", "--out", str(tmp_path / "f.sfm")])

    assert code == 2
    assert "hashes.txt, line 37" in capsys.readouterr().err
    assert not (tmp_path / "f.sfm").exists()
