"""JSON Lines shards, plain, gzip and zstd, against a line filter written here with the json module."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
import zstandard
from helpers import files_under, s3_get, s3_keys, write_list

import streamfilter
from streamfilter.formats import jsonl as jsonl_format

CODECS = {
    "": (lambda b: b, lambda b: b),
    ".gz": (lambda b: gzip.compress(b, mtime=0), gzip.decompress),
    ".zst": (
        lambda b: zstandard.ZstdCompressor().compress(b),
        lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
    ),
}


def split_lines(data: bytes) -> list[bytes]:
    """Lines with their terminators; only "\\n" ends a line (bytes.splitlines also splits on "\\r")."""
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]]
    return [*lines, parts[-1]] if parts[-1] else lines


def lookup(doc, path: str):
    for name in path.split("."):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(name)
    if doc is None or isinstance(doc, dict | list):
        return None
    return doc if isinstance(doc, str) else json.dumps(doc)


def reference(data: bytes, listed, key: str = "url", mode: str = "deny") -> tuple[bytes, int, int]:
    """Kept lines, rows in, unkeyed rows; blank lines kept and not rows, unkeyed rows kept."""
    listed = set(listed)
    kept, rows, unkeyed = [], 0, 0
    for line in split_lines(data):
        body = line.rstrip(b"\n")
        if not body.strip(b" \t\r"):
            kept.append(line)
            continue
        rows += 1
        value = lookup(json.loads(body.decode("utf-8-sig")), key)
        if value is None:
            unkeyed += 1
            kept.append(line)
        elif (value in listed) == (mode == "allow"):
            kept.append(line)
    return b"".join(kept), rows, unkeyed


def make_lines(n: int, seed: int = 0, start: int = 0) -> tuple[bytes, list[str]]:
    """LAION-like lines with the awkward cases: CRLF, blank and whitespace lines, odd number text, no final newline."""
    rng = random.Random(seed)
    lines, urls = [], []
    for i in range(start, start + n):
        url = f"https://img.example/{seed}/{i}/ñ.jpg"
        urls.append(url)
        caption = rng.choice(["a dog", "ein Hund 🐕", 'quote " and \\ slash', ""])
        text = (
            f'{{"url": {json.dumps(url, ensure_ascii=rng.random() < 0.5)}, "caption": {json.dumps(caption)}, '
            f'"similarity": 0.{rng.randint(0, 999):03d}0, "meta": {{"id": {i}, "src": "{url}"}}}}'
        )
        lines.append(text.encode() + (b"\r\n" if i % 11 == 0 else b"\n"))
        if i % 97 == 0:
            lines.append(rng.choice([b"\n", b"   \n", b"\t\r\n"]))
    data = b"".join(lines)
    return data.rstrip(b"\r\n"), urls  # the last line has no newline


def run(inputs, out: Path | str | None, listed, tmp_path: Path, **options) -> streamfilter.Report:
    blocklist = write_list(tmp_path / "list.txt", listed)
    target = {"dry_run": True} if out is None else {"output": str(out)}
    return streamfilter.run(inputs, blocklist=[str(blocklist)], quiet=True, **target, **options)


@pytest.mark.parametrize("small_batches", [False, True])
@pytest.mark.parametrize("ext", list(CODECS))
def test_local_codecs_match_reference(tmp_path: Path, monkeypatch, ext: str, small_batches: bool) -> None:
    if small_batches:  # lines cut across chunks and batches everywhere
        monkeypatch.setattr(jsonl_format, "CHUNK_SIZE", 4096)
        monkeypatch.setattr(jsonl_format, "BATCH_BYTES", 1000)
    data, urls = make_lines(3000, seed=1)
    compress, decompress = CODECS[ext]
    src = tmp_path / "in" / f"part.jsonl{ext}"
    src.parent.mkdir()
    src.write_bytes(compress(data))
    # The last line, which has no newline, is removed in one case and kept in the other.
    last = [urls[-1]] if small_batches else []
    listed = [*urls[::13], *last, "https://img.example/not/there.jpg"]

    report = run([str(src)], tmp_path / "out", listed, tmp_path)

    shard = report.shards[0]
    assert shard.status == "done", shard.error
    expected, rows, _ = reference(data, listed)
    written = (tmp_path / "out" / src.name).read_bytes()
    assert decompress(written) == expected
    assert expected.endswith(b"\n") == small_batches  # no newline is added to a last line
    assert (shard.rows_in, shard.rows_out) == (rows, rows - len(set(urls[::13]) | set(last)))
    assert shard.bytes_written == len(written) and shard.members_in is None


def test_concatenated_members_and_frames(tmp_path: Path) -> None:
    data, urls = make_lines(2000, seed=2)
    third = len(data) // 3
    parts = [data[:third], data[third : 2 * third], data[2 * third :]]
    src = tmp_path / "in"
    src.mkdir()
    # pigz/bgzip-style concatenated gzip members with zero padding; zstd frames with a skippable frame between.
    (src / "a.jsonl.gz").write_bytes(b"".join(gzip.compress(p) for p in parts) + bytes(7))
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"skip"
    zc = zstandard.ZstdCompressor(write_checksum=True)
    (src / "b.jsonl.zst").write_bytes(zc.compress(parts[0]) + skippable + zc.compress(parts[1] + parts[2]))
    listed = urls[5::17]

    report = run([str(src / "a.jsonl.gz"), str(src / "b.jsonl.zst")], tmp_path / "out", listed, tmp_path)

    assert report.ok, [s.error for s in report.shards]
    expected, _, _ = reference(data, listed)
    assert gzip.decompress((tmp_path / "out" / "a.jsonl.gz").read_bytes()) == expected
    assert CODECS[".zst"][1]((tmp_path / "out" / "b.jsonl.zst").read_bytes()) == expected


@pytest.mark.parametrize("mode", ["deny", "allow"])
def test_dotted_path_and_number_keys(tmp_path: Path, mode: str) -> None:
    data, _ = make_lines(500, seed=3)
    src = tmp_path / "in" / "p.ndjson"
    src.parent.mkdir()
    src.write_bytes(data)
    ids = [str(i) for i in range(0, 500, 7)]

    report = run([str(src)], tmp_path / "out", ids, tmp_path, key="meta.id", mode=mode)

    assert report.shards[0].status == "done", report.shards[0].error
    expected, rows, _ = reference(data, ids, key="meta.id", mode=mode)
    assert (tmp_path / "out" / "p.ndjson").read_bytes() == expected
    assert report.shards[0].rows_out == len(split_lines(expected)) - (len(split_lines(data)) - rows)


def test_s3_and_http_inputs(s3_endpoint, s3_client, bucket, http_server, tmp_path: Path) -> None:
    data_a, urls_a = make_lines(1500, seed=4)
    data_b, urls_b = make_lines(1500, seed=5)
    s3_client.put_object(Bucket=bucket, Key="in/a.jsonl.gz", Body=gzip.compress(data_a))
    served, base = http_server.dir()
    (served / "b.jsonl.zst").write_bytes(CODECS[".zst"][0](data_b))
    listed = urls_a[::9] + urls_b[1::9]

    report = run([f"s3://{bucket}/in/a.jsonl.gz"], f"s3://{bucket}/out/", listed, tmp_path, s3_endpoint_url=s3_endpoint)
    report_http = run([base + "b.jsonl.zst"], tmp_path / "out", listed, tmp_path)

    assert report.ok and report_http.ok, [s.error for s in report.shards + report_http.shards]
    assert s3_keys(s3_client, bucket, "out/") == ["out/a.jsonl.gz"]
    assert gzip.decompress(s3_get(s3_client, bucket, "out/a.jsonl.gz")) == reference(data_a, listed)[0]
    assert CODECS[".zst"][1]((tmp_path / "out" / "b.jsonl.zst").read_bytes()) == reference(data_b, listed)[0]


def test_unkeyed_lines_kept_and_counted(tmp_path: Path) -> None:
    lines = [
        b'{"url": "listed"}\n',
        b'{"caption": "no url"}\n',
        b'{"url": null}\n',
        b'{"url": {"nested": 1}}\n',
        b"[1, 2]\n",
        b"\n",
        b'{"url": "kept"}\n',
    ]
    src = tmp_path / "in" / "u.jsonl"
    src.parent.mkdir()
    src.write_bytes(b"".join(lines))

    report = run([str(src)], tmp_path / "out", ["listed"], tmp_path, on_unkeyed="keep")

    shard = report.shards[0]
    assert shard.status == "done", shard.error
    assert (shard.rows_in, shard.rows_out, shard.unkeyed) == (6, 5, 4)
    assert (tmp_path / "out" / "u.jsonl").read_bytes() == b"".join(lines[1:])


def test_dry_run_counts_and_writes_nothing(tmp_path: Path) -> None:
    data, urls = make_lines(1000, seed=6)
    src = tmp_path / "in" / "d.jsonl.zst"
    src.parent.mkdir()
    src.write_bytes(CODECS[".zst"][0](data))

    report = run([str(src)], None, urls[::10], tmp_path)

    shard = report.shards[0]
    assert shard.status == "done", shard.error
    assert (shard.rows_in, shard.rows_out, shard.bytes_written) == (1000, 900, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "list.txt"]


def test_bad_shards_fail_alone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(jsonl_format, "MAX_LINE_BYTES", 64 * 1024)
    monkeypatch.setattr(jsonl_format, "CHUNK_SIZE", 4096)
    monkeypatch.setattr(jsonl_format, "BATCH_BYTES", 16 * 1024)
    data, urls = make_lines(400, seed=7)
    good = {"good1.jsonl": data, "good2.jsonl.gz": gzip.compress(data)}
    lines = split_lines(data)
    gz = gzip.compress(data)
    zst = CODECS[".zst"][0](data)
    bad = {
        "notjson.jsonl": b"".join(lines[:40]) + b'{"url": "x", oops}\n' + b"".join(lines[40:]),
        "nokey.jsonl.zst": CODECS[".zst"][0](b"".join(lines[:10]) + b'{"link": "x"}\n'),
        "plain.jsonl.gz": data,
        "gzipped.jsonl": gz,
        "zstd.jsonl.gz": zst,
        "truncated.jsonl.gz": gz[: len(gz) // 2],
        "truncated.jsonl.zst": zst[: len(zst) // 2],
        "trailing.jsonl.gz": gz + b"garbage",
        "corrupt.jsonl.gz": gz[:100] + bytes(50) + gz[150:],
        "parquet.jsonl": b"PAR1" + bytes(100) + b"PAR1",
        "empty.jsonl.gz": b"",
        "longline.jsonl": b'{"url": "' + b"x" * 100_000 + b'"}\n',
    }
    messages = {
        "notjson.jsonl": f"line {len(split_lines(b''.join(lines[:40]))) + 1} is not JSON",
        "nokey.jsonl.zst": "line 11 has no usable 'url'",
        "plain.jsonl.gz": "is not compressed, but its name says gzip-compressed",
        "gzipped.jsonl": "is gzip-compressed, but its name says plain JSON lines",
        "zstd.jsonl.gz": "is zstd-compressed, but its name says gzip-compressed",
        "truncated.jsonl.gz": "truncated",
        "truncated.jsonl.zst": "truncated",
        "trailing.jsonl.gz": "cannot decompress it as gzip",
        "corrupt.jsonl.gz": "cannot decompress it as gzip",
        "parquet.jsonl": "is a Parquet file",
        "empty.jsonl.gz": "is empty",
        "longline.jsonl": "line 1 is longer than",
    }
    src = tmp_path / "in"
    src.mkdir()
    for name, content in {**good, **bad}.items():
        (src / name).write_bytes(content)
    listed = urls[::5]

    report = run([str(src / n) for n in sorted({**good, **bad})], tmp_path / "out", listed, tmp_path, concurrency=4)

    by_name = {Path(s.input).name: s for s in report.shards}
    assert files_under(tmp_path / "out") == sorted(good)
    expected, _, _ = reference(data, listed)
    assert (tmp_path / "out" / "good1.jsonl").read_bytes() == expected
    assert gzip.decompress((tmp_path / "out" / "good2.jsonl.gz").read_bytes()) == expected
    assert all(by_name[n].status == "done" for n in good)
    for name, message in messages.items():
        shard = by_name[name]
        assert shard.status == "failed", name
        assert message in shard.error, (name, shard.error)
        assert str(src / name) in shard.error
        assert "\n" not in shard.error and "Traceback" not in shard.error
        assert shard.bytes_written == 0


def test_byte_order_mark_on_the_first_line_is_kept(tmp_path: Path) -> None:
    data = b'\xef\xbb\xbf{"url": "listed"}\n{"url": "kept"}\n'
    src = tmp_path / "in" / "bom.jsonl"
    src.parent.mkdir()
    src.write_bytes(data)
    second = tmp_path / "in" / "bom2.jsonl"
    second.write_bytes(b'{"url": "kept"}\n\xef\xbb\xbf{"url": "kept"}\n')  # only a first line may carry one

    report = run([str(src), str(second)], tmp_path / "out", ["kept"], tmp_path)

    assert report.shards[0].status == "done", report.shards[0].error
    assert (tmp_path / "out" / "bom.jsonl").read_bytes() == data[: data.index(b"\n") + 1]
    assert report.shards[1].status == "failed" and "line 2 is not JSON" in report.shards[1].error
