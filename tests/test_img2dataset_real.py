"""Shard sets written by the real img2dataset, cleaned, and compared with what img2dataset writes without the URLs.

``fixtures/img2dataset`` (made by its ``make_fixture.py``): ``full/`` is img2dataset
1.47.0 run over four url lists (successes, 404s, a 403, undecodable images, a
12 MiB JPEG, a duplicated URL), ``without_removed/`` the same run over the same
lists minus ``removed.txt``, one input file per shard so that shard N of both runs
holds the same URLs but the removed ones. Cleaning ``full/`` with ``removed.txt`` as
the blocklist must give what the second run wrote, but for what img2dataset itself
does not repeat from one run to the next:

- ``key``: img2dataset numbers samples by position, so the samples after a removed
  row have other keys in the second run (the Parquet column, the ``.json`` field,
  the tar member names). Samples and rows are matched by content instead, and a
  cleaned set must keep the keys it had (checked against ``full/``).
- the order of samples and rows: img2dataset downloads with two threads and writes
  in the order downloads finish.
- tar headers (mtimes: webdataset's TarWriter stamps the time of writing); member
  contents are compared, and the cleaned tar is checked byte for byte against
  ``full/``'s tar without the removed samples (tarfile).
- ``_stats.json``'s ``start_time``, ``end_time`` and ``duration``: they must be kept
  from ``full/``. Every other field (``count``, ``successes``, ``failed_to_download``,
  ``failed_to_resize`` and every ``status_dict`` entry: img2dataset keys it by
  ``success`` and by the error message, and writes no entry for a message no row
  has) must equal the second run's.

References are tarfile, pyarrow and json; streamfilter reads none of the outputs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from helpers import assert_same_table, read_parquet, s3_get, write_list
from wds_helpers import drop_listed, reference_tar

from streamfilter import cli

FIXTURE = Path(__file__).parent / "fixtures" / "img2dataset"
STEMS = [f"{i:05d}" for i in range(4)]
#: The fields of ``_stats.json`` that are times of the run, not counts of its rows.
TIMING = ("start_time", "end_time", "duration")
#: Rows removed per shard set: successes, 404, decoding errors; nothing from 00001; two rows share one URL in 00002.
REMOVED_ROWS = [4, 0, 5, 2]

Read = Callable[[str], bytes]


def unpack(src: Path, dest: Path) -> Path:
    """One run's shard sets as img2dataset wrote them (the fixture keeps each tar gzipped)."""
    dest.mkdir(parents=True)
    for stem in STEMS:
        (dest / f"{stem}.tar").write_bytes(gzip.decompress((src / f"{stem}.tar.gz").read_bytes()))
        for ext in (".parquet", "_stats.json"):
            shutil.copyfile(src / f"{stem}{ext}", dest / f"{stem}{ext}")
    return dest


def removed_urls() -> list[str]:
    return (FIXTURE / "removed.txt").read_text().split()


def reader(root: Path) -> Read:
    return lambda name: (root / name).read_bytes()


def digest(data: bytes) -> str:
    return f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}"


def tar_samples(data: bytes) -> tuple[dict[str, str], list[dict]]:
    """The samples' keys (to their url) and contents: each member by extension, the ``.json`` parsed without ``key``."""
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            assert member.isfile(), member.name
            key, ext = member.name.split(".", 1)
            content = tar.extractfile(member)
            assert content is not None
            members.setdefault(key, {})[ext] = content.read()
    keys, samples = {}, []
    for key, by_ext in members.items():
        meta = json.loads(by_ext["json"])
        assert meta.pop("key") == key, key  # a sample's .json names its members
        keys[key] = meta["url"]
        sample = {ext: digest(body) for ext, body in by_ext.items() if ext != "json"}
        samples.append({"json": json.dumps(meta, sort_keys=True), **sample})
    return keys, sorted(samples, key=lambda s: s["json"])


def parquet_rows(table: pa.Table) -> list[str]:
    """Each row as canonical JSON without ``key``, sorted."""
    return sorted(json.dumps(row, sort_keys=True) for row in table.drop_columns(["key"]).to_pylist())


