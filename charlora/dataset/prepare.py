"""Kohya's "Dataset Preparation": a flat folder of images -> img/<repeats>_<trigger> <class>/, reg/, model/, log/.

The user's files are copied, never moved or deleted; existing files in the destination are never
overwritten (a name already there is skipped and reported). Each image's own caption (x.txt or
x.caption beside x.png) comes along, saved under the configured caption extension; where its first
line lacks the trigger word, "trigger, " is put in front (Kohya's style: the trigger is the first
tag, which keep_tokens=1 then holds in place) and the file is listed in `trigger_added`.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CharLoRAError
from ..fileio import atomic_path, atomic_write_text
from ..params import PARAMS_BY_KEY
from ..params.evaluation import PREPARE
from .folders import resolve_caption_extension
from .images import is_image_path
from .report import contains_word

_WORD = re.compile(r"^[^\s/\\_]+$")
# Besides the configured extension, an image's own caption may be x.txt (the usual) or x.caption (sd-scripts').
OWN_CAPTION_EXTENSIONS = (".txt", ".caption")
_EMPTY_WORD = {
    "trigger": "enter a trigger word (one word, e.g. 'wwaa'): it is the word your prompts will use to call "
               "the character",
    "class word": "enter a class word (one word, e.g. 'girl'): it says what the character is, and your prompts "
                  "will use it after the trigger word ('wwaa girl')",
}


@dataclass
class Prepared:
    img_dir: Path
    concept_dir: Path
    reg_dir: Path
    model_dir: Path
    log_dir: Path
    copied: int = 0
    captions_written: int = 0  # starter captions "<trigger> <class>" for images without a caption of their own
    captions_copied: int = 0  # the user's own captions copied along
    trigger_added: list[str] = field(default_factory=list)  # copied caption files that got "trigger, " in front
    caption_problems: list[str] = field(default_factory=list)  # own captions copied unchanged, and why
    skipped: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        """What was done, one plain line each (CLI and GUI)."""
        lines = [f"copied {_count(self.copied, 'image')} to {self.concept_dir}"]
        if self.captions_copied:
            lines.append(f"copied {_count(self.captions_copied, 'caption')}")
        if self.trigger_added:
            lines.append(f"added the trigger word to {len(self.trigger_added)} of them: "
                         + ", ".join(self.trigger_added))
        if self.captions_written:
            lines.append(f"wrote {_count(self.captions_written, 'starter caption')}")
        return lines + self.caption_problems


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def check_word(name: str, word: str) -> str:
    """The word without surrounding blanks, or a CharLoRAError saying what to enter."""
    word = (word or "").strip()
    if not word:
        raise CharLoRAError(_EMPTY_WORD[name])
    if not _WORD.match(word):
        raise CharLoRAError(f"{name} {word!r} must be one word without spaces, slashes or '_'")
    return word


def own_caption(image: Path, caption_extension: str) -> Path | None:
    """The caption file beside `image`: the configured extension first, then .txt and .caption."""
    for ext in dict.fromkeys((caption_extension,) + OWN_CAPTION_EXTENSIONS):
        path = image.with_name(image.stem + ext)
        if path.is_file():
            return path
    return None


def prepare_dataset(images: str | Path, dest: str | Path, trigger: str, class_word: str,
                    repeats: int = PREPARE["repeats"].default, write_captions: bool = False,
                    caption_extension: str | None = None, reg_images: str | Path | None = None,
                    reg_repeats: int = PREPARE["reg_repeats"].default) -> Prepared:
    """`caption_extension`: the config's (None: the parameter's default; empty: sd-scripts' '.caption')."""
    images, dest = Path(images), Path(dest)
    if not images.is_dir():
        raise CharLoRAError(f"images folder {str(images)!r} does not exist")
    trigger, class_word = check_word("trigger", trigger), check_word("class word", class_word)
    low, high = PREPARE["repeats"].min, PREPARE["repeats"].max
    if not low <= repeats <= high:
        raise CharLoRAError(f"repeats {repeats} must be between {low:g} and {high:g}")
    sources = sorted(p for p in images.iterdir() if p.is_file() and is_image_path(p))
    if not sources:
        raise CharLoRAError(f"no PNG/JPEG/WebP/BMP images in {str(images)!r}")
    if dest.resolve() == images.resolve() or images.resolve() in dest.resolve().parents:
        raise CharLoRAError("the project folder must not be inside the images folder")

    result = Prepared(img_dir=dest / "img", concept_dir=dest / "img" / f"{repeats}_{trigger} {class_word}",
                      reg_dir=dest / "reg", model_dir=dest / "model", log_dir=dest / "log")
    for folder in (result.concept_dir, result.reg_dir, result.model_dir, result.log_dir):
        folder.mkdir(parents=True, exist_ok=True)
    if caption_extension is None:
        caption_extension = PARAMS_BY_KEY["caption_extension"].default
    ext = resolve_caption_extension(caption_extension)
    for source in sources:
        target = result.concept_dir / source.name
        if target.exists():
            result.skipped.append(f"{target} already exists; not overwritten")
        else:
            shutil.copy2(source, target)
            result.copied += 1
        caption = target.with_name(target.stem + ext)
        mine = own_caption(source, ext)
        if mine is not None and caption.exists():
            result.skipped.append(f"{caption} already exists; not overwritten (your caption {mine.name} not copied)")
        elif mine is not None:
            _copy_caption(mine, caption, trigger, result)
        elif write_captions and not caption.exists():
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


def _copy_caption(source: Path, target: Path, trigger: str, result: Prepared) -> None:
    """Copy the user's caption to `target`, with "trigger, " in front of its first line when it lacks the word."""
    try:
        text = source.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        # Copied as it is: the dataset check then says the file is not UTF-8 and what to do.
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        result.caption_problems.append(f"{source} is not UTF-8 text, so it was copied unchanged and not checked for "
                                       "the trigger word; save it as UTF-8 (the dataset check points at it)")
        result.captions_copied += 1
        return
    lines = text.splitlines()
    first = lines[0].strip() if lines else ""
    if first and not contains_word(first, trigger):
        lines[0] = f"{trigger}, {first}"
        text = "\n".join(lines) + "\n"
        result.trigger_added.append(target.name)
    atomic_write_text(target, text)
    result.captions_copied += 1
