"""``streamfilter diff``: the exact list of a derivative's keys that a cleaned reference release lacks.

An anti-join at billions of keys in bounded memory: both sides' keys are
fingerprinted (128 bits) and spilled by fingerprint prefix into partitions
(:mod:`.partition`), each partition is resolved on its own (:mod:`.resolve`), and the
removals are merged into a list that ``streamfilter run --blocklist`` applies
(:mod:`.removals`). :mod:`.job` runs the phases with markers for resume.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DiffSpec", "Side", "adiff", "build_diff_spec", "diff"]

#: Where each public name lives; loaded on first use, so ``import streamfilter`` stays light.
_HOMES = {"adiff": "job", "diff": "job", "DiffSpec": "spec", "Side": "spec", "build_diff_spec": "spec"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