def stats_of(data: bytes) -> dict:
    stats = json.loads(data)
    assert isinstance(stats, dict)
    return stats


def set_differences(stem: str, out: Read, full: Path, expected: Path, listed: set[str]) -> list[str]:
    """What differs between the cleaned set ``stem`` and what img2dataset wrote without the listed URLs."""
    problems: list[str] = []
    tar = out(f"{stem}.tar")
    table = read_parquet(out(f"{stem}.parquet"))
    stats = stats_of(out(f"{stem}_stats.json"))

    # The tar: same samples as img2dataset's (contents, keys aside), and exactly full/'s tar without the listed.
    keys, samples = tar_samples(tar)
    _, expected_samples = tar_samples((expected / f"{stem}.tar").read_bytes())
    if samples != expected_samples:
        ours = {s["json"] for s in samples}
        theirs = {s["json"] for s in expected_samples}
        urls = lambda metas: sorted(json.loads(m)["url"] for m in metas)  # noqa: E731
        problems.append(
            f"{stem}.tar: samples differ from img2dataset's: only in the output {urls(ours - theirs)}, "
            f"only in img2dataset's {urls(theirs - ours)}"
            + (", and the same samples' members differ" if ours == theirs else "")
        )
    _, reference = reference_tar(full / f"{stem}.tar", drop_listed(listed))
    if tar != reference:
        problems.append(f"{stem}.tar: not full/'s tar without the listed samples, byte for byte")

    # The Parquet: same schema and rows as img2dataset's (keys aside), full/'s rows in full/'s order and keys.
    expected_table = read_parquet(expected / f"{stem}.parquet")
    if not table.schema.equals(expected_table.schema):
        problems.append(f"{stem}.parquet: schema {table.schema} != img2dataset's {expected_table.schema}")
    elif parquet_rows(table) != parquet_rows(expected_table):
        problems.append(f"{stem}.parquet: rows differ from img2dataset's (key aside)")
    full_table = read_parquet(full / f"{stem}.parquet")
    keep = pc.invert(pc.is_in(full_table["url"], value_set=pa.array(sorted(listed), pa.string())))
    try:
        assert_same_table(table, full_table.filter(keep))
    except AssertionError:
        problems.append(f"{stem}.parquet: not full/'s rows without the listed ones, in order")
    # The Parquet's successes are the tar's samples.
    succeeded = table.filter(pc.equal(table["status"], "success"))
    if dict(zip(succeeded["key"].to_pylist(), succeeded["url"].to_pylist(), strict=True)) != keys:
        problems.append(f"{stem}: the Parquet's successful rows are not the tar's samples")

    # _stats.json: every count as img2dataset wrote it, the times of full/'s run kept.
    expected_stats = stats_of((expected / f"{stem}_stats.json").read_bytes())
    full_stats = stats_of((full / f"{stem}_stats.json").read_bytes())
    for field in sorted(set(stats) | set(expected_stats)):
        want = full_stats.get(field) if field in TIMING else expected_stats.get(field)
        if stats.get(field) != want:
            source = "full/'s" if field in TIMING else "img2dataset's"
            problems.append(f"{stem}_stats.json {field}: {stats.get(field)!r} != {source} {want!r}")
    return problems


def assert_as_img2dataset_writes(out: Read, full: Path, expected: Path) -> None:
    listed = set(removed_urls())
    problems = [problem for stem in STEMS for problem in set_differences(stem, out, full, expected, listed)]
    assert not problems, "\n".join(problems)


def run(inputs: str, output: str, tmp_path: Path, *extra: str) -> list[dict]:
    blocklist = write_list(tmp_path / "list.txt", removed_urls())
    report = tmp_path / "report.json"
    argv = ["run", inputs, "--format", "img2dataset", "--output", output, "--blocklist", str(blocklist)]
    code = cli.main([*argv, "--key", "url", "--report", str(report), *extra])
    shards = json.loads(report.read_text())["shards"]
    assert code == 0, [s["error"] for s in shards]
    assert [s["rows_removed"] for s in shards] == REMOVED_ROWS
    return shards


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """``full/`` and ``without_removed/`` unpacked: the input, and what img2dataset wrote without the URLs."""
    return unpack(FIXTURE / "full", tmp_path / "full"), unpack(FIXTURE / "without_removed", tmp_path / "expected")


