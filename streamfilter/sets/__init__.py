"""Membership sets: built once per run, queried per batch with Arrow arrays."""

from .exact import ExactKeySet
from .load import build_key_set, load_keys

__all__ = ["ExactKeySet", "build_key_set", "load_keys"]
