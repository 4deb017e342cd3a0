"""hf:// inputs (Hugging Face Hub datasets) against the loopback stand-in of the Hub in hub_standin.py."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from helpers import (
    assert_read_once,
    assert_same_table,
    files_under,
    read_parquet,
    reference_filter,
    sample,
    shard_table,
    write_list,
    write_shard,
)
from hub_standin import HubStandin, running_hub

import streamfilter
from streamfilter import cli
from streamfilter.errors import ShardError, UsageError
from streamfilter.plan import plan_shards
from streamfilter.store import StoreOptions, Stores

HF_TEST_TOKEN = "hf_standinToken7c1e9a52d4b3f680notReal"
REPO = "laion/relaion-standin"
BASE = f"hf://datasets/{REPO}"
#: Retries without waiting: the backoff is drawn from [0, this).
FAST = StoreOptions(retries=2, retry_max_seconds=0.01)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubStandin]:
    """The stand-in Hub on loopback, with HF_ENDPOINT and HF_TOKEN pointing the store at it.

    Connections anywhere but loopback are refused and fail the test: the real Hub is never asked.
    """
    from huggingface_hub import constants

    elsewhere: list[str] = []
    connect = socket.create_connection

    def loopback_only(address, *args, **kwargs):
        if address[0] not in ("127.0.0.1", "localhost", "::1"):
            elsewhere.append(str(address[0]))
            raise ConnectionRefusedError(f"test: no connection to {address[0]}")
        return connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", loopback_only)
    with running_hub(HF_TEST_TOKEN) as standin:
        monkeypatch.setenv("HF_ENDPOINT", standin.url)
        monkeypatch.setenv("HF_TOKEN", HF_TEST_TOKEN)
        for name in ("HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        # Read by huggingface_hub at import, so patched where it keeps them: no saved login may stand in
        # for HF_TOKEN, and no user-agent lookup may go to constants.ENDPOINT (the real Hub).
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield standin
    assert not elsewhere, f"connections attempted beyond loopback: {elsewhere}"


@pytest.fixture
def repo(hub: HubStandin, tmp_path: Path) -> Path:
    """A dataset of three Parquet shards (and a nested one, and a README) served from a local directory."""
    root = tmp_path / "repo"
    for i in range(3):
        write_shard(
            root / "data" / f"part-{i:05d}.parquet", shard_table(1200, start=i * 1200, seed=40 + i), row_group_size=400
        )
    write_shard(root / "data" / "extra" / "part-00099.parquet", shard_table(50, seed=49))
    (root / "README.md").write_text("# stand-in\n")
    hub.add_dataset(REPO, root)
    return root


def shard_uris(n: int = 3) -> list[str]:
    return [f"{BASE}/data/part-{i:05d}.parquet" for i in range(n)]


async def _with_store(fn, options: StoreOptions | None = None, on_retry=None):
    stores = Stores(options, on_retry=on_retry)
    try:
        return await fn(stores)
    finally:
        await stores.aclose()


def run_async(fn, options: StoreOptions | None = None, on_retry=None):
    return anyio.run(_with_store, fn, options, on_retry)


# --- the store ------------------------------------------------------------------------------


def test_stat_list_and_ranged_reads(hub: HubStandin, repo: Path) -> None:
    uri = shard_uris()[1]
    local = repo / "data" / "part-00001.parquet"
    data = local.read_bytes()

    async def go(stores: Stores):
        store = stores.for_uri(uri)
        info = await store.stat(uri)
        listed = await store.list(f"{BASE}/data/")
        hub.clear_log()
        pieces = [await store.read_range(uri, a, b) for a, b in [(0, 4), (100, 5000), (len(data) - 8, len(data))]]
        whole = await store.read_all(uri)
        return info, listed, pieces, whole

    info, listed, pieces, whole = run_async(go)

    assert info.uri == uri and info.size == len(data)
    assert info.etag == hashlib.sha256(data).hexdigest()  # the LFS identity: the Hub's ETag of the file
    expected = sorted([*shard_uris(), f"{BASE}/data/extra/part-00099.parquet"])
    assert [i.uri for i in listed] == expected
    assert {i.uri: i.size for i in listed} == {u: (repo / u[len(BASE) + 1 :]).stat().st_size for u in expected}
    assert pieces == [data[0:4], data[100:5000], data[-8:]]
    assert whole == data
    # One ranged GET per read, nothing read ahead: the first through the Hub's redirect, the others
    # straight to the signed CDN URL it redirected to (one resolver request per file, not per read),
    # which is sent no token.
    resolves = hub.requests("resolve")
    cdn = hub.requests("cdn")
    size = len(data)
    assert [r.range for r in cdn] == [
        "bytes=0-3",
        "bytes=100-4999",
        f"bytes={size - 8}-{size - 1}",
        f"bytes=0-{size - 1}",
    ]
    assert [(r.range, r.status) for r in resolves] == [("bytes=0-3", 302)] and [r.status for r in cdn] == [206] * 4
    assert [r.authorized for r in cdn] == [True, False, False, False]  # the first followed the Hub's redirect
    assert {r.kind for r in hub.requests()} == {"resolve", "cdn"}  # stat's listing was cached


def test_git_file_and_revision(hub: HubStandin, repo: Path) -> None:
    hub.add_dataset(REPO, {"data/part-00000.parquet": b"older bytes", "notes.txt": b"hello"}, revision="v1")

    async def go(stores: Stores):
        store = stores.for_uri(BASE)
        readme = await store.read_range(f"{BASE}/README.md", 2, 7)
        old = await store.read_all(f"{BASE}@v1/data/part-00000.parquet")
        listed = await store.list(f"{BASE}@v1/")
        return readme, old, listed

    readme, old, listed = run_async(go)

    assert readme == b"stand"  # kept in git: served by resolve itself, no redirect
    assert old == b"older bytes"
    assert [i.uri for i in listed] == [f"{BASE}@v1/data/part-00000.parquet", f"{BASE}@v1/notes.txt"]
    assert listed[1].etag == hashlib.sha1(b"blob 5\0hello").hexdigest()  # a git file: its blob id


@pytest.mark.parametrize("page_size", [1000, 2])
def test_glob_expanded_by_the_plan(hub: HubStandin, repo: Path, page_size: int) -> None:
    hub.page_size = page_size  # 2: the listing is paginated and split by directory, as for large repositories

    async def go(stores: Stores):
        flat = await plan_shards([f"{BASE}/data/*.parquet"], "out", stores)
        deep = await plan_shards([f"{BASE}/data/**/part-*.parquet"], "out", stores)
        return flat, deep

    flat, deep = run_async(go)

    assert [s.input for s in flat.shards] == shard_uris()
    assert [s.name for s in flat.shards] == [f"part-{i:05d}.parquet" for i in range(3)]
    assert [s.output for s in flat.shards] == [f"out/part-{i:05d}.parquet" for i in range(3)]
    assert [s.info.size for s in flat.shards] == [  # type: ignore[union-attr]
        (repo / "data" / f"part-{i:05d}.parquet").stat().st_size for i in range(3)
    ]
    assert [s.input for s in deep.shards] == sorted([*shard_uris(), f"{BASE}/data/extra/part-00099.parquet"])
    if page_size == 2:
        assert any("cursor=" in r.query for r in hub.requests("tree"))


def test_glob_matching_nothing_is_a_usage_error(hub: HubStandin, repo: Path) -> None:
    async def go(stores: Stores):
        await plan_shards([f"{BASE}/nowhere/*.parquet"], "out", stores)

    with pytest.raises(UsageError, match="no object matches"):
        run_async(go)


def test_run_end_to_end(hub: HubStandin, repo: Path, tmp_path: Path) -> None:
    tables = {i: read_parquet(repo / "data" / f"part-{i:05d}.parquet") for i in range(3)}
    listed = [u for t in tables.values() for u in sample(t["url"], 17, offset=3)]
    blocklist = write_list(tmp_path / "list.txt", listed)

    report = streamfilter.run(
        [f"{BASE}/data/*.parquet"],
        output=str(tmp_path / "out"),
        blocklist=[str(blocklist)],
        concurrency=3,
        quiet=True,
    )

    assert report.ok, [s.error for s in report.shards]
    assert [s.input for s in report.shards] == shard_uris()
    assert files_under(tmp_path / "out") == [f"part-{i:05d}.parquet" for i in range(3)]
    for i, table in tables.items():
        out = tmp_path / "out" / f"part-{i:05d}.parquet"
        assert_same_table(read_parquet(out), reference_filter(table, listed))
        assert_read_once(report.shards[i].bytes_read, repo / "data" / f"part-{i:05d}.parquet")
    assert sum(s.rows_removed for s in report.shards) == len(listed)
    assert HF_TEST_TOKEN not in report.to_json()


def test_output_to_hf_is_a_usage_error(hub: HubStandin, repo: Path, tmp_path: Path, capsys) -> None:
    blocklist = write_list(tmp_path / "list.txt", ["x"])
    code = cli.main(["run", shard_uris()[0], "--output", f"{BASE}/clean/", "--blocklist", str(blocklist)])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot write to" in err and len(err.strip().splitlines()) == 1

    async def go(stores: Stores):
        stores.for_uri(BASE).open_write(f"{BASE}/x.parquet")

    with pytest.raises(UsageError, match=r"hf:// is read-only here; write outputs to s3:// or a local path"):
        run_async(go)


# --- credentials --------------------------------------------------------------------------------


def run_cli(inputs: list[str], tmp_path: Path, *extra: str) -> int:
    blocklist = write_list(tmp_path / "list.txt", ["https://example.com/nothing"])
    return cli.main(
        [
            *("run", *inputs, "--output", str(tmp_path / "out"), "--blocklist", str(blocklist)),
            *("--report", str(tmp_path / "report.json"), "--retries", "1", "--retry-max-seconds", "0.01", *extra),
        ]
    )


def use_token(monkeypatch: pytest.MonkeyPatch, token: str | None) -> None:
    """HF_TOKEN set to ``token``, or unset for None."""
    if token is None:
        monkeypatch.delenv("HF_TOKEN")
    else:
        monkeypatch.setenv("HF_TOKEN", token)


def assert_secret_free(texts: list[str], *secrets: str) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text


@pytest.mark.parametrize(
    ("token", "status", "says"),
    [
        (None, 401, "HF_TOKEN is not set"),
        ("hf_wrongTokenAbc123notReal", 401, "the Hub refused the token in HF_TOKEN"),
        ("hf_deniedTokenDef456notReal", 403, "the account of the token in HF_TOKEN has no access"),
    ],
)
def test_access_denied_fails_the_shard_clearly(
    hub: HubStandin, repo: Path, tmp_path: Path, monkeypatch, capsys, caplog, token, status, says
) -> None:
    caplog.set_level(logging.DEBUG)
    use_token(monkeypatch, token)
    if status == 403:
        hub.denied.add(token)

    code = run_cli([shard_uris()[0]], tmp_path, "--verbose")

    captured = capsys.readouterr()
    assert code == 1
    report_text = (tmp_path / "report.json").read_text()
    (shard,) = json.loads(report_text)["shards"]
    assert shard["status"] == "failed"
    error = shard["error"]
    assert len(error.splitlines()) == 1
    assert shard_uris()[0] in error and f"HTTP {status}" in error and says in error
    assert "gated or private" in error and f"{hub.url}/datasets/{REPO}" in error and "set HF_TOKEN" in error
    assert files_under(tmp_path / "out") == []
    assert_secret_free(
        [captured.out, captured.err, report_text, caplog.text], HF_TEST_TOKEN, *([token] if token else [])
    )
    # Refused for good: asked once, not retried.
    assert not [r for r in hub.requests() if r.status >= 500]


@pytest.mark.parametrize("token", [None, "hf_wrongTokenAbc123notReal"])
def test_access_denied_on_a_glob_is_a_usage_error(
    hub: HubStandin, repo: Path, tmp_path: Path, monkeypatch, capsys, caplog, token
) -> None:
    caplog.set_level(logging.DEBUG)
    use_token(monkeypatch, token)

    code = run_cli([f"{BASE}/data/*.parquet"], tmp_path)

    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("streamfilter: error: listing hf://datasets/") and "HF_TOKEN" in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "report.json").exists()
    assert_secret_free([captured.out, captured.err, caplog.text], HF_TEST_TOKEN, *([token] if token else []))


# --- missing objects -------------------------------------------------------------------------


def test_missing_file_fails_that_shard(hub: HubStandin, repo: Path, tmp_path: Path) -> None:
    table = read_parquet(repo / "data" / "part-00000.parquet")
    blocklist = write_list(tmp_path / "list.txt", sample(table["url"], 10))
    gone = f"{BASE}/data/gone.parquet"

    report = streamfilter.run(
        [shard_uris()[0], gone], output=str(tmp_path / "out"), blocklist=[str(blocklist)], quiet=True
    )

    assert [s.status for s in report.shards] == ["done", "failed"]
    error = report.shards[1].error
    assert gone in error and "not found" in error and "check the repository, the revision and the path" in error
    assert files_under(tmp_path / "out") == ["part-00000.parquet"]


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("hf://datasets/laion/no-such-repo/data/a.parquet", "no such repository (HTTP 404)"),
        (f"{BASE}@no-such-branch/data/part-00000.parquet", "no such revision (HTTP 404)"),
    ],
)
def test_missing_repository_or_revision(hub: HubStandin, repo: Path, uri: str, says: str) -> None:
    async def go(stores: Stores):
        await stores.for_uri(uri).stat(uri)

    with pytest.raises(ShardError) as caught:
        run_async(go)
    assert uri in str(caught.value) and says in str(caught.value)


def test_file_gone_between_stat_and_read_is_a_404(hub: HubStandin, tmp_path: Path) -> None:
    files = {"data/a.parquet": b"x" * 1000}
    hub.add_dataset(REPO, files)
    uri = f"{BASE}/data/a.parquet"

    async def go(stores: Stores):
        store = stores.for_uri(uri)
        await store.stat(uri)
        files.clear()
        await store.read_range(uri, 0, 10)

    with pytest.raises(ShardError, match=r"reading hf://\S+ failed: not found \(HTTP 404\)"):
        run_async(go)
    assert [r.status for r in hub.requests("resolve")] == [404]  # not retried


# --- transient failures -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["resolve", "cdn"])
def test_transient_503_on_a_ranged_read_is_retried(hub: HubStandin, repo: Path, kind: str) -> None:
    uri = shard_uris()[2]
    data = (repo / "data" / "part-00002.parquet").read_bytes()
    retries: list[int] = []

    async def go(stores: Stores):
        store = stores.for_uri(uri)
        await store.stat(uri)
        hub.clear_log()
        hub.fail(kind, 503, times=1)
        return await store.read_range(uri, 10, 2000)

    got = run_async(go, FAST, on_retry=lambda: retries.append(1))

    assert got == data[10:2000]
    assert len(retries) == 1
    statuses = [(r.kind, r.status) for r in hub.requests()]
    if kind == "resolve":
        assert statuses == [("resolve", 503), ("resolve", 302), ("cdn", 206)]
    else:
        assert statuses == [("resolve", 302), ("cdn", 503), ("resolve", 302), ("cdn", 206)]


def test_persistent_503_gives_up(hub: HubStandin, repo: Path) -> None:
    uri = shard_uris()[0]

    async def go(stores: Stores):
        store = stores.for_uri(uri)
        await store.stat(uri)
        hub.fail("resolve", 503, times=10)
        await store.read_range(uri, 0, 100)

    with pytest.raises(ShardError, match=r"HTTP 503 \(gave up after 3 attempts\)"):
        run_async(go, FAST)
    assert len(hub.requests("resolve")) == 3


def test_transient_failure_of_the_repository_lookup_is_retried(hub: HubStandin, repo: Path) -> None:
    uri = shard_uris()[0]
    hub.fail("info", 502, times=1)

    info = run_async(lambda stores: stores.for_uri(uri).stat(uri), FAST)

    assert info.size == (repo / "data" / "part-00000.parquet").stat().st_size
    assert [r.status for r in hub.requests("info")] == [502, 200]


# --- the stand-in itself ------------------------------------------------------------------------


def test_standin_serves_paths_info_and_head(hub: HubStandin, repo: Path) -> None:
    """Routes HfFileSystem uses outside the store's paths: expanded info (paths-info) and HEAD on resolve."""
    from huggingface_hub import HfFileSystem
    from huggingface_hub.utils import get_session

    fs = HfFileSystem(token=HF_TEST_TOKEN, endpoint=hub.url, skip_instance_cache=True)
    info = fs.info(f"datasets/{REPO}/data/part-00000.parquet", expand_info=True)
    assert info["size"] == (repo / "data" / "part-00000.parquet").stat().st_size
    assert info["last_commit"] is not None
    assert [r.method for r in hub.requests("paths-info")] == ["POST"]

    head = get_session().head(
        f"{hub.url}/datasets/{REPO}/resolve/main/data/part-00000.parquet",
        headers={"Authorization": f"Bearer {HF_TEST_TOKEN}"},
        follow_redirects=False,
    )
    assert head.status_code == 302
    assert head.headers["X-Linked-Size"] == str(info["size"])
    assert head.headers["X-Linked-Etag"].strip('"') == info["lfs"]["sha256"]
    assert "X-Xet-Hash" not in head.headers and "xet" not in json.dumps(dict(head.headers)).lower()


