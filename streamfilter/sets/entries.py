"""A list's entries turned into lookup values of the same kind as the rows' (see :mod:`..keys`).

``raw`` entries are keys: normalized and hashed exactly like the rows' keys. ``hex``
entries are digests (or 64-bit hashes) written in hex, any case; ``int`` entries are
64-bit integers, decimal (signed or unsigned: LAION's ``hash`` column is signed) or
hex with ``0x``. A malformed entry stops the run, naming the list and line.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import UsageError
from ..keys import KeySpec, hash_keys, normalize
from .rules import DOMAIN, PREFIX, refuse_rules

DIGEST_BYTES = {"md5": 16, "sha1": 20, "sha256": 32}
_NIBBLES = np.full(256, 255, dtype=np.uint8)
_NIBBLES[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)


def _first_bad(ok: pa.Array) -> int | None:
    bad = pc.indices_nonzero(pc.invert(pc.and_kleene(ok, pc.is_valid(ok))))  # a null is not ok
    return bad[0].as_py() if len(bad) else None


def _hex_bytes(keys: pa.Array, width: int) -> np.ndarray:
    """Fixed-width lower-case hex strings (already checked) as an (n, width // 2) uint8 matrix, vectorized."""
    offsets = np.frombuffer(keys.buffers()[1], np.int64)[keys.offset : keys.offset + len(keys) + 1]
    data = np.frombuffer(keys.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    nibbles = _NIBBLES[data].reshape(len(keys), width)
    return (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]


def _hex_values(keys: pa.Array, spec: KeySpec, where: Callable[[int], str]) -> pa.Array:
    keys = pc.utf8_lower(pc.utf8_trim_whitespace(keys))
    if spec.hash == "none":
        return keys  # the rows' column holds hex digests; both sides lower-cased
    width = 2 * DIGEST_BYTES.get(spec.hash, 8)
    bad = _first_bad(pc.match_substring_regex(keys, f"^[0-9a-f]{{{width}}}$"))
    if bad is not None:
        raise UsageError(
            f"{where(bad)}: not a {width}-digit hex {spec.hash} value; check --blocklist-hash and --key-hash"
        )
    raw = _hex_bytes(keys.cast(pa.large_string()), width)
    if spec.hash in DIGEST_BYTES:
        return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width // 2), len(keys), [None, pa.py_buffer(raw)]).cast(
            pa.large_binary()
        )
    return pa.array(raw.copy().view(">u8").astype(np.uint64).ravel(), pa.uint64())


def _int_values(keys: pa.Array, spec: KeySpec, where: Callable[[int], str]) -> pa.Array:
    keys = pc.utf8_trim_whitespace(keys)
    bad = _first_bad(pc.match_substring_regex(keys, r"^(-?[0-9]{1,20}|0[xX][0-9a-fA-F]{1,16})$"))
    if bad is not None:
        raise UsageError(f"{where(bad)}: not a 64-bit integer (decimal, or hex with 0x); check --blocklist-hash")
    values = np.empty(len(keys), dtype=np.uint64)
    for i, text in enumerate(keys.to_pylist()):  # at load time only; lists of integers are rare and small
        n = int(text, 0) if text[:2].lower() == "0x" else int(text)
        if not -(2**63) <= n < 2**64:
            raise UsageError(f"{where(i)}: {len(text)}-character integer is outside 64 bits; check the list")
        values[i] = n % 2**64
    if spec.hash == "none":  # an integer column (LAION's signed int64 `hash`), compared as its decimal text
        return pa.array(values.view(np.int64)).cast(pa.large_string())
    return pa.array(values, pa.uint64())


#: A line ``exact:KEY`` lists the key ``KEY`` itself: the escape for keys that begin with a rule's tag.
EXACT = "exact:"


def untagged(keys: pa.Array) -> pa.Array:
    """Entries with their ``exact:`` tag taken off (``exact:domain:x`` is the key ``domain:x``)."""
    if not (pa.types.is_large_string(keys.type) or pa.types.is_string(keys.type)):
        return keys
    tagged = pc.and_kleene(pc.starts_with(keys, EXACT), pc.is_valid(keys))
    if not pc.any(tagged).as_py():
        return keys
    return pc.if_else(tagged, pc.utf8_slice_codeunits(keys, len(EXACT)), keys)


#: Every tag a list's line may begin with: the rules' and the escape of keys that begin with one.
TAGS = (DOMAIN, PREFIX, EXACT)


def has_tags(keys: pa.Array) -> bool:
    """Whether any entry begins with a tag of :data:`TAGS` (nulls do not); no Python value is converted."""
    if not (pa.types.is_large_string(keys.type) or pa.types.is_string(keys.type)) or not len(keys):
        return False
    tagged = functools.reduce(pc.or_, [pc.starts_with(keys, tag) for tag in TAGS])
    return bool(pc.any(tagged).as_py())


def entry_values(keys: pa.Array, spec: KeySpec, where: Callable[[int], str]) -> pa.Array:
    """The lookup values of one list's entries; ``where(i)`` names entry ``i``'s file and line.

    A ``domain:``/``prefix:`` rule reaching here (a filter file's build) is refused: rules need the raw URL.
    """
    if has_tags(keys):  # the common list has none, and the checks' conversions would import pandas (0.2 s)
        refuse_rules(keys, where, "cannot go in a filter file (it keeps only key hashes); list it with "
                     "run --blocklist, where rules match the raw URL")  # fmt: skip
        keys = untagged(keys)
    if spec.entries == "hex":
        return _hex_values(keys, spec, where)
    if spec.entries == "int":
        return _int_values(keys, spec, where)
    return hash_keys(normalize(keys, spec.normalize), spec)
