"""Images for the --image-hash tests: photo-like images made here, tars of them, and the reference PDQ hashes
(the ``pdqhash`` package on images Pillow decodes whole), independent of the code under test."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pdqhash
from PIL import Image

from streamfilter.demo import photo


def natural(seed: int, size: int = 256) -> Image.Image:
    """A photo-like image: smooth structure at three scales (PDQ of pure noise says little)."""
    return photo(seed, size)


def encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def reference_hash(data: bytes) -> bytes:
    """The reference PDQ hash of an encoded image, decoded whole: 32 bytes, most significant bit first."""
    bits, _quality = pdqhash.compute(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return np.packbits(np.asarray(bits, np.uint8)).tobytes()


def write_hex_list(path: Path, hashes: list[bytes], comment: str = "# PDQ hashes\n") -> Path:
    path.write_text(comment + "".join(h.hex() + "\n" for h in hashes))
    return path


def make_tar(path: Path, images: dict[str, bytes]) -> Path:
    """A WebDataset tar: per sample an image (its extension from the name), a .json and a .txt."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in images.items():
            key, ext = name.rsplit(".", 1)
            for member, body in ((f"{key}.{ext}", data), (f"{key}.json", json.dumps({"url": key}).encode()),
                                 (f"{key}.txt", b"a caption")):  # fmt: skip
                info = tarfile.TarInfo(member)
                info.size, info.mtime = len(body), 1_650_000_000
                tar.addfile(info, io.BytesIO(body))
    return path
