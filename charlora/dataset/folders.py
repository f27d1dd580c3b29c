"""Reading Kohya's dataset layout: concept folders `<repeats>_<class tokens>` under a parent folder.

`img/10_wwaa girl/x.png` is one training image seen 10 times per epoch; its caption is the first
line of `x<caption_extension>`, or the class tokens "wwaa girl" when there is no caption file.
Nothing here stops on a bad file: every problem is recorded with its file for the report.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CharLoRAError
from .images import IMAGE_EXTENSIONS, is_image_path, upright_size, verify_image

KOHYA_DEFAULT_CAPTION_EXTENSION = ".caption"  # what sd-scripts uses when the GUI's field is empty
_IGNORED_FILES = (".npz",)  # Kohya's own latent cache files sit beside the images
_CONCEPT = re.compile(r"^(\d+)_(.*)$")
LAYOUT_HINT = "train_data_dir must be the parent of folders like 10_name (10 = repeats, name = class tokens)"
# Past these, a folder name is a typo (999999999_name made training die of memory at 15 GB).
MAX_REPEATS = 10000
MIN_IMAGE_SIDE = 8  # one latent pixel: a smaller image cannot be encoded at all
MAX_CAPTION_BYTES = 1 << 20  # a caption file past 1 MiB is not read (CLIP reads about 75 tokens)
LONG_CAPTION_CHARS = 1000


class DatasetError(CharLoRAError):
    """The dataset folder cannot be used at all (missing, or no usable concept folder)."""


def missing_folder(key: str, folder: str) -> str:
    """Why `folder` (the value of train_data_dir or reg_data_dir) cannot be read, and what to do."""
    what = "is not a folder" if Path(folder).exists() else "does not exist on this computer"
    if key == "reg_data_dir":
        return f"reg_data_dir {folder!r} {what}; fix the path or clear it to train without regularisation"
    return f"{key} {folder!r} {what}; choose the folder that holds folders like 10_name"


@dataclass
class Problem:
    file: str
    problem: str

    def as_dict(self) -> dict:
        return {"file": self.file, "problem": self.problem}


@dataclass
class ImageItem:
    path: Path
    caption: str
    caption_from_file: bool
    size: tuple[int, int]  # upright (width, height)


@dataclass
class Concept:
    folder: Path
    repeats: int
    class_tokens: str
    is_reg: bool = False
    images: list[ImageItem] = field(default_factory=list)
    captions_missing: int = 0
    captions_empty: int = 0

    @property
    def trigger(self) -> str:
        """Kohya's convention: the first class token is the trigger word ("wwaa girl" -> "wwaa")."""
        return self.class_tokens.split()[0] if self.class_tokens.split() else ""

    def summary(self) -> dict:
        return {"folder": self.folder.name, "repeats": self.repeats, "class_tokens": self.class_tokens,
                "images": len(self.images), "captions_found": len(self.images) - self.captions_missing,
                "captions_missing": self.captions_missing, "captions_empty": self.captions_empty}


def resolve_caption_extension(caption_extension: str) -> str:
    ext = (caption_extension or "").strip() or KOHYA_DEFAULT_CAPTION_EXTENSION
    return ext if ext.startswith(".") else "." + ext


def parse_concept_name(name: str) -> tuple[int, str] | None:
    """'10_wwaa girl' -> (10, 'wwaa girl'); None when the name has no leading repeat count."""
    match = _CONCEPT.match(name)
    return (int(match.group(1)), match.group(2)) if match else None


def check_repeats(folder: Path, repeats: int, key: str) -> None:
    """Refuse an absurd repeat count before any image is read."""
    if repeats > MAX_REPEATS:
        raise DatasetError(f"{key} folder {str(folder)!r}: repeat count {repeats} is over {MAX_REPEATS}, "
                           f"almost certainly a typo; rename the folder with a count like 10_name")


def refuse_absurd_repeats(parent: Path, is_reg: bool) -> None:
    """Check every concept folder name under `parent` before any image is read."""
    key = "reg_data_dir" if is_reg else "train_data_dir"
    for entry in parent.iterdir():
        parsed = parse_concept_name(entry.name)
        if parsed and not entry.name.startswith(".") and entry.is_dir():
            check_repeats(entry, parsed[0], key)


