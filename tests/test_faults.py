"""Reliability under faults: a fault-injecting proxy between the engine and the loopback S3 and HTTP servers.

The proxy forwards every request to the real server and, on a schedule drawn from
``random.Random`` seeded per request (seed, request, how often it was seen), answers
some with 503 SlowDown, drops the connection without a reply, cuts a reply's body short
of its Content-Length, or delays it; and it fails chosen CompleteMultipartUpload and
CreateMultipartUpload calls, before forwarding them or after (the store acts, the reply
is lost). Seeding per request, not per arrival, keeps the schedule the same whatever
order concurrent requests arrive in.

A run through the proxy must write byte-for-byte what a clean run writes, leave no
multipart upload behind, and fail a shard only when its faults are not transient or
outlast the retries.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pyarrow as pa
import pytest
from aiohttp import web
from fault_proxy import FaultProxy, Rule
from helpers import (
    RECEIPTS,
    assert_same_table,
    put_table,
    random_strings,
    read_parquet,
    reference_filter,
    s3_get,
    s3_keys,
    s3_pending_uploads,
    sample,
    serve,
    shard_table,
    write_list,
    write_shard,
)
from yarl import URL

from streamfilter.engine import run_job
from streamfilter.errors import ShardError, UsageError
from streamfilter.formats import parquet as parquet_format
from streamfilter.ledger import Report
from streamfilter.progress import Progress
from streamfilter.spec import build_spec
from streamfilter.store import RetryPolicy, StoreOptions
from streamfilter.store.base import RETRY_BASE_SECONDS
from streamfilter.store.http import RedirectRefused, redirect_target
from streamfilter.store.s3 import S3Store, multipart_etag

#: Random faults, by kind: the share of requests that get one (truncation hits only replies with a body).
RATES = {"slowdown": 0.04, "reset": 0.06, "truncate": 0.08, "delay": 0.10}
#: Retries per request in the fault runs, and a backoff cap that keeps the tests short.
RETRIES, MAX_SLEEP = 8, 0.05


@pytest.fixture(autouse=True)
def multipart_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every output over one part is a multipart upload, as a larger shard's is: the faults of its create,
    parts and completion are what these tests inject (S3Store sends an output under two parts whole)."""
    monkeypatch.setattr(S3Store, "single_request_bytes", 0)


@pytest.fixture
def s3_proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's moto server, with no faults until a test sets them."""
    proxy = FaultProxy(s3_endpoint)
    with serve(proxy.app()) as proxy.url:
        yield proxy


def run_filter(inputs: list[str], output: str, blocklist: Path, **options: object) -> Report:
    """The engine over ``inputs``; ``retries``/``retry_max_seconds`` go to the stores."""
    store_options = {k: options.pop(k) for k in ("retries", "retry_max_seconds") if k in options}
    spec = build_spec({"inputs": inputs, "output": output, "blocklist": [str(blocklist)], "concurrency": 3, **options})
    # Set on StoreOptions directly: the API's options reach them once build_spec accepts the names.
    spec = dataclasses.replace(spec, stores=dataclasses.replace(spec.stores, **store_options))
    return anyio.run(lambda: run_job(spec, progress=Progress(0, stream=io.StringIO(), live=False)))


def data_objects(client, bucket: str, prefix: str) -> dict[str, bytes]:
    """Output objects under ``prefix`` by name relative to it; receipts are not output data."""
    names = [k for k in s3_keys(client, bucket, prefix) if not k[len(prefix) :].startswith(RECEIPTS)]
    return {k[len(prefix) :]: s3_get(client, bucket, k) for k in names}


def big_table(seed: int) -> pa.Table:
    """~11 MiB of incompressible strings: more than one 8 MiB part when written uncompressed."""
    n = 150_000
    return pa.table({"url": random_strings(n, 32, seed=seed), "id": pa.array(range(n), pa.int64())})


BIG = {"compression": "none", "use_dictionary": False, "row_group_size": 50_000}


@pytest.fixture(scope="module")
def big_tables() -> list[pa.Table]:
    return [big_table(seed) for seed in (71, 72)]


def put_inputs(client, bucket: str, big_tables: list[pa.Table]) -> tuple[dict[str, bytes], list[str]]:
    """Four small shards and two big ones under ``in/``; the keys a blocklist names."""
    inputs: dict[str, bytes] = {}
    for i in range(4):
        table = shard_table(3000, start=i * 3000, seed=31)
        inputs[f"small-{i}.parquet"] = put_table(client, bucket, f"in/small-{i}.parquet", table, row_group_size=1000)
    for i, table in enumerate(big_tables):
        inputs[f"big-{i}.parquet"] = put_table(client, bucket, f"in/big-{i}.parquet", table, **BIG)
    listed = [u for data in inputs.values() for u in sample(read_parquet(data)["url"], 997, offset=3)]
    return inputs, listed


