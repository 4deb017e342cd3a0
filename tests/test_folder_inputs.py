"""Folders and prefixes as inputs, bare globs, the output-inside-input rule, and S3 refusals before any shard.

Issue 14, items 2, 3, 4 and 6: what a new user types in the first hour. Expected outputs come from
pyarrow, json and tarfile (``reference_filter``, ``reference_tar``), never from streamfilter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fault_proxy import FaultProxy, Rule
from helpers import (
    assert_same_table,
    files_under,
    put_table,
    read_parquet,
    reference_filter,
    s3_get,
    s3_keys,
    sample,
    serve,
    shard_table,
    write_list,
    write_shard,
)
from test_img2dataset import check_local_sets, make_set
from wds_helpers import drop_listed, make_shard, reference_tar

from streamfilter import cli


def jsonl_shard(path: Path, urls: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"url": u, "n": i}) + "\n" for i, u in enumerate(urls)))
    return path


def jsonl_reference(path: Path, listed: list[str]) -> str:
    """The input's lines whose url is not listed, as they were."""
    lines = path.read_text().splitlines(keepends=True)
    return "".join(line for line in lines if json.loads(line)["url"] not in set(listed))


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("streamfilter: error: "), err
    return lines[0]


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """``data/``: Parquet at two depths, JSON lines, a WebDataset tar, and what is no shard."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    tables = {"a.parquet": shard_table(300, seed=1), "sub/b.parquet": shard_table(200, start=300, seed=2)}
    for name, table in tables.items():
        write_shard(data / name, table)
    jsonl_urls = [f"https://j.example/{i}" for i in range(50)]
    jsonl_shard(data / "sub" / "deeper" / "c.jsonl", jsonl_urls)
    tar_urls = make_shard(data / "d.tar", 20, seed=3)
    (data / "_SUCCESS").write_bytes(b"")
    (data / "notes.txt").write_text("not a shard\n")
    write_shard(data / ".hidden.parquet", shard_table(10, seed=4))
    write_shard(data / ".cache" / "e.parquet", shard_table(10, seed=5))
    (data / "_streamfilter" / "receipts").mkdir(parents=True)
    (data / "_streamfilter" / "receipts" / "old.parquet.json").write_text("{}")
    listed = [
        *sample(tables["a.parquet"]["url"], 9),
        *sample(tables["sub/b.parquet"]["url"], 7),
        *jsonl_urls[::5],
        *tar_urls[::4],
    ]
    write_list(tmp_path / "list.txt", listed)
    return {"root": tmp_path, "data": data, "tables": tables, "listed": listed}


@pytest.mark.parametrize("spelling", ["data", "data/", "file://data/", "ABS"])
def test_a_folder_is_every_shard_under_it(folder: dict, spelling: str, capsys, caplog) -> None:
    root, data, listed = folder["root"], folder["data"], folder["listed"]
    given = str(data) if spelling == "ABS" else spelling

    code = cli.main(["run", given, "--output", "clean", "--blocklist", "list.txt", "--key", "url"])

    err = capsys.readouterr().err
    assert code == 0, err
    out = root / "clean"
    assert files_under(out) == ["a.parquet", "d.tar", "sub/b.parquet", "sub/deeper/c.jsonl"]
    for name, table in folder["tables"].items():
        assert_same_table(read_parquet(out / name), reference_filter(table, listed))
    expected_jsonl = jsonl_reference(data / "sub" / "deeper" / "c.jsonl", listed)
    assert (out / "sub" / "deeper" / "c.jsonl").read_text() == expected_jsonl
    assert (out / "d.tar").read_bytes() == reference_tar(data / "d.tar", drop_listed(listed))[1]
    # One line says what was skipped and why; the mixed formats each ran as their own.
    (note,) = [line for line in caplog.messages if "skipped" in line]
    assert "4 shards" in note and "jsonl, parquet, webdataset" in note
    assert "skipped 5 objects" in note and "1 under _streamfilter/" in note and "2 hidden" in note
    assert "2 that no format claims (e.g. _SUCCESS, notes.txt)" in note


def test_what_a_folder_skipped_is_said_on_stderr(folder: dict) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT")}
    code, err = run_cli_process(["run", "data", "--dry-run", "--blocklist", "list.txt"], env, folder["root"])

    assert code == 0, err
    assert "Traceback" not in err
    (note,) = [line for line in err.splitlines() if line.startswith("data/:")]
    assert note == (
        "data/: 4 shards, each run as its own format: jsonl, parquet, webdataset; skipped 5 objects: 2 hidden, "
        "1 under _streamfilter/, 2 that no format claims (e.g. _SUCCESS, notes.txt)"
    )


def test_a_rerun_of_a_folder_run_reads_no_output(folder: dict, capsys) -> None:
    argv = ["run", "data", "--output", "clean", "--blocklist", "list.txt", "--report", "report.json"]
    assert cli.main(argv) == 0
    assert cli.main(argv) == 0
    report = json.loads((folder["root"] / "report.json").read_text())
    assert sorted(Path(s["input"]).name for s in report["shards"]) == ["a.parquet", "b.parquet", "c.jsonl", "d.tar"]
    assert all(s["resumed"] for s in report["shards"])


def test_a_named_format_takes_only_its_own_objects(folder: dict, capsys, caplog) -> None:
    code = cli.main(["run", "data/", "--format", "parquet", "--output", "clean", "--blocklist", "list.txt"])

    assert code == 0, capsys.readouterr().err
    assert files_under(folder["root"] / "clean") == ["a.parquet", "sub/b.parquet"]
    assert "2 not claimed by --format parquet (e.g. c.jsonl, d.tar)" in caplog.text


def test_a_folder_of_img2dataset_sets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, caplog) -> None:
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "ds"
    sets = [make_set(src, i, n=30) for i in range(3)]
    (src / "_SUCCESS").write_bytes(b"")
    listed = {sets[0][0][2], sets[2][0][29], sets[1][1]["url"][31].as_py()}  # the last: a failed download
    write_list(tmp_path / "list.txt", sorted(listed))
    argv = ["run", "ds", "--output", "clean", "--blocklist", "list.txt", "--report", "report.json"]

    # Without --format the tars and the Parquet files would be filtered apart and _stats.json left behind.
    assert cli.main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "img2dataset shard sets" in line and "--format img2dataset" in line
    assert not (tmp_path / "clean").exists()

    # Nor may a pattern that picks their tars: the natural 'ds/*.tar' would leave the stats behind too.
    for pattern in ("ds/*.tar", "ds/0000?.*"):
        assert cli.main(["run", pattern, *argv[2:]]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"{pattern} names img2dataset shard sets (ds/00000.tar has" in line and "--format img2dataset" in line
        assert not (tmp_path / "clean").exists()
    assert cli.main(["run", "ds/*.tar", *argv[2:], "--format", "webdataset", "--dry-run"]) == 0  # the tars alone

    assert cli.main([*argv, "--format", "img2dataset"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [Path(s["input"]).name for s in report["shards"]] == ["00000.tar", "00001.tar", "00002.tar"]
    assert files_under(tmp_path / "clean") == sorted(
        f"{i:05d}{suffix}" for i in range(3) for suffix in (".parquet", ".tar", "_stats.json")
    )
    check_local_sets(src, tmp_path / "clean", sets, listed)
    assert "6 img2dataset set members" in caplog.text and "1 that no format claims (e.g. _SUCCESS)" in caplog.text


def test_a_bare_glob_is_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    tables = {n: shard_table(100, start=i * 100, seed=i) for i, n in enumerate(["x.parquet", "y.parquet"])}
    for name, table in tables.items():
        write_shard(tmp_path / name, table)
    write_shard(tmp_path / "sub" / "z.parquet", shard_table(10, seed=9))  # '*' stays in its directory
    listed = [u for t in tables.values() for u in sample(t["url"], 6)]
    write_list(tmp_path / "list.txt", listed)

    code = cli.main(["run", "*.parquet", "--output", "clean", "--blocklist", "list.txt", "--report", "r.json"])

    err = capsys.readouterr().err
    assert code == 0, err
    assert files_under(tmp_path / "clean") == ["x.parquet", "y.parquet"]
    for name, table in tables.items():
        assert_same_table(read_parquet(tmp_path / "clean" / name), reference_filter(table, listed))
    # Named as the user wrote them, not './x.parquet'.
    assert [s["input"] for s in json.loads((tmp_path / "r.json").read_text())["shards"]] == ["x.parquet", "y.parquet"]

    assert cli.main(["run", "*.pq", "--output", "clean2", "--blocklist", "list.txt"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "no object matches *.pq" in line and str(tmp_path) in line and "credential" not in line


def test_outputs_beside_or_under_named_inputs_are_fine(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    one = shard_table(100, seed=1)
    write_shard(tmp_path / "one.parquet", one)
    inner = shard_table(120, seed=2)
    write_shard(tmp_path / "data" / "0.parquet", inner)
    listed = [*sample(one["url"], 5), *sample(inner["url"], 5)]
    write_list(tmp_path / "list.txt", listed)

    assert cli.main(["run", "one.parquet", "--output", "clean", "--blocklist", "list.txt"]) == 0
    assert_same_table(read_parquet(tmp_path / "clean" / "one.parquet"), reference_filter(one, listed))
    glob_run = ["run", "data/*.parquet", "--output", "data/clean/", "--blocklist", "list.txt", "--report", "r.json"]
    assert cli.main(glob_run) == 0
    assert cli.main(glob_run) == 0  # the rerun reads data/0.parquet only
    assert [s["input"] for s in json.loads((tmp_path / "r.json").read_text())["shards"]] == ["data/0.parquet"]
    assert_same_table(read_parquet(tmp_path / "data" / "clean" / "0.parquet"), reference_filter(inner, listed))


@pytest.mark.parametrize(
    ("inputs", "output", "says"),
    [
        (["data"], "data/clean", "the folder data/ holds it"),
        (["data/"], "data/sub/clean/", "the folder data/ holds it"),
        (["data/**.parquet"], "data/clean/", "the pattern data/**.parquet matches it"),
        (["data/*/*.parquet"], "data/clean/", "the pattern data/*/*.parquet matches it"),
    ],
)
def test_outputs_a_rerun_would_read_are_refused(
    tmp_path: Path, monkeypatch, capsys, inputs: list[str], output: str, says: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write_shard(tmp_path / "data" / "sub" / "0.parquet", shard_table(50, seed=1))
    write_list(tmp_path / "list.txt", ["x"])

    assert cli.main(["run", *inputs, "--output", output, "--blocklist", "list.txt"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "inside the input prefix" in line and says in line and "--output-inside-input" in line
    assert files_under(tmp_path / "data") == ["sub/0.parquet"]


@pytest.mark.parametrize(
    ("inputs", "says"),
    [
        (["nothere.parquet"], "not found: nothere.parquet"),
        (["absent"], "not found: absent"),
        (["absent/"], "no folder absent/"),
        (["empty/"], "no shard under empty/: nothing is there"),
        (["only-notes"], "no shard under only-notes/: skipped 1 object: 1 that no format claims (e.g. notes.txt)"),
        (["data/*.jsonl"], "no object matches data/*.jsonl in "),
    ],
)
def test_inputs_that_match_nothing_are_usage_errors(
    tmp_path: Path, monkeypatch, capsys, inputs: list[str], says: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write_shard(tmp_path / "data" / "0.parquet", shard_table(10, seed=1))
    (tmp_path / "empty").mkdir()
    (tmp_path / "only-notes").mkdir()
    (tmp_path / "only-notes" / "notes.txt").write_text("hello\n")
    write_list(tmp_path / "list.txt", ["x"])

    assert cli.main(["run", *inputs, "--output", "out", "--blocklist", "list.txt"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert says in line and "credential" not in line
    assert not (tmp_path / "out").exists()


def test_an_http_folder_cannot_be_listed(http_server, tmp_path: Path, capsys) -> None:
    directory, url = http_server.dir()
    write_shard(directory / "0.parquet", shard_table(10, seed=1))
    write_list(tmp_path / "list.txt", ["x"])

    code = cli.main(["run", url, "--output", str(tmp_path / "out"), "--blocklist", str(tmp_path / "list.txt")])

    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert "HTTP servers give no listing" in line and "brace range" in line and "manifest" in line


# --- S3 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("slash", ["/", ""])
def test_an_s3_prefix_is_every_shard_under_it(s3_endpoint, s3_client, bucket, tmp_path: Path, slash: str) -> None:
    tables = {"a.parquet": shard_table(300, seed=1), "2024/b.parquet": shard_table(200, start=300, seed=2)}
    for name, table in tables.items():
        put_table(s3_client, bucket, f"data/{name}", table)
    s3_client.put_object(Bucket=bucket, Key="data/_SUCCESS", Body=b"")
    s3_client.put_object(Bucket=bucket, Key="data/_streamfilter/receipts/x.parquet.json", Body=b"{}")
    s3_client.put_object(Bucket=bucket, Key="data/2024/", Body=b"")  # a console's "folder" marker
    s3_client.put_object(Bucket=bucket, Key="database/c.parquet", Body=b"not under data/")
    listed = [u for t in tables.values() for u in sample(t["url"], 8)]
    blocklist = write_list(tmp_path / "list.txt", listed)

    code = cli.main(
        ["run", f"s3://{bucket}/data{slash}", "--output", f"s3://{bucket}/clean/", "--blocklist", str(blocklist),
         "--s3-endpoint-url", s3_endpoint]
    )  # fmt: skip

    assert code == 0
    assert s3_keys(s3_client, bucket, "clean/") == ["clean/2024/b.parquet", "clean/a.parquet"]
    for name, table in tables.items():
        assert_same_table(read_parquet(s3_get(s3_client, bucket, f"clean/{name}")), reference_filter(table, listed))


def test_an_s3_output_under_an_input_prefix_is_refused(s3_endpoint, s3_client, bucket, tmp_path: Path, capsys) -> None:
    put_table(s3_client, bucket, "data/0.parquet", shard_table(10, seed=1))
    blocklist = write_list(tmp_path / "list.txt", ["x"])

    code = cli.main(
        ["run", f"s3://{bucket}/data/", "--output", f"s3://{bucket}/data/clean/", "--blocklist", str(blocklist),
         "--s3-endpoint-url", s3_endpoint]
    )  # fmt: skip

    assert code == 2
    assert "inside the input prefix" in one_error_line(capsys.readouterr().err)
    assert s3_keys(s3_client, bucket) == ["data/0.parquet"]


def no_credentials_env(tmp_path: Path) -> dict[str, str]:
    """This environment without any AWS credential source: no keys, empty config files, no IMDS."""
    empty = tmp_path / "aws-empty"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {
        **env,
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_CONFIG_FILE": str(empty),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def run_cli_process(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "streamfilter.cli", *argv], capture_output=True, text=True, timeout=120, env=env, cwd=cwd
    )
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("where", ["prefix", "glob", "object", "blocklist", "filter"])
def test_no_credentials_is_a_configuration_error(s3_endpoint, s3_client, bucket, tmp_path: Path, where: str) -> None:
    put_table(s3_client, bucket, "data/0.parquet", shard_table(10, seed=1))
    s3_client.put_object(Bucket=bucket, Key="lists/list.txt", Body=b"x\n")
    write_shard(tmp_path / "local.parquet", shard_table(10, seed=2))
    write_list(tmp_path / "list.txt", ["x"])
    inputs = {
        "prefix": f"s3://{bucket}/data/",
        "glob": f"s3://{bucket}/data/*.parquet",
        "object": f"s3://{bucket}/data/0.parquet",
    }.get(where, "local.parquet")
    membership = {
        "blocklist": ["--blocklist", f"s3://{bucket}/lists/list.txt"],
        "filter": ["--filter", f"s3://{bucket}/lists/list.txt"],
    }.get(where, ["--blocklist", "list.txt"])
    argv = ["run", inputs, "--output", "out", *membership, "--s3-endpoint-url", s3_endpoint]

    code, err = run_cli_process(argv, no_credentials_env(tmp_path), tmp_path)

    line = one_error_line(err)
    assert code == 2, err
    assert "no AWS credentials found" in line and "AWS_ACCESS_KEY_ID" in line and "AWS_PROFILE" in line
    assert "--s3-endpoint-url" in line and "NoCredentialsError" not in line
    assert not (tmp_path / "out").exists()


def test_an_unknown_profile_is_a_configuration_error(s3_endpoint, bucket, tmp_path: Path) -> None:
    write_list(tmp_path / "list.txt", ["x"])
    env = {**no_credentials_env(tmp_path), "AWS_PROFILE": "no-such-profile"}
    argv = [
        "run",
        f"s3://{bucket}/data/",
        "--output",
        "out",
        "--blocklist",
        "list.txt",
        "--s3-endpoint-url",
        s3_endpoint,
    ]

    code, err = run_cli_process(argv, env, tmp_path)

    line = one_error_line(err)
    assert code == 2 and "no-such-profile" in line and "AWS_PROFILE" in line


@pytest.mark.parametrize("where", ["prefix", "blocklist"])
def test_a_missing_bucket_is_a_configuration_error(
    s3_endpoint, s3_client, bucket, tmp_path: Path, capsys, where
) -> None:
    put_table(s3_client, bucket, "data/0.parquet", shard_table(10, seed=1))
    write_list(tmp_path / "list.txt", ["x"])
    inputs = f"s3://{bucket}-gone/data/" if where == "prefix" else f"s3://{bucket}/data/"
    blocklist = f"s3://{bucket}-gone/list.txt" if where == "blocklist" else str(tmp_path / "list.txt")

    code = cli.main(
        ["run", inputs, "--output", str(tmp_path / "out"), "--blocklist", blocklist, "--s3-endpoint-url", s3_endpoint]
    )

    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert f"{bucket}-gone" in line and "--s3-endpoint-url" in line
    assert ("there is no bucket" if where == "prefix" else "not found") in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["prefix", "blocklist"])
def test_access_denied_before_any_shard_is_a_configuration_error(
    s3_endpoint, s3_client, bucket, tmp_path: Path, capsys, where: str
) -> None:
    put_table(s3_client, bucket, "data/0.parquet", shard_table(10, seed=1))
    s3_client.put_object(Bucket=bucket, Key="lists/list.txt", Body=b"x\n")
    proxy = FaultProxy(s3_endpoint)
    proxy.rules = [Rule("List", "*", "denied") if where == "prefix" else Rule("HeadObject", "lists/list.txt", "denied")]
    inputs = f"s3://{bucket}/data/" if where == "prefix" else f"s3://{bucket}/data/0.parquet"

    with serve(proxy.app()) as url:
        code = cli.main(
            ["run", inputs, "--output", str(tmp_path / "out"), "--blocklist", f"s3://{bucket}/lists/list.txt",
             "--s3-endpoint-url", url]
        )  # fmt: skip

    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    # A listing's refusal names its code; a HEAD's has no body, so only its status.
    assert ("access denied (AccessDenied)" if where == "prefix" else "access denied (403)") in line
    assert "AWS_PROFILE" in line and bucket in line
    assert not (tmp_path / "out").exists()
