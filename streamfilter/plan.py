"""From the user's input expressions to the list of shards, and each shard's output name."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import StreamfilterError, UsageError, redact_uri
from .formats import IMG2DATASET_MEMBERS, folder_shards, format_by_extension, set_member
from .formats.embedding_set import is_member, set_root
from .ledger import RECEIPTS_DIR
from .store import ObjectInfo, Stores, scheme_of

log = logging.getLogger("streamfilter")

_BRACE = re.compile(r"\{([^{}]*)\}")
_NUMERIC_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_WILDCARD = re.compile(r"[*?\[]")
#: What a run keeps under its output prefix (receipts, worker reports): never a shard of a later run.
LEDGER_DIR = RECEIPTS_DIR.split("/", 1)[0]


@dataclass(frozen=True)
class Shard:
    input: str
    output: str | None
    name: str  # the input's path relative to the common input prefix
    #: What a listing said of the input (size, ETag, mtime), so the shard need not ask again.
    info: ObjectInfo | None = field(default=None, compare=False)
    #: What the listing said of an img2dataset tar's siblings (``.parquet``, ``_stats.json``), by suffix.
    siblings: dict[str, ObjectInfo] = field(default_factory=dict, compare=False)


def _shard(uri: str, output: str | None, name: str, known: dict[str, ObjectInfo]) -> Shard:
    """A shard with what the listings said of it (and of its img2dataset siblings, if it is a tar)."""
    siblings = {}
    if uri.endswith(".tar"):
        siblings = {s: known[set_member(uri, s)] for s in IMG2DATASET_MEMBERS if set_member(uri, s) in known}
    return Shard(uri, output, name, known.get(uri), siblings)


def _sibling_infos(uris: Iterable[str], listing: dict[str, ObjectInfo]) -> dict[str, ObjectInfo]:
    """What ``listing`` says of the img2dataset siblings (``.parquet``, ``_stats.json``) of the tars in ``uris``."""
    members = (set_member(u, s) for u in uris if u.endswith(".tar") for s in IMG2DATASET_MEMBERS)
    return {m: listing[m] for m in members if m in listing}


def expand_braces(pattern: str) -> list[str]:
    """``{00000..00127}`` (zero padding kept) and ``{a,b}`` alternatives, as a shell does."""
    match = _BRACE.search(pattern)
    if not match:
        return [pattern]
    body = match.group(1)
    numeric = _NUMERIC_RANGE.match(body)
    if numeric:
        lo_text, hi_text = numeric.groups()
        lo, hi = int(lo_text), int(hi_text)
        width = len(lo_text) if lo_text.startswith("0") else 0
        step = 1 if hi >= lo else -1
        choices = [str(n).zfill(width) for n in range(lo, hi + step, step)]
    elif "," in body:
        choices = body.split(",")
    else:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return list(itertools.chain.from_iterable(expand_braces(head + c + tail) for c in choices))


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` and ``?`` stay within one path segment, ``**`` crosses segments."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")  # zero or more directories, as shell globstar
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                out.append("[" + pattern[i + 1 : end].replace("!", "^", 1) + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass
class _Expansion:
    """What the inputs expanded to, and what a rerun of the same command would list again."""

    uris: list[str] = field(default_factory=list)
    known: dict[str, ObjectInfo] = field(default_factory=dict)
    #: Folders and prefixes given as inputs, ending in '/': everything under them that is not skipped.
    folders: list[str] = field(default_factory=list)
    #: Glob patterns as given and as listed (brace ranges expanded).
    globs: list[tuple[str, str]] = field(default_factory=list)
    #: What the folders held besides shards, said once planning succeeds.
    notes: list[str] = field(default_factory=list)

    def say_notes(self) -> None:
        for note in self.notes:
            log.warning("%s", note)


async def expand_input(
    expr: str, stores: Stores, known: dict[str, ObjectInfo] | None = None, fmt: str | None = None
) -> list[str]:
    """One input expression to object URIs: @manifest, brace ranges, globs, folders, or itself.

    What listings say of the objects found goes into ``known``. ``fmt`` (``--format``) says which
    objects of a folder are shards; see :func:`formats.folder_shards`.
    """
    found = _Expansion(known=known if known is not None else {})
    await _expand(expr, stores, found, fmt)
    found.say_notes()
    return found.uris


async def _expand(expr: str, stores: Stores, found: _Expansion, fmt: str | None) -> None:
    if expr.startswith("@"):
        manifest = expr[1:]
        try:
            text = (await stores.for_uri(manifest).read_all(manifest)).decode("utf-8")
        except StreamfilterError as exc:
            raise UsageError(f"cannot read manifest {redact_uri(manifest)}: {exc}") from None
        lines = [line.strip() for line in text.splitlines()]
        for line in lines:
            if line.startswith("{"):  # a --manifest-out line from an earlier stage
                try:
                    line = json.loads(line)["uri"]
                except (ValueError, KeyError, TypeError):
                    raise UsageError(f"manifest {redact_uri(manifest)}: a JSON line without a 'uri'") from None
            if line and not line.startswith("#"):
                await _expand(line, stores, found, fmt)
        return
    for uri in expand_braces(expr):
        if _WILDCARD.search(_location(uri)):
            await _expand_glob(uri, stores, found, fmt)
            continue
        listing = await _folder_listing(uri, stores)
        if listing is None:
            found.uris.append(uri)
        else:
            _take_folder(uri if uri.endswith("/") else uri + "/", listing, found, fmt)


async def _expand_glob(uri: str, stores: Stores, found: _Expansion, fmt: str | None = None) -> None:
    # A relative local pattern is listed from './': a bare '*.parquet' lists the current directory.
    path = _local_path(uri) if scheme_of(uri) == "file" else None
    dot = path is not None and not path.startswith(("/", "./", "../"))
    pattern = uri[: len(uri) - len(path)] + "./" + path if dot and path is not None else uri
    prefix = pattern[: _WILDCARD.search(pattern).start()]  # type: ignore[union-attr]
    regex = glob_regex(pattern)
    listed = await _list(prefix, stores)
    found_here = {info.uri: info for info in listed if regex.match(info.uri)}
    if fmt == "auto":
        # A pattern that picks the tars of img2dataset sets (their .parquet and _stats.json beside them)
        # would filter the tars alone and leave the stats behind, as a folder of them would.
        sets = set(folder_shards(sorted(info.uri for info in listed), fmt).sets)
        picked = next((u for u in sorted(found_here) if u in sets), None)
        if picked is not None:
            shown = picked.replace("./", "", 1) if dot else picked
            raise UsageError(
                f"{redact_uri(uri)} names img2dataset shard sets ({redact_uri(shown)} has its .parquet and "
                "_stats.json beside it); pass --format img2dataset to filter each set as one unit, or --format "
                "webdataset to filter the tars alone"
            )
    # What the listing said of the picked tars' img2dataset siblings: their sets need not ask again.
    found_here_siblings = _sibling_infos(found_here, {info.uri: info for info in listed})
    if dot:  # name them as the user did: 'a.parquet', not './a.parquet'
        cut = len(uri) - len(path or "")
        found_here = {u[:cut] + u[cut + 2 :]: info for u, info in found_here.items()}
        found_here_siblings = {u[:cut] + u[cut + 2 :]: info for u, info in found_here_siblings.items()}
    found.known.update(found_here_siblings)
    if not found_here:
        where = f" in {os.getcwd()}" if dot else ""
        raise UsageError(f"no object matches {redact_uri(uri)}{where}; check the pattern")
    found.known.update(found_here)
    found.uris += sorted(found_here)
    found.globs.append((uri, pattern))


async def _folder_listing(uri: str, stores: Stores) -> list[ObjectInfo] | None:
    """The listing of ``uri`` as a folder, or None when it names one object.

    A name ending in '/' is a folder, a local directory is one, and so is a remote name that
    no format claims when objects lie under ``name/`` (one listing; names with a shard's
    extension cost no request).
    """
    scheme = scheme_of(uri)
    if scheme in ("http", "https"):
        if _location(uri).endswith("/"):
            raise UsageError(
                f"cannot read the folder {redact_uri(uri)}: HTTP servers give no listing; name its files, "
                "a brace range ({00000..00127}.parquet) or an @FILE manifest with one URI a line"
            )
        return None
    if scheme == "file":
        if os.path.isdir(_local_path(uri)):
            return await _list(uri if uri.endswith("/") else uri + "/", stores)
        if uri.endswith("/"):
            raise UsageError(f"no folder {redact_uri(uri)}; check the path")
        return None
    if uri.endswith("/"):
        return await _list(uri, stores)
    if format_by_extension(uri) is not None or uri.endswith("://"):
        return None
    return await _list(uri + "/", stores) or None


def _take_folder(folder: str, listing: list[ObjectInfo], found: _Expansion, fmt: str | None) -> None:
    """Every shard under ``folder``, recursively; bookkeeping, hidden names and unclaimed names skipped."""
    skipped: dict[str, list[str]] = {}
    candidates: dict[str, ObjectInfo] = {}
    for info in listing:
        rel = info.uri[len(folder) :]
        reason = _skip_reason(rel)
        if reason is not None:
            skipped.setdefault(reason, []).append(info.uri)
        elif rel and not rel.endswith("/"):  # a zero-byte "folder marker" object is no object at all
            candidates[info.uri] = info
    chosen = folder_shards(sorted(candidates), fmt)
    if fmt == "auto" and chosen.sets:
        example = chosen.sets[0]
        raise UsageError(
            f"{redact_uri(folder)} holds img2dataset shard sets ({redact_uri(example)} with its .parquet and "
            "_stats.json); pass --format img2dataset to filter each set as one unit, or --format parquet or "
            "--format webdataset to filter that kind alone"
        )
    if fmt == "auto" and any(is_member(u) for u in candidates):
        raise UsageError(
            f"{redact_uri(folder)} holds CLIP embedding sets (img_emb/ or text_emb/ .npy files); pass --format "
            "embeddings to remove rows from the metadata and the vectors together, or --format parquet for the "
            "metadata alone"
        )
    for reason, uris in chosen.skipped.items():
        skipped.setdefault(reason, []).extend(uris)
    what = _describe_skipped(skipped)
    if not chosen.shards:
        raise UsageError(
            f"no shard under {redact_uri(folder)}: "
            + (f"skipped {what}; pass --format, or name the objects" if what else "nothing is there; check the path")
        )
    formats = sorted({format_by_extension(u) or "" for u in chosen.shards}) if fmt in ("auto", None) else []
    if what or len(formats) > 1:
        kinds = ", each run as its own format: " + ", ".join(formats) if len(formats) > 1 else ""
        skips = f"; skipped {what}" if what else ""
        found.notes.append(f"{redact_uri(folder)}: {len(chosen.shards)} shards{kinds}{skips}")
    found.folders.append(folder)
    found.known.update({u: candidates[u] for u in chosen.shards})
    found.known.update(_sibling_infos(chosen.shards, candidates))
    found.uris += chosen.shards


def _skip_reason(rel: str) -> str | None:
    """Why an object at ``rel`` under a folder input is not a shard: a run's bookkeeping or a hidden name."""
    parts = rel.split("/")
    if LEDGER_DIR in parts[:-1]:
        return f"under {LEDGER_DIR}/"
    if any(part.startswith(".") for part in parts):
        return "hidden"
    return None


