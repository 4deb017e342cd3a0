"""A loopback stand-in for the Hugging Face Hub: the part of its HTTP API that ``HfStore`` reaches
through ``huggingface_hub.HfFileSystem`` 2.4.0, serving dataset repositories from dicts or directories.

Routes (found by reading hf_file_system.py, hf_api.py, file_download.py, utils/_http.py and
utils/_pagination.py of huggingface_hub 2.4.0):

``GET /api/datasets/{org}/{name}`` and ``GET /api/datasets/{org}/{name}/revision/{rev}``
    Repository info (``HfApi.dataset_info``). ``HfFileSystem.resolve_path`` calls it once per
    repository and revision to learn that both exist; the client reads ``id`` (required) and ``sha``.
    The revision is URL-quoted with ``safe=""`` (``refs%2Fconvert%2Fparquet``).
``GET /api/datasets/{org}/{name}/tree/{rev}[/{path}]?recursive=&expand=[&cursor=]``
    The tree listing (``HfApi._iter_repo_tree_pages``) behind ``ls``/``info``/``find``: a JSON list of
    ``{"type": "file", "path", "size", "oid", "lfs": {"oid", "size", "pointerSize"}}`` and
    ``{"type": "directory", "path", "oid", "size": 0}``; the path is quoted with ``safe=""`` (its
    slashes arrive as ``%2F``). Pages of at most ``page_size`` entries, the next one named by a
    ``Link: <...&cursor=...>; rel="next"`` header, as the Hub does; the client follows it, and for a
    recursive listing of more than two pages lists the sub-directories separately, in parallel
    (``_ParallelRepoTreeListing``), so both recursive and one-level listings are served. A path that
    is not a directory is a 404 ``EntryNotFound`` (the client then looks for a file in the parent).
``POST /api/datasets/{org}/{name}/paths-info/{rev}`` (form: ``paths`` repeated, ``expand``)
    ``HfApi.get_paths_info``, used by ``HfFileSystem.info`` for ``refresh=True`` or expanded info;
    missing paths are left out of the reply, not an error. ``expand=True`` adds ``lastCommit``.
``GET|HEAD /datasets/{org}/{name}/resolve/{rev}/{path}``
    The download URL (``hf_hub_url``). Files kept in git are sent here with Range support
    (``206``, ``Content-Range``, ``416``), ``ETag`` (the git blob id) and ``X-Repo-Commit``. LFS files
    (``*.parquet`` by default, as on the Hub) answer ``302`` to a signed "CDN" URL on this same
    server with ``X-Linked-Etag`` (their SHA-256), ``X-Linked-Size`` and ``X-Repo-Commit``, as the Hub
    does; ``GET|HEAD /_cdn/{sha256}?Expires=&Signature=`` then serves the bytes with Range support.
    No ``xetHash`` in listings and no ``X-Xet-*`` header is ever sent, so clients never try Xet.

It is gated: every request but the CDN's (which checks its URL's signature, as the real one does)
needs ``Authorization: Bearer <token>``. Without one the reply is a
``401`` with ``X-Error-Code: GatedRepo`` (huggingface_hub raises ``GatedRepoError`` for it); with an
unknown token a ``401`` "Invalid credentials in Authorization header"; with a token listed in
``denied`` (an account that has not accepted the terms) a ``403`` ``GatedRepo``. Unknown repositories,
revisions and paths are ``404`` with ``X-Error-Code`` ``RepoNotFound``, ``RevisionNotFound`` and
``EntryNotFound``, which huggingface_hub maps to its exception classes.

Faults are injected per route kind (``info``, ``tree``, ``paths-info``, ``resolve``, ``cdn``) with
:meth:`HubStandin.fail`; every request is logged (method, kind, path, Range; never the token).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from aiohttp import web
from helpers import serve

#: Files stored in LFS, as a dataset's default .gitattributes has it.
LFS_PATTERNS = ("*.parquet", "*.arrow", "*.tar", "*.gz", "*.zst", "*.bin")
#: Key of the stand-in's "CDN" URL signatures.
_SIGNING_KEY = b"hub-standin"
#: The date every stand-in commit carries.
_COMMIT_DATE = "2024-08-30T12:00:00.000Z"


def git_blob_id(data: bytes) -> str:
    """What git names a blob: SHA-1 of ``blob <size>\\0<data>``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Entry:
    path: str
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        """The LFS pointer file git holds instead of the data."""
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()

    @property
    def oid(self) -> str:
        return git_blob_id(self.pointer if self.lfs else self.data)

    def json(self, commit: str | None) -> dict:
        out: dict = {"type": "file", "oid": self.oid, "size": len(self.data), "path": self.path}
        if self.lfs:
            out["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": len(self.pointer)}
        if commit is not None:
            out["lastCommit"] = {"id": commit, "title": "Upload", "date": _COMMIT_DATE}
        return out


