"""'Keep this one': copy the chosen LoRA file where the user's UI finds it, archive the rest of the run.

Nothing is ever deleted or overwritten. The chosen file is COPIED (it stays in the run folder); the
other files of the run are MOVED into `archive/` beside them, where the user can still get them back.
Only the files passed in `run_files` are touched: configs, state folders and other runs stay put.

A run's files are the ones that run wrote: Kohya's names (NAME-000001, NAME-step00000300, NAME) AND the
same `ss_session_id` metadata (each training run has its own; a resumed run keeps its run's). Files of
an earlier run with the same output_name (e.g. a stopped run's step file) are reported apart, never
scored as this run's checkpoints and never archived with it.
"""

from __future__ import annotations

import filecmp
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CharLoRAError
from ..fileio import atomic_path

ARCHIVE_DIR = "archive"


@dataclass
class KeepResult:
    kept: Path  # the copy in the destination folder
    archived: list[Path]  # where the other run files are now
    archive_dir: Path  # the archive folder beside the chosen file
    others: list[Path] = field(default_factory=list)  # passed in, but written by another run: left in place


@dataclass
class Checkpoint:
    """What one LoRA file of a run is, from its Kohya name and its metadata."""

    path: Path
    kind: str  # "epoch" (NAME-000003), "step" (NAME-step00000018) or "final" (NAME)
    epoch: int | None  # the epoch it completes; None for a step file (saved during an epoch)
    steps: int | None  # optimizer steps done when it was saved (ss_steps)
    label: str  # "epoch 3", "step 18 (during epoch 1)", "epoch 4 (final file)"
    session_id: str | None  # ss_session_id: which training run wrote it
    finished: float  # ss_training_finished_at, else the file's modification time


@dataclass
class RunFiles:
    """The LoRA files named after one output_name, split by the run that wrote them."""

    files: list[Path]  # the run's files, in training order
    others: list[Path]  # same names, other runs (another ss_session_id): not scored, not archived
    checkpoints: dict  # {path: Checkpoint} for every file of both lists
    session_id: str | None = None

    def note(self) -> str:
        """What to tell the user about `others` ("" when there are none)."""
        if not self.others:
            return ""
        return (f"{len(self.others)} file(s) of other runs with this name: not scored, not archived "
                f"({', '.join(p.name for p in self.others)})")


def _metadata(path: Path) -> dict:
    from ..lora.kohya_file import read_header  # imports torch: only once there are files to read

    try:
        return read_header(path).metadata
    except CharLoRAError:
        return {}  # not a readable LoRA (or a folder): no session, no epoch


def _number(text, kind=int):
    try:
        return kind(text)
    except (TypeError, ValueError):
        return None


def _checkpoint(path: Path, epoch_text: str | None, step_text: str | None) -> Checkpoint:
    meta = _metadata(path)
    steps, meta_epoch = _number(meta.get("ss_steps")), _number(meta.get("ss_epoch"))
    finished = _number(meta.get("ss_training_finished_at"), float) or path.stat().st_mtime
    if epoch_text:
        kind, epoch, label = "epoch", int(epoch_text), f"epoch {int(epoch_text)}"
    elif step_text:
        # ss_epoch of a step file is the epoch in progress, not a finished one: never call it "epoch N"
        kind, epoch, steps = "step", None, int(step_text)
        label = f"step {steps}" + (f" (during epoch {meta_epoch})" if meta_epoch is not None else "")
    else:
        kind, epoch = "final", meta_epoch
        label = f"epoch {epoch} (final file)" if epoch is not None else "final file"
    return Checkpoint(path, kind, epoch, steps, label, meta.get("ss_session_id") or None, finished)


def checkpoint_info(path) -> Checkpoint:
    """What a LoRA file is (epoch, steps, label, session), read from its Kohya name and metadata."""
    path = Path(path)
    match = re.search(r"-(?:(\d{6})|step(\d{8}))$", path.stem)
    return _checkpoint(path, *(match.groups() if match else (None, None)))


def run_files(folder, output_name, member=None) -> RunFiles:
    """The LoRA files named NAME-000001 (epochs), NAME-step00000300 (steps), NAME (final) in `folder`,
    split into the run's and other runs' by `ss_session_id`.

    The run is the one of `member` when given (e.g. the file being kept), else of the final NAME file,
    else of the newest file (by ss_training_finished_at, else modification time). Files are in training
    order: by ss_steps when every file has it, else epoch files, step files, then the final file.
    """
    pattern = re.compile(rf"^{re.escape(output_name)}(?:-(\d{{6}})|-step(\d{{8}}))?\.safetensors$")
    found = []
    for path in sorted(Path(folder).iterdir()) if output_name and Path(folder).is_dir() else []:
        match = pattern.match(path.name)
        if match and path.is_file():
            found.append(_checkpoint(path, *match.groups()))
    if not found:
        return RunFiles([], [], {})
    if member is not None:
        session = checkpoint_info(member).session_id
    else:
        final = [c for c in found if c.kind == "final"]
        session = (final[0] if final else max(found, key=lambda c: c.finished)).session_id
    if all(c.steps is not None for c in found):
        order = sorted(found, key=lambda c: (c.steps, c.kind == "final"))
    else:
        order = sorted(found, key=lambda c: ({"epoch": 0, "step": 1, "final": 2}[c.kind],
                                             c.epoch if c.kind == "epoch" else c.steps or 0))
    return RunFiles(files=[c.path for c in order if c.session_id == session],
                    others=[c.path for c in order if c.session_id != session],
                    checkpoints={c.path: c for c in found}, session_id=session)


def run_files_of(folder, output_name) -> list[Path]:
    """The run's LoRA files (run_files(...).files): files of other runs with that name are left out."""
    return run_files(folder, output_name).files


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
    session = _metadata(chosen).get("ss_session_id")
    to_archive, others, seen = [], [], set()
    for path in map(Path, run_files):
        resolved = path.resolve()
        if resolved in keep_set or resolved in seen or not path.exists():
            continue  # already archived (a second run) or the file being kept
        seen.add(resolved)
        if session and path.is_file() and _metadata(path).get("ss_session_id") not in (None, "", session):
            others.append(path)  # written by another training run: not this run's to archive
            continue
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
    return KeepResult(kept=kept, archived=archived, archive_dir=chosen.parent / ARCHIVE_DIR, others=others)
