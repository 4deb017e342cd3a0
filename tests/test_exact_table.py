"""The slot table of large exact sets: its candidates are the hashes whose top 32 bits it holds (numpy isin)."""

from __future__ import annotations

import numpy as np
import pytest

from streamfilter.sets.exact import _SlotTable


@pytest.mark.parametrize("n", [0, 1, 2, 17, 1000, 50_000])
@pytest.mark.parametrize("spread", ["uniform", "clustered", "with_zero_and_repeats"])
def test_candidates_are_the_members(n: int, spread: str) -> None:
    rng = np.random.default_rng(n)
    if spread == "uniform":
        held = rng.integers(0, 2**64, n, dtype=np.uint64)
    elif spread == "clustered":  # every hash in a sliver of the range: long runs past their home slots
        held = (rng.integers(2**28, 2**28 + 4 * n + 1, n, dtype=np.uint64) << np.uint64(32)) + np.uint64(7)
    else:
        held = rng.integers(0, 50, n, dtype=np.uint64) * np.uint64(2**58)  # zeros and repeats
    held = np.sort(held)
    table = _SlotTable(held)
    probe = np.concatenate(
        [held, held + np.uint64(1), held - np.uint64(1), rng.integers(0, 2**64, 3000, dtype=np.uint64)]
    )
    probe = np.concatenate([probe, np.array([0, 1, 2**64 - 1], dtype=np.uint64)])
    rng.shuffle(probe)
    top = np.uint64(32)
    assert np.array_equal(table.candidates(probe), np.flatnonzero(np.isin(probe >> top, held >> top)))


def test_top_slot_overflow_is_found() -> None:
    """Hashes at the very top of the range run past the last home slot; every one must still be found."""
    tags = np.uint64(2**32 - 1) - np.arange(40, dtype=np.uint64)
    held = np.sort(tags << np.uint64(32))
    table = _SlotTable(held)
    probe = np.concatenate([held, held + np.uint64(5), (tags - np.uint64(40)) << np.uint64(32)])
    assert table.candidates(probe).tolist() == list(range(80))
