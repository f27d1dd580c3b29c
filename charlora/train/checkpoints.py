"""Where a run's files go and what they are called (Kohya's names), and the resumable training state.

LoRA files: `NAME-000001.safetensors` per saved epoch, `NAME-step00000300.safetensors` per saved
step, `NAME.safetensors` at the end. A training state (`NAME-000001-state/`, ...) holds what a resumed
run needs to continue exactly: LoRA weights in fp32, optimizer, scheduler, every RNG, the position
(epoch, batch within the epoch, global step), the run's `ss_session_id`, the running sum of this
epoch's losses (so the epoch average continues) and the loss history (`losses.json`: (step, loss,
epoch average) points, thinned to MAX_HISTORY_POINTS). States are written to a temporary folder and
renamed.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import CharLoRAError
from ..fileio import atomic_write_text, disk_full_message, is_disk_full

STATE_FORMAT = 2  # 2: + session_id, epoch loss sum, losses.json (format 1 still resumes, without them)
READABLE_FORMATS = (1, 2)
MAX_HISTORY_POINTS = 10_000  # loss points kept in a state: a 100k-step run's history stays ~0.5 MB


def thin_points(points, limit: int) -> list:
    """At most `limit` points, evenly spaced over the list, the first and the last one kept."""
    points = list(points)
    if len(points) <= limit:
        return points
    stride = len(points) / (limit - 1)
    return [points[int(i * stride)] for i in range(limit - 1)] + [points[-1]]


def epoch_file(output_dir: Path, name: str, epoch: int) -> Path:
    return output_dir / f"{name}-{epoch:06d}.safetensors"


def step_file(output_dir: Path, name: str, step: int) -> Path:
    return output_dir / f"{name}-step{step:08d}.safetensors"


def final_file(output_dir: Path, name: str) -> Path:
    return output_dir / f"{name}.safetensors"


def state_dir_for(lora_file: Path) -> Path:
    return lora_file.with_name(lora_file.name.removesuffix(".safetensors") + "-state")


def epoch_files(output_dir: Path, name: str, up_to: int) -> list[Path]:
    """This run's epoch files up to epoch `up_to`, oldest first (files of an earlier run with higher
    numbers are not this run's to prune)."""
    return _numbered(output_dir, name, r"-(\d{6})", up_to)


def step_files(output_dir: Path, name: str, up_to: int) -> list[Path]:
    return _numbered(output_dir, name, r"-step(\d{8})", up_to)


def _numbered(output_dir: Path, name: str, suffix: str, up_to: int) -> list[Path]:
    pattern = re.compile(re.escape(name) + suffix + r"\.safetensors$")
    found = []
    for path in output_dir.iterdir():
        match = pattern.fullmatch(path.name)
        if match and int(match.group(1)) <= up_to:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def prune_states(paths: list[Path], keep: int) -> None:
    """Remove the training states of all but the last `keep` files (the LoRA files stay)."""
    for path in paths[:-keep] if keep > 0 else []:
        shutil.rmtree(state_dir_for(path), ignore_errors=True)


def saved_seed(folder: str | Path) -> int:
    """The seed a saved state was trained with (read before anything else is set up)."""
    info_path = Path(folder) / "position.json"
    try:
        return int(json.loads(info_path.read_text())["seed"])
    except (OSError, ValueError, KeyError):
        raise CharLoRAError(f"resume: {str(folder)!r} is not a CharLoRA training state (no readable "
                            "position.json); choose a folder like NAME-000004-state") from None


def prune(paths: list[Path], keep: int) -> list[Path]:
    """Remove all but the last `keep` of `paths` (and their states); returns what was removed."""
    if keep <= 0 or len(paths) <= keep:
        return []
    removed = paths[:-keep]
    for path in removed:
        path.unlink(missing_ok=True)
        shutil.rmtree(state_dir_for(path), ignore_errors=True)
    return removed


