"""'Keep this one': copy the chosen LoRA file where the user's UI finds it, archive the rest of the run.

Nothing is ever deleted or overwritten. The chosen file is COPIED (it stays in the run folder); the
other files of the run are MOVED into `archive/` beside them, where the user can still get them back.
Only the files passed in `run_files` are touched: configs, state folders and other runs stay put.
"""

from __future__ import annotations

import filecmp
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import CharLoRAError
from ..fileio import atomic_path

ARCHIVE_DIR = "archive"


@dataclass
class KeepResult:
    kept: Path  # the copy in the destination folder
    archived: list[Path]  # where the other run files are now
    archive_dir: Path  # the archive folder beside the chosen file


def run_files_of(folder, output_name) -> list[Path]:
    """The run's LoRA files by Kohya's names: NAME-000001 (epochs), NAME-step00000300 (steps), NAME (final).

    Sorted: epoch files by epoch, then step files by step, then the final file (steps per epoch are not
    known here, so epoch and step saves are not interleaved).
    """
    pattern = re.compile(rf"^{re.escape(output_name)}(?:-(\d{{6}})|-step(\d{{8}}))?\.safetensors$")
    found = []
    for path in Path(folder).iterdir() if Path(folder).is_dir() else []:
        match = pattern.match(path.name)
        if match and path.is_file():
            epoch, step = match.groups()
            key = (0, int(epoch)) if epoch else (1, int(step)) if step else (2, 0)
            found.append((key, path))
    return [path for _, path in sorted(found)]


def _free_name(folder: Path, name: str) -> Path:
    """`folder/name`, or `stem_2.ext`, `stem_3.ext`, ... when that name is taken."""
    target = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 2
    while target.exists():
        target = folder / f"{stem}_{n}{suffix}"
        n += 1
    return target


def keep_checkpoint(chosen, destination_folder, run_files) -> KeepResult:
    """Copy `chosen` into `destination_folder` and move the other `run_files` into archive/ beside them."""
    chosen, destination_folder = Path(chosen), Path(destination_folder)
    if not chosen.is_file():
        raise CharLoRAError(f"the chosen LoRA file {str(chosen)!r} does not exist: was it moved or archived already?")
    if destination_folder.exists() and not destination_folder.is_dir():
        raise CharLoRAError(f"destination {str(destination_folder)!r} is a file, not a folder: choose the folder your "
                            "UI loads LoRAs from (e.g. models/Lora)")
    kept = destination_folder / chosen.name
    same_file = kept.exists() and kept.resolve() == chosen.resolve()  # destination is the run folder itself
    # Decide everything before changing anything: a refusal leaves every file where it was.
    if kept.exists() and not same_file and not (kept.is_file() and filecmp.cmp(kept, chosen, shallow=False)):
        raise CharLoRAError(f"{str(kept)!r} already exists and is a different file: not overwriting it. Rename or "
                            "move that file, or choose another destination folder")
    keep_set = {chosen.resolve(), kept.resolve()}
    to_archive, seen = [], set()
    for path in map(Path, run_files):
        resolved = path.resolve()
        if resolved in keep_set or resolved in seen or not path.exists():
            continue  # already archived (a second run) or the file being kept
        seen.add(resolved)
        to_archive.append(path)

    if not kept.exists():
        try:
            with atomic_path(kept) as tmp:  # copy to a temporary name, then rename
                shutil.copy2(chosen, tmp)
                if kept.exists():  # appeared meanwhile: still never overwrite it
                    raise CharLoRAError(f"{str(kept)!r} appeared while copying: not overwriting it; try again")
        except OSError as exc:
            raise CharLoRAError(f"cannot copy {chosen.name} into {str(destination_folder)!r} ({exc.strerror or exc}); "
                                "check the folder is writable and has space") from None

    archived = []
    for path in to_archive:
        folder = path.parent / ARCHIVE_DIR
        try:
            folder.mkdir(exist_ok=True)
            target = _free_name(folder, path.name)
            path.rename(target)
        except OSError as exc:
            done = f" ({len(archived)} file(s) already moved to archive/)" if archived else ""
            raise CharLoRAError(f"cannot move {str(path)!r} into {str(folder)!r} ({exc.strerror or exc}){done}; "
                                "check the folder is writable") from None
        archived.append(target)
    return KeepResult(kept=kept, archived=archived, archive_dir=chosen.parent / ARCHIVE_DIR)
