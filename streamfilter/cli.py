"""The command line: flags and TOML become a spec, handed to the module that runs the command
(``runner``, ``verify``, ``status``, ``sets.build``, ``diff``, the demos); what it returns is printed
as lines, a failure as one line and an exit code. No store is opened and no work is done here."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from typing import Any

import anyio

from ._version import __version__
from .errors import StreamfilterError, UsageError, redact_text, redact_uri
from .formats import FORMATS
from .keys import IMAGE_HASHES, KEY_HASHES, LIST_ENTRIES, NORMALIZATIONS
from .progress import Progress
from .spec import DEFAULT_CONCURRENCY, build_spec, load_config

log = logging.getLogger("streamfilter")


#: Rows of the diff demo's original unless --rows says otherwise.
DIFF_DEMO_ROWS = 3_000_000


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2 with one line, as ours do
        raise UsageError(f"{message}; see '{self.prog} --help'")


def _add_key_flags(parser: argparse.ArgumentParser) -> None:
    """The list and the key: how `run` matches and how `verify` checks, so the same flags."""
    parser.add_argument(
        "--blocklist", action="append", metavar="LIST", help="keys: text (.gz/.zst) or FILE.parquet:COL"
    )
    parser.add_argument("--key", metavar="COL[,COL]", help="key column(s); several are joined (default: url)")
    parser.add_argument("--key-separator", metavar="SEP", help="joins several key columns (default: tab)")
    parser.add_argument(
        "--filter", metavar="FILE", help="a Bloom filter or fingerprint set from build-filter, instead of --blocklist"
    )
    parser.add_argument(
        "--normalize", choices=list(NORMALIZATIONS), help="applied to row and list keys: none (default), strip, url"
    )
    parser.add_argument(
        "--key-hash", choices=list(KEY_HASHES), help="hash applied to the normalized key before lookup (default: none)"
    )
    parser.add_argument(
        "--blocklist-hash",
        choices=list(LIST_ENTRIES),
        help="what list entries are: raw keys (default), hex digests/hashes, or int 64-bit integers",
    )
    parser.add_argument("--mode", choices=["deny", "allow"], help="deny drops listed keys (default), allow keeps them")
    parser.add_argument(
        "--image-hash",
        choices=list(IMAGE_HASHES),
        help="tars: match each sample's image by its perceptual hash; --blocklist then holds hex PDQ hashes",
    )
    parser.add_argument(
        "--max-distance", type=int, metavar="D", help="with --image-hash pdq: most bits a match differs by (31)"
    )


def _add_store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--s3-endpoint-url", metavar="URL", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL)")
    parser.add_argument("--http-header", action="append", metavar="'NAME: VALUE'", help="for http(s); $VAR expands")
    parser.add_argument("--verbose", action="store_true", help="tracebacks and debug logs")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="streamfilter", description="Remove listed rows from dataset shards, streaming.")
    parser.add_argument("--version", action="version", version=f"streamfilter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="filter shards against a key list")
    run.add_argument("inputs", nargs="*", metavar="INPUT", help="object, glob, brace range {00000..00127}, @MANIFEST")
    run.add_argument("-o", "--output", metavar="PREFIX", help="where filtered shards go (names mirror the inputs)")
    _add_key_flags(run)
    run.add_argument("--format", choices=list(FORMATS), help="shard format (default: by extension)")
    run.add_argument(
        "--accept-false-positives",
        action="store_true",
        default=None,
        help="allow mode with a Bloom filter: keep its false positives (rows that should go); the report counts them",
    )
    run.add_argument(
        "--on-unkeyed",
        choices=["fail", "keep"],
        help="a tar sample or JSON line without the key field: fail the shard (default) or keep it and count it",
    )
    run.add_argument(
        "--sidecar",
        choices=["parquet"],
        help="tars: key each sample by the sibling img2dataset .parquet (its 'key' column) instead of its .json",
    )
    run.add_argument(
        "--on-undecodable",
        choices=["keep", "remove"],
        help="with --image-hash: a sample whose image does not decode is kept (default) or removed; both are counted",
    )
    run.add_argument("--report", metavar="FILE", help="write the JSON report here (local or s3://)")
    run.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help=f"shards decoding at once (default: {DEFAULT_CONCURRENCY}); 16 x N may wait on the store at once",
    )
    run.add_argument(
        "--no-scan",
        dest="scan",
        action="store_false",
        default=None,
        help="skip the key-column scan that lets shards without hits be copied (or, in place, left) untouched",
    )
    run.add_argument("--dry-run", action="store_true", default=None, help="count matches, write nothing but the report")
    run.add_argument(
        "--output-inside-input", action="store_true", default=None, help="allow output under the input prefix"
    )
    run.add_argument("--in-place", action="store_true", default=None, help="replace each input by its rewrite")
    run.add_argument("--backup", metavar="PREFIX", help="with --in-place: copy the originals here first")
    run.add_argument("--overwrite", action="store_true", default=None, help="redo shards whose receipts show them done")
    run.add_argument("--grace-seconds", type=float, metavar="S", help="after SIGTERM, time to commit in-flight shards")
    _add_store_flags(run)
    run.add_argument("--retries", type=int, metavar="N", help="attempts after the first for a transient failure (5)")
    run.add_argument("--retry-max-seconds", type=float, metavar="S", help="cap on one backoff sleep (20)")
    run.add_argument("--num-workers", type=int, metavar="N", help="split the shards over N workers (default 1)")
    run.add_argument("--worker-index", type=int, metavar="I", help="this worker (default: $JOB_COMPLETION_INDEX or 0)")
    run.add_argument("--executor", choices=["local", "ray"], help="run shards here (default) or as Ray tasks")
    run.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to join (default: start a local one)")
    run.add_argument("--ray-task-cpus", type=float, metavar="N", help="CPUs reserved per shard task on Ray (1)")
    run.add_argument("--manifest-out", metavar="FILE", help="JSON lines of committed outputs, for the next stage")
    run.add_argument(
        "--removed-ids-out",
        metavar="FILE",
        help="embedding sets: the removed rows' global positions (int64 .npy) for a faiss index's remove_ids",
    )
    run.add_argument("--log-format", choices=["text", "json"], help="json: one object per event, for log collectors")
    run.add_argument("--metrics-file", metavar="FILE", help="Prometheus counters, rewritten after every shard")
    run.add_argument("--config", metavar="FILE.toml", help="options from TOML; flags given here win")

    verify = sub.add_parser("verify", help="re-read the outputs of a run and check them against the list")
    verify.add_argument("output", metavar="OUTPUT", help="the --output prefix of the run")
    _add_key_flags(verify)
    verify.add_argument("--concurrency", type=int, metavar="N", help="outputs read at once")
    _add_store_flags(verify)

    status = sub.add_parser("report", help="merge the receipts and worker reports of a (scaled-out) run")
    status.add_argument("output", metavar="OUTPUT", help="the --output prefix of the run")
    status.add_argument("inputs", nargs="*", metavar="INPUT", help="the run's inputs, to name shards not yet done")
    status.add_argument("--report", metavar="FILE", help="also write the merged report as JSON here")
    _add_store_flags(status)

    build = sub.add_parser("build-filter", help="turn key lists into a Bloom filter or fingerprint-set file")
    build.add_argument("sources", nargs="+", metavar="LIST", help="key lists: text (.gz/.zst), FILE.parquet:COL, …")
    build.add_argument("--out", required=True, metavar="FILE", help="where to write the filter (local path or s3://)")
    build.add_argument("--kind", choices=["bloom", "fingerprints"], default="bloom", help="default: bloom")
    build.add_argument("--fpr", type=float, default=1e-4, help="target false-positive rate of a Bloom filter")
    build.add_argument("--key", metavar="COL[,COL]", help="the key columns of the shards the filter is for")
    build.add_argument("--key-separator", metavar="SEP", help="joins several key columns (default: tab)")
    build.add_argument("--normalize", choices=list(NORMALIZATIONS), help="none (default), strip, url")
    build.add_argument("--key-hash", choices=["xxh3_64", "xxh64", "mmh3_64"], default="xxh3_64")
    build.add_argument("--blocklist-hash", choices=list(LIST_ENTRIES), help="what the entries are (default: raw)")
    _add_store_flags(build)

    inspect = sub.add_parser("inspect", help="print what a filter or fingerprint-set file holds")
    inspect.add_argument("file", metavar="FILE", help="local path, s3:// or http(s)://")
    _add_store_flags(inspect)

    _add_diff_parser(sub)

    demo = sub.add_parser("demo", help="generate a small shard set locally and filter it")
    demo.add_argument(
        "dir", nargs="?", help="where to write (default: ./streamfilter-demo, with --diff ./streamfilter-diff-demo)"
    )
    demo.add_argument(
        "--diff", action="store_true", help="the diff example: original, cleaned reference, derivative; diff, run"
    )
    demo.add_argument(
        "--rows",
        type=_demo_rows,
        help="with --diff: rows of the original, at least 10,000 (default 3,000,000: about 20 s, and 1.7 GiB of "
        "memory at the peak, about 0.6 GiB a million rows)",
    )
    return parser


def _demo_rows(text: str) -> int:
    """``demo --diff --rows``: a whole number of rows, enough to hold the rows the example removes."""
    from .diffdemo import MIN_ROWS

    try:
        rows = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of rows") from None
    if rows < MIN_ROWS:
        raise argparse.ArgumentTypeError(f"{rows:,} is too few: the diff demo needs at least {MIN_ROWS:,} rows")
    return rows


def _add_diff_parser(sub: Any) -> None:
    diff = sub.add_parser(
        "diff", help="list the derivative's keys that a cleaned reference lacks (an exact anti-join, any size)"
    )
    diff.add_argument("--reference", action="append", metavar="URI", help="reference shards: s3://, hf://, https://, …")
    diff.add_argument("--derivative", action="append", metavar="URI", help="your shards (globs, ranges, @MANIFEST)")
    diff.add_argument("--out", metavar="FILE", help="the removal list: FILE.parquet, or text (.gz/.zst)")
    for prefix, side in (("", "derivative"), ("reference-", "reference")):
        default = "" if prefix else " (default: url)"
        fallback = " (default: the derivative's)" if prefix else ""
        diff.add_argument(f"--{prefix}key", metavar="COL[,COL]", help=f"{side} key column(s){default}{fallback}")
        diff.add_argument(f"--{prefix}key-separator", metavar="SEP", help=f"joins several {side} key columns")
        diff.add_argument(f"--{prefix}normalize", choices=list(NORMALIZATIONS), help=f"{side} keys: none, strip, url")
        diff.add_argument(f"--{prefix}key-hash", choices=list(KEY_HASHES), help=f"{side} keys' hash (default: none)")
    diff.add_argument("--spill", metavar="PREFIX", help="spill and resume state, local or s3:// (default: OUT.spill/)")
    diff.add_argument("--memory-budget", metavar="SIZE", help="memory for keys, e.g. 2GiB (default), 512MiB")
    diff.add_argument(
        "--partitions", type=int, metavar="N", help="a power of two (default: from the shards' footers and the budget)"
    )
    diff.add_argument("--concurrency", type=int, metavar="N", help="shards or partitions at once (default: 2)")
    diff.add_argument("--phase", choices=["all", "partition", "resolve", "merge"], help="run one phase (default: all)")
    diff.add_argument("--num-workers", type=int, metavar="N", help="split each phase over N workers (default 1)")
    diff.add_argument("--worker-index", type=int, metavar="I", help="this worker (default: $JOB_COMPLETION_INDEX or 0)")
    diff.add_argument("--overwrite", action="store_true", default=None, help="redo steps whose markers show them done")
    diff.add_argument("--report", metavar="FILE", help="write the JSON report here (local or s3://)")
    diff.add_argument("--executor", choices=["local", "ray"], help="run the steps here (default) or as Ray tasks")
    diff.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to join (default: start a local one)")
    _add_store_flags(diff)
    diff.add_argument("--retries", type=int, metavar="N", help="attempts after the first for a transient failure (5)")
    diff.add_argument("--retry-max-seconds", type=float, metavar="S", help="cap on one backoff sleep (20)")
    diff.add_argument("--config", metavar="FILE.toml", help="options from TOML; flags given here win")


def _diff(args: argparse.Namespace) -> int:
    from .diff import build_diff_spec, diff

    report = diff(build_diff_spec(_options(args)))
    for failure in report.get("failures", [])[:20]:
        print(f"failed {failure}", file=sys.stderr)
    if not report["ok"]:
        print(
            f"streamfilter: diff incomplete: {len(report['failures'])} step(s) failed; the rest is kept, "
            "fix the cause and rerun the same command to finish",
            file=sys.stderr,
        )
        return 1
    print(_diff_summary(report))
    return 0


def _diff_summary(report: dict) -> str:
    phase = report["phase"]
    if phase == "partition":
        return f"partition phase done ({report['partitions']} partitions); run --phase resolve next"
    if phase == "resolve":
        return f"resolve phase done ({report['partitions']} partitions); run one --phase merge next"
    ref, der, rem = report["reference"], report["derivative"], report["removals"]
    if report["comparison_bits"] < 128:
        print(
            f"streamfilter: note: keys were compared as {report['comparison_bits']}-bit values (a 64-bit hash or "
            f"integer key); expected wrongly matched keys <= {report['collision_bound']:.2g}; compare full keys "
            "(e.g. url) for an exact diff",
            file=sys.stderr,
        )
    return (
        f"reference {ref['rows']:,} keys ({ref['duplicates']:,} duplicates, {ref['null_keys']:,} null), "
        f"derivative {der['rows']:,} keys ({der['duplicates']:,} duplicates, {der['null_keys']:,} null): "
        f"{rem['keys']:,} keys the reference lacks ({rem['rows']:,} rows) written to {report['out']}"
    )


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options = load_config(args.config) if getattr(args, "config", None) else {}
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", "verbose") and v is not None}
    if not flags.get("inputs"):
        flags.pop("inputs", None)
    options.update(flags)
    return options


def main(argv: list[str] | None = None) -> int:
    verbose = "--verbose" in (argv if argv is not None else sys.argv[1:])
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # Only our own logger goes to DEBUG: botocore's debug log prints signed headers (key id, session token).
    logging.getLogger("streamfilter").setLevel(logging.DEBUG if verbose else logging.WARNING)
    try:
        args = _parser().parse_args(argv)
        if args.command == "demo" and args.diff:
            from .diffdemo import run_diff_demo

            return run_diff_demo(args.dir or "streamfilter-diff-demo", args.rows or DIFF_DEMO_ROWS)
        if args.command == "demo":
            from .demo import run_demo

            if args.rows is not None:
                raise UsageError("demo --rows sizes the diff example: use it with --diff")
            return run_demo(args.dir or "streamfilter-demo")

        if args.command == "verify":
            return _verify(args)
        if args.command in ("build-filter", "inspect"):
            return _filter_command(args)
        if args.command == "report":
            return _report(args)
        if args.command == "diff":
            return _diff(args)
        return _run(args)
    except (Exception, KeyboardInterrupt) as raised:  # BaseExceptionGroup of a task group included
        return _failed(raised, verbose)


def _run(args: argparse.Namespace) -> int:
    spec = build_spec(_options(args))
    from .runner import run_until_signalled

    report = anyio.run(run_until_signalled, spec, args.verbose)
    if spec.log_format == "json":
        print(json.dumps({"event": "run", **report.totals, "interrupted": report.interrupted}))
    else:
        print(report.summary())
    if report.interrupted:
        print("streamfilter: stopped by a signal; shards not done are in the report, rerun to finish", file=sys.stderr)
        return 128 + signal.SIGTERM
    return 0 if report.ok else 1


def _failed(raised: BaseException, verbose: bool) -> int:
    """Say in one line why the command stopped (``--verbose`` adds the traceback); the exit code."""
    exc = _cause(raised)
    if isinstance(exc, KeyboardInterrupt):
        print("streamfilter: interrupted; outputs in flight were not committed", file=sys.stderr)
        return 130
    if isinstance(exc, BrokenPipeError):  # stdout's reader left (`| head`): as quiet as `cat` would be
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush fails no more
        return 128 + signal.SIGPIPE
    if verbose:
        logging.error("streamfilter failed", exc_info=raised)
    if isinstance(exc, StreamfilterError):
        print(f"streamfilter: error: {exc}", file=sys.stderr)
        return exc.exit_code
    message = " ".join(redact_text(f"{type(exc).__name__}: {exc}").split())
    print(
        f"streamfilter: error: unexpected {message}; this is a bug: rerun with --verbose for the traceback "
        "and report it",
        file=sys.stderr,
    )
    return 1


def _cause(raised: BaseException) -> BaseException:
    """The exception to report: a task group wraps what its tasks raised in a group. An interrupt
    wins over the errors it caused; our own errors over the library errors beside them."""
    if not isinstance(raised, BaseExceptionGroup):
        return raised
    leaves = [_cause(exc) for exc in raised.exceptions]
    for kind in (KeyboardInterrupt, StreamfilterError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0] if leaves else raised


def _filter_command(args: argparse.Namespace) -> int:
    from .keys import KeySpec
    from .sets.build import build_filter_file, inspect_file_at

    stores = _store_options(args)
    if args.command == "inspect":
        print(anyio.run(inspect_file_at, args.file, stores))
    else:
        spec = KeySpec.from_options(vars(args))
        print(anyio.run(lambda: build_filter_file(args.sources, spec, stores, args.out, args.kind, args.fpr)))
    return 0


def _store_options(args: argparse.Namespace) -> Any:
    from .store import StoreOptions, expand_header

    return StoreOptions(args.s3_endpoint_url, dict(expand_header(h) for h in args.http_header or []))


def _verify(args: argparse.Namespace) -> int:
    from .verify import verify_outputs

    options = _options(args)
    spec = build_spec({**options, "inputs": [options["output"]]})
    verdicts = anyio.run(lambda: verify_outputs(spec, progress=Progress.silent()))
    for verdict in verdicts:
        if not verdict.ok:
            print(f"failed {redact_uri(verdict.output)}: {verdict.problem}", file=sys.stderr)
    bad = sum(not v.ok for v in verdicts)
    rows = sum(v.rows for v in verdicts)
    print(f"verified {len(verdicts)} outputs, {rows:,} rows: {len(verdicts) - bad} clean, {bad} failed")
    return 1 if bad else 0


def _report(args: argparse.Namespace) -> int:
    from .status import report_status

    stores = _store_options(args)
    result = anyio.run(report_status, args.output, args.inputs, stores, args.report)
    for failure in result["failed"][:20]:
        print(f"failed {failure['shard']}: {failure['error']}", file=sys.stderr)
    problems = {p["shard"]: p["problem"] for p in result["outputs_not_as_recorded"]}
    for name in result["not_done"][:20]:
        print(f"not done {name}" + (f": {problems[name]}" if name in problems else ""), file=sys.stderr)
    t = result["totals"]
    state = "complete" if result["complete"] else "incomplete"
    print(
        f"{state}: {t['done']} done, {t['failed']} failed, {t['not_done']} not done of {t['shards']} shards "
        f"({t['workers_reporting']} worker reports); removed {t['rows_removed']:,} of {t['rows_in']:,} rows"
    )
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
