"""Presets: Kohya JSON configs with a name.

Built-in presets live in the project's `presets/` folder (updated by `git pull`). The user's own
presets live in a folder of their own that `git pull` never touches:
`$CHARLORA_HOME/presets` if CHARLORA_HOME is set, else `%APPDATA%\\CharLoRA\\presets` on Windows and
`~/.config/charlora/presets` elsewhere (`$XDG_CONFIG_HOME` respected).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import CharLoRAError
from .params import LoadedConfig, load_config, save_config

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "presets"
_NAME = re.compile(r"^[\w][\w .\-]{0,79}$")


def charlora_home() -> Path:
    if os.environ.get("CHARLORA_HOME"):
        return Path(os.environ["CHARLORA_HOME"]).expanduser()
    if os.name == "nt" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "CharLoRA"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "charlora"


def user_preset_dir() -> Path:
    return charlora_home() / "presets"


@dataclass(frozen=True)
class Preset:
    name: str
    path: Path
    builtin: bool

    @property
    def label(self) -> str:
        return f"{self.name} (built-in)" if self.builtin else self.name


def list_presets() -> list[Preset]:
    """Built-in presets first, then the user's, each sorted by name."""
    found = []
    for folder, builtin in ((BUILTIN_DIR, True), (user_preset_dir(), False)):
        if folder.is_dir():
            found += [Preset(p.stem, p, builtin) for p in sorted(folder.glob("*.json"))]
    return found


def find_preset(name: str) -> Preset:
    """A preset by name; a user preset of the same name as a built-in one cannot exist (saving refuses it)."""
    for preset in list_presets():
        if name in (preset.name, preset.label):
            return preset
    names = ", ".join(p.name for p in list_presets()) or "none"
    raise CharLoRAError(f"no preset named {name!r}; presets available: {names}")


def load_preset(name: str) -> LoadedConfig:
    return load_config(find_preset(name).path)


def check_preset_name(name: str) -> str:
    name = name.strip()
    if name.lower().endswith(".json"):
        name = name[:-5]
    if not _NAME.match(name):
        raise CharLoRAError(f"preset name {name!r} is not usable: use up to 80 letters, digits, spaces, "
                            "'-', '_' or '.', starting with a letter or digit")
    if (BUILTIN_DIR / f"{name}.json").exists():
        raise CharLoRAError(f"{name!r} is a built-in preset; save yours under another name")
    return name


def save_user_preset(name: str, values: Mapping[str, Any], overwrite: bool = False) -> Path:
    """Save `values` as the user's preset `name` (atomically). An existing preset of that name is replaced
    only with overwrite=True (the GUI's Save of the selected preset); "Save as" never replaces one."""
    name = check_preset_name(name)
    path = user_preset_dir() / f"{name}.json"
    if path.exists() and not overwrite:
        raise CharLoRAError(f"a preset named {name!r} already exists ({path}); choose another name, or select "
                            "it in the list and press Save to overwrite it")
    return save_config(values, path)