def test_fixture_holds_what_the_comparison_needs(runs) -> None:
    """The removed rows are of every kind, in several sets, and some message leaves a status_dict entirely."""
    full, expected = runs
    record = json.loads((FIXTURE / "fixture.json").read_text())
    assert record["img2dataset"] == "1.47.0"
    listed = set(removed_urls())
    kinds: dict[str, Counter] = {}
    for stem in STEMS:
        table = read_parquet(full / f"{stem}.parquet")
        removed = [r for r in table.to_pylist() if r["url"] in listed]
        kinds[stem] = Counter(r["error_message"] or r["status"] for r in removed)
        stats = stats_of((full / f"{stem}_stats.json").read_bytes())
        assert sum(stats["status_dict"].values()) == stats["count"] == table.num_rows
        assert table.num_rows - len(removed) == read_parquet(expected / f"{stem}.parquet").num_rows
    assert kinds["00001"] == Counter()
    every = sum(kinds.values(), Counter())
    assert {"success", "HTTP Error 404: Not Found", "Image decoding error", "HTTP Error 403: Forbidden"} <= set(every)
    assert sum(1 for k in kinds.values() if "success" in k and len(k) > 1) >= 2
    for stem in ("00000", "00002", "00003"):
        before = stats_of((full / f"{stem}_stats.json").read_bytes())["status_dict"]
        after = stats_of((expected / f"{stem}_stats.json").read_bytes())["status_dict"]
        assert set(after) < set(before), stem  # a message all of whose rows were removed
    with tarfile.open(full / "00003.tar") as tar:
        assert max(m.size for m in tar) > 10 * 2**20
    assert (full / "00003.tar").stat().st_size > 10 * 2**20  # one cut: on one S3 endpoint, assembled


def test_local_sets_come_out_as_img2dataset_writes_them_without_the_removed_urls(runs, tmp_path: Path) -> None:
    full, expected = runs
    out = tmp_path / "out"

    shards = run(str(full / "{00000..00003}.tar"), str(out), tmp_path)

    assert [s["output_via"] for s in shards] == ["rewrite", "byte_copy", "rewrite", "rewrite"]
    assert_as_img2dataset_writes(reader(out), full, expected)
    # verify reads each set as one (its rows are its Parquet's, failed downloads included), as the run did
    blocklist = str(tmp_path / "list.txt")
    assert cli.main(["verify", str(out), "--blocklist", blocklist, "--key", "url"]) == 0
    (out / "00002.parquet").write_bytes((full / "00002.parquet").read_bytes())  # a set whose Parquet was not cleaned
    assert cli.main(["verify", str(out), "--blocklist", blocklist, "--key", "url"]) == 1


@pytest.mark.parametrize("output", ["s3", "local"])
def test_sets_on_s3_come_out_as_img2dataset_writes_them_without_the_removed_urls(
    runs, s3_endpoint, s3_client, bucket, tmp_path: Path, output: str
) -> None:
    """To the same S3 endpoint the big set is assembled from copied ranges; to a local prefix every set is streamed."""
    full, expected = runs
    for path in sorted(full.iterdir()):
        s3_client.put_object(Bucket=bucket, Key=f"laion/{path.name}", Body=path.read_bytes())
    out = f"s3://{bucket}/clean/" if output == "s3" else str(tmp_path / "out")

    inputs = f"s3://{bucket}/laion/{{00000..00003}}.tar"
    shards = run(inputs, out, tmp_path, "--s3-endpoint-url", s3_endpoint)

    if output == "s3":
        assert [s["output_via"] for s in shards] == ["rewrite", "server_copy", "rewrite", "assembled"]
        read: Read = lambda name: s3_get(s3_client, bucket, f"clean/{name}")  # noqa: E731
    else:
        assert [s["output_via"] for s in shards] == ["rewrite", "byte_copy", "rewrite", "rewrite"]
        read = reader(tmp_path / "out")
    assert_as_img2dataset_writes(read, full, expected)
