"""The architectures the estimate models (SD 1.5's and SDXL's, read from the configs CharLoRA carries), the
LoRA's target modules and tensor shapes, and a model's parameter counts from its file headers."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from ..models import SD15_CONFIG_DIR, SDXL_CONFIG_DIR

GIB = 1024**3
MIB = 1024**2

UNET_FF_INNER = 4  # diffusers' BasicTransformerBlock: feed-forward width 4 x channels (GEGLU projects to twice)


@dataclass(frozen=True)
class TextEncoderShape:
    hidden: int
    intermediate: int
    layers: int


@dataclass(frozen=True)
class Architecture:
    """What the estimate needs of a base model's architecture, read from its diffusers configs."""

    name: str
    channels: tuple  # per UNet level; level l works at 1/2**l of the latent's sides
    layers_per_block: int  # resnets per down level (up levels have one more)
    depths: tuple  # transformer blocks after each resnet, per level (0: no attention at that level)
    mid_depth: int
    heads: tuple  # attention heads per level
    cross_attention_dim: int  # the caption states' width (SDXL: both text encoders side by side)
    linear_projection: bool  # proj_in/proj_out are Linear (SDXL) rather than 1x1 convolutions (SD 1.5)
    text_encoders: tuple  # TextEncoderShape per text encoder
    unet_params: int
    vae_params: int
    text_encoder_params: int  # all text encoders together
    tokens_per_chunk: int  # one 75-token chunk plus start/end tokens


def _read(folder: Path, name: str) -> dict:
    return json.loads((folder / name / "config.json").read_text(encoding="utf-8"))


