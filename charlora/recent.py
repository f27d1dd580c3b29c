"""Paths the user used before, remembered per parameter, and model files found near them.

Typing every Windows path by hand is a newcomer's first complaint about Kohya's GUI: the app offers
the folders and files used before (kept in CHARLORA_HOME/recent-paths.json) and the checkpoints in
the folders people keep them in, next to each path field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .fileio import atomic_write_text
from .presets import charlora_home

REMEMBERED = ("pretrained_model_name_or_path", "train_data_dir", "reg_data_dir", "output_dir", "logging_dir")
KEEP = 12
MODEL_SUFFIXES = (".safetensors", ".ckpt")
# where AUTOMATIC1111, ComfyUI and Kohya's GUI users keep their checkpoints (relative to home)
MODEL_FOLDERS = ("stable-diffusion-webui/models/Stable-diffusion", "ComfyUI/models/checkpoints", "models",
                 "kohya_ss/models")


def _file() -> Path:
    return charlora_home() / "recent-paths.json"


def _read() -> dict:
    try:
        data = json.loads(_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # missing or damaged: start a new list (it is only a convenience)
    return data if isinstance(data, dict) else {}


def recent_paths(key: str) -> list[str]:
    """The paths used for `key`, newest first."""
    value = _read().get(key, [])
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def remember(values: dict) -> None:
    """Remember the non-empty paths of `values` (a run's or a prepared dataset's settings)."""
    data = _read()
    changed = False
    for key in REMEMBERED:
        path = str(values.get(key) or "").strip()
        if not path:
            continue
        old = [p for p in data.get(key, []) if isinstance(p, str)]
        new = [path] + [p for p in old if p != path]
        if new[:KEEP] != old[:KEEP]:
            data[key] = new[:KEEP]
            changed = True
    if changed:
        try:
            atomic_write_text(_file(), json.dumps(data, indent=1))
        except OSError:
            pass  # a read-only home loses the list, never the run


def found_models(limit: int = 40) -> list[str]:
    """Checkpoint files in the folders of recent models and in the usual model folders."""
    folders = [Path(p).parent for p in recent_paths("pretrained_model_name_or_path") if Path(p).suffix]
    folders += [Path.home() / f for f in MODEL_FOLDERS]
    found: list[str] = []
    for folder in folders:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name.lower())
        except OSError:
            continue
        for entry in entries:
            if entry.name.lower().endswith(MODEL_SUFFIXES) and entry.is_file() and entry.path not in found:
                found.append(entry.path)
                if len(found) >= limit:
                    return found
    return found


def choices_for(key: str) -> list[str]:
    """What a path field offers: recent paths first, then (for the base model) checkpoints found."""
    paths = recent_paths(key)
    if key == "pretrained_model_name_or_path":
        paths += [p for p in found_models() if p not in paths]
    return paths
