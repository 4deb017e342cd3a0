"""Tar samples decided by their image: PDQ-hashed and matched within the list's Hamming distance.

Used by the WebDataset pipeline (``--image-hash pdq``) and by img2dataset sets, whose
Parquet rows and stats then follow the samples the images removed. A sample's image is
its first member with an image extension. A sample without one has no key (it fails
the shard, or with ``--on-unkeyed keep`` is kept and counted); one whose image does not
decode is kept and counted ``undecodable``, or removed with ``--on-undecodable remove``.

A scan that hashed a shard leaves its decisions in ``ShardFiles.state``: the rewrite
that follows copies the kept samples without hashing them again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ShardError
from ..formats.webdataset import Sample
from ..image_hash import IMAGE_EXTENSIONS, LOW_QUALITY, pdq_hashes
from . import ShardFiles, ShardTools

_KEEP = "pass --on-unkeyed keep to keep such samples"
#: Where a scan leaves its decisions for the rewrite of the same shard.
STATE = "image_decisions"


def new_tally() -> dict[str, Any]:
    return {"hashed": 0, "matched": 0, "undecodable": 0, "distances": {}, "matched_low_quality": 0}


class ImageKeys:
    """Decides a batch of samples by their images' PDQ hashes (or by the decisions a scan left)."""

    #: An image member too large to read whole (over 64 MiB) comes as no data: undecodable, not a failed shard.
    oversized = "empty"

    def __init__(self, files: ShardFiles, tools: ShardTools) -> None:
        self.name, self.tools = files.name, tools
        earlier = files.state.get(STATE)
        #: Start offsets of the samples a scan of this shard removed, its tally and the samples it found
        #: without an image; None before a scan.
        self.removed_starts: set[int] | None = None if earlier is None else earlier[0]
        self.tally: dict[str, Any] = new_tally() if earlier is None else earlier[1]
        self.earlier_unkeyed: int = 0 if earlier is None else earlier[2]
        #: The keys of the samples removed, in archive order (img2dataset: the Parquet rows that go).
        self.removed_keys: list[str] = []
        self._removed_now: set[int] = set()
        #: Image data is read only when there is hashing to do.
        self.meta: tuple[str, ...] | None = None if earlier is not None else _image_extensions()

    def decide(self, batch: list[Sample]) -> tuple[np.ndarray, int]:
        """Keep (True) or drop per sample of ``batch``, and how many were kept without an image."""
        keep = np.ones(len(batch), bool)
        if self.removed_starts is not None:
            for i, sample in enumerate(batch):
                if sample.start in self.removed_starts:
                    keep[i] = False
                    self.removed_keys.append(sample.key)  # type: ignore[arg-type]
            return keep, 0  # the scan counted the samples without an image: ``earlier_unkeyed``
        rows, images, unkeyed = [], [], 0
        for i, sample in enumerate(batch):
            if sample.structural:
                continue
            if sample.key is None or sample.meta is None:
                if self.tools.on_unkeyed != "keep":
                    what = f"sample {sample.key!r}" if sample.key is not None else f"member {sample.first!r}"
                    raise ShardError(f"{self.name}: {what} has no image member (.jpg, .png, .webp, …) to hash; {_KEEP}")
                unkeyed += 1
                continue
            rows.append(i)
            images.append(sample.meta)
        if rows:
            remove = self._match(images)
            rows_removed = np.asarray(rows)[remove]
            keep[rows_removed] = False
            for i in rows_removed.tolist():
                self.removed_keys.append(batch[i].key)  # type: ignore[arg-type]
                self._removed_now.add(batch[i].start)
        return keep, unkeyed

    def _match(self, images: list[bytes]) -> np.ndarray:
        """Which images go: a match within the distance, or undecodable with ``--on-undecodable remove``."""
        hashes, decoded, quality = pdq_hashes(images)
        nearest = self.tools.rule.key_set.distances(hashes)  # type: ignore[attr-defined]
        matched = decoded & (nearest >= 0)  # the set answers -1 past its distance
        tally = self.tally
        tally["hashed"] += int(decoded.sum())
        tally["matched"] += int(matched.sum())
        tally["undecodable"] += int((~decoded).sum())
        tally["matched_low_quality"] += int((matched & (quality < LOW_QUALITY)).sum())
        values, counts = np.unique(nearest[matched], return_counts=True)
        for d, n in zip(values.tolist(), counts.tolist(), strict=True):
            tally["distances"][str(d)] = tally["distances"].get(str(d), 0) + n
        return matched | (~decoded if self.tools.on_undecodable == "remove" else False)

    def keep_for_rewrite(self, files: ShardFiles, unkeyed: int) -> None:
        """Leave this pass's decisions for the rewrite of the same shard (after a scan)."""
        files.state[STATE] = (self._removed_now, self.tally, unkeyed)


def _image_extensions() -> tuple[str, ...]:
    return IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS)
