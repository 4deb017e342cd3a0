"""The one interface every membership set answers to: exact sets, fingerprint sets, Bloom filters."""

from __future__ import annotations

from typing import Literal, Protocol

import pyarrow as pa

Kind = Literal["exact", "fingerprints", "bloom", "pdq"]


class KeySet(Protocol):
    """Built once per run, queried per batch from worker threads (so safe to share between them)."""

    #: Identifies the set's content without revealing it (``sha256:…``): receipts and reports carry it.
    digest: str
    #: Distinct keys (or fingerprints) in the set.
    size: int
    #: ``exact`` compares key for key; ``fingerprints`` 64-bit hashes; ``bloom`` a filter; ``pdq`` image
    #: hashes within a Hamming distance.
    kind: Kind

    def contains(self, keys: pa.Array) -> pa.Array:
        """A boolean per key, never null: null keys are never members."""
        ...

    def false_match_rate(self) -> float:
        """The chance that a key not in the set is said to be in it (0 for an exact set)."""
        ...