@dataclass
class Revision:
    """The files of one revision: a dict (path → bytes) or a directory read at each request."""

    source: Mapping[str, bytes] | Path
    lfs_patterns: tuple[str, ...]

    def files(self) -> dict[str, Entry]:
        if isinstance(self.source, Path):
            items = {
                p.relative_to(self.source).as_posix(): p.read_bytes() for p in self.source.rglob("*") if p.is_file()
            }
        else:
            items = dict(self.source)
        return {
            path: Entry(path, data, any(fnmatch.fnmatch(path, pat) for pat in self.lfs_patterns))
            for path, data in sorted(items.items())
        }

    def commit(self, files: dict[str, Entry]) -> str:
        listing = "".join(f"{e.path}\0{e.oid}\n" for e in files.values())
        return hashlib.sha1(listing.encode()).hexdigest()


@dataclass
class Fault:
    kind: str
    status: int
    times: int


@dataclass
class Logged:
    method: str
    kind: str
    path: str
    query: str
    range: str | None
    status: int
    #: Whether the request carried an Authorization header (a CDN request should not).
    authorized: bool = False


@dataclass
class HubStandin:
    """The stand-in's state; :func:`running_hub` serves it. Safe to change while it serves."""

    token: str
    #: Tokens the Hub knows whose accounts have not accepted the terms (403).
    denied: set[str] = field(default_factory=set)
    #: Entries per page of a tree listing (the Hub sends 1000, 50 when expanded).
    page_size: int = 1000
    #: Redirect LFS downloads to the "CDN" route, as the Hub does.
    redirect_lfs: bool = True
    url: str = ""
    repos: dict[str, dict[str, Revision]] = field(default_factory=dict)
    log: list[Logged] = field(default_factory=list)
    _faults: list[Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_dataset(
        self,
        repo_id: str,
        files: Mapping[str, bytes] | Path,
        revision: str = "main",
        lfs_patterns: tuple[str, ...] = LFS_PATTERNS,
    ) -> None:
        self.repos.setdefault(repo_id, {})[revision] = Revision(files, lfs_patterns)

    def fail(self, kind: str, status: int = 503, times: int = 1) -> None:
        """The next ``times`` requests of this kind answer ``status``."""
        with self._lock:
            self._faults.append(Fault(kind, status, times))

    def requests(self, kind: str | None = None) -> list[Logged]:
        with self._lock:
            return [r for r in self.log if kind is None or r.kind == kind]

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    def _take_fault(self, kind: str) -> int | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind == kind and fault.times > 0:
                    fault.times -= 1
                    return fault.status
        return None

    def _record(self, request: web.Request, kind: str, status: int) -> None:
        with self._lock:
            self.log.append(
                Logged(
                    request.method,
                    kind,
                    request.path,
                    request.query_string,
                    request.headers.get("Range"),
                    status,
                    "Authorization" in request.headers,
                )
            )

    # --- the application --------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind, route = _route(request)
        response = await self._answer(request, kind, route)
        self._record(request, kind, response.status)
        return response

    async def _answer(self, request: web.Request, kind: str, route: dict) -> web.StreamResponse:
        repo_id = route.get("repo")
        # The CDN checks its URL's signature, not the token (the Hub signed the URL for a token it accepted).
        denied = self._check_token(request, repo_id) if kind != "cdn" else None
        if denied is not None:
            return denied
        status = self._take_fault(kind)
        if status is not None:
            return _error(status, None, f"injected fault: HTTP {status}")
        if kind == "cdn":
            return self._cdn(request, route)
        if kind == "other":
            return _error(404, None, "Not Found")
        assert repo_id is not None
        if repo_id not in self.repos:
            return _error(404, "RepoNotFound", "Repository not found")
        revision = self._revision(repo_id, route["rev"])
        if revision is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {route['rev']}")
        files = revision.files()
        commit = revision.commit(files)
        if kind == "info":
            return self._info(repo_id, files, commit)
        if kind == "tree":
            return self._tree(request, route, files, commit)
        if kind == "paths-info":
            return await self._paths_info(request, files, commit)
        return self._resolve(request, route, files, commit)

    def _check_token(self, request: web.Request, repo_id: str | None) -> web.Response | None:
        what = f"dataset {repo_id}" if repo_id else "this resource"
        given = request.headers.get("Authorization")
        if given is None:
            return _error(
                401,
                "GatedRepo",
                f"Access to {what} is restricted. You must have access to it and be authenticated to access it. "
                "Please log in.",
            )
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not (token == self.token or token in self.denied):
            return _error(401, None, "Invalid credentials in Authorization header")
        if token in self.denied:
            return _error(
                403,
                "GatedRepo",
                f"Access to {what} is restricted and you are not in the authorized list. "
                f"Visit {self.url}/datasets/{repo_id} to ask for access.",
            )
        return None

    def _revision(self, repo_id: str, rev: str) -> Revision | None:
        revisions = self.repos[repo_id]
        if rev in revisions:
            return revisions[rev]
        for revision in revisions.values():  # a commit id names its revision too
            if revision.commit(revision.files()) == rev:
                return revision
        return None

    def _info(self, repo_id: str, files: dict[str, Entry], commit: str) -> web.Response:
        body = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit,
            "lastModified": _COMMIT_DATE,
            "private": False,
            "gated": "manual",
            "disabled": False,
            "tags": [],
            "siblings": [{"rfilename": path} for path in files],
        }
        return web.json_response(body)

    def _tree(self, request: web.Request, route: dict, files: dict[str, Entry], commit: str) -> web.Response:
        base = route["path"].strip("/")
        recursive = request.query.get("recursive", "false").lower() == "true"
        expand = request.query.get("expand", "false").lower() == "true"
        entries = _tree_entries(files, base, recursive, commit if expand else None)
        if entries is None:
            return _error(404, "EntryNotFound", f'{base} does not exist on "{route["rev"]}"')
        cursor = request.query.get("cursor")
        start = int(base64.urlsafe_b64decode(cursor).decode()) if cursor else 0
        size = min(self.page_size, 50) if expand else self.page_size
        page = entries[start : start + size]
        headers = {}
        if start + size < len(entries):
            next_cursor = base64.urlsafe_b64encode(str(start + size).encode()).decode()
            next_url = request.url.update_query(cursor=next_cursor)
            headers["Link"] = f'<{next_url}>; rel="next"'
        return web.json_response(page, headers=headers)

    async def _paths_info(self, request: web.Request, files: dict[str, Entry], commit: str) -> web.Response:
        form = await request.post()
        expand = str(form.get("expand", "false")).lower() == "true"
        out = []
        for path in form.getall("paths", []):
            path = str(path).strip("/")
            if path in files:
                out.append(files[path].json(commit if expand else None))
            elif any(p.startswith(path + "/") for p in files):
                out.append(_dir_json(path, files, commit if expand else None))
        return web.json_response(out)

    def _resolve(self, request: web.Request, route: dict, files: dict[str, Entry], commit: str) -> web.StreamResponse:
        entry = files.get(route["path"])
        if entry is None:
            return _error(404, "EntryNotFound", "Entry not found")
        headers = {"X-Repo-Commit": commit}
        if entry.lfs and self.redirect_lfs:
            expires = "4102444800"
            signature = _sign(entry.sha256, expires)
            headers |= {
                "Location": f"{self.url}/_cdn/{entry.sha256}?Expires={expires}&Signature={signature}",
                "X-Linked-Etag": f'"{entry.sha256}"',
                "X-Linked-Size": str(len(entry.data)),
                "ETag": f'"{entry.oid}"',
            }
            return web.Response(status=302, headers=headers, text="Found. Redirecting")
        headers["ETag"] = f'"{entry.sha256 if entry.lfs else entry.oid}"'
        return _ranged(request, entry.data, headers)

    def _cdn(self, request: web.Request, route: dict) -> web.StreamResponse:
        sha256 = route["sha256"]
        expected = _sign(sha256, request.query.get("Expires", ""))
        if not hmac.compare_digest(request.query.get("Signature", ""), expected):
            return web.Response(status=403, text="<Error><Code>AccessDenied</Code></Error>")
        for revisions in self.repos.values():
            for revision in revisions.values():
                for entry in revision.files().values():
                    if entry.lfs and entry.sha256 == sha256:
                        return _ranged(request, entry.data, {"ETag": f'"{hashlib.md5(entry.data).hexdigest()}"'})
        return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>")


