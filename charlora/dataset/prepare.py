"""Kohya's "Dataset Preparation": a flat folder of images -> img/<repeats>_<trigger> <class>/, reg/, model/, log/.

The user's files are copied, never moved or deleted; existing files in the destination are never
overwritten (a name already there is skipped and reported).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CharLoRAError
from ..fileio import atomic_write_text
from .images import is_image_path

_WORD = re.compile(r"^[^\s/\\_]+$")


@dataclass
class Prepared:
    img_dir: Path
    concept_dir: Path
    reg_dir: Path
    model_dir: Path
    log_dir: Path
    copied: int = 0
    captions_written: int = 0
    skipped: list[str] = field(default_factory=list)


def prepare_dataset(images: str | Path, dest: str | Path, trigger: str, class_word: str, repeats: int = 10,
                    write_captions: bool = False, caption_extension: str = ".txt",
                    reg_images: str | Path | None = None, reg_repeats: int = 1) -> Prepared:
    images, dest = Path(images), Path(dest)
    if not images.is_dir():
        raise CharLoRAError(f"images folder {str(images)!r} does not exist")
    for name, word in (("trigger", trigger), ("class word", class_word)):
        if not _WORD.match(word or ""):
            raise CharLoRAError(f"{name} {word!r} must be one word without spaces, slashes or '_'")
    if not 1 <= repeats <= 10000:
        raise CharLoRAError(f"repeats {repeats} must be between 1 and 10000")
    sources = sorted(p for p in images.iterdir() if p.is_file() and is_image_path(p))
    if not sources:
        raise CharLoRAError(f"no PNG/JPEG/WebP/BMP images in {str(images)!r}")
    if dest.resolve() == images.resolve() or images.resolve() in dest.resolve().parents:
        raise CharLoRAError("the project folder must not be inside the images folder")

    result = Prepared(img_dir=dest / "img", concept_dir=dest / "img" / f"{repeats}_{trigger} {class_word}",
                      reg_dir=dest / "reg", model_dir=dest / "model", log_dir=dest / "log")
    for folder in (result.concept_dir, result.reg_dir, result.model_dir, result.log_dir):
        folder.mkdir(parents=True, exist_ok=True)
    ext = caption_extension if caption_extension.startswith(".") else "." + caption_extension
    for source in sources:
        target = result.concept_dir / source.name
        if target.exists():
            result.skipped.append(f"{target} already exists; not overwritten")
        else:
            shutil.copy2(source, target)
            result.copied += 1
        caption = target.with_name(target.stem + ext)
        if write_captions and not caption.exists():
            atomic_write_text(caption, f"{trigger} {class_word}\n")
            result.captions_written += 1
    if reg_images:
        reg_sources = sorted(p for p in Path(reg_images).iterdir() if p.is_file() and is_image_path(p))
        reg_concept = result.reg_dir / f"{reg_repeats}_{class_word}"
        reg_concept.mkdir(parents=True, exist_ok=True)
        for source in reg_sources:
            if not (reg_concept / source.name).exists():
                shutil.copy2(source, reg_concept / source.name)
    return result
