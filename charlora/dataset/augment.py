"""Image augmentations of Kohya's dataset: flip, colour (hue shift or gamma), random crop."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from .buckets import BucketChoice


def color_augment(image: Image.Image, rng: random.Random) -> Image.Image:
    """Kohya's AugHelper: a third of the time, either a small hue shift or a small gamma change."""
    if rng.random() > 0.33:
        return image
    if rng.random() > 0.5:
        shift = rng.uniform(-8, 8) * 255 / 180  # Kohya shifts OpenCV's 0-180 hue; PIL's hue is 0-255
        hsv = np.asarray(image.convert("HSV")).copy()
        hsv[..., 0] = ((hsv[..., 0].astype(np.float32) + shift) % 256).astype(np.uint8)
        return Image.fromarray(hsv, "HSV").convert("RGB")
    gamma = rng.uniform(0.95, 1.05)
    pixels = np.asarray(image).astype(np.float32)
    return Image.fromarray(np.clip(pixels ** gamma, 0, 255).astype(np.uint8), "RGB")


def random_crop_offset(choice: BucketChoice, rng: random.Random) -> tuple[int, int]:
    trim_w = max(choice.resized[0] - choice.bucket[0], 0)
    trim_h = max(choice.resized[1] - choice.bucket[1], 0)
    return rng.randint(0, trim_w), rng.randint(0, trim_h)