def _architecture(name: str, folder: Path, encoders: tuple, params: tuple) -> Architecture:
    unet = _read(folder, "unet")
    levels = len(unet["block_out_channels"])
    per_level = unet.get("transformer_layers_per_block") or 1
    per_level = per_level if isinstance(per_level, list) else [per_level] * levels
    depths = tuple(d if kind.startswith("CrossAttn") else 0 for d, kind in zip(per_level, unet["down_block_types"]))
    heads = unet["attention_head_dim"]  # SD 1.5's and SDXL's configs name the head count attention_head_dim
    heads = tuple(heads) if isinstance(heads, list) else (heads,) * levels
    texts = tuple(TextEncoderShape(c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"])
                  for c in (_read(folder, e) for e in encoders))
    return Architecture(name, tuple(unet["block_out_channels"]), unet["layers_per_block"], depths, per_level[-1],
                        heads, unet["cross_attention_dim"], bool(unet.get("use_linear_projection")), texts, *params,
                        _read(folder, encoders[0])["max_position_embeddings"])


# Exact parameter counts; tests check them against models built from the configs on the meta device.
SD15 = _architecture("SD 1.5", SD15_CONFIG_DIR, ("text_encoder",), (859_520_964, 83_653_863, 123_060_480))
SDXL = _architecture("SDXL", SDXL_CONFIG_DIR, ("text_encoder", "text_encoder_2"),
                     (2_567_463_684, 83_653_863, 123_060_480 + 694_659_840))
# SD 1.5's numbers under their own names (the tests and the estimate's SD 1.5 wording read them)
SD15_UNET_PARAMS, SD15_VAE_PARAMS, SD15_TEXT_ENCODER_PARAMS = SD15.unet_params, SD15.vae_params, \
    SD15.text_encoder_params
TE_HIDDEN, TE_INTERMEDIATE, TE_LAYERS = (SD15.text_encoders[0].hidden, SD15.text_encoders[0].intermediate,
                                         SD15.text_encoders[0].layers)
TOKENS_PER_CHUNK = SD15.tokens_per_chunk


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


@lru_cache(maxsize=2)
def architecture_targets(arch: Architecture) -> tuple[Target, ...]:
    """An architecture's LoRA targets (what targets.py finds in the built models)."""

    def transformer(c: int, depth: int) -> list[Target]:
        ff = UNET_FF_INNER * c
        block = [(c, c)] * 5 + [(arch.cross_attention_dim, c)] * 2 + [(c, c), (c, 2 * ff), (ff, c)]
        conv = not arch.linear_projection
        return ([Target("unet", c, c, conv)] + [Target("unet", i, o) for _ in range(depth) for i, o in block]
                + [Target("unet", c, c, conv)])

    unet = [t for c, d in zip(arch.channels, arch.depths) if d for _ in range(arch.layers_per_block)
            for t in transformer(c, d)]
    unet += transformer(arch.channels[-1], arch.mid_depth)  # mid block
    unet += [t for c, d in reversed(list(zip(arch.channels, arch.depths))) if d
             for _ in range(arch.layers_per_block + 1) for t in transformer(c, d)]
    te = [Target("te", i, o) for e in arch.text_encoders for _ in range(e.layers)
          for i, o in [(e.hidden, e.hidden)] * 4 + [(e.hidden, e.intermediate), (e.intermediate, e.hidden)]]
    return tuple(unet + te)


def sd15_targets() -> tuple[Target, ...]:
    return architecture_targets(SD15)


def model_targets(unet=None, text_encoder=None, text_encoder_2=None) -> list[Target]:
    """The LoRA targets of built models (any size, e.g. the tiny test model), found as the trainer finds them."""
    from torch import nn

    from ..lora.targets import text_encoder_targets, unet_targets

    found = []
    for part, model, paths in (("unet", unet, unet_targets), ("te", text_encoder, text_encoder_targets),
                               ("te", text_encoder_2, text_encoder_targets)):
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
_SDXL_TE_KEYS = "conditioner.embedders."
_MAX_HEADER_BYTES = 100 * MIB  # SD 1.5's header is ~100 KB; anything near this is not a safetensors file
_DIFFUSERS_PARTS = (("unet", "unet"), ("vae", "vae"), ("text_encoder", "te"), ("text_encoder_2", "te"))


@dataclass(frozen=True)
class ModelSizes:
    """Parameter counts of the models, the UNet's and text encoders' LoRA targets, and the architecture the
    activations are modelled on."""

    unet: int
    vae: int
    text_encoder: int  # all text encoders together
    targets: tuple[Target, ...]
    source: str  # said in the estimate: "sizes from the model file", or "SD 1.5's sizes: ..." and why
    arch: Architecture = SD15


def default_sizes(why: str | None, arch: Architecture = SD15) -> ModelSizes:
    """An architecture's own sizes, saying why the model's could not be read (None: no model chosen)."""
    said = f"the model could not be read ({why})" if why else "no model chosen yet"
    return ModelSizes(arch.unet_params, arch.vae_params, arch.text_encoder_params, architecture_targets(arch),
                      f"{arch.name}'s sizes: {said}", arch)


def sd15_sizes(why: str | None) -> ModelSizes:
    return default_sizes(why, SD15)


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
    conv inside a UNet transformer (a module with a proj_in), or in a text-encoder attention or MLP (also
    open_clip's, SDXL's second text encoder in a single file, whose in_proj holds q, k and v)."""
    if part == "unet":
        containers = tuple(key[: -len("proj_in.weight")] for key in shapes if key.endswith("proj_in.weight"))
        inside = lambda key: key.startswith(containers)  # noqa: E731
    else:
        inside = lambda key: ".self_attn." in key or ".mlp." in key or ".attn." in key  # noqa: E731
    found = []
    for key, shape in shapes.items():
        if key.endswith(".attn.in_proj_weight") and len(shape) == 2 and part != "unet":
            found += [Target(part, shape[1], shape[0] // 3)] * 3
            continue
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
    """A single file in the original SD or SDXL layout: the models under their key prefixes."""
    shapes = _header_shapes(path)
    te_keys = _SDXL_TE_KEYS if any(k.startswith(_SDXL_TE_KEYS) for k in shapes) else _TE_KEYS
    arch = SDXL if te_keys == _SDXL_TE_KEYS else SD15
    parts = {prefix: {k: v for k, v in shapes.items() if k.startswith(prefix)}
             for prefix in (_UNET_KEYS, _VAE_KEYS, te_keys)}
    missing = [name for prefix, name in ((_UNET_KEYS, "UNet"), (_VAE_KEYS, "VAE"), (te_keys, "text encoder"))
               if not parts[prefix]]
    if missing:
        return default_sizes(f"the model file has no {' or '.join(missing)} in the SD layout "
                             f"({_UNET_KEYS}*, {_VAE_KEYS}*, {te_keys}*)", arch)
    targets = targets_from_shapes(parts[_UNET_KEYS], "unet") + targets_from_shapes(parts[te_keys], "te")
    return ModelSizes(_count(parts[_UNET_KEYS]), _count(parts[_VAE_KEYS]), _count(parts[te_keys]),
                      tuple(targets), "sizes from the model file", arch)


def _component_files(folder: Path) -> list[Path]:
    """A diffusers component's weight files: the plain ones (maybe sharded), else one variant's (x.fp16.safetensors)."""
    files = sorted(folder.glob("*.safetensors"))
    plain = [f for f in files if "." not in f.name.removesuffix(".safetensors")]
    if plain or not files:
        return plain
    variant = files[0].suffixes[-2]
    return [f for f in files if f.suffixes[-2:-1] == [variant]]


def _sizes_from_folder(folder: Path) -> ModelSizes:
    """A diffusers folder: unet/, vae/ and text_encoder/ (and SDXL's text_encoder_2/) with .safetensors weights."""
    arch = SDXL if (folder / "text_encoder_2").is_dir() else SD15
    counts, targets = {}, []
    for sub, part in _DIFFUSERS_PARTS:
        if sub == "text_encoder_2" and arch is not SDXL:
            continue
        files = _component_files(folder / sub)
        if not files:
            return default_sizes(f"the model folder has no {sub}/*.safetensors", arch)
        shapes = {key: shape for file in files for key, shape in _header_shapes(file).items()}
        counts[sub] = _count(shapes)
        if part != "vae":
            targets += targets_from_shapes(shapes, part)
    text = counts["text_encoder"] + counts.get("text_encoder_2", 0)
    return ModelSizes(counts["unet"], counts["vae"], text, tuple(targets), "sizes from the model folder", arch)


def model_sizes(source: str, fallback: Architecture = SD15) -> ModelSizes:
    """The sizes of the model at `source` (pretrained_model_name_or_path), from its .safetensors headers:
    a single file in the SD or SDXL layout or a diffusers folder. When it cannot be read so cheaply, the
    `fallback` architecture's (the estimate passes SDXL when the sdxl setting is on)."""
    from ..params.spec import strip_quotes

    arch = fallback
    text = strip_quotes(str(source or ""))
    if not text:
        return default_sizes(None, arch)
    path = Path(text).expanduser()
    try:
        if path.is_dir():
            return _sizes_from_folder(path)
        if path.is_file():
            if path.suffix.lower() != ".safetensors":
                return default_sizes("only a .safetensors file's sizes are read without loading it", arch)
            return _sizes_from_single_file(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:  # a broken header of any shape
        return default_sizes(str(error), arch)
    return default_sizes("not a file or folder on this computer; a Hugging Face Hub id is not looked up", arch)

