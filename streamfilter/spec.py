"""JobSpec: everything one run needs, validated once, from flags, TOML or the API."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .concurrency import usable_cpus
from .errors import UsageError
from .formats import FORMATS
from .keys import KeySpec
from .store import StoreOptions, expand_header
from .store.uris import local_path

Mode = Literal["deny", "allow"]
#: Shards in flight: one per usable CPU, at least 2 (one decodes while the other waits on the store)
#: and at most 4 (each adds about 60 MiB of peak RSS with LAION-style row groups of 122,880 rows). On the
#: 2-core benchmark machine 2 ran as fast as 3 (dense local 2.90 s against 3.12 s, dense S3 5.22 s
#: against 5.15 s, sparse S3 5.92 s against 5.95 s; medians of 4-6) with 100 MiB less peak RSS.
DEFAULT_CONCURRENCY = min(max(usable_cpus(), 2), 4)
#: Kubernetes waits 30 s between SIGTERM and SIGKILL by default; leave time to abort and report.
DEFAULT_GRACE_SECONDS = 20.0


@dataclass(frozen=True)
class JobSpec:
    inputs: tuple[str, ...]
    output: str | None
    blocklists: tuple[str, ...]
    #: A membership file from ``build-filter`` (Bloom filter or fingerprint set), instead of lists.
    filter: str | None = None
    #: Allow mode with a Bloom filter keeps its false positives, rows that should go: only on request.
    accept_false_positives: bool = False
    key: KeySpec = field(default_factory=KeySpec)
    #: The parts of ``key`` the caller chose (``KeySpec`` field names); the rest are defaults, which a
    #: ``filter`` file's recorded key spec replaces. None: all were chosen (a KeySpec built by hand).
    key_given: frozenset[str] | None = None
    mode: Mode = "deny"
    format: str = "auto"
    #: A sample or line without the key field: "fail" the shard, or "keep" it and count it as unkeyed.
    on_unkeyed: str = "fail"
    #: WebDataset tars: take each sample's key from the sibling ``.parquet`` (img2dataset) instead of its ``.json``.
    sidecar: str | None = None
    #: With an image hash as the key: a sample whose image does not decode is kept, or removed ("remove").
    on_undecodable: str = "keep"
    report: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    dry_run: bool = False
    #: Two-phase run: read only the key columns first and rewrite only shards with rows to remove.
    scan: bool = True
    output_inside_input: bool = False
    #: Redo every shard, even those whose receipt shows them done.
    overwrite: bool = False
    #: Replace each input by its filtered rewrite (``output`` stays None).
    in_place: bool = False
    #: With ``in_place``: copy each original here (server-side where possible) before replacing it.
    backup: str | None = None
    #: Seconds the shards in flight get to commit after SIGTERM before they give up.
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    #: Static sharding: this process handles the shards that hash to ``worker_index``.
    num_workers: int = 1
    worker_index: int = 0
    #: Where shards run: "local" (this process) or "ray" (one Ray task per shard).
    executor: str = "local"
    ray_address: str | None = None
    #: CPUs Ray reserves for each shard's task.
    ray_task_cpus: float = 1.0
    #: JSON lines naming every committed output (URI, rows, bytes, ETag), for the next stage.
    manifest_out: str | None = None
    #: Embedding sets: the removed rows' global positions (int64 .npy), for ``index.remove_ids``.
    removed_ids_out: str | None = None
    #: "text" log lines (or a live line on a terminal), or "json": one object per event.
    log_format: str = "text"
    #: Prometheus text-format counters, rewritten after every shard.
    metrics_file: str | None = None
    stores: StoreOptions = field(default_factory=StoreOptions)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise UsageError("no input: name at least one shard, glob, brace range or @manifest")
        if not self.blocklists and self.filter is None:
            raise UsageError("no membership list: pass --blocklist FILE (one key a line, or FILE.parquet:COLUMN)")
        if self.blocklists and self.filter is not None:
            raise UsageError("--blocklist and --filter: pass one of them (build-filter turns lists into a filter)")
        if self.in_place and self.output is not None:
            raise UsageError("--in-place replaces the inputs: leave out --output")
        if self.backup is not None and not self.in_place:
            raise UsageError("--backup goes with --in-place: it keeps the originals that --in-place replaces")
        if self.output is None and not (self.dry_run or self.in_place):
            raise UsageError("no output: pass --output PREFIX, or --in-place, or --dry-run to only count matches")
        if self.mode not in ("deny", "allow"):
            raise UsageError(f"--mode {self.mode!r}: choose deny (drop listed keys) or allow (keep only them)")
        if self.on_unkeyed not in ("fail", "keep"):
            raise UsageError(f"--on-unkeyed {self.on_unkeyed!r}: choose fail or keep")
        if self.sidecar not in (None, "parquet"):
            raise UsageError(f"--sidecar {self.sidecar!r}: the one sidecar known is parquet (img2dataset's)")
        if self.format not in FORMATS:
            raise UsageError(f"--format {self.format!r}: choose one of {', '.join(FORMATS)}")
        self._check_image_hash()
        if self.num_workers < 1 or not 0 <= self.worker_index < self.num_workers:
            raise UsageError(
                f"--worker-index {self.worker_index} with --num-workers {self.num_workers}: "
                "the index must be between 0 and num-workers - 1"
            )
        if self.log_format not in ("text", "json"):
            raise UsageError(f"--log-format {self.log_format!r}: choose text or json")
        if self.executor not in ("local", "ray"):
            raise UsageError(f"--executor {self.executor!r}: choose local or ray")
        if not self.grace_seconds >= 0:  # NaN included
            raise UsageError(f"--grace-seconds {self.grace_seconds}: must be 0 or more")
        if not 1 <= self.concurrency <= 256:
            raise UsageError(f"--concurrency {self.concurrency}: choose between 1 and 256")
        if not self.ray_task_cpus > 0:
            raise UsageError(f"--ray-task-cpus {self.ray_task_cpus}: must be more than 0")
        if self.removed_ids_out is not None and (self.format != "embeddings" or self.dry_run or self.num_workers > 1):
            raise UsageError(
                "--removed-ids-out numbers the vectors of embedding sets across the whole run: use it with --format "
                "embeddings, one worker and no --dry-run"
            )
        self._check_local_targets()

    def _check_image_hash(self) -> None:
        if self.on_undecodable not in ("keep", "remove"):
            raise UsageError(f"--on-undecodable {self.on_undecodable!r}: choose keep or remove")
        if self.key.image == "none":
            if self.on_undecodable != "keep":
                raise UsageError("--on-undecodable goes with --image-hash pdq")
            return
        if self.filter is not None or self.mode != "deny" or self.sidecar is not None:
            raise UsageError(
                "--image-hash pdq removes the samples whose image matches a list of PDQ hashes: pass the list "
                "with --blocklist, and leave out --filter, --mode allow and --sidecar"
            )
        if self.format not in ("auto", "webdataset", "img2dataset"):
            raise UsageError(
                f"--image-hash pdq hashes the images in tars: use it with --format webdataset or img2dataset, "
                f"not {self.format}"
            )

    def _check_local_targets(self) -> None:
        """Local places this run would write to must be able to take what goes there, so a wrong
        path is a usage error before any shard runs rather than a failure of every shard."""
        if self.output is not None and not self.dry_run:
            _check_local_target("--output", self.output, prefix=True)
        if self.backup is not None:
            _check_local_target("--backup", self.backup, prefix=True)
        for flag, target in (
            ("--report", self.report), ("--manifest-out", self.manifest_out), ("--metrics-file", self.metrics_file),
            ("--removed-ids-out", self.removed_ids_out),
        ):  # fmt: skip
            if target is not None:
                _check_local_target(flag, target, prefix=False)


def _local_path(uri: str) -> Path | None:
    return local_path(uri)


def _check_local_target(flag: str, uri: str, *, prefix: bool) -> None:
    """A local ``--output``/``--backup`` prefix must be a directory or not exist yet; a local file
    target must not be a directory; and neither may sit under an existing file."""
    path = _local_path(uri)
    if path is None or not str(path):
        return
    try:
        problem = _target_problem(path, prefix)
    except OSError:  # e.g. a parent we may not search: the write itself will say what is wrong
        return
    if problem:
        raise UsageError(f"{flag} {uri} {problem}")


def _target_problem(path: Path, prefix: bool) -> str | None:
    if prefix and path.exists() and not path.is_dir():
        return (
            "is an existing file, and the outputs go under it as under a directory; "
            "choose a directory, or a path that does not exist yet"
        )
    if not prefix and path.is_dir():
        return "is a directory; name a file"
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else f"is under {parent}, which is a file; choose another path"
    return None


#: Option names accepted from TOML and the API, mapped to JobSpec fields.
OPTIONS = (
    "inputs", "output", "blocklist", "filter", "accept_false_positives", "key", "key_separator", "normalize",
    "key_hash", "blocklist_hash", "mode", "format", "on_unkeyed", "sidecar", "image_hash", "max_distance",
    "on_undecodable", "report",
    "concurrency", "dry_run", "scan", "output_inside_input", "overwrite", "in_place", "backup", "grace_seconds",
    "s3_endpoint_url", "http_header", "retries", "retry_max_seconds", "num_workers", "worker_index", "executor",
    "ray_address", "ray_task_cpus", "manifest_out", "log_format", "metrics_file", "removed_ids_out",
)  # fmt: skip


#: The key options, by the KeySpec field each sets.
_KEY_FIELDS = {
    "key": "columns", "key_separator": "separator", "normalize": "normalize", "key_hash": "hash",
    "blocklist_hash": "entries",
}  # fmt: skip


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _number(opts: dict[str, Any], name: str, default: float) -> float:
    try:
        return float(opts.get(name, default))
    except (TypeError, ValueError):
        raise UsageError(f"--{name.replace('_', '-')} {opts[name]!r}: expected a number") from None


def _whole(opts: dict[str, Any], name: str, default: int) -> int:
    value = opts.get(name, default)
    try:
        number = float(value) if isinstance(value, str | float) else value
        if isinstance(number, bool) or not isinstance(number, int | float) or number != int(number):
            raise ValueError(value)
        return int(number)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"--{name.replace('_', '-')} {value!r}: expected a whole number") from None


#: Options by the kind of value they take (the rest are numbers, converted where they are read).
_TEXT = (
    "output", "filter", "key_separator", "normalize", "key_hash", "blocklist_hash", "mode", "format", "on_unkeyed",
    "sidecar", "report", "backup", "s3_endpoint_url", "executor", "ray_address", "manifest_out", "log_format",
    "metrics_file", "removed_ids_out", "image_hash", "on_undecodable",
)  # fmt: skip
_TEXTS = ("inputs", "blocklist", "http_header", "key")
_SWITCHES = ("accept_false_positives", "dry_run", "scan", "output_inside_input", "overwrite", "in_place")


def _checked_types(opts: dict[str, Any]) -> dict[str, Any]:
    """Options of the kinds their names take (a TOML file may hold anything); paths become text."""
    checked = {}
    for name, value in opts.items():
        flag = f"--{name.replace('_', '-')}"
        shown = "…" if name == "http_header" else repr(value)  # header values may be tokens
        if name in _TEXT or name in _TEXTS:
            many = name in _TEXTS and isinstance(value, list | tuple)
            values = list(value) if many else [value]
            if not all(isinstance(v, str | os.PathLike) for v in values):
                kind = "text or a list of text" if name in _TEXTS else "text"
                raise UsageError(f"{flag} {shown}: expected {kind}")
            texts = [os.fspath(v) for v in values]
            value = texts if many else texts[0]
        elif name in _SWITCHES and not isinstance(value, bool):
            raise UsageError(f"{flag} {shown}: expected true or false")
        checked[name] = value
    return checked


def build_spec(options: dict[str, Any]) -> JobSpec:
    """A JobSpec from option values (None means unset); unknown names are an error."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r}; known options: {', '.join(OPTIONS)}")
    opts = _checked_types({k: v for k, v in options.items() if v is not None})
    if "max_distance" in opts:
        if opts.get("image_hash", "none") == "none":
            raise UsageError("--max-distance goes with --image-hash pdq: it is the most bits an image match differs by")
        opts["max_distance"] = _whole(opts, "max_distance", 31)
    key_given = frozenset(name for option, name in _KEY_FIELDS.items() if option in opts)
    headers = dict(expand_header(h) for h in _as_list(opts.get("http_header")))
    concurrency = _whole(opts, "concurrency", DEFAULT_CONCURRENCY)
    # Kubernetes Indexed Jobs give each pod its index in JOB_COMPLETION_INDEX.
    index = os.environ.get("JOB_COMPLETION_INDEX", "0")
    if "worker_index" not in opts and not index.strip().isdigit():
        raise UsageError(f"JOB_COMPLETION_INDEX={index!r}: expected a whole number; pass --worker-index")
    return JobSpec(
        inputs=tuple(_as_list(opts.get("inputs"))),
        output=opts.get("output"),
        blocklists=tuple(_as_list(opts.get("blocklist"))),
        filter=opts.get("filter"),
        accept_false_positives=bool(opts.get("accept_false_positives", False)),
        key=KeySpec.from_options(opts),
        key_given=key_given,
        mode=opts.get("mode", "deny"),
        format=opts.get("format", "auto"),
        on_unkeyed=opts.get("on_unkeyed", "fail"),
        sidecar=opts.get("sidecar"),
        on_undecodable=opts.get("on_undecodable", "keep"),
        report=opts.get("report"),
        concurrency=concurrency,
        dry_run=bool(opts.get("dry_run", False)),
        scan=bool(opts.get("scan", True)),
        output_inside_input=bool(opts.get("output_inside_input", False)),
        overwrite=bool(opts.get("overwrite", False)),
        in_place=bool(opts.get("in_place", False)),
        backup=opts.get("backup"),
        grace_seconds=_number(opts, "grace_seconds", DEFAULT_GRACE_SECONDS),
        num_workers=_whole(opts, "num_workers", 1),
        worker_index=_whole(opts, "worker_index", int(index)),
        executor=opts.get("executor", "local"),
        ray_address=opts.get("ray_address"),
        ray_task_cpus=_number(opts, "ray_task_cpus", 1.0),
        manifest_out=opts.get("manifest_out"),
        removed_ids_out=opts.get("removed_ids_out"),
        log_format=opts.get("log_format", "text"),
        metrics_file=opts.get("metrics_file"),
        stores=StoreOptions(
            s3_endpoint_url=opts.get("s3_endpoint_url"),
            http_headers=headers,
            retries=_whole(opts, "retries", StoreOptions.retries),
            retry_max_seconds=_number(opts, "retry_max_seconds", StoreOptions.retry_max_seconds),
        ),
    )


def load_config(path: str) -> dict[str, Any]:
    """Options from a TOML file; dashes and underscores in names are equivalent."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--config {path}: file not found") from None
    except OSError as exc:  # a directory, no permission
        raise UsageError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path}: not valid TOML ({exc})") from None
    return {name.replace("-", "_"): value for name, value in data.items()}
