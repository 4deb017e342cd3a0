"""Input expressions (globs, brace ranges, @manifests, file:// URIs) and output naming."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import (
    assert_same_table,
    files_under,
    put_table,
    read_parquet,
    reference_filter,
    s3_get,
    s3_keys,
    sample,
    shard_table,
    write_list,
    write_shard,
)

import streamfilter
from streamfilter import cli
from streamfilter.plan import expand_braces, glob_regex


def test_expand_braces() -> None:
    assert expand_braces("s/{00000..00003}.parquet") == [f"s/{i:05d}.parquet" for i in range(4)]
    assert expand_braces("s/{8..11}.pq") == ["s/8.pq", "s/9.pq", "s/10.pq", "s/11.pq"]
    assert expand_braces("s/{3..1}") == ["s/3", "s/2", "s/1"]
    assert expand_braces("{a,b}/{0..1}") == ["a/0", "a/1", "b/0", "b/1"]
    assert expand_braces("plain/{x}.parquet") == ["plain/{x}.parquet"]
    assert expand_braces("no-braces") == ["no-braces"]


def test_glob_regex() -> None:
    assert glob_regex("s3://b/p/*.parquet").match("s3://b/p/x.parquet")
    assert not glob_regex("s3://b/p/*.parquet").match("s3://b/p/sub/x.parquet")
    assert not glob_regex("s3://b/p/*.parquet").match("s3://b/p/x.parquet.tmp")
    assert glob_regex("s3://b/p/**.parquet").match("s3://b/p/sub/deeper/x.parquet")
    # "**/" is zero or more directories, as in a shell with globstar
    assert glob_regex("s3://b/p/**/*.parquet").match("s3://b/p/x.parquet")
    assert glob_regex("s3://b/p/**/*.parquet").match("s3://b/p/sub/deeper/x.parquet")
    assert not glob_regex("s3://b/p/**/*.parquet").match("s3://b/px.parquet")
    assert glob_regex("/d/part-?.parquet").match("/d/part-7.parquet")
    assert not glob_regex("/d/part-?.parquet").match("/d/part-17.parquet")
    assert glob_regex("/d/[ab].parquet").match("/d/b.parquet")
    assert not glob_regex("/d/[!ab].parquet").match("/d/a.parquet")
    assert glob_regex("/d/x+y(1).parquet").match("/d/x+y(1).parquet")


@pytest.fixture
def nested(tmp_path: Path):
    """Shards at three depths under in/, plus non-shards a glob must skip."""
    root = tmp_path / "in"
    names = ["top.parquet", "a/x.parquet", "b/c/y.parquet"]
    tables = {}
    for i, name in enumerate(names):
        tables[name] = shard_table(800, start=i * 800, seed=19)
        write_shard(root / name, tables[name], row_group_size=300)
    (root / "notes.txt").write_text("not a shard")
    (root / "a" / ".x.parquet.abc123.partial").write_bytes(b"half-written")
    listed = [u for t in tables.values() for u in sample(t["url"], 9)]
    return root, tables, write_list(tmp_path / "list.txt", listed), listed


def check_outputs(out: Path, tables: dict, listed: list[str]) -> None:
    assert files_under(out) == sorted(tables)
    for name, table in tables.items():
        assert_same_table(read_parquet(out / name), reference_filter(table, listed))


def test_local_recursive_glob_mirrors_nested_names(tmp_path: Path, nested) -> None:
    root, tables, blocklist, listed = nested
    report = streamfilter.run(
        [f"{root}/**.parquet"], output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True
    )
    assert report.ok
    assert sorted(s.input for s in report.shards) == sorted(str(root / n) for n in tables)
    check_outputs(tmp_path / "out", tables, listed)


def test_single_level_glob_skips_subdirectories(tmp_path: Path, nested) -> None:
    root, tables, blocklist, listed = nested
    report = streamfilter.run(
        [f"{root}/*.parquet"], output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True
    )
    assert [s.input for s in report.shards] == [str(root / "top.parquet")]
    check_outputs(tmp_path / "out", {"top.parquet": tables["top.parquet"]}, listed)


def test_manifest_with_comments_globs_and_duplicates(tmp_path: Path, nested) -> None:
    root, tables, blocklist, listed = nested
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(
        "# shards to clean\n\n"
        f"{root}/b/c/y.parquet\n"
        f"  {root}/a/*.parquet  \n"
        f"{root}/top.parquet\n"
        f"{root}/top.parquet\n"  # named twice, still one shard
    )

    report = streamfilter.run([f"@{manifest}"], output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True)

    assert report.ok
    assert [s.input for s in report.shards] == [str(root / n) for n in ("b/c/y.parquet", "a/x.parquet", "top.parquet")]
    check_outputs(tmp_path / "out", tables, listed)


def test_file_uris(tmp_path: Path, nested) -> None:
    root, tables, blocklist, listed = nested
    report = streamfilter.run(
        [f"file://{root}/**.parquet"],
        output=f"file://{tmp_path}/out",
        blocklist=[f"file://{blocklist}"],
        quiet=True,
    )
    assert report.ok
    assert all(s.input.startswith(f"file://{root}/") for s in report.shards)
    assert sorted(s.output for s in report.shards) == sorted(f"file://{tmp_path}/out/{n}" for n in tables)
    check_outputs(tmp_path / "out", tables, listed)


def test_relative_paths_and_brace_range(cwd_tmp: Path) -> None:
    tables = {}
    for i in range(4):
        tables[f"{i:05d}.parquet"] = shard_table(500, start=i * 500, seed=20)
        write_shard(cwd_tmp / "shards" / f"{i:05d}.parquet", tables[f"{i:05d}.parquet"])
    write_shard(cwd_tmp / "shards" / "00004.parquet", shard_table(10, start=9999))
    listed = [u for t in tables.values() for u in sample(t["url"], 25)]
    write_list(cwd_tmp / "list.txt", listed)

    code = cli.main(["run", "shards/{00000..00003}.parquet", "--output", "clean", "--blocklist", "list.txt"])

    assert code == 0
    check_outputs(cwd_tmp / "clean", tables, listed)


def test_s3_recursive_glob_and_s3_manifest(s3_endpoint, s3_client, bucket, tmp_path: Path) -> None:
    names = ["2024/01/a.parquet", "2024/02/b.parquet", "2025/c.parquet"]
    tables = {n: shard_table(700, start=i * 700, seed=22) for i, n in enumerate(names)}
    for name, table in tables.items():
        put_table(s3_client, bucket, f"laion/{name}", table)
    s3_client.put_object(Bucket=bucket, Key="laion/2024/_SUCCESS", Body=b"")
    listed = [u for t in tables.values() for u in sample(t["url"], 14)]
    blocklist = write_list(tmp_path / "list.txt", listed)
    manifest = "# selected\n" + f"s3://{bucket}/laion/2024/**.parquet\n\n" + f"s3://{bucket}/laion/2025/c.parquet\n"
    s3_client.put_object(Bucket=bucket, Key="lists/manifest.txt", Body=manifest.encode())

    report = streamfilter.run(
        [f"@s3://{bucket}/lists/manifest.txt"],
        output=f"s3://{bucket}/clean",
        blocklist=[str(blocklist)],
        s3_endpoint_url=s3_endpoint,
        quiet=True,
    )

    assert report.ok
    assert s3_keys(s3_client, bucket, "clean/") == sorted(f"clean/{n}" for n in names)
    for name, table in tables.items():
        assert_same_table(read_parquet(s3_get(s3_client, bucket, f"clean/{name}")), reference_filter(table, listed))


def test_missing_manifest_is_a_usage_error(tmp_path: Path, capsys) -> None:
    blocklist = write_list(tmp_path / "list.txt", ["x"])
    code = cli.main(["run", f"@{tmp_path}/nope.txt", "--output", str(tmp_path / "out"), "--blocklist", str(blocklist)])
    assert code == 2
    assert "cannot read manifest" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_local_glob_matching_nothing_is_a_usage_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    blocklist = write_list(tmp_path / "list.txt", ["x"])
    code = cli.main(
        ["run", f"{tmp_path}/in/*.parquet", "--output", str(tmp_path / "out"), "--blocklist", str(blocklist)]
    )
    assert code == 2
    assert "no object matches" in capsys.readouterr().err


def test_output_inside_input_prefix(tmp_path: Path, capsys) -> None:
    table = shard_table(400)
    src = write_shard(tmp_path / "data" / "0.parquet", table)
    listed = sample(table["url"], 8)
    blocklist = write_list(tmp_path / "list.txt", listed)
    argv = [
        "run",
        f"{tmp_path}/data/**.parquet",  # recursive: a rerun would match data/clean/0.parquet
        "--output",
        str(tmp_path / "data" / "clean"),
        "--blocklist",
        str(blocklist),
    ]

    assert cli.main(argv) == 2
    assert "inside the input prefix" in capsys.readouterr().err
    assert files_under(tmp_path / "data") == ["0.parquet"]

    assert cli.main([*argv, "--output-inside-input"]) == 0
    assert files_under(tmp_path / "data") == [
        "0.parquet",
        "clean/0.parquet",
        "clean/_streamfilter/receipts/0.parquet.json",
        "clean/_streamfilter/reports/worker-00000-of-00001.json",
    ]
    assert_same_table(
        read_parquet(tmp_path / "data" / "clean" / "0.parquet"), reference_filter(read_parquet(src), listed)
    )


def test_output_replacing_an_input_is_refused_even_inside(tmp_path: Path, capsys) -> None:
    table = shard_table(100)
    write_shard(tmp_path / "data" / "0.parquet", table)
    write_shard(tmp_path / "data" / "sub" / "0.parquet", table)
    blocklist = write_list(tmp_path / "list.txt", sample(table["url"], 8))
    before = (tmp_path / "data" / "sub" / "0.parquet").read_bytes()

    code = cli.main(
        [
            "run",
            str(tmp_path / "data" / "0.parquet"),
            "--output",
            str(tmp_path / "data" / "sub"),
            "--blocklist",
            str(blocklist),
            "--output-inside-input",
        ]
    )
    # data/0.parquet goes to data/sub/0.parquet: not an input of this run, so allowed (and replaced).
    assert code == 0
    assert (tmp_path / "data" / "sub" / "0.parquet").read_bytes() != before
    assert_same_table(
        read_parquet(tmp_path / "data" / "sub" / "0.parquet"), reference_filter(table, sample(table["url"], 8))
    )

    code = cli.main(
        [
            "run",
            str(tmp_path / "data" / "0.parquet"),
            str(tmp_path / "data" / "sub" / "0.parquet"),
            "--output",
            str(tmp_path / "data" / "sub"),
            "--blocklist",
            str(blocklist),
            "--output-inside-input",
        ]
    )
    assert code == 2
    assert "would replace input" in capsys.readouterr().err
