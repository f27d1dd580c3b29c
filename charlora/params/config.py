"""Configs as Kohya's GUI writes them: load loosely, normalise strictly, save so Kohya opens them.

Rules (docs/parameters.md has the table):
- a missing key takes CharLoRA's documented default, never a value left over from before;
- an unknown key is reported by name in a warning and otherwise ignored;
- a bad or unsupported value is an error naming the key, the value and what to do,
  and every bad key of a file is reported at once;
- secrets (API keys, tokens) are never written back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import ConfigError
from ..fileio import atomic_write_text
from . import block_lr
from .spec import show
from .table import PARAMS, PARAMS_BY_KEY

MAX_CONFIG_BYTES = 4 * 1024 * 1024  # Kohya configs are a few KB; anything this big is not one
# Text stored in every LoRA file's metadata (training_comment): more is cut, with a note, and warned about.
MAX_METADATA_TEXT = 64 * 1024


@dataclass
class LoadedConfig:
    values: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    source: str | None = None


def normalize(raw: Mapping[str, Any], source: str | None = None) -> LoadedConfig:
    """Check and normalise a raw Kohya-style mapping. Raises ConfigError listing every bad key."""
    if not isinstance(raw, Mapping):
        raise ConfigError([f"a config must be a JSON object of key: value pairs, not a {type(raw).__name__}"],
                          source)
    values: dict[str, Any] = {}
    problems: list[str] = []
    warnings: list[str] = []
    for param in PARAMS:
        if param.key not in raw:
            values[param.key] = param.default
            continue
        try:
            value = param.coerce(raw[param.key])
        except ValueError as exc:
            problems.append(f"{param.key}: {exc}")
            continue
        refusal = param.check_allowed(value)
        if refusal:
            problems.append(f"{param.key}: {refusal}")
            continue
        if param.secret:
            if value:
                warnings.append(f"{param.key}: a secret was given; it is not used and will never be saved")
            value = param.default
        elif param.effect == "ignored" and value != param.default:
            warnings.append(f"{param.key} = {show(value)} has no effect: {param.reason}")
        if param.key == "training_comment" and len(value.encode("utf-8")) > MAX_METADATA_TEXT:
            warnings.append(f"training_comment is {len(value.encode('utf-8')):,} bytes; each LoRA file stores only "
                            f"its first {MAX_METADATA_TEXT // 1024} KiB (with a note that it was cut)")
        values[param.key] = value
    unknown = sorted(str(k) for k in raw if k not in PARAMS_BY_KEY)
    if unknown:
        warnings.append("unknown keys ignored: " + ", ".join(show(k, 40) for k in unknown[:50])
                        + (f" and {len(unknown) - 50} more" if len(unknown) > 50 else ""))
    if not problems:
        problems = cross_check(values)
    if problems:
        raise ConfigError(problems, source)
    if values["sdxl"] and values["clip_skip"] > 1:
        warnings.append(f"clip_skip = {values['clip_skip']} has no effect on SDXL: both text encoders' "
                        "penultimate layers are used, as in sd-scripts (which warns the same)")
    return LoadedConfig(values, warnings, source)


def cross_check(values: Mapping[str, Any]) -> list[str]:
    """Problems that involve more than one key, named by all the keys involved."""
    problems = []
    if values["min_bucket_reso"] > values["max_bucket_reso"]:
        problems.append(f"min_bucket_reso ({values['min_bucket_reso']}) is larger than max_bucket_reso "
                        f"({values['max_bucket_reso']})")
    if values["min_timestep"] >= values["max_timestep"]:
        problems.append(f"min_timestep ({values['min_timestep']}) must be below max_timestep "
                        f"({values['max_timestep']})")
    if values["full_fp16"] and values["full_bf16"]:
        problems.append("full_fp16 and full_bf16 are both on; choose one")
    if values["full_fp16"] and values["mixed_precision"] != "fp16":
        problems.append(f"full_fp16 needs mixed_precision fp16 (it is {values['mixed_precision']})")
    if values["full_bf16"] and values["mixed_precision"] != "bf16":
        problems.append(f"full_bf16 needs mixed_precision bf16 (it is {values['mixed_precision']})")
    if values["cache_latents"] or values["cache_latents_to_disk"]:
        for aug in ("color_aug", "random_crop"):
            if values[aug]:
                problems.append(f"cache_latents cannot be used with {aug}: a cached latent would freeze one "
                                f"version of each image; turn off {aug} or cache_latents/cache_latents_to_disk")
    if values["learning_rate"] == 0 and values["unet_lr"] == 0 and values["text_encoder_lr"] == 0:
        problems.append("learning_rate, unet_lr and text_encoder_lr are all 0: nothing would train")
    if values["sdxl"]:
        problems += _sdxl_problems(values)
    problems += block_lr.check(values)
    if values["optimizer"] == "Prodigy" and any(str(values[key]).strip() for key in block_lr.KEYS):
        problems.append("Prodigy needs one learning rate for everything it trains, and down_lr_weight / "
                        "mid_lr_weight / up_lr_weight give each UNet block its own: clear them or choose "
                        "another optimizer")
    return problems


def _sdxl_problems(values: Mapping[str, Any]) -> list[str]:
    """sd-scripts' SDXL rules (sdxl_train_network.py's assert_extra_args, sdxl_train_util)."""
    problems = []
    if values["bucket_reso_steps"] % 32:
        problems.append(f"bucket_reso_steps {values['bucket_reso_steps']}: SDXL needs a multiple of 32 (32 or 64)")
    if values["sdxl_cache_text_encoder_outputs"]:
        # the text encoders train when text_encoder_lr is set, or when it and unet_lr are 0 (learning_rate)
        te_trains = values["text_encoder_lr"] > 0 or (values["unet_lr"] == 0 and values["learning_rate"] > 0)
        if te_trains:
            problems.append("sdxl_cache_text_encoder_outputs needs the text encoders frozen: set text_encoder_lr "
                            "to 0 and unet_lr above 0 (Kohya's network_train_unet_only), or turn the cache off")
        for key in ("shuffle_caption", "caption_dropout_rate", "caption_dropout_every_n_epochs"):
            if values[key]:
                problems.append(f"sdxl_cache_text_encoder_outputs cannot be used with {key} (the cached captions "
                                f"would never change); turn off {key} or the cache")
    return problems


def parse_assignments(assignments: Iterable[str]) -> dict[str, str]:
    """`--set key=value` pairs. Unknown keys are errors here: on a command line they are typos."""
    parsed: dict[str, str] = {}
    problems = []
    for item in assignments:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"--set {show(item)}: expected key=value")
        elif key not in PARAMS_BY_KEY:
            problems.append(f"--set {key}: unknown key (see `python -m charlora params`)")
        else:
            parsed[key] = value
    if problems:
        raise ConfigError(problems, "the command line")
    return parsed


def read_config_file(path: str | os.PathLike, warnings: list | None = None) -> dict[str, Any]:
    """Read a Kohya JSON file into a raw mapping, with a clear error for anything that is not one.
    A key given twice is a warning appended to `warnings` (JSON keeps the last one silently)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError([f"{path} is a folder, not a JSON file; give the path of a config file inside it"],
                          str(path))
    if not path.is_file():
        raise ConfigError([f"no such file: {path}"], str(path))
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError([f"the file is {path.stat().st_size:,} bytes; a Kohya config is a few KB. "
                           "Is this the right file?"], str(path))
    try:
        text = path.read_text(encoding="utf-8-sig")  # Windows editors may add a BOM
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not a text file (byte {exc.start} is not UTF-8); a config is a JSON text file"],
                          str(path)) from None
    try:
        raw = json.loads(text, object_pairs_hook=_DuplicateKeys(warnings))
    except json.JSONDecodeError as exc:
        raise ConfigError([f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"],
                          str(path)) from None
    except RecursionError:
        raise ConfigError(["not a Kohya config: the JSON is nested far too deeply"], str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"a config must be a JSON object of key: value pairs, not a JSON {_json_kind(raw)}"],
                          str(path))
    return raw


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> LoadedConfig:
    """Load a Kohya JSON config (and optional `key=value` overrides) into normalised values."""
    warnings: list[str] = []
    raw = read_config_file(path, warnings)
    raw.update(parse_assignments(overrides))
    loaded = normalize(raw, str(path))
    loaded.warnings[:0] = warnings
    return loaded