def _describe_skipped(skipped: dict[str, list[str]]) -> str:
    """'3 objects: 1 hidden, 2 that no format claims (e.g. _SUCCESS, notes.txt)'."""
    total = sum(len(v) for v in skipped.values())
    if not total:
        return ""
    kinds = []
    for reason, uris in skipped.items():
        label = "that no format claims" if reason == "no format claims" else reason
        names = sorted({u.rsplit("/", 1)[-1] for u in uris})
        examples = f" (e.g. {', '.join(names[:3])})" if reason.startswith(("no ", "not ")) else ""
        kinds.append(f"{len(uris)} {label}{examples}")
    return f"{total} object{'s' if total != 1 else ''}: {', '.join(kinds)}"


async def _list(prefix: str, stores: Stores) -> list[ObjectInfo]:
    """A listing made while planning: a failure is a configuration error (nothing has run yet)."""
    try:
        return await stores.for_uri(prefix).list(prefix)
    except UsageError:
        raise
    except StreamfilterError as exc:
        raise configuration_error(exc, f"cannot list {redact_uri(prefix)}", prefix) or UsageError(
            f"cannot list {redact_uri(prefix)}: {exc}"
        ) from None


def _local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def _location(uri: str) -> str:
    """The URI without an HTTP query or fragment: a signed URL's ``?`` is no glob and no part of a name."""
    if scheme_of(uri) in ("http", "https"):
        return uri.split("#", 1)[0].split("?", 1)[0]
    return uri


