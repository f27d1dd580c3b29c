"""Near-duplicate images by perceptual difference hash (dHash).

A 64-bit dHash (9x8 greyscale, one bit per left/right brightness step) survives resizing,
re-encoding and small edits; two images within a few bits are near-duplicates. Hand-written:
it is ten lines with Pillow and numpy, where a library would bring scipy and PyWavelets along.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

from .images import load_rgb

NEAR_DUPLICATE_BITS = 6  # of 64; measured: re-saved/resized copies differ by 0-3, different poses by 20+


def dhash(image: Image.Image) -> int:
    grey = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def near_duplicates(paths: list[Path], max_bits: int = NEAR_DUPLICATE_BITS) -> list[tuple[Path, Path, int]]:
    """Pairs of images whose hashes differ by at most `max_bits` (unreadable images are skipped)."""
    hashes = []
    for path in paths:
        try:
            hashes.append((path, dhash(load_rgb(path))))
        except OSError:
            continue
    return [(a, b, hamming(ha, hb)) for (a, ha), (b, hb) in combinations(hashes, 2)
            if hamming(ha, hb) <= max_bits]