def test_faulty_runs_write_what_a_clean_run_writes(
    s3_endpoint: str, s3_client, bucket: str, s3_proxy: FaultProxy, big_tables, tmp_path: Path, capsys, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="streamfilter")
    inputs, listed = put_inputs(s3_client, bucket, big_tables)
    blocklist = write_list(tmp_path / "list.txt", listed)
    shards = [f"s3://{bucket}/in/{name}" for name in sorted(inputs)]

    # The comparison below needs the output to be a function of the input: two clean runs must agree.
    for prefix in ("clean/", "clean-again/"):
        report = run_filter(shards, f"s3://{bucket}/{prefix}", blocklist, s3_endpoint_url=s3_endpoint)
        assert report.ok, [s.error for s in report.shards]
    clean = data_objects(s3_client, bucket, "clean/")
    assert clean == data_objects(s3_client, bucket, "clean-again/")
    assert sorted(clean) == sorted(inputs)
    for name, data in inputs.items():  # and right, by the independent reference
        assert_same_table(read_parquet(clean[name]), reference_filter(read_parquet(data), listed))
    assert sum(len(clean[f"big-{i}.parquet"]) > S3Store.part_size for i in range(2)) == 2

    totals: Counter[str] = Counter()
    requests = identical = 0
    seeds = (1, 2)
    for seed in seeds:
        s3_proxy.schedule(seed, RATES)
        # Both ways a completion can fail, and a creation whose reply is lost, in every run.
        s3_proxy.complete_faults = ["failed", "lost"]
        s3_proxy.create_faults = ["lost"]
        output = f"faulty-{seed}/"
        report = run_filter(
            shards,
            f"s3://{bucket}/{output}",
            blocklist,
            s3_endpoint_url=s3_proxy.url,
            retries=RETRIES,
            retry_max_seconds=MAX_SLEEP,
        )

        assert [s.status for s in report.shards] == ["done"] * len(shards), [s.error for s in report.shards]
        written = data_objects(s3_client, bucket, output)
        assert sorted(written) == sorted(clean)
        for name, data in clean.items():
            assert written[name] == data, name
        identical += len(written)
        assert s3_pending_uploads(s3_client, bucket) == []
        for kind in ("slowdown", "reset", "truncate", "delay", "complete failed", "complete lost", "create lost"):
            assert s3_proxy.injected[kind] > 0, (seed, kind, s3_proxy.injected)
        totals += s3_proxy.injected
        requests += s3_proxy.requests

    # The lost replies were recovered from as designed: the completion judged by the ETag after
    # NoSuchUpload, the upload a lost creation started found and aborted.
    assert caplog.text.count("completion reply lost; the object's ETag shows it complete") == len(seeds)
    assert caplog.text.count("left by an earlier attempt") == len(seeds)

    faults = ", ".join(f"{kind} {n}" for kind, n in sorted(totals.items()))
    with capsys.disabled():
        print(
            f"\nfault injection: {len(seeds)} runs of {len(shards)} shards, {requests} requests, "
            f"{sum(totals.values())} faults ({faults}); outputs identical to the clean run: "
            f"{identical}/{len(seeds) * len(clean)}; orphaned multipart uploads: "
            f"{len(s3_pending_uploads(s3_client, bucket))}"
        )


def test_faults_past_the_retry_limit_fail_only_their_shard(
    s3_client, bucket: str, s3_proxy: FaultProxy, big_tables, tmp_path: Path
) -> None:
    small = shard_table(2000, seed=44)
    for name in ("fine-0", "fine-1", "unavailable", "denied"):
        put_table(s3_client, bucket, f"in/{name}.parquet", small, row_group_size=1000)
    put_table(s3_client, bucket, "in/unfinished.parquet", big_tables[0], **BIG)
    listed = sample(small["url"], 50) + sample(big_tables[0]["url"], 1000)
    blocklist = write_list(tmp_path / "list.txt", listed)
    s3_proxy.schedule(seed=3)
    s3_proxy.rules = [
        # Transient, but it never ends.
        Rule("GetObject", "in/unavailable.parquet", "unavailable"),
        Rule("GetObject", "in/denied.parquet", "denied"),  # not transient: no retry
        Rule("CompleteMultipartUpload", "out/unfinished.parquet", "internal"),
    ]
    names = ["denied", "fine-0", "fine-1", "unavailable", "unfinished"]
    retries = 2

    report = run_filter(
        [f"s3://{bucket}/in/{n}.parquet" for n in names],
        f"s3://{bucket}/out/",
        blocklist,
        s3_endpoint_url=s3_proxy.url,
        retries=retries,
        retry_max_seconds=MAX_SLEEP,
    )

    status = {Path(s.input).stem: s for s in report.shards}
    assert {n: s.status for n, s in status.items()} == {
        "denied": "failed",
        "fine-0": "done",
        "fine-1": "done",
        "unavailable": "failed",
        "unfinished": "failed",
    }
    for name in ("denied", "unavailable", "unfinished"):
        error = status[name].error
        assert error is not None and "\n" not in error
        assert f"s3://{bucket}/{'out' if name == 'unfinished' else 'in'}/{name}.parquet" in error, error
    assert (
        "ServiceUnavailable" in status["unavailable"].error
        and f"after {retries + 1} attempts" in status["unavailable"].error
    )
    assert "access denied" in status["denied"].error
    assert "InternalError" in status["unfinished"].error
    assert s3_proxy.calls["GetObject", "in/denied.parquet"] == 1
    assert s3_proxy.calls["GetObject", "in/unavailable.parquet"] == retries + 1
    assert s3_proxy.calls["CompleteMultipartUpload", "out/unfinished.parquet"] == retries + 1
    assert s3_proxy.calls["AbortMultipartUpload", "out/unfinished.parquet"] == 1
    assert sorted(data_objects(s3_client, bucket, "out/")) == ["fine-0.parquet", "fine-1.parquet"]
    assert s3_pending_uploads(s3_client, bucket) == []
    expected = reference_filter(small, listed)
    for name in ("fine-0", "fine-1"):
        assert_same_table(read_parquet(s3_get(s3_client, bucket, f"out/{name}.parquet")), expected)