def _comparable(uri: str) -> str:
    """A form in which two spellings of the same location compare equal."""
    if scheme_of(uri) == "file":
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        return os.path.abspath(path) + ("/" if uri.endswith("/") else "")
    return _location(uri)


def common_dir(uris: list[str]) -> str:
    """The longest directory prefix (ending in '/') shared by all URIs."""
    dirs = [_comparable(u).rsplit("/", 1)[0] + "/" for u in uris]
    prefix = os.path.commonprefix(dirs)  # noqa: RUF071 - cut back to a '/' on the next line
    return prefix[: prefix.rfind("/") + 1]


def worker_of(shard: Shard, num_workers: int) -> int:
    """The worker that owns a shard: a stable hash of its input URI, whatever the listing order."""
    digest = hashlib.sha256(shard.input.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_workers


def worker_share(shards: list[Shard], num_workers: int, worker_index: int) -> list[Shard]:
    """The shards worker ``worker_index`` of ``num_workers`` processes; every shard has exactly one owner."""
    if num_workers == 1:
        return shards
    return [s for s in shards if worker_of(s, num_workers) == worker_index]


@dataclass(frozen=True)
class Plan:
    shards: list[Shard]
    #: The prefix the run writes under (receipts go below it); None for a dry run.
    output_root: str | None


async def plan_shards(
    inputs: list[str] | tuple[str, ...],
    output: str | None,
    stores: Stores,
    *,
    output_inside_input: bool = False,
    in_place: bool = False,
    fmt: str | None = None,
) -> Plan:
    """Expand the inputs and name each shard's output: under ``output``, or the input itself.

    ``fmt`` is ``--format``, which says which objects of a folder input are shards.
    """
    found = _Expansion()
    for expr in inputs:
        await _expand(expr, stores, found, fmt)
    uris = list(dict.fromkeys(found.uris))  # a shard named twice is still one shard
    if not uris:
        raise UsageError("no input shard: the inputs expanded to nothing")
    # A folder given is a prefix of the names even when all its shards lie deeper down.
    base = common_dir(uris + found.folders)
    if fmt == "embeddings":  # named by R/metadata/…: the outputs mirror R's whole layout
        base = set_root(base)
    names = [_comparable(u)[len(base) :] for u in uris]
    known = found.known
    if in_place:
        for uri in uris:
            if not stores.for_uri(uri).writable:
                raise UsageError(f"--in-place cannot replace {redact_uri(uri)}: its store is read-only")
        found.say_notes()
        return Plan([_shard(u, u, n, known) for u, n in zip(uris, names, strict=True)], base)
    if output is None:
        found.say_notes()
        return Plan([_shard(u, None, n, known) for u, n in zip(uris, names, strict=True)], None)
    out_prefix = output if output.endswith("/") else output + "/"
    shards = [_shard(u, out_prefix + n, n, known) for u, n in zip(uris, names, strict=True)]
    if not output_inside_input:
        _refuse_rereading(shards, found, output)
    clash = {_comparable(s.output) for s in shards if s.output} & {_comparable(u) for u in uris}
    if clash:
        raise UsageError(
            f"output would replace input {redact_uri(sorted(clash)[0])}; choose another --output prefix, "
            "or clean in place with --in-place"
        )
    found.say_notes()
    return Plan(shards, out_prefix)


def _refuse_rereading(shards: list[Shard], found: _Expansion, output: str) -> None:
    """Refuse outputs that a rerun of the same command would take for inputs.

    Only listed inputs can: a folder whose tree holds the output prefix (unless the output is
    where its listing skips, as in a hidden folder), or a glob that matches an output's name.
    Objects named outright never can, so an output beside its input is fine.
    """
    folders = [_comparable(f) for f in found.folders]
    globs = [(given, _comparable_glob(listed)) for given, listed in found.globs]
    for shard in shards:
        out = _comparable(shard.output or "")
        inside = next((f for f, c in zip(found.folders, folders, strict=True) if out.startswith(c)), None)
        if inside is not None and _skip_reason(out[len(_comparable(inside)) :]) is None:
            by = f"the folder {redact_uri(inside)} holds it"
        else:
            by = next((f"the pattern {redact_uri(g)} matches it" for g, regex in globs if regex.match(out)), None)
            if by is None:
                continue
        raise UsageError(
            f"output {redact_uri(output)} is inside the input prefix: a rerun would read "
            f"{redact_uri(shard.output or '')} as an input, since {by}; choose an --output outside it, or pass "
            "--output-inside-input if you mean it"
        )


def _comparable_glob(pattern: str) -> re.Pattern[str]:
    """The glob's regex over :func:`_comparable` names (its literal head made absolute, kept literal)."""
    head = _WILDCARD.search(pattern).start()  # type: ignore[union-attr]
    cut = pattern.rfind("/", 0, head) + 1
    literal = _comparable(pattern[:cut]) if cut else ""
    return re.compile(re.escape(literal) + glob_regex(pattern[cut:]).pattern)


async def check_first_input(plan: Plan, stores: Stores) -> Plan:
    """Ask S3 (or the disk) for the first shard no listing described, before any shard runs; keep what it says.

    Credentials that do not work or an endpoint that cannot be reached would fail every shard
    alike: one configuration error (exit 2) says so instead of a failed run. So does the sole
    input of a run when it is not there or may not be read. The shard needs this request anyway.
    Other stores' refusals (an HTTP 401, a gated Hub repository) stay the shard's to report.
    """
    shards, sole = plan.shards, len(plan.shards) == 1
    index = next((i for i, s in enumerate(shards) if s.info is None), None)
    if index is None or scheme_of(shards[index].input) not in ("s3", "file"):
        return plan
    shard = shards[index]
    try:
        info = await stores.for_uri(shard.input).stat(shard.input)
    except StreamfilterError as exc:
        setup = configuration_error(exc, f"cannot read {redact_uri(shard.input)}", shard.input, per_object=sole)
        if setup is not None:
            raise setup from None
        if sole and scheme_of(shard.input) == "file":
            raise UsageError(str(exc)) from None
        return plan  # one missing shard among others: the run reports it and goes on
    return dataclasses.replace(
        plan, shards=[*shards[:index], dataclasses.replace(shard, info=info), *shards[index + 1 :]]
    )


def source_error(exc: StreamfilterError, flag: str, sources: list[str]) -> StreamfilterError:
    """A ``--blocklist`` or ``--filter`` that S3 refused to give: what to do instead of botocore's text."""
    text = str(exc)
    source = next((s for s in sources if redact_uri(s).rsplit(":", 1)[0] in text), sources[0] if sources else "")
    return configuration_error(exc, f"cannot read {flag} {redact_uri(source)}", source) or exc


#: S3 error codes that refuse the credentials themselves, whatever the object.
_REJECTED = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}
)
#: Codes that may refuse one object only (a bucket policy on some keys); a HEAD's 403 carries no code at all.
_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "403"})
_ENDPOINT_HINT = "for a bucket on MinIO, R2 or Ceph, pass --s3-endpoint-url (or set AWS_ENDPOINT_URL)"


