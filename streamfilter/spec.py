"""JobSpec: everything one run needs, validated once, from flags, TOML or the API."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import UsageError
from .formats import FORMATS
from .keys import KeySpec
from .store import StoreOptions, expand_header

Mode = Literal["deny", "allow"]
DEFAULT_CONCURRENCY = 3


@dataclass(frozen=True)
class JobSpec:
    inputs: tuple[str, ...]
    output: str | None
    blocklists: tuple[str, ...]
    key: KeySpec = field(default_factory=KeySpec)
    mode: Mode = "deny"
    format: str = "auto"
    report: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    dry_run: bool = False
    output_inside_input: bool = False
    stores: StoreOptions = field(default_factory=StoreOptions)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise UsageError("no input: name at least one shard, glob, brace range or @manifest")
        if not self.blocklists:
            raise UsageError("no membership list: pass --blocklist FILE (one key a line, or FILE.parquet:COLUMN)")
        if self.output is None and not self.dry_run:
            raise UsageError("no output: pass --output PREFIX (or --dry-run to only count matches)")
        if self.mode not in ("deny", "allow"):
            raise UsageError(f"--mode {self.mode!r}: choose deny (drop listed keys) or allow (keep only them)")
        if self.format not in FORMATS:
            raise UsageError(f"--format {self.format!r}: choose one of {', '.join(FORMATS)}")
        if not 1 <= self.concurrency <= 256:
            raise UsageError(f"--concurrency {self.concurrency}: choose between 1 and 256")


#: Option names accepted from TOML and the API, mapped to JobSpec fields.
OPTIONS = (
    "inputs", "output", "blocklist", "key", "key_separator", "normalize", "mode", "format", "report",
    "concurrency", "dry_run", "output_inside_input", "s3_endpoint_url", "http_header",
)  # fmt: skip


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def build_spec(options: dict[str, Any]) -> JobSpec:
    """A JobSpec from option values (None means unset); unknown names are an error."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r}; known options: {', '.join(OPTIONS)}")
    opts = {k: v for k, v in options.items() if v is not None}
    key = opts.get("key", "url")
    columns = tuple(c.strip() for c in (key.split(",") if isinstance(key, str) else key))
    headers = dict(expand_header(h) for h in _as_list(opts.get("http_header")))
    try:
        concurrency = int(opts.get("concurrency", DEFAULT_CONCURRENCY))
    except (TypeError, ValueError):
        raise UsageError(f"--concurrency {opts['concurrency']!r}: expected a whole number") from None
    return JobSpec(
        inputs=tuple(_as_list(opts.get("inputs"))),
        output=opts.get("output"),
        blocklists=tuple(_as_list(opts.get("blocklist"))),
        key=KeySpec(columns, opts.get("key_separator", "\t"), opts.get("normalize", "none")),
        mode=opts.get("mode", "deny"),
        format=opts.get("format", "auto"),
        report=opts.get("report"),
        concurrency=concurrency,
        dry_run=bool(opts.get("dry_run", False)),
        output_inside_input=bool(opts.get("output_inside_input", False)),
        stores=StoreOptions(s3_endpoint_url=opts.get("s3_endpoint_url"), http_headers=headers),
    )


def load_config(path: str) -> dict[str, Any]:
    """Options from a TOML file; dashes and underscores in names are equivalent."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--config {path}: file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path}: not valid TOML ({exc})") from None
    return {name.replace("-", "_"): value for name, value in data.items()}