def _sign(sha256: str, expires: str) -> str:
    return hmac.new(_SIGNING_KEY, f"{sha256}:{expires}".encode(), hashlib.sha256).hexdigest()


def _route(request: web.Request) -> tuple[str, dict]:
    """Which route a request is for, from its raw path (quoted slashes in names stay quoted until here)."""
    parts = request.rel_url.raw_path.lstrip("/").split("/")
    if parts[:2] == ["api", "datasets"] and len(parts) >= 4:
        repo = unquote(parts[2]) + "/" + unquote(parts[3])
        rest = parts[4:]
        if not rest and request.method == "GET":
            return "info", {"repo": repo, "rev": "main"}
        if len(rest) == 2 and rest[0] == "revision" and request.method == "GET":
            return "info", {"repo": repo, "rev": unquote(rest[1])}
        if len(rest) >= 2 and rest[0] == "tree" and request.method == "GET":
            return "tree", {"repo": repo, "rev": unquote(rest[1]), "path": unquote("/".join(rest[2:]))}
        if len(rest) == 2 and rest[0] == "paths-info" and request.method == "POST":
            return "paths-info", {"repo": repo, "rev": unquote(rest[1])}
    if parts[:1] == ["datasets"] and len(parts) >= 6 and parts[3] == "resolve" and request.method in ("GET", "HEAD"):
        repo = unquote(parts[1]) + "/" + unquote(parts[2])
        return "resolve", {"repo": repo, "rev": unquote(parts[4]), "path": unquote("/".join(parts[5:]))}
    if parts[:1] == ["_cdn"] and len(parts) == 2 and request.method in ("GET", "HEAD"):
        return "cdn", {"sha256": parts[1]}
    return "other", {}


