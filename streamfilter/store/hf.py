"""Hugging Face Hub repositories (``hf://datasets/ORG/NAME[@REVISION]/PATH``), read-only.

Names, revisions, listings and sizes come from huggingface_hub's fsspec filesystem
(:class:`huggingface_hub.HfFileSystem`): it knows the Hub's routes, resolves ``@rev``
(a branch, a tag, a commit, ``refs/convert/parquet``), follows the tree listing's
pagination and lists large repositories directory by directory in parallel.

Bytes are fetched with exactly one ranged GET per read on the file's ``resolve`` URL,
through huggingface_hub's own HTTP client and headers (so its proxy, offline-mode and
user-agent settings hold). HfFileSystem's file object is not used for that: it reads
ahead a whole block (5 MiB) past every range asked for, and repeats failed requests
itself, with sleeps of its own, inside our :class:`RetryPolicy`. The first read of a file
pins it to the commit the Hub served it from, so a branch moving mid-run cannot mix versions.

The filesystem is synchronous; every call to it runs in a worker thread. Listings are
cached for the life of the store (one run): after the first stat in a directory the
others cost no request, and a run sees one consistent listing.

Retries: ours for every request we make, but the tree listing's requests go through
huggingface_hub's ``http_backoff``, which itself repeats 429/5xx replies up to 5 times
(1-8 s apart) before the failure reaches us.

The token is ``HF_TOKEN``, read when the store is made (unset: huggingface_hub's own
login, if any). It is sent only in the Authorization header and never named in a message.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import ShardError, UsageError, redact_uri
from .base import ObjectInfo, RetryPolicy, ShortRead, Store, Upload, check_length

if TYPE_CHECKING:  # huggingface_hub takes ~0.3 s to import: only runs reading hf:// pay for it
    from huggingface_hub import HfFileSystem

#: Statuses worth asking again: throttling, and the Hub or its CDN failing for now.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: How long a signed CDN URL the Hub redirected to is used directly. The Hub signs them for longer
#: (about an hour); a refused one (401/403/404/410) is dropped and the Hub asked again.
CDN_URL_SECONDS = 600
#: Where a URI's repository type is named, as the Hub's web pages spell it.
TYPE_PREFIXES = ("datasets/", "spaces/")


class BadReply(Exception):
    """A reply whose status is not the one a ranged read needs."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (or while handling), nearest first."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in out:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind a failure, however deep huggingface_hub wrapped it (FileNotFoundError
    from a refused repository lookup, HfHubHTTPError, ...); None for failures without a reply."""
    for e in _chain(exc):
        if isinstance(e, BadReply):
            return e.status
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
    return None


def is_transient(exc: Exception) -> bool:
    if isinstance(exc, ShortRead):
        return True
    status = http_status(exc)
    if status is not None:
        return status in TRANSIENT_STATUS
    import httpx2  # huggingface_hub's HTTP client; loaded already by the time anything failed

    # Refused or reset connections, timeouts, bodies cut short, broken replies, and replies that do not
    # parse (a proxy's or throttler's page instead of the Hub's JSON).
    return isinstance(
        exc,
        httpx2.TimeoutException
        | httpx2.NetworkError
        | httpx2.RemoteProtocolError
        | ConnectionError
        | TimeoutError
        | json.JSONDecodeError,
    )


def _path(uri: str) -> str:
    """The filesystem path of an ``hf://`` URI (the URI without its scheme)."""
    path = uri.split("://", 1)[-1]
    if path.startswith("buckets/"):
        raise UsageError(
            f"{redact_uri(uri)}: hf://buckets/ is not supported; read a repository, hf://datasets/ORG/NAME/…"
        )
    return path


def hub_page(endpoint: str, uri: str) -> str:
    """The repository's page on the Hub, where its terms are accepted."""
    path = _path(uri)
    kind = next((p for p in TYPE_PREFIXES if path.startswith(p)), "")
    repo = "/".join(path[len(kind) :].split("/")[:2]).split("@", 1)[0]
    return f"{endpoint.rstrip('/')}/{kind}{repo}"


def identity(info: dict[str, Any]) -> str | None:
    """The version identity of a listed file: its content's SHA-256 when it is stored in LFS or Xet
    (what the Hub sends as its ETag), else its git blob id; either changes when the file does."""
    lfs = info.get("lfs")
    if lfs:
        sha256 = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
        if sha256:
            return str(sha256)
    return info.get("xet_hash") or info.get("blob_id")


