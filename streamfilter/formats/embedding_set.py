"""The layout of a CLIP embedding set, as LAION distributes it and ``clip-retrieval inference`` writes it.

    ROOT/metadata/metadata_{N}.parquet   row i describes row i of each .npy
    ROOT/img_emb/img_emb_{N}.npy         (rows, dim), float16 or float32; may be absent
    ROOT/text_emb/text_emb_{N}.npy       the same rows; may be absent

A set is named by its metadata Parquet (the object that decides); its vectors are
found beside it by name, N kept as written (zero padding included).
"""

from __future__ import annotations

import re

#: The vector files of a set, by folder (and file prefix), in the order they are written.
KINDS = ("img_emb", "text_emb")
METADATA = "metadata"
_METADATA_NAME = re.compile(r"(?:^|/)metadata/metadata_([^/]+)\.parquet\Z")
_MEMBER_NAME = re.compile(r"(?:^|/)(img_emb|text_emb)/\1_[^/]+\.npy\Z")


def is_metadata(uri: str) -> bool:
    """True for ``…/metadata/metadata_N.parquet``: the object that names an embedding set."""
    return _METADATA_NAME.search(uri) is not None


def is_member(uri: str) -> bool:
    """True for ``…/img_emb/img_emb_N.npy`` and ``…/text_emb/text_emb_N.npy``."""
    return _MEMBER_NAME.search(uri) is not None


def member(metadata: str, kind: str) -> str:
    """``R/metadata/metadata_0007.parquet`` -> ``R/img_emb/img_emb_0007.npy`` (``kind`` one of :data:`KINDS`)."""
    match = _METADATA_NAME.search(metadata)
    if match is None:
        raise ValueError(f"not an embedding set's metadata: {metadata}")
    root = metadata[: match.start() + (1 if metadata[match.start()] == "/" else 0)]
    return f"{root}{kind}/{kind}_{match.group(1)}.npy"


def kind_folder(metadata: str, kind: str) -> str:
    """Where the ``kind`` files of the set's root lie: ``R/img_emb/``."""
    return member(metadata, kind).rsplit("/", 1)[0] + "/"


def set_root(prefix: str) -> str:
    """The root of the sets under ``prefix``: ``R/metadata/`` -> ``R/``, so outputs mirror the whole layout."""
    if prefix.endswith(f"/{METADATA}/"):
        return prefix[: -len(METADATA) - 1]
    return prefix