def check_output_dir(output_dir: str) -> Path:
    """Create the output folder and prove it is writable before any work is done."""
    if not output_dir:
        raise CharLoRAError("output_dir is empty: choose the folder where the LoRA files should go")
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".charlora-write-test-"):
            pass
    except OSError as exc:
        raise CharLoRAError(f"output_dir {str(path)!r} cannot be written ({exc.strerror or exc}); choose a folder "
                            "you can write to") from None
    return path


@dataclass
class Position:
    epoch: int  # 1-based epoch in progress
    batch: int  # batches of this epoch already done
    step: int  # optimizer steps done
    seed: int
    total_steps: int
    session_id: int | None = None  # the run's ss_session_id (None: a format-1 state, which had none)
    epoch_loss_sum: float = 0.0  # the losses of this epoch's steps so far, summed in step order
    epoch_loss_count: int = 0


def save_state(folder: Path, lora_weights: dict, optimizer, scheduler, noise_generator: torch.Generator,
               position: Position, history: list, scaler=None) -> Path:
    """`history`: the run's (step, loss, epoch average) points; thinned to MAX_HISTORY_POINTS here."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        tensors = {}
        for name, (down, up, alpha) in lora_weights.items():
            tensors[f"{name}.lora_down.weight"] = down.float().contiguous()
            tensors[f"{name}.lora_up.weight"] = up.float().contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
        save_file(tensors, str(tmp / "lora.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if scaler is not None and scaler.is_enabled():  # fp16's loss scale, or a resume restarts at 65536
            torch.save(scaler.state_dict(), tmp / "scaler.pt")
        rng = {"torch": torch.get_rng_state(), "noise": noise_generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
        torch.save(rng, tmp / "rng.pt")
        py_version, py_state, py_gauss = random.getstate()
        np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
        points = thin_points(history, MAX_HISTORY_POINTS)
        (tmp / "losses.json").write_text(json.dumps({"points": [[int(step), float(loss), float(average)]
                                                                  for step, loss, average in points]}))
        (tmp / "position.json").write_text(json.dumps({
            "format": STATE_FORMAT, **asdict(position),
            "python_rng": [py_version, list(py_state), py_gauss],
            "numpy_rng": [np_kind, np_keys.tolist(), np_pos, np_has_gauss, np_gauss]}))
        _swap_in(tmp, folder)
    except (OSError, RuntimeError) as exc:
        if is_disk_full(exc):
            raise CharLoRAError(disk_full_message(folder)) from exc
        if not isinstance(exc, OSError):
            raise
        raise CharLoRAError(f"cannot write the training state {folder} ({exc.strerror or exc}); files saved "
                            "earlier are untouched") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _swap_in(tmp: Path, folder: Path) -> None:
    """Put the finished `tmp` folder in place of `folder`. An existing state is renamed aside first and
    deleted only once the new one is in place: a kill at any moment leaves one complete state under the
    final name or aside (a hidden `.NAME-state.xxxx.old`, restored here if the swap fails)."""
    if not folder.exists():
        os.replace(tmp, folder)
        return
    aside = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.old")
    os.rename(folder, aside)
    try:
        os.replace(tmp, folder)
    except OSError:
        os.rename(aside, folder)  # the old state goes back under its name
        raise
    shutil.rmtree(aside, ignore_errors=True)


def clean_leftovers(output_dir: Path, name: str) -> tuple[list[Path], list[Path]]:
    """Remove what an interrupted save of run `name` left in `output_dir`: temporary files
    (`.NAME-000001.safetensors.xxxx.tmp`, `.NAME.config.json.xxxx.tmp`) and hidden state folders
    (`.NAME-000001-state.xxxx`, `.NAME-000001-state.xxxx.old`). Only names of exactly these patterns
    for this `name` are touched. Returns (removed, restored): a state left only aside is put back."""
    numbered = r"(?:-\d{6}|-step\d{8})?"
    pattern = re.compile(r"\." + re.escape(name) + numbered
                         + r"(?:\.safetensors\.\w+\.tmp|\.config\.json\.\w+\.tmp|-state\.\w+(?:\.old)?)")
    removed, restored = [], []
    for path in sorted(output_dir.iterdir()):
        if not pattern.fullmatch(path.name):
            continue
        final = output_dir / path.name[1:].split(".", 1)[0]
        if path.name.endswith(".old") and path.is_dir() and not final.exists():
            os.rename(path, final)  # killed between the two renames: the old state is the only copy
            restored.append(final)
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed, restored


@dataclass
class LoadedState:
    folder: Path
    lora_weights: dict
    optimizer: dict
    scheduler: dict
    rng: dict
    position: Position
    history: list  # (step, loss, epoch average) points; empty for a format-1 state
    scaler: dict | None = None


def load_state(folder: str | Path) -> LoadedState:
    folder = Path(folder)
    needed = ("lora.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "position.json")
    missing = [n for n in needed if not (folder / n).is_file()]
    if not folder.is_dir() or missing:
        raise CharLoRAError(f"resume: {str(folder)!r} is not a CharLoRA training state (missing "
                            f"{', '.join(missing) or 'the folder'}); choose a folder like NAME-000004-state")
    try:
        return _load_state(folder)
    except CharLoRAError:
        raise
    except Exception as exc:  # a damaged or hand-edited state: say which, not "internal error"
        raise CharLoRAError(f"resume: the training state {folder} is damaged ({type(exc).__name__}: {exc}); "
                            "choose another NAME-...-state folder, or start a new run") from exc


def _load_state(folder: Path) -> LoadedState:
    info = json.loads((folder / "position.json").read_text())
    if info.get("format") not in READABLE_FORMATS:
        raise CharLoRAError(f"resume: {folder} was written by another CharLoRA version (state format "
                            f"{info.get('format')}; this version reads {', '.join(map(str, READABLE_FORMATS))}); "
                            "resume it with the version that wrote it, or start a new run")
    tensors = load_file(str(folder / "lora.safetensors"))
    names = sorted({k.rsplit(".lora_down.weight", 1)[0] for k in tensors if k.endswith(".lora_down.weight")})
    weights = {n: (tensors[f"{n}.lora_down.weight"], tensors[f"{n}.lora_up.weight"], float(tensors[f"{n}.alpha"]))
               for n in names}
    position = Position(**{k: info[k] for k in ("epoch", "batch", "step", "seed", "total_steps")},
                        **{k: info[k] for k in ("session_id", "epoch_loss_sum", "epoch_loss_count") if k in info})
    history_path = folder / "losses.json"  # absent from format-1 states
    points = json.loads(history_path.read_text())["points"] if history_path.is_file() else []
    history = [(int(step), float(loss), float(average)) for step, loss, average in points]
    rng = torch.load(folder / "rng.pt", weights_only=True)  # never unpickle code, even from our own files
    version, state, gauss = info["python_rng"]
    rng["python"] = (version, tuple(state), gauss)
    kind, keys, pos, has_gauss, cached = info["numpy_rng"]
    rng["numpy"] = (kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached)
    scaler = torch.load(folder / "scaler.pt", weights_only=True) if (folder / "scaler.pt").is_file() else None
    return LoadedState(folder, weights, torch.load(folder / "optimizer.pt", weights_only=True),
                       torch.load(folder / "scheduler.pt", weights_only=True), rng, position, history, scaler)


def restore_rng(rng: dict, noise_generator: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    noise_generator.set_state(rng["noise"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(rng["cuda"]))


def write_run_config(output_dir: Path, name: str, kohya_json: str) -> Path:
    """The exact config of the run, as Kohya JSON, beside its files."""
    path = output_dir / f"{name}.config.json"
    try:
        return atomic_write_text(path, kohya_json)
    except OSError as exc:
        if is_disk_full(exc):
            raise CharLoRAError(disk_full_message(path)) from exc
        raise CharLoRAError(f"cannot write {path} ({exc.strerror or exc}); check that output_dir is writable")

