"""What one parameter is: its declaration, and how a loose Kohya value becomes a typed one.

Kohya's GUI writes values loosely ("1" for 1, "" for "not set", "512,512", quoted Windows
paths, a bool or a string for `xformers`). `Param.coerce` accepts every shape Kohya writes and
returns one normalised Python value, or raises `ValueError` with a message that names the value
and says what is accepted. `Param.to_kohya` writes the value back in the shape Kohya writes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

GROUPS = (
    "source model",
    "folders",
    "dataset",
    "captions",
    "network",
    "optimizer",
    "schedule",
    "precision & memory",
    "noise & loss",
    "saving",
    "samples",
    "logging",
)
TIERS = ("basic", "advanced", "samples")  # the three parameter panels of Kohya's LoRA tab
KINDS = ("bool", "int", "float", "str", "text", "choice", "path", "resolution")
EFFECTS = ("supported", "ignored", "restricted")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def show(value: Any, limit: int = 60) -> str:
    """A value as it appears in messages: repr, cut short so a hostile file cannot flood the screen."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Param:
    """One parameter, declared once. Everything else (GUI, CLI, presets, trainer, file metadata) reads this.

    effect:
      "supported"  - CharLoRA uses it.
      "ignored"    - accepted so Kohya files load, has no effect here; `reason` says why.
      "restricted" - only the values in `allowed` are supported; others are refused with `reason`.
    kohya_shape: how Kohya's GUI writes the value: "native" (a JSON number/bool/string of the
      value's type), "str" (a number written as a string, "" when not set) or "float".
    """

    key: str
    kind: str
    default: Any
    group: str
    help: str
    tier: str = "advanced"
    min: float | None = None
    max: float | None = None
    choices: tuple = ()
    optional: bool = False  # may be "not set" (None; Kohya writes "")
    unset: Any = None  # for an optional parameter: the value that applies when it is not set (sd-scripts')
    kohya_shape: str = "native"
    effect: str = "supported"
    reason: str = ""
    allowed: tuple = ()
    secret: bool = False  # never written to presets, metadata or logs
    slider: bool = False  # shown as a slider in the GUI
    step: float | None = None
    ui_max: float | None = None  # a slider's upper end when `max` is far beyond useful values
    value_map: tuple = ()  # (old Kohya value, value) pairs, e.g. xformers: (True, "xformers")
    label: str = ""  # the GUI's human label, as Kohya's GUI words it ("Network Rank (Dimension)")
    main: bool = False  # one of the ten settings most runs change: shown first, on one screen
    file_name: bool = False  # the value names a file inside a folder: no separators, no "..", not empty
    sdxl_only: bool = False  # means something only for SDXL base models (the app shows it only for them)

    @property
    def title(self) -> str:
        """The label a person reads (the key, made readable, where no label is declared)."""
        return self.label or self.key.replace("_", " ").capitalize()

    # ------------------------------------------------------------------ reading
    def coerce(self, raw: Any) -> Any:
        """Turn a value as Kohya (or a user on the command line) writes it into the normalised value."""
        if self.optional and (raw is None or (isinstance(raw, str) and raw.strip() == "")):
            return None
        for old, new in self.value_map:
            if type(raw) is type(old) and raw == old:
                raw = new
                break
        value = getattr(self, "_coerce_" + self.kind)(raw)
        if self.file_name:
            check_file_name(value)
        if self.choices and value not in self.choices:
            listed = ", ".join(str(c) for c in self.choices)
            raise ValueError(f"{show(raw)} is not one of: {listed}")
        if self.min is not None and value < self.min:
            raise ValueError(f"{show(raw)} is below the minimum {self.min:g}")
        if self.max is not None and value > self.max:
            raise ValueError(f"{show(raw)} is above the maximum {self.max:g}")
        return value

    def check_allowed(self, value: Any) -> str | None:
        """For restricted parameters: a refusal message when `value` is not supported, else None."""
        if self.effect == "restricted" and value not in self.allowed:
            allowed = " or ".join(show(a) for a in self.allowed)
            return f"{show(value)} is not supported ({self.reason}); use {allowed}"
        return None

    def _coerce_bool(self, raw: Any) -> bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, (int, float)) and raw in (0, 1):
            return bool(raw)
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise ValueError(f"{show(raw)} is not a boolean (use true or false)")

    def _coerce_int(self, raw: Any) -> int:
        if isinstance(raw, bool):
            raise ValueError(f"{show(raw)} is a boolean, expected a whole number")
        if isinstance(raw, int):
            return raw
        number = _parse_number(raw, "a whole number")
        if not number.is_integer():
            raise ValueError(f"{show(raw)} is not a whole number")
        return int(number)

    def _coerce_float(self, raw: Any) -> float:
        if isinstance(raw, bool):
            raise ValueError(f"{show(raw)} is a boolean, expected a number")
        return _parse_number(raw, "a number")

    def _coerce_str(self, raw: Any) -> str:
        if isinstance(raw, str):
            if "\n" in raw or "\r" in raw:
                raise ValueError(f"{show(raw)} must be a single line")
            return raw.strip()
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return str(raw)
        raise ValueError(f"{show(raw)} is not text")

    def _coerce_text(self, raw: Any) -> str:
        if isinstance(raw, str):
            return raw.replace("\r\n", "\n")
        raise ValueError(f"{show(raw)} is not text")

    def _coerce_choice(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise ValueError(f"{show(raw)} is not one of: {', '.join(map(str, self.choices))}")
        # Kohya's own spelling is canonical; accept any letter case on the way in.
        for choice in self.choices:
            if isinstance(choice, str) and choice.lower() == raw.strip().lower():
                return choice
        return raw.strip()

    def _coerce_path(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise ValueError(f"{show(raw)} is not a path")
        return strip_quotes(raw)

    def _coerce_resolution(self, raw: Any) -> str:
        parts: list[Any]
        if isinstance(raw, (list, tuple)):
            parts = list(raw)
        elif isinstance(raw, bool):
            raise ValueError(f"{show(raw)} is not a resolution like \"512,512\"")
        elif isinstance(raw, (int, float)):
            parts = [raw]
        elif isinstance(raw, str):
            parts = [p for p in raw.replace("x", ",").replace("X", ",").split(",")]
        else:
            raise ValueError(f"{show(raw)} is not a resolution like \"512,512\"")
        if len(parts) == 1:
            parts = parts * 2  # Kohya: "512" means 512x512
        try:
            if len(parts) != 2:
                raise ValueError
            width, height = (self._coerce_int(p if not isinstance(p, str) else p.strip()) for p in parts)
        except ValueError:
            raise ValueError(f"{show(raw)} is not a resolution like \"512,512\" (width,height)") from None
        for side in (width, height):
            if not (64 <= side <= 8192) or side % 8:
                raise ValueError(f"{show(raw)}: each side must be a multiple of 8 between 64 and 8192")
        return f"{width},{height}"

    # ------------------------------------------------------------------ writing
    def to_kohya(self, value: Any) -> Any:
        """The value in the shape Kohya's GUI writes and reads back."""
        if value is None:
            return ""
        if self.kohya_shape == "str":
            return repr(value) if isinstance(value, float) else str(value)
        if self.kohya_shape == "float":
            return float(value)
        return value


def check_file_name(value: str) -> None:
    """A name written inside a folder must stay inside it: "../x" or "/tmp/x" would write elsewhere."""
    if not value:
        raise ValueError("'' is empty; choose a file name such as my_character")
    if any(c in value for c in '/\\:') or any(ord(c) < 32 for c in value):
        raise ValueError(f"{show(value)} is not a plain file name (no /, \\, : or control characters): "
                         "the files go into output_dir; choose a name such as my_character")
    if value.strip(".") == "":
        raise ValueError(f"{show(value)} is not a file name; choose a name such as my_character")


def strip_quotes(text: str) -> str:
    """Kohya may store a path with its own quotes: '"C:\\AI\\model.safetensors"'. Drop them."""
    text = text.strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def _parse_number(raw: Any, what: str) -> float:
    if isinstance(raw, (int, float)):
        try:
            number = float(raw)
        except OverflowError:  # an integer too large for a float
            raise ValueError(f"{show(raw)} is far too large") from None
    elif isinstance(raw, str):
        try:
            number = float(raw.strip())
        except (ValueError, OverflowError):
            raise ValueError(f"{show(raw)} is not {what}") from None
    else:
        raise ValueError(f"{show(raw)} is not {what}")
    if not math.isfinite(number):
        raise ValueError(f"{show(raw)} is not a finite number")
    return number
