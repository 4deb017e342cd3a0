"""WebDataset tars: filtered member by member, checked against Python's tarfile and the input's own bytes."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest
from helpers import files_under, s3_get, s3_keys, s3_pending_uploads, write_list
from wds_helpers import (
    Entry,
    add_members,
    assert_same_entries,
    drop_listed,
    entries,
    make_shard,
    reference_tar,
    samples_of,
    write_sidecar,
)

import streamfilter
from streamfilter.formats import webdataset as wds

LONG_DIR = "shard/" + "d" * 120 + "/"


def run(inputs, out: Path | str | None, listed, tmp_path: Path, **options) -> streamfilter.Report:
    blocklist = write_list(tmp_path / "list.txt", listed)
    target = {"dry_run": True} if out is None else {"output": str(out)}
    return streamfilter.run(inputs, blocklist=[str(blocklist)], quiet=True, **target, **options)


def rows(items: list[Entry]) -> int:
    """Samples: directories are members but not samples."""
    return sum(1 for group in samples_of(items) if group[0].type != tarfile.DIRTYPE)


def check_output(src: Path | bytes, out: bytes, listed, shard) -> None:
    """Members, their data and attributes, and every byte of the output, against the reference."""
    kept, expected = reference_tar(src, drop_listed(listed))
    assert_same_entries(entries(out), kept)
    assert out == expected
    items = entries(src)
    assert (shard.rows_in, shard.members_in) == (rows(items), len(items))
    assert (shard.rows_out, shard.members_out) == (rows(kept), len(kept))
    assert shard.bytes_saved == (len(src) if isinstance(src, bytes) else src.stat().st_size) - len(out)


def test_local_shards_match_tarfile_reference(tmp_path: Path) -> None:
    src = tmp_path / "in"
    urls = {
        "00000.tar": make_shard(src / "00000.tar", 60, seed=1, big=[7]),  # one image over 8 MiB
        "00001.tar": make_shard(src / "00001.tar", 80, start=60, seed=1, fmt=tarfile.PAX_FORMAT, prefix="ü/"),
        # ustar splits a long name into prefix and name; GNU writes a long-name header before it.
        "00002.tar": make_shard(src / "00002.tar", 30, start=140, seed=1, fmt=tarfile.USTAR_FORMAT, prefix=LONG_DIR),
        "00003.tar": make_shard(src / "00003.tar", 30, start=170, seed=1, prefix=LONG_DIR + "e" * 100 + "/"),
    }
    listed = [u for us in urls.values() for u in us[3::9]] + [urls["00000.tar"][7], "https://elsewhere/x.jpg"]

    report = run([str(src / "*.tar")], tmp_path / "out", listed, tmp_path)

    assert report.ok, [s.error for s in report.shards]
    assert files_under(tmp_path / "out") == sorted(urls)
    for shard in report.shards:
        name = Path(shard.input).name
        out = (tmp_path / "out" / name).read_bytes()
        check_output(src / name, out, listed, shard)
        assert 0 < shard.rows_removed < shard.rows_in
        assert shard.unkeyed == 0
        assert shard.bytes_read >= (src / name).stat().st_size
    assert report.shards[0].bytes_saved > 9 * 1024 * 1024  # the big image went


@pytest.mark.parametrize("chunk", [4096, 64 * 1024])
def test_small_chunks_skip_and_reread_large_members(tmp_path: Path, monkeypatch, chunk: int) -> None:
    """Members larger than a chunk are left unread while scanning and copied from the source when kept."""
    monkeypatch.setattr(wds, "CHUNK_SIZE", chunk)
    src = tmp_path / "in" / "00000.tar"
    urls = make_shard(src, 50, seed=2, jpg_sizes=(100, 5 * chunk), big=[0, 20, 49], big_size=3 * chunk + 17)
    listed = [*urls[1::4], urls[20]]

    report = run([str(src)], tmp_path / "out", listed, tmp_path)

    assert report.ok, report.shards[0].error
    check_output(src, (tmp_path / "out" / "00000.tar").read_bytes(), listed, report.shards[0])


def test_directories_and_long_names_pass_through(tmp_path: Path) -> None:
    src = tmp_path / "in" / "mixed.tar"
    src.parent.mkdir()
    long_dir = "ü" * 70 + "/"
    with tarfile.open(src, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, url in [("a/k1", "u1"), ("a/k2", "u2"), (long_dir + "k3", "u3"), ("a/k1", "u4")]:
            folder = tarfile.TarInfo(name.rsplit("/", 1)[0])
            folder.type, folder.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(folder)
            for ext, data in (("jpg", b"x" * 700), ("json", json.dumps({"url": url}).encode())):
                info = tarfile.TarInfo(f"{name}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))

    report = run([str(src)], tmp_path / "out", ["u3", "u4"], tmp_path)

    shard = report.shards[0]
    assert shard.status == "done", shard.error
    out = (tmp_path / "out" / "mixed.tar").read_bytes()
    check_output(src, out, ["u3", "u4"], shard)
    assert [e.name for e in entries(out)] == ["a", "a/k1.jpg", "a/k1.json", "a", "a/k2.jpg", "a/k2.json", "ü" * 70, "a"]
    # Directories are tar members but not samples.
    assert (shard.rows_in, shard.rows_out, shard.members_in, shard.members_out) == (4, 2, 12, 8)


@pytest.mark.parametrize("mode", ["deny", "allow"])
def test_s3_to_s3_with_a_member_larger_than_a_part(s3_endpoint, s3_client, bucket, tmp_path: Path, mode) -> None:
    local = tmp_path / "in"
    urls = make_shard(local / "00000.tar", 30, seed=3, big=[12])
    urls += make_shard(local / "00001.tar", 30, start=30, seed=3)
    for name in ("00000.tar", "00001.tar"):
        s3_client.put_object(Bucket=bucket, Key=f"wds/{name}", Body=(local / name).read_bytes())
    listed = [*urls[::5], urls[12]]

    report = run(
        [f"s3://{bucket}/wds/{{00000..00001}}.tar"],
        f"s3://{bucket}/clean/",
        listed,
        tmp_path,
        mode=mode,
        s3_endpoint_url=s3_endpoint,
    )

    assert report.ok, [s.error for s in report.shards]
    assert s3_keys(s3_client, bucket, "clean/") == ["clean/00000.tar", "clean/00001.tar"]
    for shard in report.shards:
        name = shard.input.rsplit("/", 1)[1]
        out = s3_get(s3_client, bucket, f"clean/{name}")
        drop = drop_listed(listed)
        kept, expected = reference_tar(local / name, (lambda s, d=drop: not d(s)) if mode == "allow" else drop)
        assert_same_entries(entries(out), kept)
        assert out == expected
        assert shard.rows_out == rows(kept)
    # The big image stays in allow mode, and is gone in deny mode.
    assert (report.shards[0].bytes_written > 9 * 1024 * 1024) == (mode == "allow")
    assert s3_pending_uploads(s3_client, bucket) == []


def test_http_to_local_with_small_chunks(http_server, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(wds, "CHUNK_SIZE", 256 * 1024)
    served, base = http_server.dir()
    urls = make_shard(served / "00000.tar", 60, seed=4, big=[31], big_size=700 * 1024)
    listed = urls[2::7]

    report = run([base + "00000.tar"], tmp_path / "out", listed, tmp_path)

    shard = report.shards[0]
    assert shard.status == "done", shard.error
    check_output(served / "00000.tar", (tmp_path / "out" / "00000.tar").read_bytes(), listed, shard)
    size = (served / "00000.tar").stat().st_size
    # Read about once: the big member is fetched when copied; a prefetched chunk may be wasted.
    assert size <= shard.bytes_read <= size + 3 * 256 * 1024


def test_sidecar_parquet_decides(tmp_path: Path, http_server) -> None:
    served, base = http_server.dir()
    urls = make_shard(served / "00000.tar", 40, seed=5)
    keys = [f"{i:09d}" for i in range(40)]
    # The sidecar's urls are not the .json's: the decision must come from the Parquet.
    sidecar_urls = [f"https://sidecar.example/{i}.jpg" for i in range(40)]
    write_sidecar(served / "00000.parquet", sidecar_urls, keys, failed=5)
    listed = sidecar_urls[::6] + urls[1::6] + ["https://img.example/failed/0/2.jpg"]

    report = run([base + "00000.tar"], tmp_path / "out", listed, tmp_path, sidecar="parquet")

    shard = report.shards[0]
    assert shard.status == "done", shard.error
    removed = set(keys[::6])
    kept, expected = reference_tar(served / "00000.tar", lambda s: s[0].name.split(".")[0] in removed)
    out = (tmp_path / "out" / "00000.tar").read_bytes()
    assert_same_entries(entries(out), kept)
    assert out == expected
    assert (shard.rows_in, shard.rows_out) == (40, 40 - len(removed))
    assert shard.bytes_read > (served / "00000.tar").stat().st_size  # the sidecar counts as read


def test_dry_run_counts_and_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(wds, "CHUNK_SIZE", 64 * 1024)
    src = tmp_path / "in"
    urls = make_shard(src / "00000.tar", 40, seed=6, big=[3], big_size=1024 * 1024)
    listed = urls[::4]

    report = run([str(src / "00000.tar")], None, listed, tmp_path)

    shard = report.shards[0]
    assert shard.status == "done", shard.error
    assert (shard.rows_in, shard.rows_out, shard.members_in, shard.members_out) == (40, 30, 120, 90)
    assert shard.bytes_written == 0 and shard.output is None
    # The big image was never read: only headers and the .json members were.
    assert shard.bytes_read < (src / "00000.tar").stat().st_size - 800 * 1024
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "list.txt"]


def _corrupt_header(data: bytes, member: int) -> bytes:
    offset = entries(data)[member].offset
    return data[:offset] + b"Z" + data[offset + 1 :]


def test_bad_tars_fail_alone(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    good = {n: make_shard(src / f"{n}.tar", 12, start=i * 12, seed=7) for i, n in enumerate(["good1", "good2"])}
    whole = (src / "good1.tar").read_bytes()
    first_end = entries(whole)[3].offset
    bad = {
        "truncated": whole[: len(whole) // 2],
        "cut-at-member": whole[:first_end],
        "badsum": _corrupt_header(whole, 4),
        "gzipped": gzip.compress(whole),
        "parquet": (b"PAR1" + bytes(600) + b"PAR1"),
        "empty": b"",
        "concatenated": whole + whole,
    }
    for name, data in bad.items():
        (src / f"{name}.tar").write_bytes(data)
    meta = json.dumps({"url": "u"}).encode()
    add_members(src / "absolute.tar", [("/etc/000.jpg", b"x"), ("/etc/000.json", meta)])
    add_members(src / "dotdot.tar", [("ok/000.json", meta), ("ok/../../001.jpg", b"x"), ("ok/../../001.json", meta)])
    add_members(src / "nonjson.tar", [("000.jpg", b"x"), ("000.json", meta), ("001.jpg", b"x"), ("001.json", b"{no")])
    add_members(src / "nokey.tar", [("000.jpg", b"x"), ("000.json", b'{"caption": "no url"}')])
    add_members(src / "nojson.tar", [("000.jpg", b"x"), ("000.txt", b"caption")])
    with tarfile.open(src / "symlink.tar", "w") as tf:
        link = tarfile.TarInfo("000.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    listed = good["good1"][::3] + good["good2"][::3]
    expected_errors = {
        "truncated": "is truncated",
        "cut-at-member": "is truncated",
        "badsum": "bad tar header checksum at offset",
        "gzipped": "is gzip-compressed",
        "parquet": "is a Parquet file",
        "empty": "is empty",
        "concatenated": "data after the end-of-archive",
        "absolute": "has an absolute name",
        "dotdot": "has a '..' component",
        "nonjson": "sample '001' has a .json member that is not JSON",
        "nokey": "sample '000' has no usable 'url'",
        "nojson": "sample '000' has no .json member",
        "symlink": "is a symbolic link",
    }

    report = run([str(src / "*.tar")], tmp_path / "out", listed, tmp_path, concurrency=4)

    by_name = {Path(s.input).stem: s for s in report.shards}
    assert sorted(by_name) == sorted([*bad, *good, "absolute", "dotdot", "nonjson", "nokey", "nojson", "symlink"])
    assert files_under(tmp_path / "out") == ["good1.tar", "good2.tar"]
    for name in good:
        shard = by_name[name]
        check_output(src / f"{name}.tar", (tmp_path / "out" / f"{name}.tar").read_bytes(), listed, shard)
    for name, message in expected_errors.items():
        shard = by_name[name]
        assert shard.status == "failed", name
        assert message in shard.error, (name, shard.error)
        assert str(src / f"{name}.tar") in shard.error
        assert "\n" not in shard.error and "Traceback" not in shard.error
        assert shard.bytes_written == 0
    assert "offset" in by_name["badsum"].error and f"{entries(whole)[4].offset:,}" in by_name["badsum"].error


def test_unkeyed_samples_kept_when_asked(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    meta = json.dumps({"url": "listed"}).encode()
    members = [
        ("000.jpg", b"a"),
        ("000.json", meta),
        ("001.jpg", b"b"),
        ("001.json", b"not json"),
        ("002.jpg", b"c"),
        ("002.json", b'{"url": null}'),
        ("003.jpg", b"d"),
        ("README", b"no extension"),
        ("004.jpg", b"e"),
        ("004.json", b'{"url": "kept"}'),
    ]
    add_members(src / "mixed.tar", members)

    report = run([str(src / "mixed.tar")], tmp_path / "out", ["listed"], tmp_path, on_unkeyed="keep")

    shard = report.shards[0]
    assert shard.status == "done", shard.error
    assert (shard.rows_in, shard.rows_out, shard.unkeyed) == (6, 5, 4)
    out = entries((tmp_path / "out" / "mixed.tar").read_bytes())
    assert [e.name for e in out] == [n for n, _ in members[2:]]


def test_sidecar_errors_fail_alone(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shards = {}
    for i, name in enumerate(["good", "missing", "dupes", "stranger"]):
        urls = make_shard(src / f"{name}.tar", 10, start=i * 10, seed=8)
        keys = [f"{k:09d}" for k in range(i * 10, i * 10 + 10)]
        shards[name] = urls
        if name == "good":
            write_sidecar(src / f"{name}.parquet", urls, keys, failed=2)
        elif name == "dupes":
            write_sidecar(src / f"{name}.parquet", urls, keys[:-1] + keys[:1])
        elif name == "stranger":
            write_sidecar(src / f"{name}.parquet", urls[:-1], keys[:-1])
    listed = [u for urls in shards.values() for u in urls[::4]]

    report = run([str(src / "*.tar")], tmp_path / "out", listed, tmp_path, sidecar="parquet")

    by_name = {Path(s.input).stem: s for s in report.shards}
    assert by_name["good"].status == "done", by_name["good"].error
    check_output(src / "good.tar", (tmp_path / "out" / "good.tar").read_bytes(), listed, by_name["good"])
    assert files_under(tmp_path / "out") == ["good.tar"]
    messages = {
        "missing": "its sidecar Parquet",
        "dupes": "is on more than one row",
        "stranger": "sample '000000039' is not in its sidecar Parquet",
    }
    for name, message in messages.items():
        shard = by_name[name]
        assert shard.status == "failed"
        assert message in shard.error, shard.error
        assert f"{name}." in shard.error and "\n" not in shard.error


def test_pax_global_header_is_kept(tmp_path: Path) -> None:
    src = tmp_path / "in" / "g.tar"
    src.parent.mkdir()
    with tarfile.open(src, "w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "made for a test"}) as tf:
        for key, url in (("000", "u0"), ("001", "u1")):
            for ext, data in (("jpg", b"j" * 900), ("json", json.dumps({"url": url}).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))

    report = run([str(src)], tmp_path / "out", ["u0"], tmp_path)

    shard = report.shards[0]
    assert shard.status == "done", shard.error
    out = tmp_path / "out" / "g.tar"
    with tarfile.open(out) as tf:
        assert tf.pax_headers == {"comment": "made for a test"}
        assert tf.getnames() == ["001.jpg", "001.json"]
    assert (shard.members_in, shard.members_out) == (4, 2)


def test_bad_checksum_in_a_later_batch(tmp_path: Path) -> None:
    """Checksums are checked in bulk per batch; a bad one far into the shard is still caught, by offset."""
    src = tmp_path / "in" / "late.tar"
    make_shard(src, 700, seed=9, jpg_sizes=(10, 200))
    data = src.read_bytes()
    bad = entries(data)[3 * 650 + 1]
    src.write_bytes(data[: bad.offset + 100] + b"\x01" + data[bad.offset + 101 :])  # in the mode field

    report = run([str(src)], tmp_path / "out", ["https://not.listed/x.jpg"], tmp_path)

    shard = report.shards[0]
    assert shard.status == "failed"
    assert f"bad tar header checksum at offset {bad.offset:,}" in shard.error
    assert files_under(tmp_path / "out") == []


def test_reader_refuses_hostile_sizes_without_reading_them(tmp_path: Path) -> None:
    """A header claiming more data than the object holds is reported as truncation at once."""
    info = tarfile.TarInfo("000.jpg")
    info.size = 10**12
    header = info.tobuf(tarfile.GNU_FORMAT)
    reader = wds.TarReader(io.BytesIO(header + bytes(1024)), "hostile.tar")
    with pytest.raises(streamfilter.ShardError, match=r"truncated.*inside member '000\.jpg'"):
        list(reader.samples())