# --- HTTP inputs -------------------------------------------------------------------------------


def test_http_inputs_survive_faults(http_server, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    # A request a row group (not a block of them), so the run makes enough requests for every kind of fault.
    monkeypatch.setattr(parquet_format, "FETCH_BLOCK_BYTES", 1)
    root, base = http_server.dir()
    tables = [shard_table(4000, start=i * 4000, seed=61) for i in range(3)]
    for i, table in enumerate(tables):
        write_shard(root / f"{i}.parquet", table, row_group_size=500)
    listed = [u for t in tables for u in sample(t["url"], 37)]
    blocklist = write_list(tmp_path / "list.txt", listed)
    names = [f"{i}.parquet" for i in range(3)]
    clean = run_filter([base + n for n in names], str(tmp_path / "clean"), blocklist)
    assert clean.ok, [s.error for s in clean.shards]
    proxy = FaultProxy(http_server.url)
    proxy.schedule(seed=5, rates={"slowdown": 0.1, "reset": 0.1, "truncate": 0.15, "delay": 0.1})

    with serve(proxy.app()) as url:
        via = base.replace(http_server.url, url)
        report = run_filter(
            [via + n for n in [*names, "missing.parquet"]],
            str(tmp_path / "out"),
            blocklist,
            retries=RETRIES,
            retry_max_seconds=MAX_SLEEP,
        )

    assert [s.status for s in report.shards] == ["done"] * 3 + ["failed"], [s.error for s in report.shards]
    missing = report.shards[-1].error
    assert missing is not None and "missing.parquet" in missing and "404" in missing
    assert proxy.calls["HeadObject", "missing.parquet"] == 1  # a 404 is not retried
    for kind in ("slowdown", "reset", "truncate", "delay"):
        assert proxy.injected[kind] > 0, proxy.injected
    for name, table in zip(names, tables, strict=True):
        out = (tmp_path / "out" / name).read_bytes()
        assert out == (tmp_path / "clean" / name).read_bytes()
        assert_same_table(read_parquet(out), reference_filter(table, listed))
    faults = ", ".join(f"{kind} {n}" for kind, n in sorted(proxy.injected.items()))
    with capsys.disabled():
        print(
            f"\nfault injection over HTTP: 1 run of {len(names)} shards, {proxy.requests} requests, "
            f"{sum(proxy.injected.values())} faults ({faults}); outputs identical to the clean run: "
            f"{len(names)}/{len(names)}"
        )


class HopServer:
    """Files under ``/files/``; ``/hop/N/NAME`` redirects N times, the last time to ``target/files/NAME``.

    It records the headers of every request it gets.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.target = ""
        self.seen: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        kind, _, rest = request.path.lstrip("/").partition("/")
        if kind == "hop":
            hops, _, name = rest.partition("/")
            raise web.HTTPFound(f"/hop/{int(hops) - 1}/{name}" if int(hops) > 1 else f"{self.target}/files/{name}")
        return web.FileResponse(self.root / rest)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


TOKEN = "hop-token-5d1e-not-a-real-secret"
API_KEY = "hop-key-93c0-not-a-real-secret"
HEADERS = [f"Authorization: Bearer {TOKEN}", f"X-Api-Key: {API_KEY}"]


def carries_credentials(headers: dict[str, str]) -> bool:
    return any(TOKEN in v or API_KEY in v for v in headers.values())


def test_redirects_keep_credentials_at_home_and_are_bounded(tmp_path: Path) -> None:
    table = shard_table(3000, seed=66)
    write_shard(tmp_path / "files" / "0.parquet", table, row_group_size=1000)
    listed = sample(table["url"], 23)
    blocklist = write_list(tmp_path / "list.txt", listed)
    home, other = HopServer(tmp_path / "files"), HopServer(tmp_path / "files")

    with serve(home.app()) as home_url, serve(other.app()) as other_url:
        # Another port is another origin: the configured headers must not follow the redirect there.
        home.target = other_url
        away = run_filter([f"{home_url}/hop/1/0.parquet"], str(tmp_path / "away"), blocklist, http_header=HEADERS)
        assert away.ok, away.shards[0].error
        assert home.seen and all(carries_credentials(h) for h in home.seen)
        assert other.seen and not any(carries_credentials(h) for h in other.seen)

        # Redirects within the origin keep them (a private server may move its own files), up to five.
        home.target, home.seen = home_url, []
        inputs = [f"{home_url}/hop/5/0.parquet", f"{home_url}/hop/6/0.parquet"]
        report = run_filter(inputs, str(tmp_path / "home"), blocklist, http_header=HEADERS)
        assert all(carries_credentials(h) for h in home.seen)

    assert [s.status for s in report.shards] == ["done", "failed"]
    error = report.shards[1].error
    assert error is not None and "more than 5 redirects" in error and "/hop/6/0.parquet" in error
    expected = reference_filter(table, listed)
    assert_same_table(read_parquet(tmp_path / "away" / "0.parquet"), expected)


def test_redirect_targets() -> None:
    here = URL("https://data.example.org/shards/0.parquet")
    assert redirect_target(here, "/moved/0.parquet") == URL("https://data.example.org/moved/0.parquet")
    assert redirect_target(here, "1.parquet") == URL("https://data.example.org/shards/1.parquet")
    assert redirect_target(here, "https://cdn.example.net/0.parquet?sig=x").host == "cdn.example.net"
    assert redirect_target(URL("http://a.example/x"), "https://b.example/y").scheme == "https"
    for location in ("http://cdn.example.net/0.parquet", "file:///etc/passwd", "ftp://cdn.example.net/0"):
        with pytest.raises(RedirectRefused):
            redirect_target(here, location)


# --- the pieces --------------------------------------------------------------------------------


def test_backoff_has_full_jitter_under_the_cap() -> None:
    policy = RetryPolicy(retries=5, max_seconds=1.5)
    for retry in range(8):
        bound = min(1.5, RETRY_BASE_SECONDS * 2**retry)
        delays = [policy.backoff(retry) for _ in range(400)]
        assert all(0 <= d <= bound for d in delays)
        assert max(delays) > 0.8 * bound and min(delays) < 0.2 * bound  # spread over the whole range


def test_retry_policy_gives_up_at_the_limit_and_never_retries_permanent_errors() -> None:
    calls: Counter[str] = Counter()

    async def attempt(name: str) -> None:
        calls[name] += 1
        raise ConnectionResetError("reset") if name == "reset" else PermissionError("denied")

    async def outcome(name: str) -> str:
        policy = RetryPolicy(retries=3, max_seconds=0.0)
        with pytest.raises(ShardError) as raised:
            await policy.run(
                f"GET {name}",
                lambda: attempt(name),
                transient=lambda exc: isinstance(exc, ConnectionError),
                describe=lambda exc: type(exc).__name__,
            )
        return str(raised.value)

    assert anyio.run(outcome, "reset") == "GET reset failed: ConnectionResetError (gave up after 4 attempts)"
    assert anyio.run(outcome, "denied") == "GET denied failed: PermissionError"
    assert calls == {"reset": 4, "denied": 1}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retries": -1}, "--retries -1"),
        ({"retries": 2.5}, "--retries 2.5"),
        ({"retry_max_seconds": -1.0}, "--retry-max-seconds -1.0"),
        ({"retry_max_seconds": "soon"}, "--retry-max-seconds 'soon'"),
    ],
)
def test_retry_options_are_checked(options: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        StoreOptions(**options)
    assert StoreOptions(retries=0, retry_max_seconds=0).retry == RetryPolicy(0, 0.0)


def test_multipart_etag_is_what_s3_computes(s3_client, bucket: str) -> None:
    upload = s3_client.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    parts = [b"a" * (5 * 1024 * 1024), b"b" * 1000]
    etags = [
        s3_client.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=n, Body=p)["ETag"]
        for n, p in enumerate(parts, 1)
    ]
    done = s3_client.complete_multipart_upload(
        Bucket=bucket,
        Key="k",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )
    assert done["ETag"].strip('"') == multipart_etag(etags)
    assert multipart_etag(['"not-an-md5"']) is None
