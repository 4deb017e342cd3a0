"""PDQ hashes of encoded images (a tar sample's ``.jpg``), for matching against perceptual-hash lists.

Decoding is Pillow's; hashing is the ``pdqhash`` package (Meta's reference C++ PDQ,
compiled). Both are imported on first use: only runs with ``--image-hash pdq`` need
them, and their absence is told in one line with the install command.

A JPEG larger than :data:`DECODE_AT_LEAST` pixels a side is decoded already reduced
(libjpeg's DCT scaling, Pillow's ``draft``), the way the PDQ reference downsizes
large images before hashing. Smaller ones, img2dataset's 256-pixel images among
them, are decoded whole: measured on 256-pixel JPEGs, a decode reduced to 128
pixels moved the hash 4 to 14 bits from the full decode's, a third of the match
threshold, against 0.8 ms saved per image.

A hash is 32 bytes, the 256 bits most significant first, as the reference's hex.

Rotations and flips are not matched. PDQ can derive an image's 8 dihedral hashes from one
transform, but measured with ``pdqhash`` on 256-pixel test images those sat 30 to 62 bits
from the hashes of the images actually flipped or rotated (12 to 22 bits at 1,024 pixels),
too far for the 31-bit threshold; hashing 8 transformed copies would cost 8 times as much.
"""

from __future__ import annotations

import functools
import io
import warnings
from typing import Any

import numpy as np

from .errors import UsageError

#: Members a sample's image is taken from, by extension (WebDataset's, img2dataset's ``encode_format``s).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")
#: Images are decoded at no less than this many pixels a side (JPEG can reduce while decoding).
DECODE_AT_LEAST = 512


@functools.cache  # once a process: the imports, and the warnings filter below
def _libraries() -> tuple[Any, Any]:
    try:
        import pdqhash
        from PIL import Image
    except ImportError as exc:
        raise UsageError(
            f"--image-hash pdq needs {exc.name or 'pdqhash and Pillow'}: pip install 'streamfilter[images]'"
        ) from None
    # Pillow warns at open of an image past its decompression-bomb size; decode() decides on the size itself
    # (after a JPEG's reduction), so the warning is only noise on stderr. Set once for the process:
    # warnings.catch_warnings around each decode would not be thread-safe, and shards decode at once.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return pdqhash, Image


def check_available() -> None:
    """Raise the one-line UsageError now, before any shard, when the libraries are missing."""
    _libraries()


def decode(data: bytes | memoryview) -> np.ndarray | None:
    """The image as an (h, w, 3) uint8 array, reduced while decoding where the codec can; None if undecodable."""
    _, image_module = _libraries()
    try:
        with image_module.open(io.BytesIO(data)) as image:
            image.draft("RGB", (DECODE_AT_LEAST, DECODE_AT_LEAST))
            limit = image_module.MAX_IMAGE_PIXELS
            if limit and image.width * image.height > limit:
                return None  # past Pillow's decompression-bomb size even once reduced: undecodable
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, image_module.DecompressionBombError,
            image_module.DecompressionBombWarning):  # fmt: skip
        return None
    return pixels if pixels.ndim == 3 and min(pixels.shape[:2]) > 0 else None


#: PDQ's quality score below which Meta calls a hash unreliable (flat or featureless images).
LOW_QUALITY = 50


def pdq_hashes(images: list[bytes | memoryview]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each image's PDQ hash, (n, 32) uint8, which images decoded, (n,) bool, and their PDQ quality
    scores, (n,) int (0 to 100).

    The hash and quality of an image that did not decode are zeros; ``decoded`` says which they are.
    """
    pdqhash, _ = _libraries()
    hashes = np.zeros((len(images), 32), np.uint8)
    decoded = np.zeros(len(images), bool)
    quality = np.zeros(len(images), np.int16)
    for i, data in enumerate(images):  # one library call an image: nothing to vectorize across them
        pixels = decode(data)
        if pixels is None:
            continue
        bits, quality[i] = pdqhash.compute(pixels)
        hashes[i] = np.packbits(np.asarray(bits, np.uint8))
        decoded[i] = True
    return hashes, decoded, quality
