"""Opening the user's images the way a person expects to see them.

EXIF orientation is applied (phones store portraits sideways with a rotate flag), transparency is
flattened onto white (character art is often a cut-out PNG; dropping alpha would show whatever
colour hides under the transparent pixels), palette and greyscale images become RGB.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# Decoding errors PIL raises for broken files: report them, never stop the whole dataset.
IMAGE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def load_rgb(path: str | Path) -> Image.Image:
    """The image as RGB, upright, alpha flattened onto white. Raises one of IMAGE_ERRORS if broken."""
    with Image.open(path) as img:
        img.load()  # decode now: a truncated file fails here, not later in training
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")


def upright_size(path: str | Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header without decoding the pixels."""
    with Image.open(path) as img:
        width, height = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def verify_image(path: str | Path) -> str | None:
    """None if the image decodes fully, else a short reason for the report."""
    try:
        with Image.open(path) as img:
            img.load()
    except UnidentifiedImageError:
        return "not an image (cannot be read as PNG/JPEG/WebP/BMP)"
    except Image.DecompressionBombError:
        return "image is too large to open safely"
    except IMAGE_ERRORS as exc:
        return f"unreadable or truncated image ({exc})"
    return None