def _error(status: int, code: str | None, message: str) -> web.Response:
    headers = {"X-Error-Message": message}
    if code is not None:
        headers["X-Error-Code"] = code
    return web.Response(
        status=status, headers=headers, text=json.dumps({"error": message}), content_type="application/json"
    )


def _dir_json(path: str, files: dict[str, Entry], commit: str | None) -> dict:
    below = "".join(e.oid for p, e in files.items() if p.startswith(path + "/"))
    out: dict = {"type": "directory", "oid": git_blob_id(below.encode()), "size": 0, "path": path}
    if commit is not None:
        out["lastCommit"] = {"id": commit, "title": "Upload", "date": _COMMIT_DATE}
    return out


def _tree_entries(files: dict[str, Entry], base: str, recursive: bool, commit: str | None) -> list[dict] | None:
    """The entries below directory ``base`` ('' is the root), or None if it is not a directory."""
    prefix = base + "/" if base else ""
    below = [p for p in files if p.startswith(prefix)]
    if base and not below:
        return None
    dirs: set[str] = set()
    out_files: list[str] = []
    for path in below:
        rel = path[len(prefix) :].split("/")
        for depth in range(1, len(rel)):
            if recursive or depth == 1:
                dirs.add(prefix + "/".join(rel[:depth]))
        if recursive or len(rel) == 1:
            out_files.append(path)
    # Folders first, then files, each sorted: the Hub's "tree first" order.
    return [_dir_json(d, files, commit) for d in sorted(dirs)] + [files[p].json(commit) for p in sorted(out_files)]


def _ranged(request: web.Request, data: bytes, headers: dict[str, str]) -> web.Response:
    """``data`` whole, or the one byte range the Range header asks for."""
    headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
    spec = request.headers.get("Range")
    if not spec or not spec.startswith("bytes=") or "," in spec:
        return web.Response(body=data, headers=headers)
    first, _, last = spec[len("bytes=") :].partition("-")
    size = len(data)
    if first:
        start, stop = int(first), min(int(last) + 1 if last else size, size)
    else:
        start, stop = max(size - int(last), 0), size
    if start >= size or start >= stop:
        return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    return web.Response(status=206, body=data[start:stop], headers=headers)


@contextmanager
def running_hub(token: str, **options) -> Iterator[HubStandin]:
    """A :class:`HubStandin` served on 127.0.0.1 (a random port) for the length of the block."""
    hub = HubStandin(token, **options)
    with serve(hub.app()) as url:
        hub.url = url
        yield hub


__all__ = ["HubStandin", "git_blob_id", "running_hub"]