class HfStore(Store):
    writable = False

    def __init__(self, retry: RetryPolicy | None = None) -> None:
        from huggingface_hub import HfFileSystem

        self.retry = retry or RetryPolicy()
        self._token = os.environ.get("HF_TOKEN") or None
        # huggingface_hub reads HF_ENDPOINT once, at import: read it again for every store.
        endpoint = (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None
        # A fresh instance, not fsspec's cached one: its listings and repository lookups are ours alone.
        self._fs: HfFileSystem = HfFileSystem(token=self._token, endpoint=endpoint, skip_instance_cache=True)
        self.endpoint: str = self._fs.endpoint
        self._listing: anyio.Lock | None = None
        #: Download URL of every file read so far, pinned to the commit its first read came from.
        self._urls: dict[str, str] = {}
        #: Where the Hub last redirected each LFS file (a signed CDN URL) and when: read there directly
        #: for a while, so a file's reads cost one resolve request, not one each (the Hub's resolver
        #: rate limit is a few thousand requests per five minutes).
        self._cdn: dict[str, tuple[str, float]] = {}

    def _lock(self) -> anyio.Lock:
        # One listing at a time: concurrent stats of one directory would each list it; serialized,
        # the first fills the filesystem's cache and the others are answered from it.
        if self._listing is None:
            self._listing = anyio.Lock()
        return self._listing

    def describe(self, uri: str, exc: Exception) -> str:
        status = http_status(exc)
        names = {type(e).__name__ for e in _chain(exc)}
        if status in (401, 403):
            if self._token is None:
                who = "HF_TOKEN is not set"
            elif status == 401:
                who = "the Hub refused the token in HF_TOKEN"
            else:
                who = "the account of the token in HF_TOKEN has no access"
            return (
                f"access denied (HTTP {status}): {who}; the dataset is gated or private (or does not exist): accept "
                f"its terms at {hub_page(self.endpoint, uri)} and set HF_TOKEN to an access token of that account"
            )
        if names & {"HfUriError", "HFValidationError", "NotImplementedError"}:
            return "not a path in a Hub repository; name it as hf://datasets/ORG/NAME[@REVISION]/PATH"
        if "RevisionNotFoundError" in names:
            return "no such revision (HTTP 404); check the @revision in the URI"
        if "RepositoryNotFoundError" in names:
            return "no such repository (HTTP 404); check hf://datasets/ORG/NAME in the URI"
        if status == 404 or isinstance(exc, FileNotFoundError):
            where = " (HTTP 404)" if status == 404 else " in the repository"
            return f"not found{where}; check the repository, the revision and the path"
        if status == 429:
            return "HTTP 429: rate limited by the Hub; lower --concurrency or run again later"
        if status is not None:
            return f"HTTP {status}"
        return f"{type(exc).__name__}: {exc}"

    async def _run(self, what: str, uri: str, attempt: Any) -> Any:
        return await self.retry.run(what, attempt, is_transient, lambda exc: self.describe(uri, exc))

    async def stat(self, uri: str) -> ObjectInfo:
        path = _path(uri)

        async def attempt() -> ObjectInfo:
            async with self._lock():
                found = await anyio.to_thread.run_sync(self._fs.info, path)
            if found["type"] != "file":
                raise ShardError(f"{redact_uri(uri)} is a directory; name a file, or a glob such as {uri}/*.parquet")
            return ObjectInfo(uri, int(found["size"]), etag=identity(found))

        return await self._run(f"looking up {redact_uri(uri)}", uri, attempt)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        path = _path(prefix)
        # The listing is of the directory the prefix is in; the prefix may end inside a name.
        directory = path.rsplit("/", 1)[0] if "/" in path else path

        async def attempt() -> dict[str, dict[str, Any]]:
            async with self._lock():
                return await anyio.to_thread.run_sync(lambda: self._fs.find(directory, detail=True))

        try:
            found = await self._run(f"listing {redact_uri(prefix)}", prefix, attempt)
        except ShardError as exc:
            names = {type(e).__name__ for e in _chain(exc)}
            if names & {"HfUriError", "HFValidationError", "NotImplementedError"}:
                raise UsageError(
                    f"cannot list {redact_uri(prefix)}: a pattern matches paths inside one repository, not "
                    "repository names; name the repository, as in hf://datasets/ORG/NAME/data/*.parquet"
                ) from exc.__cause__
            # Credentials or a wrong repository name: no input can be read, nothing is written.
            if http_status(exc) in (401, 403) or isinstance(exc.__cause__, FileNotFoundError):
                raise UsageError(str(exc)) from exc.__cause__
            raise
        scheme = prefix.split("://", 1)[0] + "://"
        infos = [
            ObjectInfo(scheme + name, int(info["size"]), etag=identity(info))
            for name, info in found.items()
            if info.get("type") == "file" and (scheme + name).startswith(prefix)
        ]
        return sorted(infos, key=lambda info: info.uri)

    def _url(self, path: str, commit: str | None = None) -> str:
        """The download URL of a file, at ``commit`` if given; the first call for a repository and
        revision asks the Hub whether they exist."""
        from huggingface_hub import hf_hub_url

        resolved = self._fs.resolve_path(path)
        return hf_hub_url(
            resolved.repo_id,  # type: ignore[union-attr]
            resolved.path_in_repo,  # type: ignore[union-attr]
            repo_type=resolved.repo_type,  # type: ignore[union-attr]
            revision=commit or resolved.revision,  # type: ignore[union-attr]
            endpoint=self.endpoint,
        )

    def _get(self, url: str, start: int, end: int, signed: bool = False) -> tuple[bytes, str | None, str | None]:
        """One ranged GET of a resolve URL (the redirect to the CDN followed), the commit the Hub served
        it from, and the CDN URL it redirected to; runs in a thread. ``signed``: ``url`` is such a CDN
        URL, whose signature is the credential, so no token is sent."""
        from huggingface_hub import constants
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        headers = {"Range": f"bytes={start}-{end - 1}"}
        if not signed:
            headers |= build_hf_headers(token=self._token)
        with get_session().stream("GET", url, headers=headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as resp:
            hf_raise_for_status(resp)
            commits = [r.headers.get("X-Repo-Commit") for r in (*resp.history, resp)]
            commit = next((c for c in commits if c), None)
            redirected = str(resp.url) if resp.history and not signed else None
            return self._body(resp, start, end), commit, redirected

    @staticmethod
    def _body(resp: Any, start: int, end: int) -> bytes:
        """The bytes asked for from a reply to a ranged GET."""
        if resp.status_code == 206:
            content_range = resp.headers.get("Content-Range", "")
            if content_range and not content_range.startswith(f"bytes {start}-"):
                raise BadReply(206, f"the Hub sent the range {content_range!r} for bytes {start}-{end - 1}")
            return resp.read()
        if resp.status_code != 200 or start != 0:
            raise BadReply(resp.status_code, f"HTTP {resp.status_code} for a Range request")
        # A server that ignores Range sends it all from byte 0: take what was asked for, no more.
        data = bytearray()
        for chunk in resp.iter_bytes():
            data += chunk
            if len(data) >= end:
                break
        return bytes(data[:end])

    async def read_range(self, uri: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""  # an empty Range header is invalid; nothing to fetch
        path = _path(uri)

        # The body is read and its length checked inside the attempt: a body cut short is retried like a reset.
        async def attempt() -> bytes:
            cdn, since = self._cdn.get(path, ("", 0.0))
            if cdn and time.monotonic() - since < CDN_URL_SECONDS:
                try:
                    data, _, _ = await anyio.to_thread.run_sync(self._get, cdn, start, end, True)
                    return check_length(uri, data, end - start)
                except Exception as exc:
                    if http_status(exc) not in (401, 403, 404, 410):
                        raise  # transient or not: the retry policy decides
                    self._cdn.pop(path, None)  # expired or moved: ask the Hub again, below
            url = self._urls.get(path)
            if url is None:
                async with self._lock():  # the shards' first reads would each look the repository up
                    url = self._urls.get(path) or await anyio.to_thread.run_sync(self._url, path)
            data, commit, redirected = await anyio.to_thread.run_sync(self._get, url, start, end)
            if redirected:
                self._cdn[path] = (redirected, time.monotonic())
            if path not in self._urls:
                # Later reads of this file ask for the commit this one was served from: a branch that
                # moves mid-run cannot mix two versions of one file.
                self._urls[path] = await anyio.to_thread.run_sync(self._url, path, commit) if commit else url
            return check_length(uri, data, end - start)

        return await self._run(f"reading {redact_uri(uri)}", uri, attempt)

    def open_write(self, uri: str) -> Upload:
        raise UsageError(
            f"cannot write {redact_uri(uri)}: hf:// is read-only here; write outputs to s3:// or a local path"
        )

    async def aclose(self) -> None:
        self._fs.invalidate_cache()
