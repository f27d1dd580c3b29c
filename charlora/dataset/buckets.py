"""Aspect-ratio buckets, computed exactly as Kohya's sd-scripts computes them.

Normal mode: candidate sizes step by `bucket_reso_steps` from `min_bucket_reso` to `max_bucket_reso`,
each with height = floor(area / width / step) * step (capped at the max), plus the transposes and the
square; an image goes to the bucket of nearest aspect ratio and is resized to cover it, then
centre-cropped. `bucket_no_upscale`: an image is never enlarged; one larger than the area is scaled
down to about the area, and its bucket is its size floored to the step (cropping, never padding).
Without buckets every image is resized to cover `max_resolution` and centre-cropped to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

Size = tuple[int, int]


def parse_resolution(text: str) -> Size:
    width, height = (int(v) for v in text.split(","))
    return width, height


def make_bucket_resolutions(max_reso: Size, min_size: int, max_size: int, divisible: int) -> list[Size]:
    """Kohya's `make_bucket_resolutions`: the candidate bucket sizes, sorted by (width, height)."""
    max_area = max_reso[0] * max_reso[1]
    side = int(math.sqrt(max_area) // divisible) * divisible
    resos = {(side, side)}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


@dataclass(frozen=True)
class BucketChoice:
    bucket: Size  # the training size (width, height)
    resized: Size  # size the image is resized to before the centre crop to `bucket`


class BucketPlanner:
    """Chooses the bucket of each image from the config's bucket settings."""

    def __init__(self, max_reso: Size, enable_bucket: bool, min_size: int, max_size: int, steps: int,
                 no_upscale: bool):
        self.max_reso = max_reso
        self.max_area = max_reso[0] * max_reso[1]
        self.enabled = enable_bucket
        self.steps = steps
        self.no_upscale = enable_bucket and no_upscale
        if not enable_bucket:
            self.resos = [max_reso]
        elif self.no_upscale:
            self.resos = []  # sizes come from the images themselves
        else:
            self.resos = make_bucket_resolutions(max_reso, min_size, max_size, steps)
        self._ratios = [w / h for w, h in self.resos]

    @classmethod
    def from_config(cls, values: dict) -> "BucketPlanner":
        return cls(parse_resolution(values["max_resolution"]), values["enable_bucket"], values["min_bucket_reso"],
                   values["max_bucket_reso"], values["bucket_reso_steps"], values["bucket_no_upscale"])

    @property
    def smallest_side(self) -> int:
        """An image with a side below this is enlarged (for the report)."""
        if self.no_upscale:
            return 0
        return min(min(r) for r in self.resos)

    def _round_to_steps(self, x: float) -> int:
        x = int(x + 0.5)
        return x - x % self.steps

    def select(self, width: int, height: int) -> BucketChoice:
        aspect = width / height
        if self.no_upscale:
            if width * height > self.max_area:
                # scale down to about max_area, keeping the aspect ratio closest after rounding to steps
                rw = math.sqrt(self.max_area * aspect)
                rh = self.max_area / rw
                bw = self._round_to_steps(rw)
                bh_w = self._round_to_steps(bw / aspect)
                bh = self._round_to_steps(rh)
                bw_h = self._round_to_steps(bh * aspect)
                err_w = abs(bw / bh_w - aspect) if bh_w else math.inf
                err_h = abs(bw_h / bh - aspect) if bh else math.inf
                resized = (bw, int(bw / aspect + 0.5)) if err_w < err_h else (int(bh * aspect + 0.5), bh)
            else:
                resized = (width, height)
            bucket = (resized[0] - resized[0] % self.steps, resized[1] - resized[1] % self.steps)
            if min(bucket) < self.steps:
                # a side below one step (tiny area or extreme aspect ratio): Kohya divides by zero here;
                # we take one step for that side and resize to cover it
                bucket = (max(bucket[0], self.steps), max(bucket[1], self.steps))
                scale = max(bucket[0] / width, bucket[1] / height)
                resized = (max(bucket[0], int(width * scale + 0.5)), max(bucket[1], int(height * scale + 0.5)))
            return BucketChoice(bucket, resized)
        if (width, height) in self.resos:
            bucket = (width, height)
        else:
            errors = [abs(r - aspect) for r in self._ratios]
            bucket = self.resos[errors.index(min(errors))]  # ties: the first, as numpy's argmin
        scale = bucket[1] / height if aspect > bucket[0] / bucket[1] else bucket[0] / width
        resized = (int(width * scale + 0.5), int(height * scale + 0.5))
        return BucketChoice(bucket, resized)


def resize_and_crop(image: Image.Image, choice: BucketChoice, crop_offset: Size | None = None) -> Image.Image:
    """Resize to `choice.resized` (area-averaging when shrinking, Lanczos when enlarging, as Kohya),
    then crop to the bucket: centred unless `crop_offset` (random_crop) is given."""
    if image.size != choice.resized:
        shrinking = image.width > choice.resized[0] and image.height > choice.resized[1]
        image = image.resize(choice.resized, Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS)
    trim_w = image.width - choice.bucket[0]
    trim_h = image.height - choice.bucket[1]
    left, top = crop_offset if crop_offset is not None else (trim_w // 2, trim_h // 2)
    left, top = min(max(left, 0), max(trim_w, 0)), min(max(top, 0), max(trim_h, 0))
    return image.crop((left, top, left + choice.bucket[0], top + choice.bucket[1]))


def sdxl_size_conditioning(original: Size, choice: BucketChoice, flipped: bool, bucketed: bool = True) -> tuple:
    """SDXL's six size numbers for one training image, as sd-scripts computes them: (original height,
    original width, crop top, crop left, target height, target width).

    The crop is sd-scripts' `BucketManager.get_crop_ltrb`: where the image would sit if fitted *inside* the
    bucket (letterboxed), not where it was really cut (kohya-ss/sd-scripts#1443); kept as Kohya computes it so
    a run means the same in both. A flipped image's left is the bucket width minus that right edge. Without
    buckets Kohya uses a crop of (0, 0)."""
    width, height = choice.bucket
    if bucketed:
        bucket_ratio, image_ratio = width / height, original[0] / original[1]
        if bucket_ratio > image_ratio:
            fitted_w, fitted_h = height * image_ratio, height
        else:
            fitted_w, fitted_h = width, width / image_ratio
        left, top = (width - fitted_w) // 2, (height - fitted_h) // 2
        right = left + fitted_w
    else:
        left = top = right = 0
    if flipped:
        left = width - right
    return int(original[1]), int(original[0]), int(top), int(left), int(height), int(width)