def test_wildcard_in_the_repository_name_is_a_usage_error(hub: HubStandin, repo: Path, tmp_path: Path, capsys) -> None:
    code = run_cli(["hf://datasets/laion/*/data/*.parquet"], tmp_path)

    assert code == 2
    err = capsys.readouterr().err
    assert "not repository names; name the repository" in err and len(err.strip().splitlines()) == 1


def test_reads_of_one_file_stay_on_one_commit(hub: HubStandin) -> None:
    """A branch moved mid-run: later reads of a file come from the commit of its first read; a new
    run sees the new version, under a new ETag."""
    old, new = bytes(range(256)) * 8, bytes(reversed(range(256))) * 8
    hub.add_dataset(REPO, {"data/a.parquet": old})
    hub.add_dataset(REPO, {"data/a.parquet": old}, revision="v0")  # the old commit stays reachable, as on the Hub
    uri = f"{BASE}/data/a.parquet"

    async def first_run(stores: Stores):
        store = stores.for_uri(uri)
        info = await store.stat(uri)
        head = await store.read_range(uri, 0, 100)
        hub.add_dataset(REPO, {"data/a.parquet": new})  # main moves on
        tail = await store.read_range(uri, 100, len(old))
        return info, head + tail

    info, data = run_async(first_run)
    later = run_async(lambda stores: stores.for_uri(uri).stat(uri))

    assert data == old
    assert info.etag == hashlib.sha256(old).hexdigest() and later.etag == hashlib.sha256(new).hexdigest()
    # The second read went straight to the CDN URL of the first one's content, not through main again.
    resolves, cdn = hub.requests("resolve"), hub.requests("cdn")
    assert len(resolves) == 1 and "/resolve/main/" in resolves[0].path
    assert {r.path for r in cdn} == {f"/_cdn/{hashlib.sha256(old).hexdigest()}"} and len(cdn) == 2


def test_a_refused_cdn_url_is_dropped_and_the_hub_asked_again(hub: HubStandin, repo: Path) -> None:
    """Signed CDN URLs expire: a 403 from one is no failure, the read goes back through the Hub."""
    uri = shard_uris()[0]
    data = (repo / "data" / "part-00000.parquet").read_bytes()
    retries: list[int] = []

    async def go(stores: Stores):
        store = stores.for_uri(uri)
        await store.read_range(uri, 0, 10)
        path = uri.split("://", 1)[1]
        url, since = store._cdn[path]
        store._cdn[path] = (url.replace("Signature=", "Signature=0"), since)  # as if it had expired
        hub.clear_log()
        return await store.read_range(uri, 10, 5000)

    assert run_async(go, FAST, on_retry=lambda: retries.append(1)) == data[10:5000]
    assert [(r.kind, r.status) for r in hub.requests()] == [("cdn", 403), ("resolve", 302), ("cdn", 206)]
    assert not retries
