"""Membership sets: built once per run, queried per batch with Arrow arrays."""

from .exact import ExactKeySet
from .keyset import KeySet
from .load import build_key_set, load_filter, load_keys

__all__ = ["ExactKeySet", "KeySet", "build_key_set", "load_filter", "load_keys"]
