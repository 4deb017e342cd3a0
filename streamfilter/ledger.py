"""What a run did, shard by shard: the report that proves what was removed."""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

from ._version import __version__
from .concurrency import gather_limited
from .errors import ShardError, StreamfilterError
from .store import ObjectInfo, Stores

Status = Literal["done", "failed"]


@dataclass
class ShardReport:
    input: str
    output: str | None
    status: Status = "failed"
    rows_in: int = 0
    rows_out: int = 0
    rows_removed: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    error: str | None = None
    #: True when a receipt from an earlier run showed this shard already done. Such a shard read and
    #: wrote nothing in this run (``bytes_written`` 0); its output's size is in ``earlier_bytes_written``.
    resumed: bool = False
    earlier_bytes_written: int = 0
    #: The committed output's ETag (S3), for the next stage's manifest.
    output_etag: str | None = None
    #: Input size minus output size: what the rewrite saved.
    bytes_saved: int = 0
    #: How the output came to be: "rewrite"; "server_copy" or "byte_copy" of a shard the scan
    #: found clean; "unchanged" (in place and clean: nothing written). None when nothing was written.
    output_via: str | None = None
    #: Tar members in and kept (WebDataset); None for formats without members.
    members_in: int | None = None
    members_out: int | None = None
    #: Samples or lines kept without a usable key (only with ``on_unkeyed = "keep"``).
    unkeyed: int | None = None
    #: Multipart uploads of this shard's outputs left unfinished because the store refused to abort
    #: them (``uri``, ``upload_id``): abort them yourself, or let a lifecycle rule remove them.
    abandoned_uploads: list[dict[str, str]] = field(default_factory=list)
    #: Lists with domain:/prefix: rules only: the rows removed by each kind ({"exact", "domain",
    #: "prefix"}; a row matched by several is credited to exact, then prefix, then domain), or in
    #: allow mode the rows each kind kept (a shard resumed: as its receipt recorded them). None for an
    #: img2dataset set copied unchanged.
    removed_by: dict[str, int] | None = None
    kept_by: dict[str, int] | None = None
    #: Tars keyed by image hash (``--image-hash``): samples whose image was ``hashed``, those ``matched``
    #: (within the distance) and ``undecodable`` ones, and ``distances``: how many matches lay at each
    #: distance, in bits; ``matched_low_quality``: matches whose image's PDQ quality was under 50, the
    #: score below which Meta calls a hash unreliable (flat images), worth a look. Never the hashes.
    #: None for other runs; a shard resumed gives its receipt's.
    images: dict | None = None


