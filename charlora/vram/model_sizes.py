"""SD 1.5's architecture as the estimate needs it (read from the configs CharLoRA carries), the LoRA's target
modules and tensor shapes, and a model's parameter counts from its file headers."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from ..models import SD15_CONFIG_DIR

GIB = 1024**3
MIB = 1024**2

# ---------------------------------------------------------------- SD 1.5 (charlora/models/sd15 configs)
# Exact parameter counts; tests/test_vram_estimate.py checks them against models built on the meta device.
SD15_UNET_PARAMS = 859_520_964
SD15_VAE_PARAMS = 83_653_863
SD15_TEXT_ENCODER_PARAMS = 123_060_480
# The architecture, read from the configs CharLoRA carries (not written out again here).
_UNET = json.loads((SD15_CONFIG_DIR / "unet" / "config.json").read_text(encoding="utf-8"))
_TE = json.loads((SD15_CONFIG_DIR / "text_encoder" / "config.json").read_text(encoding="utf-8"))
UNET_CHANNELS = tuple(_UNET["block_out_channels"])  # per level; level l works at 1/2**l of the latent's sides
UNET_LAYERS_PER_BLOCK = _UNET["layers_per_block"]  # resnets per down level (up levels have one more)
# levels with a transformer after each resnet (and the mid block): SD 1.5's three CrossAttn levels
UNET_ATTENTION_LEVELS = sum(kind.startswith("CrossAttn") for kind in _UNET["down_block_types"])
UNET_HEADS = _UNET["attention_head_dim"]  # SD 1.5's config names its head count attention_head_dim
UNET_FF_INNER = 4  # diffusers' BasicTransformerBlock: feed-forward width 4 x channels (GEGLU projects to twice)
CROSS_ATTENTION_DIM = _UNET["cross_attention_dim"]
TE_HIDDEN, TE_INTERMEDIATE, TE_LAYERS = _TE["hidden_size"], _TE["intermediate_size"], _TE["num_hidden_layers"]
TOKENS_PER_CHUNK = _TE["max_position_embeddings"]  # one 75-token chunk plus start/end tokens


@dataclass(frozen=True)
class Target:
    """One LoRA target module: its input and output features; 1x1 convolutions get 4-D LoRA weights."""

    part: str  # "unet" or "te"
    in_features: int
    out_features: int
    conv: bool = False



# ---------------------------------------------------------------- LoRA shapes and counts


def trained_parts(values: dict) -> tuple[bool, bool]:
    """(UNet trained, text encoder trained), by LoRASettings.from_config's rules (kept import-free: peft is slow)."""
    unet_lr, te_lr = values["unet_lr"], values["text_encoder_lr"]
    if unet_lr == 0 and te_lr == 0:
        unet_lr = te_lr = values["learning_rate"]
    return unet_lr > 0, te_lr > 0


@lru_cache(maxsize=1)
def sd15_targets() -> tuple[Target, ...]:
    """SD 1.5's LoRA targets from its architecture (what targets.py finds in the built models)."""

    def transformer(c: int) -> list[Target]:
        ff = UNET_FF_INNER * c
        shapes = [(c, c, True)] + [(c, c, False)] * 5 + [(CROSS_ATTENTION_DIM, c, False)] * 2 + [
            (c, c, False), (c, 2 * ff, False), (ff, c, False), (c, c, True)]
        return [Target("unet", i, o, conv) for i, o, conv in shapes]

    levels = UNET_CHANNELS[:UNET_ATTENTION_LEVELS]
    unet = [t for c in levels for _ in range(UNET_LAYERS_PER_BLOCK) for t in transformer(c)]
    unet += transformer(UNET_CHANNELS[-1])  # mid block
    unet += [t for c in reversed(levels) for _ in range(UNET_LAYERS_PER_BLOCK + 1) for t in transformer(c)]
    layer = [(TE_HIDDEN, TE_HIDDEN)] * 4 + [(TE_HIDDEN, TE_INTERMEDIATE), (TE_INTERMEDIATE, TE_HIDDEN)]
    te = [Target("te", i, o) for _ in range(TE_LAYERS) for i, o in layer]
    return tuple(unet + te)


