"""Membership sets: built once per run, queried per batch with Arrow arrays."""

from .exact import ExactKeySet
from .hashed import HashedKeySet
from .load import KeySet, build_key_set, load_filter, load_keys

__all__ = ["ExactKeySet", "HashedKeySet", "KeySet", "build_key_set", "load_filter", "load_keys"]
