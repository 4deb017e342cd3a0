"""``streamfilter diff``: the exact list of a derivative's keys that a cleaned reference release lacks.

An anti-join at billions of keys in bounded memory: both sides' keys are
fingerprinted (128 bits) and spilled by fingerprint prefix into partitions
(:mod:`.partition`), each partition is resolved on its own (:mod:`.resolve`), and the
removals are merged into a list that ``streamfilter run --blocklist`` applies
(:mod:`.removals`). :mod:`.job` runs the phases with markers for resume.
"""

from __future__ import annotations

from .job import adiff, diff
from .spec import DiffSpec, Side, build_diff_spec

__all__ = ["DiffSpec", "Side", "adiff", "build_diff_spec", "diff"]