@dataclass
class Report:
    shards: list[ShardReport]
    key_spec: dict
    set_digest: str
    set_size: int
    mode: str
    dry_run: bool
    seconds: float
    version: str
    #: True when a signal stopped the run before every shard was tried.
    interrupted: bool = False
    #: "exact" (lists compared key for key), "fingerprints" (64-bit hashes) or "bloom" (a filter file).
    set_kind: str = "exact"
    #: Allow mode with a hashed set: the expected number of rows kept only because their key's hash
    #: falsely matched (filter FPR, or 64-bit collision chance, times the rows read). None otherwise.
    false_matches_bound: float | None = None
    totals: dict = field(init=False)

    def __post_init__(self) -> None:
        done = [s for s in self.shards if s.status == "done"]
        self.totals = {
            "shards": len(self.shards),
            "done": len(done),
            "resumed": sum(s.resumed for s in done),
            "failed": len(self.shards) - len(done),
            "rows_in": sum(s.rows_in for s in done),
            "rows_out": sum(s.rows_out for s in done),
            "rows_removed": sum(s.rows_removed for s in done),
            "bytes_read": sum(s.bytes_read for s in self.shards),
            "bytes_written": sum(s.bytes_written for s in done),
            "earlier_bytes_written": sum(s.earlier_bytes_written for s in done),
            "bytes_saved": sum(s.bytes_saved for s in done),
            "seconds": round(self.seconds, 3),
        }
        imaged = [s.images for s in done if s.images]
        if imaged:
            distances: dict[str, int] = {}
            for images in imaged:
                for d, n in images["distances"].items():
                    distances[d] = distances.get(d, 0) + n
            kinds = ("hashed", "matched", "undecodable", "matched_low_quality")
            self.totals["images"] = {k: sum(i.get(k, 0) for i in imaged) for k in kinds}
            self.totals["images"]["distances"] = dict(sorted(distances.items(), key=lambda kv: int(kv[0])))
        for name in ("removed_by", "kept_by"):
            if any(getattr(s, name) for s in done):
                self.totals[name] = {k: sum((getattr(s, name) or {}).get(k, 0) for s in done)
                                     for k in ("exact", "domain", "prefix")}  # fmt: skip

    @property
    def ok(self) -> bool:
        return self.totals["failed"] == 0

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        """The text of ``json.dumps(self.to_dict(), indent=2)``, built a shard at a time. All the shards
        as dicts at once, then the text, made a run's peak RSS grow 6.3 KB a shard (local, 1,000 and
        10,000 tiny shards: 102 and 159 MB); this way 3.3 KB (100 and 130 MB)."""
        shards = [textwrap.indent(_dumps(asdict(shard)), "    ") for shard in self.shards]
        listed = "[\n" + ",\n".join(shards) + "\n  ]" if shards else "[]"
        del shards
        rest = _dumps({f.name: getattr(self, f.name) for f in fields(self) if f.name != "shards"})
        return '{\n  "shards": ' + listed + ",\n" + rest.removeprefix("{\n") + "\n"

    def summary(self) -> str:
        t = self.totals
        verb = "would remove" if self.dry_run else "removed"
        # Shards skipped by their receipts are done, their rows counted as the earlier run left them.
        skipped = f" ({t['resumed']} skipped: done by an earlier run)" if t["resumed"] else ""
        line = (
            f"{t['done']}/{t['shards']} shards done{skipped}, {t['failed']} failed; {verb} {t['rows_removed']:,} "
            f"of {t['rows_in']:,} rows; {t['bytes_read'] / 1e6:,.1f} MB read, "
            f"{t['bytes_written'] / 1e6:,.1f} MB written in {t['seconds']:.1f} s"
        )
        return line


def _dumps(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


#: Where receipts live, relative to the output prefix.
RECEIPTS_DIR = "_streamfilter/receipts"


def receipt_uri(output_prefix: str, name: str) -> str:
    return f"{output_prefix.rstrip('/')}/{RECEIPTS_DIR}/{name}.json"


#: .json objects read at once by :func:`json_objects` (receipts, markers: small requests).
JSON_READS_AT_ONCE = 32


async def json_objects(prefix: str, stores: Stores) -> dict[str, bytes]:
    """Every .json object under ``prefix`` (receipts, worker reports, diff markers), by its name relative to it.

    Read concurrently, each with one ranged read of the size its listing gave (no HEAD).
    """
    store = stores.for_uri(prefix)
    found = [info for info in await store.list(prefix) if info.uri.endswith(".json")]

    async def read(info: ObjectInfo) -> bytes:
        return await store.read_range(info.uri, 0, info.size) if info.size else b""

    values = await gather_limited(found, read, JSON_READS_AT_ONCE)
    return {info.uri[len(prefix) :]: data for info, data in zip(found, values, strict=True)}


async def read_receipts(output_prefix: str, stores: Stores) -> dict[str, Receipt | None]:
    """The receipts under an output prefix, by shard name; None for one that cannot be read."""
    prefix = f"{output_prefix.rstrip('/')}/{RECEIPTS_DIR}/"
    found = await json_objects(prefix, stores)
    return {name.removesuffix(".json"): Receipt.from_json(data) for name, data in found.items()}


#: Where each worker leaves its run report, so `streamfilter report` can merge them.
WORKER_REPORTS_DIR = "_streamfilter/reports"


def worker_report_uri(output_prefix: str, index: int, workers: int) -> str:
    return f"{output_prefix.rstrip('/')}/{WORKER_REPORTS_DIR}/worker-{index:05d}-of-{workers:05d}.json"


def input_identity(info: ObjectInfo) -> dict:
    """What says an input is still the object that was filtered: its size and version."""
    return {"size": info.size, "etag": info.etag, "version_id": info.version_id, "mtime": info.mtime}


@dataclass
class Receipt:
    """Written after a shard's output is committed; a rerun trusts it to skip the shard."""

    input: str
    input_identity: dict
    output: str
    output_size: int
    output_etag: str | None
    #: Like ``input_identity``, for the output: an in-place rerun finds it as its input.
    output_identity: dict
    set_digest: str
    key_spec: dict
    mode: str
    version: str
    rows_in: int
    rows_out: int
    rows_removed: int
    #: True when the scan read and matched every key and found nothing to remove: the output is
    #: a byte copy of the input (or, in place, the input itself, untouched).
    verified_clean: bool = False
    #: The shard report's counts by kind of rule and of its images, given again when a rerun resumes it.
    removed_by: dict[str, int] | None = None
    kept_by: dict[str, int] | None = None
    images: dict | None = None
    #: The shard's format: ``verify`` reads an img2dataset set's output as one (its rows are its Parquet's).
    format: str | None = None

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> Receipt | None:
        """The receipt, or None when it is unreadable (then the shard is simply redone)."""
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError):
            return None

    def covers(self, info: ObjectInfo, set_digest: str, key_spec: dict, mode: str) -> bool:
        """True when this receipt was made from the same input, list, key and mode.

        In place, the object now there is this receipt's output: that counts too.
        """
        identity = input_identity(info)
        return (
            identity in (self.input_identity, self.output_identity)
            and self.set_digest == set_digest
            and self.key_spec == key_spec
            and self.mode == mode
        )


