"""Real image files on disk for the dataset tests."""

from pathlib import Path

import numpy as np
from PIL import Image


def pattern(width, height, seed):
    """A distinctive image: smooth colour ramps plus seeded blobs (so hashes differ between seeds)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width, 3), dtype=np.float32)
    for c in range(3):
        fx, fy, phase = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 6.28)
        img[..., c] = 127 + 120 * np.sin(fx * x / width * 6.28 + fy * y / height * 6.28 + phase)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB")


def save(path: Path, image: Image.Image, caption: str | None = None, ext=".txt", **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    if caption is not None:
        path.with_name(path.stem + ext).write_text(caption + "\n", encoding="utf-8")
    return path


def exif_rotated_jpeg(path: Path, upright: Image.Image, caption=None):
    """Store `upright` rotated, with EXIF orientation 6 ("rotate 90 CW to display"), as phones do."""
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(path, stored, caption, exif=exif.tobytes(), quality=95)


def two_tone(width, height, top=(255, 0, 0), bottom=(0, 0, 255)):
    img = Image.new("RGB", (width, height), bottom)
    img.paste(Image.new("RGB", (width, height // 2), top), (0, 0))
    return img


def build_user_dataset(root: Path) -> dict:
    """The varied dataset of the issue: sizes and aspect ratios, corrupt file, non-image, duplicate,
    missing caption, EXIF-rotated JPEG, transparent PNG, orphan caption, bad folder, reg folder."""
    concept = root / "img" / "10_wwaa girl"
    save(concept / "a.png", pattern(512, 512, 1), "wwaa girl, smiling")
    save(concept / "b.jpg", pattern(768, 512, 2), "wwaa girl, in a park", quality=95)
    rgba = np.zeros((768, 512, 4), dtype=np.uint8)
    rgba[:, :256] = (200, 30, 30, 255)  # left half opaque red, right half fully transparent black
    save(concept / "c.png", Image.fromarray(rgba, "RGBA"), "a girl, cut-out")  # trigger word missing
    exif_rotated_jpeg(concept / "d.jpg", two_tone(448, 640), "wwaa girl, standing")
    save(concept / "e.png", pattern(512, 512, 1).resize((600, 600)), "wwaa girl, smiling again")  # near-dup of a
    save(concept / "f.png", pattern(300, 200, 6))  # small, no caption
    (concept / "broken.png").write_bytes((concept / "a.png").read_bytes()[:2000])  # truncated
    (concept / "notes.png").write_text("this is not an image")
    (concept / "orphan.txt").write_text("wwaa girl, lost caption\n")
    save(root / "img" / "girl_without_number" / "x.png", pattern(512, 512, 9), "wwaa girl")
    for i in range(3):
        save(root / "reg" / "1_girl" / f"r{i}.png", pattern(512, 512, 100 + i))
    return {"img": root / "img", "reg": root / "reg", "concept": concept}