def to_kohya(values: Mapping[str, Any]) -> dict[str, Any]:
    """Values in the shapes Kohya's GUI writes, keys sorted, secrets left out."""
    return {p.key: p.to_kohya(values.get(p.key, p.default))
            for p in sorted(PARAMS, key=lambda p: p.key) if not p.secret}


def dump_kohya(values: Mapping[str, Any]) -> str:
    return json.dumps(to_kohya(values), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def save_config(values: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a Kohya-compatible JSON config atomically (never a half-written file)."""
    return atomic_write_text(path, dump_kohya(values))


class _DuplicateKeys:
    """json's object_pairs_hook: builds each object as json does (the last value wins) and notes every
    key given more than once, with all its values, so the user learns which one counted."""

    def __init__(self, warnings: list | None):
        self.warnings = warnings

    def __call__(self, pairs: list) -> dict:
        seen: dict[str, list] = {}
        for key, value in pairs:
            seen.setdefault(key, []).append(value)
        if self.warnings is not None:
            for key, values in seen.items():
                if len(values) > 1:
                    shown = " then ".join(show(v, 40) for v in values)
                    self.warnings.append(f"{key} is given {len(values)} times ({shown}); the last one, "
                                         f"{show(values[-1], 40)}, is used. Remove the others")
        return dict(pairs)


def _json_kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)