#: Fewer shards than this look their receipts up one by one (a Ray task runs one shard: a listing
#: of every receipt of a large run would cost it more than its one lookup).
LIST_RECEIPTS_FROM = 32


@dataclass
class ReceiptBook:
    """The resume decisions of one run: which shards an earlier run finished, and the record of this one's.

    ``output_root`` is the prefix written under (the output prefix, or the inputs' common prefix in
    place); a receipt counts only for the same list (``set_digest``), key spec and mode.
    """

    stores: Stores
    output_root: str
    set_digest: str
    key_spec: dict
    mode: str
    #: Redo every shard (``--overwrite``): no receipt is trusted.
    overwrite: bool = False
    #: Names of the receipts under ``output_root``, from one listing; None: look each up.
    listed: set[str] | None = None

    async def list_once(self, shards: int) -> None:
        """List the receipts once, so shards without one skip their own lookup (a request each: on a
        sparse run, one in eight). Not worth it for a few shards; a failed listing just means lookups."""
        if self.overwrite or shards < LIST_RECEIPTS_FROM:
            return
        prefix = receipt_uri(self.output_root, "")[: -len(".json")]
        try:
            found = await self.stores.for_uri(prefix).list(prefix)
        except StreamfilterError:
            return
        self.listed = {info.uri[len(prefix) :].removesuffix(".json") for info in found}

    async def done_earlier(self, name: str, output: str, info: ObjectInfo) -> Receipt | None:
        """The receipt of an earlier run that makes this shard's work unnecessary, if any.

        Trusted only when it names the same input version, list, key and mode, and the
        output it describes is still there with the size it recorded.
        """
        if self.overwrite or (self.listed is not None and name not in self.listed):
            return None
        uri = receipt_uri(self.output_root, name)
        try:
            receipt = Receipt.from_json(await self.stores.for_uri(uri).read_all(uri))
            if receipt is None or not receipt.covers(info, self.set_digest, self.key_spec, self.mode):
                return None
            found = await self.stores.for_uri(output).stat(output)
        except StreamfilterError:
            return None  # no receipt, or no output: do the work
        return receipt if found.size == receipt.output_size else None

    async def record(
        self, name: str, info: ObjectInfo, written: ObjectInfo, report: ShardReport, fmt: str | None = None
    ) -> None:
        """Write the receipt of a committed shard (``fmt``: its format); a shard without one is redone."""
        assert report.output is not None
        receipt = Receipt(
            input=report.input,
            input_identity=input_identity(info),
            output=report.output,
            output_size=written.size,
            output_etag=written.etag,
            output_identity=input_identity(written),
            set_digest=self.set_digest,
            key_spec=self.key_spec,
            mode=self.mode,
            version=__version__,
            rows_in=report.rows_in,
            rows_out=report.rows_out,
            rows_removed=report.rows_in - report.rows_out,
            verified_clean=report.output_via in ("unchanged", "server_copy", "byte_copy"),
            removed_by=report.removed_by,
            kept_by=report.kept_by,
            images=report.images,
            format=fmt,
        )
        uri = receipt_uri(self.output_root, name)
        try:
            await self.stores.for_uri(uri).put(uri, receipt.to_json(), confirm=False)
        except StreamfilterError as exc:
            raise ShardError(
                f"output committed but its receipt was not written ({exc}); a rerun redoes this shard"
            ) from exc
