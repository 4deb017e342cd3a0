"""Key sets over 64-bit hashed keys: an exact fingerprint set, or a Bloom filter from a file.

Both answer the same question as :class:`.exact.ExactKeySet` (``contains`` on an
Arrow array, a boolean per key, null keys never members), so the filter code does
not care which one it holds.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .bloom import BloomFilter
from .fingerprints import FingerprintSet, collision_bound
from .keyset import Kind


class HashedKeySet:
    """Membership of uint64 key values in a :class:`FingerprintSet` or a :class:`BloomFilter`."""

    def __init__(self, structure: FingerprintSet | BloomFilter, digest: str, size: int) -> None:
        self.structure = structure
        self.digest = digest
        self.size = size
        self.kind: Kind = "bloom" if isinstance(structure, BloomFilter) else "fingerprints"

    @classmethod
    def from_values(cls, values: pa.Array) -> HashedKeySet:
        """An exact fingerprint set of the non-null values; its digest covers the distinct values."""
        hashes = values.drop_null().to_numpy(zero_copy_only=False).astype(np.uint64, copy=True)
        fingerprints = FingerprintSet.from_hashes(hashes, copy=False)
        digest = "sha256:" + hashlib.sha256(memoryview(fingerprints.keys).cast("B")).hexdigest()
        return cls(fingerprints, digest, len(fingerprints))

    def contains(self, values: pa.Array) -> pa.Array:
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        found = self.structure.contains(pc.fill_null(values, 0).to_numpy(zero_copy_only=False))
        if values.null_count:
            found &= pc.is_valid(values).to_numpy(zero_copy_only=False)
        return pa.array(found)

    def false_match_rate(self) -> float:
        """The chance that a key not in the list is taken for one that is: the filter's FPR,
        or for 64-bit fingerprints the chance of a hash collision with one of the set's keys."""
        if isinstance(self.structure, BloomFilter):
            return self.structure.expected_fpr()
        return collision_bound(self.size, 1)