def model_targets(unet=None, text_encoder=None) -> list[Target]:
    """The LoRA targets of built models (any size, e.g. the tiny test model), found as the trainer finds them."""
    from torch import nn

    from ..lora.targets import text_encoder_targets, unet_targets

    found = []
    for part, model, paths in (("unet", unet, unet_targets), ("te", text_encoder, text_encoder_targets)):
        if model is None:
            continue
        modules = dict(model.named_modules())
        for path in paths(model):
            module = modules[path]
            if isinstance(module, nn.Conv2d):
                found.append(Target(part, module.in_channels, module.out_channels, conv=True))
            else:
                found.append(Target(part, module.in_features, module.out_features))
    return found


def lora_tensor_shapes(values: dict, unet=None, text_encoder=None,
                       targets: Sequence[Target] | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """(part, shape) of every LoRA weight the run trains: lora_A (down) then lora_B (up) per target.

    From `targets` when given; else from the given models when either is given (a part not given counts
    nothing); else SD 1.5's.
    """
    rank = int(values["network_dim"])
    train_unet, train_te = trained_parts(values)
    if targets is None:
        targets = sd15_targets() if unet is None and text_encoder is None else model_targets(unet, text_encoder)
    shapes = []
    for t in targets:
        if (t.part == "unet" and not train_unet) or (t.part == "te" and not train_te):
            continue
        tail = (1, 1) if t.conv else ()
        shapes.append((t.part, (rank, t.in_features) + tail))
        shapes.append((t.part, (t.out_features, rank) + tail))
    return shapes


def count_lora_parameters(values: dict, unet=None, text_encoder=None) -> int:
    """Elements of all trained LoRA weights: rank x (in + out) per target."""
    return sum(math.prod(shape) for _, shape in lora_tensor_shapes(values, unet, text_encoder))


# ---------------------------------------------------------------- the model's sizes, from its file headers

_UNET_KEYS, _VAE_KEYS, _TE_KEYS = "model.diffusion_model.", "first_stage_model.", "cond_stage_model."
_MAX_HEADER_BYTES = 100 * MIB  # SD 1.5's header is ~100 KB; anything near this is not a safetensors file
_DIFFUSERS_PARTS = (("unet", "unet"), ("vae", "vae"), ("text_encoder", "te"))


@dataclass(frozen=True)
class ModelSizes:
    """Parameter counts of the three models and the UNet's and text encoder's LoRA targets."""

    unet: int
    vae: int
    text_encoder: int
    targets: tuple[Target, ...]
    source: str  # said in the estimate: "sizes from the model file", or "SD 1.5's sizes: ..." and why


def sd15_sizes(why: str | None) -> ModelSizes:
    """SD 1.5's sizes, saying why the model's own could not be read (None: no model chosen)."""
    said = f"the model could not be read ({why})" if why else "no model chosen yet"
    return ModelSizes(SD15_UNET_PARAMS, SD15_VAE_PARAMS, SD15_TEXT_ENCODER_PARAMS, sd15_targets(),
                      f"SD 1.5's sizes: {said}")


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the floating-point tensors in a .safetensors file, from its header alone (no tensor
    is read, torch is not needed). ValueError when the file is not a safetensors file."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError("too short for a .safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > min(_MAX_HEADER_BYTES, Path(path).stat().st_size - 8):
            raise ValueError("not a .safetensors file (its header length is impossible)")
        header = json.loads(fh.read(length))
    if not isinstance(header, dict):
        raise ValueError("not a .safetensors file (its header is not a JSON object)")
    # Integer tensors are buffers (position ids), not parameters.
    return {key: tuple(entry["shape"]) for key, entry in header.items()
            if key != "__metadata__" and str(entry.get("dtype", "")).startswith(("F", "BF"))}


def targets_from_shapes(shapes: dict[str, tuple[int, ...]], part: str) -> list[Target]:
    """LoRA targets from state-dict keys and shapes, by the rules of lora/targets.py: every Linear or 1x1
    conv inside a UNet transformer (a module with a proj_in), or in a text-encoder attention or MLP."""
    if part == "unet":
        containers = tuple(key[: -len("proj_in.weight")] for key in shapes if key.endswith("proj_in.weight"))
        inside = lambda key: key.startswith(containers)  # noqa: E731
    else:
        inside = lambda key: ".self_attn." in key or ".mlp." in key  # noqa: E731
    found = []
    for key, shape in shapes.items():
        if not key.endswith(".weight") or not inside(key):
            continue
        if len(shape) == 2:
            found.append(Target(part, shape[1], shape[0]))
        elif len(shape) == 4 and tuple(shape[2:]) == (1, 1):
            found.append(Target(part, shape[1], shape[0], conv=True))
    return found


def _count(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(shape) for shape in shapes.values())


@lru_cache(maxsize=16)
def _cached_shapes(path: str, size: int, mtime_ns: int) -> dict[str, tuple[int, ...]]:
    """`size` and `mtime_ns` key the cache (the suggestions re-estimate often): a changed file is read again.
    Callers must not change the dict returned."""
    return safetensors_shapes(path)


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    stat = path.stat()
    return _cached_shapes(str(path), stat.st_size, stat.st_mtime_ns)


def _sizes_from_single_file(path: Path) -> ModelSizes:
    """A single file in the original SD layout: the three models under their key prefixes."""
    shapes = _header_shapes(path)
    parts = {prefix: {k: v for k, v in shapes.items() if k.startswith(prefix)}
             for prefix in (_UNET_KEYS, _VAE_KEYS, _TE_KEYS)}
    missing = [name for prefix, name in ((_UNET_KEYS, "UNet"), (_VAE_KEYS, "VAE"), (_TE_KEYS, "text encoder"))
               if not parts[prefix]]
    if missing:
        return sd15_sizes(f"the model file has no {' or '.join(missing)} in the SD layout "
                          f"({_UNET_KEYS}*, {_VAE_KEYS}*, {_TE_KEYS}*)")
    targets = targets_from_shapes(parts[_UNET_KEYS], "unet") + targets_from_shapes(parts[_TE_KEYS], "te")
    return ModelSizes(_count(parts[_UNET_KEYS]), _count(parts[_VAE_KEYS]), _count(parts[_TE_KEYS]),
                      tuple(targets), "sizes from the model file")


def _component_files(folder: Path) -> list[Path]:
    """A diffusers component's weight files: the plain ones (maybe sharded), else one variant's (x.fp16.safetensors)."""
    files = sorted(folder.glob("*.safetensors"))
    plain = [f for f in files if "." not in f.name.removesuffix(".safetensors")]
    if plain or not files:
        return plain
    variant = files[0].suffixes[-2]
    return [f for f in files if f.suffixes[-2:-1] == [variant]]


def _sizes_from_folder(folder: Path) -> ModelSizes:
    """A diffusers folder: unet/, vae/ and text_encoder/ with .safetensors weights."""
    counts, targets = {}, []
    for sub, part in _DIFFUSERS_PARTS:
        files = _component_files(folder / sub)
        if not files:
            return sd15_sizes(f"the model folder has no {sub}/*.safetensors")
        shapes = {key: shape for file in files for key, shape in _header_shapes(file).items()}
        counts[sub] = _count(shapes)
        if part != "vae":
            targets += targets_from_shapes(shapes, part)
    return ModelSizes(counts["unet"], counts["vae"], counts["text_encoder"], tuple(targets),
                      "sizes from the model folder")


def model_sizes(source: str) -> ModelSizes:
    """The sizes of the model at `source` (pretrained_model_name_or_path), from its .safetensors headers:
    a single file in the SD layout or a diffusers folder. SD 1.5's when it cannot be read so cheaply."""
    from ..params.spec import strip_quotes

    text = strip_quotes(str(source or ""))
    if not text:
        return sd15_sizes(None)
    path = Path(text).expanduser()
    try:
        if path.is_dir():
            return _sizes_from_folder(path)
        if path.is_file():
            if path.suffix.lower() != ".safetensors":
                return sd15_sizes("only a .safetensors file's sizes are read without loading it")
            return _sizes_from_single_file(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:  # a broken header of any shape
        return sd15_sizes(str(error))
    return sd15_sizes("not a file or folder on this computer; a Hugging Face Hub id is not looked up")