def configuration_error(exc: BaseException, doing: str, uri: str, *, per_object: bool = True) -> UsageError | None:
    """The one line to print when S3 refuses a request made before any shard runs; None for other failures.

    Credentials, the profile, the bucket and the endpoint are the user's to fix, so each gets
    what to do instead of botocore's text. ``per_object=False``: an answer that may concern this
    object alone (not found, access denied) is no configuration error; the run reports that shard.
    """
    errors = sys.modules.get("botocore.exceptions")
    if errors is None:  # botocore was never imported: no S3 request was made
        return None
    bucket = uri[len("s3://") :].split("/", 1)[0] if uri.startswith("s3://") else ""
    for cause in _chain(exc):
        if isinstance(cause, errors.NoCredentialsError | errors.PartialCredentialsError):
            return UsageError(
                f"{doing}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE "
                f"to a profile in ~/.aws, or run with an instance or pod role; {_ENDPOINT_HINT}"
            )
        if isinstance(cause, errors.ProfileNotFound | errors.CredentialRetrievalError):
            return UsageError(f"{doing}: {cause}; set AWS_PROFILE to a profile defined in ~/.aws, or unset it")
        if isinstance(cause, errors.EndpointConnectionError):
            return UsageError(
                f"{doing}: cannot reach the S3 endpoint ({cause}); check --s3-endpoint-url or AWS_ENDPOINT_URL, "
                "and the network"
            )
        if isinstance(cause, errors.ClientError):
            code = str(cause.response.get("Error", {}).get("Code", ""))
            status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return UsageError(f"{doing}: there is no bucket {bucket!r}; check its name; {_ENDPOINT_HINT}")
            if code in _REJECTED:
                return UsageError(
                    f"{doing}: the endpoint rejects the credentials ({code}); check AWS_PROFILE or "
                    f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN); {_ENDPOINT_HINT}"
                )
            if per_object and (code in _DENIED or status == 403):
                return UsageError(
                    f"{doing}: access denied ({code or status}); check which credentials are in use (AWS_PROFILE, "
                    f"AWS_ACCESS_KEY_ID) and that they may read bucket {bucket!r}; {_ENDPOINT_HINT}"
                )
            if per_object and (code in ("404", "NoSuchKey") or status == 404):
                return UsageError(f"{doing}: not found; check the bucket and the key; {_ENDPOINT_HINT}")
            return None
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """An exception and what it was raised from or during, nearest first."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in out and len(out) < 16:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out
