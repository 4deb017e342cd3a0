"""From the user's input expressions to the list of shards, and each shard's output name."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field

from .errors import StreamfilterError, UsageError, redact_uri
from .store import ObjectInfo, Stores, scheme_of

_BRACE = re.compile(r"\{([^{}]*)\}")
_NUMERIC_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_WILDCARD = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Shard:
    input: str
    output: str | None
    name: str  # the input's path relative to the common input prefix
    #: What a listing said of the input (size, ETag, mtime), so the shard need not ask again.
    info: ObjectInfo | None = field(default=None, compare=False)


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


async def expand_input(expr: str, stores: Stores, known: dict[str, ObjectInfo] | None = None) -> list[str]:
    """One input expression to object URIs: @manifest, brace ranges, globs, or itself.

    What listings say of the objects found goes into ``known``.
    """
    if expr.startswith("@"):
        manifest = expr[1:]
        try:
            text = (await stores.for_uri(manifest).read_all(manifest)).decode("utf-8")
        except StreamfilterError as exc:
            raise UsageError(f"cannot read manifest {redact_uri(manifest)}: {exc}") from None
        lines = [line.strip() for line in text.splitlines()]
        uris: list[str] = []
        for line in lines:
            if line.startswith("{"):  # a --manifest-out line from an earlier stage
                try:
                    line = json.loads(line)["uri"]
                except (ValueError, KeyError, TypeError):
                    raise UsageError(f"manifest {redact_uri(manifest)}: a JSON line without a 'uri'") from None
            if line and not line.startswith("#"):
                uris += await expand_input(line, stores, known)
        return uris
    uris = []
    for uri in expand_braces(expr):
        if not _WILDCARD.search(_location(uri)):
            uris.append(uri)
            continue
        prefix = uri[: _WILDCARD.search(uri).start()]  # type: ignore[union-attr]
        regex = glob_regex(uri)
        listed = await stores.for_uri(uri).list(prefix)
        found = {info.uri: info for info in listed if regex.match(info.uri)}
        if known is not None:
            known.update(found)
        matched = sorted(found)
        if not matched:
            raise UsageError(f"no object matches {redact_uri(uri)}; check the pattern and the credentials")
        uris += matched
    return uris


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
) -> Plan:
    """Expand the inputs and name each shard's output: under ``output``, or the input itself."""
    uris: list[str] = []
    known: dict[str, ObjectInfo] = {}
    for expr in inputs:
        uris += await expand_input(expr, stores, known)
    uris = list(dict.fromkeys(uris))  # a shard named twice is still one shard
    if not uris:
        raise UsageError("no input shard: the inputs expanded to nothing")
    base = common_dir(uris)
    names = [_comparable(u)[len(base) :] for u in uris]
    if in_place:
        for uri in uris:
            if not stores.for_uri(uri).writable:
                raise UsageError(f"--in-place cannot replace {redact_uri(uri)}: its store is read-only")
        return Plan([Shard(u, u, n, known.get(u)) for u, n in zip(uris, names, strict=True)], base)
    if output is None:
        return Plan([Shard(u, None, n, known.get(u)) for u, n in zip(uris, names, strict=True)], None)
    out_prefix = output if output.endswith("/") else output + "/"
    if _comparable(out_prefix).startswith(base) and not output_inside_input:
        raise UsageError(
            f"output {redact_uri(output)} is inside the input prefix {redact_uri(base)}: a rerun would read "
            "its own output; choose another prefix, or pass --output-inside-input if you mean it"
        )
    shards = [Shard(u, out_prefix + n, n, known.get(u)) for u, n in zip(uris, names, strict=True)]
    clash = {_comparable(s.output) for s in shards if s.output} & {_comparable(u) for u in uris}
    if clash:
        raise UsageError(
            f"output would replace input {redact_uri(sorted(clash)[0])}; choose another --output prefix, "
            "or clean in place with --in-place"
        )
    return Plan(shards, out_prefix)
