"""Kohya's LoRA file: what A1111, ComfyUI and diffusers load.

Per adapted module three tensors: `<name>.lora_down.weight` (rank x in, 4-D for 1x1 convs),
`<name>.lora_up.weight` (out x rank) and `<name>.alpha` (a scalar, always written: without it
A1111 uses a scale of 1). All tensors, alpha included, in `save_precision`. Written atomically with
mode 0644 (safetensors itself writes 0600, which A1111 or ComfyUI running as another user cannot read).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import CharLoRAError
from ..fileio import atomic_path, disk_full_message, is_disk_full
from .metadata import addnet_hashes
from .targets import TE_PREFIXES, UNET_PREFIX

SAVE_DTYPES = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class LoRAFileError(CharLoRAError):
    """The file is not a Standard LoRA this program can load."""


def kohya_state_dict(weights: dict[str, tuple[torch.Tensor, torch.Tensor, float]], dtype: torch.dtype) -> dict:
    tensors = {}
    for name, (down, up, alpha) in sorted(weights.items()):
        tensors[f"{name}.lora_down.weight"] = down.detach().to("cpu", dtype).contiguous()
        tensors[f"{name}.lora_up.weight"] = up.detach().to("cpu", dtype).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(alpha).to(dtype)
    return tensors


def save_lora(weights: dict[str, tuple[torch.Tensor, torch.Tensor, float]], path: str | Path,
              save_precision: str, metadata: dict[str, str]) -> Path:
    """Write a Kohya-format LoRA file atomically; returns its path."""
    tensors = kohya_state_dict(weights, SAVE_DTYPES[save_precision])
    metadata = dict(metadata)
    metadata.update(addnet_hashes(tensors, metadata))
    bad = [k for k, v in metadata.items() if not isinstance(v, str)]
    if bad:
        raise TypeError(f"metadata values must be strings: {bad}")
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
    except (OSError, SafetensorError) as exc:
        if is_disk_full(exc):
            raise CharLoRAError(disk_full_message(path)) from exc
        if not isinstance(exc, OSError):
            raise
        raise CharLoRAError(f"cannot write {path} ({exc.strerror or exc}); check that the output folder is "
                            "writable and the disk has space. Files saved earlier are untouched.") from exc
    return path


# --------------------------------------------------------------------------- reading

@dataclass
class LoRAFile:
    path: Path
    metadata: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]

    @property
    def module_names(self) -> list[str]:
        return sorted({k.rsplit(".lora_down.weight", 1)[0] for k in self.shapes if k.endswith(".lora_down.weight")})


def read_header(path: str | Path) -> LoRAFile:
    """Read a safetensors header (shapes, dtypes, metadata) without loading tensors; clear errors."""
    path = Path(path)
    if not path.is_file():
        raise LoRAFileError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise LoRAFileError(f"{path}: not a LoRA file (it is only {size} bytes)")
        if head.startswith(b"PK\x03\x04"):  # torch.save's zip format
            raise LoRAFileError(f"{path}: a PyTorch pickle (.pt/.ckpt) file, not safetensors, whatever its name "
                                "says; convert it to .safetensors first (CharLoRA never unpickles files)")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, 100 * 1024 * 1024):
            if path.suffix.lower() == ".safetensors" and length < 100 * 1024 * 1024:
                raise LoRAFileError(f"{path}: the file is truncated or corrupt (its header needs {length:,} bytes, "
                                    f"the file has {size:,}); download or copy it again")
            raise LoRAFileError(f"{path}: not a safetensors file, so not a LoRA CharLoRA can read "
                                "(.ckpt/.pt LoRAs: convert them to .safetensors first)")
        try:
            header = json.loads(fh.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise LoRAFileError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise LoRAFileError(f"{path}: not a safetensors file (unexpected header)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise LoRAFileError(f"{path}: the file is damaged (its __metadata__ is not a table of texts)")
    shapes, dtypes, end = {}, {}, 0
    for key, info in header.items():
        problem = _entry_problem(info)
        if problem:
            raise LoRAFileError(f"{path}: the file is damaged: the entry of {key!r} {problem}; "
                                "download or copy it again")
        shapes[key] = tuple(info["shape"])
        dtypes[key] = info["dtype"]
        end = max(end, info["data_offsets"][1])
    if 8 + length + end > size:
        raise LoRAFileError(f"{path}: the file is truncated ({size:,} of {8 + length + end:,} bytes); "
                            "download or copy it again")
    return LoRAFile(path, metadata, shapes, dtypes)


def _entry_problem(info) -> str | None:
    """What is wrong with one tensor entry of a safetensors header, or None."""
    if not isinstance(info, dict):
        return f"is {json.dumps(info)[:40]}, not a tensor description"
    shape, dtype, offsets = info.get("shape"), info.get("dtype"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        return "has no valid shape"
    if not isinstance(dtype, str):
        return "has no dtype"
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(n, int) for n in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        return "has no valid data_offsets"
    return None


def _shape_problem(lora: LoRAFile, name: str) -> str | None:
    """Shapes that no LoRA loader can use: down (rank x in[,1,1]), up (out x rank[,1,1]), alpha one number."""
    down, up = lora.shapes[f"{name}.lora_down.weight"], lora.shapes.get(f"{name}.lora_up.weight")
    if up is None:
        return "has lora_down but no lora_up"
    if len(down) not in (2, 4) or len(up) not in (2, 4):
        return f"has lora_down of shape {list(down)} and lora_up of shape {list(up)} (each must be 2-D or 4-D)"
    if len(up) == 4 and tuple(up[2:]) != (1, 1):
        return f"has lora_up of shape {list(up)} (a 4-D lora_up must be out x rank x 1 x 1)"
    if up[1] != down[0]:
        return f"has lora_down of rank {down[0]} but lora_up of shape {list(up)} (its 2nd size must be {down[0]})"
    alpha = lora.shapes.get(f"{name}.alpha")
    if alpha is not None and math.prod(alpha) != 1:
        return f"has an alpha of shape {list(alpha)}; alpha must be one number"
    return None


def classify(lora: LoRAFile) -> tuple[str, str]:
    """(kind, explanation): kind is "lora" for a Standard LoRA we can load (SD 1.x or SDXL), else what it is."""
    keys = list(lora.shapes)
    if any(".hada_" in k for k in keys):
        return "loha", "a LyCORIS LoHa file (Hadamard product), not a Standard LoRA"
    if any(".lokr_" in k for k in keys):
        return "lokr", "a LyCORIS LoKr file (Kronecker product), not a Standard LoRA"
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return "peft", ("a diffusers/PEFT-format LoRA (lora_A/lora_B names), which ComfyUI does not load; "
                        "CharLoRA reads and writes Kohya's format")
    downs = [k for k in keys if k.endswith(".lora_down.weight") and k.startswith((UNET_PREFIX,) + TE_PREFIXES)]
    if not downs:
        if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in keys):
            return "checkpoint", "a full Stable Diffusion checkpoint, not a LoRA (it belongs in the base model field)"
        return "unknown", "not a LoRA: it has no lora_down/lora_up weights"
    if any(len(lora.shapes[k]) == 4 and lora.shapes[k][2:] != (1, 1) for k in downs):
        return "locon", "a LoCon/LyCORIS file with 3x3 convolution layers, not a Standard LoRA"
    return "lora", "a Standard LoRA"


def lora_family(lora: LoRAFile) -> str:
    """"sdxl" for an SDXL LoRA (text encoders lora_te1_/lora_te2_, or the UNet's original input_blocks names),
    else "sd1"."""
    names = lora.module_names
    if any(n.startswith(("lora_te1_", "lora_te2_", "lora_unet_input_blocks_", "lora_unet_output_blocks_",
                         "lora_unet_middle_block_")) for n in names):
        return "sdxl"
    return "sd1"


def load_lora_weights(path: str | Path, family: str = "sd1"
                      ) -> tuple[LoRAFile, dict[str, tuple[torch.Tensor, torch.Tensor, float]]]:
    """Read a Standard LoRA (ours or Kohya's sd-scripts') of the given family ("sd1" or "sdxl") as
    {name: (down, up, alpha)}, fp32. A missing alpha means alpha = rank (scale 1), as A1111 and Kohya treat
    old files."""
    lora = read_header(path)
    kind, explanation = classify(lora)
    if kind != "lora":
        raise LoRAFileError(f"{lora.path} is {explanation}. CharLoRA loads Standard LoRA files "
                            "(lora_unet_*/lora_te_*/lora_te1_*/lora_te2_* with lora_down, lora_up, alpha).")
    found = lora_family(lora)
    if found != family:
        names = {"sd1": "SD 1.5", "sdxl": "SDXL"}
        raise LoRAFileError(f"{lora.path} is an {names[found]} LoRA (e.g. {lora.module_names[0]}), but this base "
                            f"model is {names[family]}: use a LoRA trained on an {names[family]} model")
    for name in lora.module_names:
        problem = _shape_problem(lora, name)
        if problem:
            raise LoRAFileError(f"{lora.path}: the file is damaged: {name} {problem}")
    weights = {}
    try:
        with safe_open(str(lora.path), framework="pt") as fh:
            for name in lora.module_names:
                down = fh.get_tensor(f"{name}.lora_down.weight").float()
                up = fh.get_tensor(f"{name}.lora_up.weight").float()
                alpha_key = f"{name}.alpha"
                alpha = float(fh.get_tensor(alpha_key).float()) if alpha_key in lora.shapes else float(down.shape[0])
                weights[name] = (down, up, alpha)
    except SafetensorError as exc:
        raise LoRAFileError(f"{lora.path}: the file is damaged ({exc}); download or copy it again") from exc
    return lora, weights


def file_rank(weights: dict[str, tuple[torch.Tensor, torch.Tensor, float]]) -> int:
    ranks = {down.shape[0] for down, _, _ in weights.values()}
    if len(ranks) != 1:
        raise LoRAFileError(f"the LoRA has modules of different ranks {sorted(ranks)}; CharLoRA trains one rank")
    return ranks.pop()