def odd_entry(path: Path) -> str | None:
    """Why a directory entry is not a plain file or folder (a dangling link, a link loop, a FIFO...), or None.

    Uses stat, never open: opening a FIFO would block the scan forever."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop (the link points back to itself); ignored: remove it"
        if path.is_symlink():
            return f"dangling symlink to {os.readlink(path)!r}, which does not exist; ignored: fix or remove it"
        return f"cannot be read ({exc.strerror}); ignored"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return f"{kind}, not a regular file; ignored: remove it"


def loops_back(path: Path) -> bool:
    """A symlinked folder that points at itself or a folder above it (scanning it would revisit the parent)."""
    if not path.is_symlink():
        return False
    target, here = path.resolve(), path.parent.resolve()
    return target == here or target in here.parents


def read_caption(path: Path) -> tuple[str | None, str | None]:
    """(first line of the caption file, problem). UTF-8 with or without BOM."""
    try:
        size = path.stat().st_size
        if size > MAX_CAPTION_BYTES:
            return None, (f"caption file is {size:,} bytes, over {MAX_CAPTION_BYTES:,}: not read, the class tokens "
                          "are used instead (a caption is one line; CLIP reads about 75 tokens)")
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        return None, "caption file is not UTF-8 text; the class tokens are used instead (save it as UTF-8)"
    except OSError as exc:
        return None, f"caption file cannot be read ({exc})"
    first = text.splitlines()[0].strip() if text.strip() else ""
    if not first:
        return None, "caption file is empty (or its first line is); the class tokens are used instead"
    return first, None


def scan_concept(folder: Path, repeats: int, class_tokens: str, caption_extension: str, is_reg: bool,
                 problems: list[Problem]) -> Concept:
    concept = Concept(folder, repeats, class_tokens, is_reg)
    ext = resolve_caption_extension(caption_extension)
    files = []
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        odd = odd_entry(path)
        if odd:
            problems.append(Problem(str(path), odd))
        elif path.is_file():
            files.append(path)
        elif is_image_path(path) or path.name.endswith(ext):
            problems.append(Problem(str(path), "is a folder, not a file; ignored (Kohya reads only the files "
                                               "directly in a concept folder)"))
    image_stems = set()
    for path in files:
        if not is_image_path(path):
            continue
        image_stems.add(path.stem)
        reason = verify_image(path)
        if reason:
            problems.append(Problem(str(path), reason))
            continue
        size = upright_size(path)
        if min(size) < MIN_IMAGE_SIDE:
            problems.append(Problem(str(path), f"image is {size[0]}x{size[1]} px, under {MIN_IMAGE_SIDE} px on a side: "
                                               "too small to train on; skipped (use a larger image)"))
            continue
        caption_path = path.with_name(path.stem + ext)
        caption, from_file = class_tokens, False
        caption_odd = odd_entry(caption_path) if caption_path.is_symlink() or caption_path.exists() else None
        if caption_odd:
            concept.captions_empty += 1  # reported with the folder's other entries above
        elif caption_path.is_file():
            text, caption_problem = read_caption(caption_path)
            if caption_problem:
                problems.append(Problem(str(caption_path), caption_problem))
                concept.captions_empty += 1
            else:
                caption, from_file = text, True
                if len(text) > LONG_CAPTION_CHARS:
                    problems.append(Problem(str(caption_path), f"caption is {len(text):,} characters long; the text "
                                                               "encoder reads only about the first 300 (75 tokens), "
                                                               "the rest is ignored: shorten it"))
        else:
            concept.captions_missing += 1
            problems.append(Problem(str(path), f"no caption file {caption_path.name}; "
                                               f"the class tokens {class_tokens!r} are the caption"))
        concept.images.append(ImageItem(path, caption, from_file, size))
    for path in files:
        if is_image_path(path) or path.suffix.lower() in _IGNORED_FILES:
            continue
        if path.name.endswith(ext):
            if path.name[: -len(ext)] not in image_stems:
                problems.append(Problem(str(path), "caption file without an image of the same name"))
        elif path.suffix.lower() in (".txt", ".caption") and path.stem in image_stems:
            problems.append(Problem(str(path), f"looks like a caption, but caption_extension is {ext!r}; "
                                               f"set caption_extension to {path.suffix!r} to use these captions"))
        else:
            problems.append(Problem(str(path), "not an image this trainer reads "
                                               f"({', '.join(IMAGE_EXTENSIONS)}); ignored"))
    if not image_stems:
        what = "regularisation folder" if is_reg else "concept folder"
        problems.append(Problem(str(folder), f"{what} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                                             "it adds nothing: add images or remove the folder"))
    if concept.repeats == 0:
        problems.append(Problem(str(folder), "repeat count is 0: these images would never be trained"))
    return concept


def scan_parent(parent: Path, caption_extension: str, is_reg: bool, problems: list[Problem]) -> list[Concept]:
    """All concept folders under `parent` (train_data_dir or reg_data_dir), in name order."""
    key = "reg_data_dir" if is_reg else "train_data_dir"
    concepts: list[Concept] = []
    if parse_concept_name(parent.name) and any(is_image_path(p) for p in parent.iterdir()):
        problems.append(Problem(str(parent), f"{key} points at a concept folder itself; "
                                             f"use its parent folder ({parent.parent}). {LAYOUT_HINT}"))
        return concepts
    refuse_absurd_repeats(parent, is_reg)
    entries = sorted(e for e in parent.iterdir() if not e.name.startswith("."))
    for entry in entries:
        odd = odd_entry(entry)
        if odd:
            problems.append(Problem(str(entry), odd))
            continue
        if entry.is_dir():
            parsed = parse_concept_name(entry.name)
            if parsed is None:
                problems.append(Problem(str(entry), f"folder name has no leading repeat count, so it is ignored; "
                                                    f"rename it like '10_{entry.name}'. {LAYOUT_HINT}"))
                continue
            if loops_back(entry):
                problems.append(Problem(str(entry), f"symlink loop: links to {entry.resolve()}, a folder that "
                                                    "contains it; ignored: remove it"))
                continue
            concepts.append(scan_concept(entry, parsed[0], parsed[1], caption_extension, is_reg, problems))
        elif is_image_path(entry):
            problems.append(Problem(str(entry), f"image directly in {key} is ignored; {LAYOUT_HINT}"))
    return concepts
