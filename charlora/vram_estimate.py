"""How much GPU memory a LoRA training run needs, estimated from the normalised config and the model.

The estimate follows what CharLoRA's trainer does on CUDA (train/setup.py, train/trainer.py), part
by part, so each part can be checked on its own:

- weights: the frozen UNet and text encoder stored in the mixed-precision dtype (fp32 with "no");
  their parameter counts are read from the model's .safetensors headers (a single file or a
  diffusers folder), or are SD 1.5's when the model cannot be read that way (a Hub id, a .ckpt);
  the VAE (always fp32) only while it stays on the GPU (latents not cached, or samples configured);
  the text encoder leaves the GPU when it is not trained and its outputs are cached.
- LoRA weights and their gradients (fp32 unless full_fp16/full_bf16) and the optimizer's state,
  counted exactly per tensor from the target modules' shapes (192 UNet + 72 text-encoder modules in
  SD 1.5), read from the same headers.
- activations: what autograd keeps for the backward pass, modelled per UNet level and unit
  (resnet, transformer, resampler) with per-element coefficients, plus the text encoder when it is
  trained, the peak working memory of the backward pass and the output/loss buffers.
- the CUDA context and the caching allocator's slack.

Calibration. The activation coefficients below were counted, not guessed: saved-tensor hooks on the
real SD 1.5 UNet with peft LoRA (on the CPU, fp16 autocast, 256 and 512 px, ranks 4 and 128, SDPA
and plain attention, with and without checkpointing), each saved tensor attributed to its module
and op, then corrected for CUDA autocast (GroupNorm/LayerNorm/softmax run in fp32 there, so they
keep fp32 copies). The model reproduces those counts within 2% (8% with checkpointing; the counts
are kept in tests/test_vram_estimate.py). It has not yet been checked against
`torch.cuda.max_memory_allocated` on a GPU; the constants that would move are grouped below.
Not modelled: the per-caption text-encoder output cache (~118 KB per caption on the GPU when the
text encoder is not trained), sample generation (runs between steps, after activations are freed),
the optimizer step's temporaries (after the backward pass, far below its peak), torch.compile
(dynamo_backend: its partitioner may recompute cheap ops and keep less), `dim_from_weights`
(the rank is taken from network_dim), and a model of another architecture than SD 1.5 (the tiny
test model): its weights and LoRA are counted from its file, its activations as SD 1.5's.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

GIB = 1024**3
MIB = 1024**2

# ---------------------------------------------------------------- SD 1.5 (charlora/models/sd15 configs)
# Exact parameter counts; tests/test_vram_estimate.py checks them against models built on the meta device.
SD15_UNET_PARAMS = 859_520_964
SD15_VAE_PARAMS = 83_653_863
SD15_TEXT_ENCODER_PARAMS = 123_060_480
UNET_CHANNELS = (320, 640, 1280, 1280)  # per level; level l works at 1/2**l of the latent's sides
UNET_LAYERS_PER_BLOCK = 2  # resnets per down level (up levels have one more)
UNET_ATTENTION_LEVELS = 3  # levels 0-2 (and the mid block) have a transformer after each resnet
UNET_HEADS = 8
UNET_FF_INNER = 4  # feed-forward width in channels; GEGLU's projection is twice that
CROSS_ATTENTION_DIM = 768
TE_HIDDEN, TE_INTERMEDIATE, TE_LAYERS = 768, 3072, 12
TOKENS_PER_CHUNK = 77  # one 75-token chunk plus start/end tokens

# ---------------------------------------------------------------- activation coefficients
# "Saves" count tensors kept for backward, per element of the unit's activation (channels x tokens).
# A norm save is fp32 even under autocast (CUDA autocast runs GroupNorm/LayerNorm in fp32, and the
# SiLU after a GroupNorm sees its fp32 output); a compute save is in the compute dtype (fp16/bf16
# under mixed precision, else fp32).
RESNET_NORM_SAVES = 2  # per element of the input and of the output: GroupNorm input, SiLU input
RESNET_COMPUTE_SAVES = 1  # per element of the input and of the output: the 3x3 conv's input
RESNET_SHORTCUT_SAVES = 1  # mixed precision, channels change: the 1x1 shortcut keeps the fp16 input too
TRANSFORMER_NORM_SAVES = 4  # GroupNorm and 3 LayerNorm inputs
# proj_in/proj_out inputs 2, LayerNorm outputs 3, attention q, k, v, out 4 + q, out 2, to_out inputs 2,
# GEGLU projection 8 + GELU output 4 + ff out input 4:
TRANSFORMER_COMPUTE_SAVES = 29
TRANSFORMER_CAST_COPIES = 4  # mixed precision: peft casts each LoRA layer's input, autocast casts it back
PLAIN_ATTENTION_FEWER_SAVES = 2  # plain attention keeps the probabilities instead of the two outputs
TRANSFORMER_LORA_SAVES = 10  # lora_A outputs (rank values per token) of the 10 targets on image tokens
# Per context token (77 per caption chunk): keys and values (2 x channels), the k/v LoRA outputs
# (2 x rank), and under mixed precision peft's copies of the caption states for to_k/to_v (2 x 768).
CONTEXT_SAVES_PER_CHANNEL = 2
# With gradient checkpointing (diffusers checkpoints each resnet and each BasicTransformerBlock):
# a resnet keeps its input; a transformer keeps GroupNorm's input, proj_in's and proj_out's inputs
# (and peft's copies of them under mixed precision) and the checkpointed block's input.
CKPT_TRANSFORMER_COMPUTE_SAVES = 3
CKPT_TRANSFORMER_CAST_COPIES = 2
# Backward working memory on top of what is kept: gradients of the largest unit's activations
# (a guess, not measured: calibrate on a GPU).
BACKWARD_TRANSIENT_SAVES = 16  # compute-dtype elements per level-0 activation element
# Text encoder (trained): per token and layer, in units of the hidden size: 2 LayerNorm inputs
# (fp32), and q/k/v copies 3, attention q, k, v, out 4, out_proj and fc1 input copies 2 (compute);
# plus 3 x intermediate for quick-GELU and fc2's input, and 6 x rank for the LoRA outputs.
TE_NORM_SAVES = 2
TE_COMPUTE_SAVES = 9
TE_INTERMEDIATE_SAVES = 3
TE_LORA_SAVES = 6
# Encoding images with the VAE every step (latents not cached) is a no-grad pass in fp32 before the
# UNet runs; its peak is ~4 live 128-channel fp32 maps at full resolution (a guess: calibrate).
VAE_ENCODE_BYTES_PER_PIXEL = 4 * 128 * 4

# ---------------------------------------------------------------- beyond the tensors (typical values: calibrate)
CUDA_CONTEXT_BYTES = 500 * MIB  # CUDA 12 context + PyTorch kernels + cuBLAS/cuDNN workspaces (typ. 400-600 MB)
ALLOCATOR_OVERHEAD_FRACTION = 0.10  # caching-allocator fragmentation: reserved beyond allocated, of the rest

# ---------------------------------------------------------------- optimizers (by Kohya name)
BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes keeps 32-bit state for tensors with fewer elements
BNB_BLOCK_SIZE = 256  # bitsandbytes 0.50 blockwise 8-bit state: one fp32 absmax per 256 values
BNB_QMAP_BYTES = 256 * 4  # one fp32 quantisation map per state, shared by all tensors

PARTS = ("weights", "lora_parameters", "lora_gradients", "optimizer_state", "activations", "cuda_context",
         "allocator_overhead")
_LABELS = {"weights": "model weights", "lora_parameters": "LoRA weights", "lora_gradients": "LoRA gradients",
           "optimizer_state": "optimizer state", "activations": "activations", "cuda_context": "CUDA context",
           "allocator_overhead": "allocator slack"}


@dataclass(frozen=True)
class Target:
    """One LoRA target module: its input and output features; 1x1 convolutions get 4-D LoRA weights."""

    part: str  # "unet" or "te"
    in_features: int
    out_features: int
    conv: bool = False


@dataclass(frozen=True)
class VramEstimate:
    """Peak GPU memory of one training process, in bytes, by part; `total` is their sum."""

    weights: int
    lora_parameters: int
    lora_gradients: int
    optimizer_state: int
    activations: int
    cuda_context: int
    allocator_overhead: int
    lora_parameter_count: int = 0
    details: dict = field(default_factory=dict, compare=False)  # part -> what it assumed
    gpu_total_bytes: int | None = None
    values: dict = field(default_factory=dict, repr=False, compare=False)
    model_source: str = ""  # ModelSizes.source: "sizes from the model file", or "SD 1.5's sizes: ..." and why

    @property
    def total(self) -> int:
        return sum(self.parts().values())

    def parts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in PARTS}

    def suggestions(self) -> list[tuple[str, int]]:
        """(change, bytes saved) for each single setting change that lowers the estimate, best first."""
        found = []
        for label, change in _candidate_changes(self.values):
            saved = self.total - estimate_vram({**self.values, **change}).total
            if saved >= MIB:
                found.append((label, saved))
        return sorted(found, key=lambda item: -item[1])

    def summary(self, gpu_total_bytes: int | None = None, has_gpu: bool | None = None) -> str:
        """What the total means here, in one plain sentence: the verdict against this GPU's memory when it
        is known; otherwise what it means on an NVIDIA GPU and where training runs on this computer.
        `has_gpu`: whether PyTorch sees a CUDA GPU (None: ask PyTorch)."""
        if gpu_total_bytes or self.gpu_total_bytes:
            return self.verdict(gpu_total_bytes)
        return f"needs about {self.total / GIB:.1f} GiB of GPU memory on an NVIDIA GPU; " + _without_reading(has_gpu)

    def verdict(self, gpu_total_bytes: int | None = None) -> str:
        gpu = gpu_total_bytes or self.gpu_total_bytes
        if not gpu:
            raise ValueError("verdict needs the GPU's total memory in bytes")
        if self.total <= gpu:
            return f"fits: {self.total / GIB:.1f} of {gpu / GIB:.1f} GiB ({100 * self.total / gpu:.0f}%)"
        text = f"does not fit: needs {self.total / GIB:.1f} GiB of {gpu / GIB:.1f} GiB"
        tips = self.suggestions()
        if not tips:
            return text + " — no single setting here lowers it; use a GPU with more memory"
        text += " — try: " + ", ".join(f"{label} (saves ~{_size(saved)})" for label, saved in tips)
        if len(tips) > 1:
            helpful = {label for label, _ in tips}
            combined = {key: value for label, change in _candidate_changes(self.values) if label in helpful
                        for key, value in change.items()}
            text += f"; all together: {estimate_vram({**self.values, **combined}).total / GIB:.1f} GiB"
        return text


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

    from .lora.targets import text_encoder_targets, unet_targets

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
    from .params.spec import strip_quotes

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


# ---------------------------------------------------------------- optimizer state


def optimizer_state_bytes(optimizer_name: str, param_shapes: Iterable[Sequence[int]], param_bytes: int = 4,
                          zero_init: Sequence[bool] | None = None, optimizer_args: str | None = None) -> int:
    """Bytes of the optimizer's state for parameters of these shapes, as the real optimizers allocate it.

    `param_bytes` is the parameters' element size (the state of AdamW, Lion, SGD and Prodigy follows
    it; bitsandbytes and Adafactor keep fp32). `zero_init` marks tensors that start at zero (LoRA's up
    weights), for which Prodigy keeps a scalar instead of a copy of the starting point.
    """
    shapes = [tuple(int(d) for d in s) for s in param_shapes]
    zeros = list(zero_init) if zero_init is not None else [False] * len(shapes)
    args = _simple_args(optimizer_args or "")
    name = str(optimizer_name).lower()
    total = 0
    uses_8bit = False
    for shape, zero in zip(shapes, zeros):
        n = math.prod(shape)
        if name == "adamw":  # exp_avg, exp_avg_sq and a 0-d fp32 step tensor
            total += 2 * n * param_bytes + 4
        elif name in ("adamw8bit", "lion8bit"):
            states = 2 if name == "adamw8bit" else 1
            if n >= BNB_MIN_8BIT_SIZE:
                uses_8bit = True
                total += states * (n + math.ceil(n / BNB_BLOCK_SIZE) * 4)
            else:
                total += states * n * 4
        elif name in ("lion", "sgdnesterov"):  # exp_avg / momentum_buffer
            total += n * param_bytes
        elif name == "adafactor":  # fp32 second moments, factored for >= 2-D tensors, and a 0-d RMS
            if len(shape) >= 2:
                second = math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]
            else:
                second = n
            first = n if args.get("beta1") not in (None, "None", "none") else 0
            total += (second + first) * 4 + 4
        elif name == "prodigy":  # exp_avg (if beta1 > 0), exp_avg_sq, s and p0 (on every slice_p-th value)
            sliced = math.ceil(n / int(args.get("slice_p", 1)))
            first = 0 if _first_beta(args.get("betas")) == 0 else n
            p0 = 1 if zero else sliced
            total += (first + n + sliced + p0) * param_bytes
        else:
            raise ValueError(f"no state model for optimizer {optimizer_name!r}")
    if uses_8bit:
        total += (2 if name == "adamw8bit" else 1) * BNB_QMAP_BYTES
    return total


def _simple_args(text: str) -> dict[str, str]:
    """Kohya's "key=value key=value" optimizer_args, values kept as text (only a few keys matter here)."""
    pairs = (token.split("=", 1) for token in str(text or "").replace('"', "").split() if "=" in token)
    return {key.strip(): value.strip() for key, value in pairs}


def _first_beta(text: str | None) -> float | None:
    try:
        return float(str(text).strip("()[] ").split(",")[0]) if text else None
    except ValueError:
        return None


# ---------------------------------------------------------------- activations


def _unet_units(h: int, w: int) -> list[tuple[str, int, int, int]]:
    """The UNet's units in forward order: (kind, input channels, output channels, tokens), h x w latent."""
    tokens = [math.ceil(h / 2**level) * math.ceil(w / 2**level) for level in range(len(UNET_CHANNELS))]
    units = []
    ch = UNET_CHANNELS[0]
    skips = [ch]  # conv_in's output
    for level, c in enumerate(UNET_CHANNELS):
        for _ in range(UNET_LAYERS_PER_BLOCK):
            units.append(("resnet", ch, c, tokens[level]))
            if level < UNET_ATTENTION_LEVELS:
                units.append(("transformer", c, c, tokens[level]))
            ch = c
            skips.append(c)
        if level < len(UNET_CHANNELS) - 1:
            units.append(("resample", c, c, tokens[level]))  # stride-2 conv keeps its input
            skips.append(c)
    units += [("resnet", ch, ch, tokens[-1]), ("transformer", ch, ch, tokens[-1]), ("resnet", ch, ch, tokens[-1])]
    for level in reversed(range(len(UNET_CHANNELS))):
        c = UNET_CHANNELS[level]
        for _ in range(UNET_LAYERS_PER_BLOCK + 1):
            units.append(("resnet", ch + skips.pop(), c, tokens[level]))  # input: concatenated with the skip
            if level < UNET_ATTENTION_LEVELS:
                units.append(("transformer", c, c, tokens[level]))
            ch = c
        if level > 0:
            units.append(("resample", c, c, tokens[level - 1]))  # upsampled, then a conv keeps its input
    units.append(("out", ch, ch, tokens[0]))  # norm_out, SiLU, conv_out
    return units


def unet_activation_bytes(h: int, w: int, batch: int, rank: int, compute_bytes: int, plain_attention: bool,
                          checkpointing: bool, context_tokens: int = TOKENS_PER_CHUNK,
                          include_transient: bool = True) -> int:
    """Bytes of UNet activations at the training step's peak, for an h x w latent (see the coefficients):
    what the forward keeps for backward, plus (include_transient) the backward pass's working memory."""
    cb, nb = compute_bytes, 4
    mixed = cb < 4
    # Plain attention keeps every attention matrix: softmax's output (fp32 under autocast) and its
    # compute-dtype copy for the product with the values. SDPA/xformers keep none.
    attn_bytes = nb + cb if mixed else nb

    def unit_bytes(kind, cin, cout, n, kept_only):
        if kind == "resnet":
            if kept_only:
                return cb * cin * n
            shortcut = RESNET_SHORTCUT_SAVES * cb * cin if mixed and cin != cout else 0
            return (RESNET_NORM_SAVES * nb + RESNET_COMPUTE_SAVES * cb) * (cin + cout) * n + shortcut * n
        if kind == "transformer":
            if kept_only:
                saves = CKPT_TRANSFORMER_COMPUTE_SAVES + (CKPT_TRANSFORMER_CAST_COPIES if mixed else 0)
                return (nb + cb * saves) * cout * n + 2 * cb * rank * n  # + proj_in/proj_out LoRA outputs
            saves = TRANSFORMER_COMPUTE_SAVES + (TRANSFORMER_CAST_COPIES if mixed else 0)
            saves -= PLAIN_ATTENTION_FEWER_SAVES if plain_attention else 0
            kept = (TRANSFORMER_NORM_SAVES * nb + saves * cb) * cout * n + TRANSFORMER_LORA_SAVES * cb * rank * n
            per_context = CONTEXT_SAVES_PER_CHANNEL * (cout + rank + (CROSS_ATTENTION_DIM if mixed else 0))
            kept += cb * per_context * context_tokens
            if plain_attention:
                kept += attn_bytes * UNET_HEADS * n * (n + context_tokens)
            return kept
        if kind == "resample":
            return cb * cin * n
        return (RESNET_NORM_SAVES * nb + RESNET_COMPUTE_SAVES * cb) * cin * n  # "out"

    units = _unet_units(h, w)
    if not checkpointing:
        units = units[1:]  # the first resnet runs before any LoRA layer: nothing in it needs a gradient
    kept = sum(unit_bytes(*unit, kept_only=checkpointing) for unit in units)
    if not include_transient:
        return batch * kept
    transient = BACKWARD_TRANSIENT_SAVES * cb * UNET_CHANNELS[0] * h * w
    if checkpointing:  # backward recomputes one checkpointed unit at a time: the largest one's activations
        transient += max(unit_bytes(*unit, False) - unit_bytes(*unit, True) for unit in units)
    if plain_attention:  # softmax's backward: gradients of the largest attention matrix
        transient += attn_bytes * UNET_HEADS * (h * w) ** 2
    return batch * (kept + transient)


def text_encoder_activation_bytes(batch: int, rank: int, compute_bytes: int, checkpointing: bool,
                                  tokens: int = TOKENS_PER_CHUNK) -> int:
    """Bytes the trained text encoder keeps for backward (see the TE_* coefficients)."""
    cb = compute_bytes
    per_layer = (TE_NORM_SAVES * 4 + TE_COMPUTE_SAVES * cb) * TE_HIDDEN + TE_INTERMEDIATE_SAVES * cb * TE_INTERMEDIATE
    per_layer += TE_LORA_SAVES * cb * rank
    if checkpointing:  # each layer keeps its input; backward recomputes one layer at a time
        return batch * tokens * (TE_LAYERS * cb * TE_HIDDEN + per_layer)
    return batch * tokens * TE_LAYERS * per_layer


# ---------------------------------------------------------------- the estimate


def estimate_vram(values: dict, gpu_total_bytes: int | None = None) -> VramEstimate:
    """Estimate peak GPU memory of one training process from normalised config values and the model they name
    (its sizes read from its file headers, SD 1.5's when it cannot be read: see `model_sizes`)."""
    mixed = values["mixed_precision"] in ("fp16", "bf16")
    weight_bytes = 2 if mixed else 4  # frozen weights are stored in the compute dtype on CUDA
    lora_bytes = 2 if (values["full_fp16"] or values["full_bf16"]) and mixed else 4
    rank = int(values["network_dim"])
    batch = int(values["train_batch_size"])
    train_unet, train_te = trained_parts(values)
    sampling = bool(values["sample_every_n_epochs"] or values["sample_every_n_steps"])
    cached = bool(values["cache_latents"] or values["cache_latents_to_disk"])
    vae_on_gpu = not cached or sampling
    captions_change = bool(values["shuffle_caption"] or values["caption_dropout_rate"]
                           or values["caption_dropout_every_n_epochs"])
    te_on_gpu = train_te or captions_change or sampling
    width, height = (int(side) for side in str(values["max_resolution"]).split(","))
    h, w = math.ceil(height / 8), math.ceil(width / 8)
    context_tokens = int(values["max_token_length"]) + 2  # the UNet sees the chunks joined (train/text.py)
    te_tokens = TOKENS_PER_CHUNK * math.ceil(int(values["max_token_length"]) / 75)  # the encoder runs each chunk
    plain = values["xformers"] == "none"
    checkpointing = bool(values["gradient_checkpointing"])

    sizes = model_sizes(values["pretrained_model_name_or_path"])
    weights = sizes.unet * weight_bytes
    weights += sizes.text_encoder * weight_bytes if te_on_gpu else 0
    weights += sizes.vae * 4 if vae_on_gpu else 0

    shapes = lora_tensor_shapes(values, targets=sizes.targets)
    count = sum(math.prod(s) for _, s in shapes)
    starts_at_zero = [i % 2 == 1 and not values["lora_network_weights"] for i in range(len(shapes))]  # lora_B
    optimizer = optimizer_state_bytes(values["optimizer"], [s for _, s in shapes], lora_bytes, starts_at_zero,
                                      values["optimizer_args"])

    activations = 0
    if train_unet or train_te:  # a trained text encoder's gradients flow back through the whole UNet
        activations += unet_activation_bytes(h, w, batch, rank if train_unet else 0, weight_bytes, plain,
                                             checkpointing, context_tokens)
    if train_te:
        activations += text_encoder_activation_bytes(batch, rank, weight_bytes, checkpointing, te_tokens)
    if mixed and lora_bytes == 4:  # autocast's fp16/bf16 copies of the fp32 LoRA weights, kept for backward
        activations += count * weight_bytes
    activations += batch * 4 * h * w * (weight_bytes + 5 * 4)  # prediction, fp32 copies, noise, target, loss
    if not cached:  # the VAE encodes each batch first; its peak comes before the UNet's
        activations = max(activations, batch * width * height * VAE_ENCODE_BYTES_PER_PIXEL)

    base = weights + 2 * count * lora_bytes + optimizer + activations
    precision = {2: values["mixed_precision"], 4: "fp32"}
    details = {
        "weights": "UNet" + (" + text encoder" if te_on_gpu else "") + f" in {precision[weight_bytes]}"
                   + ("; VAE (fp32) on the GPU" if vae_on_gpu else "; VAE on the CPU") + f"; {sizes.source}",
        "lora_parameters": (f"{count / 1e6:.1f} M" if count >= 100_000 else f"{count:,}")
                           + f" parameters, rank {rank}, {'fp32' if lora_bytes == 4 else '16-bit'}, "
                           + " + ".join(p for p, on in (("UNet", train_unet), ("text encoder", train_te)) if on),
        "optimizer_state": str(values["optimizer"]),
        "activations": f"{width}x{height}, batch {batch}, "
                       + ("plain attention" if plain else "memory-efficient attention")
                       + (", gradient checkpointing" if checkpointing else "")
                       + ("" if sizes.unet == SD15_UNET_PARAMS else "; modelled on SD 1.5's UNet, not this model's"),
    }
    return VramEstimate(weights=weights, lora_parameters=count * lora_bytes, lora_gradients=count * lora_bytes,
                        optimizer_state=optimizer, activations=activations, cuda_context=CUDA_CONTEXT_BYTES,
                        allocator_overhead=int(ALLOCATOR_OVERHEAD_FRACTION * base), lora_parameter_count=count,
                        details=details, gpu_total_bytes=gpu_total_bytes, values=dict(values),
                        model_source=sizes.source)


def _candidate_changes(values: dict) -> list[tuple[str, dict[str, Any]]]:
    """Single setting changes that usually lower memory; only those that really do are suggested."""
    changes = []
    if not values["gradient_checkpointing"]:
        changes.append(("gradient_checkpointing on", {"gradient_checkpointing": True}))
    if values["train_batch_size"] > 1:
        changes.append(("train_batch_size 1", {"train_batch_size": 1}))
    if values["network_dim"] > 32:
        changes.append(("network_dim 32", {"network_dim": 32}))
    if values["optimizer"] != "AdamW8bit":
        changes.append(("optimizer AdamW8bit", {"optimizer": "AdamW8bit"}))
    if values["xformers"] == "none":
        changes.append(("xformers sdpa", {"xformers": "sdpa"}))
    if values["mixed_precision"] == "no":
        changes.append(("mixed_precision fp16", {"mixed_precision": "fp16"}))
    if not (values["cache_latents"] or values["cache_latents_to_disk"]) \
            and not (values["color_aug"] or values["random_crop"]):
        changes.append(("cache_latents on", {"cache_latents": True}))
    width, height = (int(side) for side in str(values["max_resolution"]).split(","))
    if width * height > 512 * 512:
        changes.append(("max_resolution 512,512", {"max_resolution": "512,512"}))
    return changes


def _size(n: int) -> str:
    from .monitor import format_bytes  # one formatter for the estimate and the live readings

    return format_bytes(n)


def _without_reading(has_gpu: bool | None) -> str:
    """What the estimate means when this GPU's memory is unknown: no GPU here, or one whose memory could not be read."""
    if has_gpu is None:
        from .monitor import _cuda_available  # one answer to "does PyTorch see a GPU" for the gauge and this

        has_gpu = _cuda_available()
    if has_gpu:
        return "this GPU's memory could not be read: compare the estimate with the memory nvidia-smi shows"
    return "on this computer (no GPU) training runs on the CPU and uses system RAM instead"


def format_estimate(estimate: VramEstimate, has_gpu: bool | None = None) -> str:
    """A compact multi-line breakdown (GUI and CLI). `has_gpu` matters only without the GPU's total: whether
    PyTorch sees a CUDA GPU (None: ask PyTorch)."""
    if estimate.gpu_total_bytes:
        head = f"VRAM estimate: {estimate.total / GIB:.1f} GiB — {estimate.verdict()}"
    else:
        head = (f"VRAM estimate: {estimate.total / GIB:.1f} GiB of GPU memory on an NVIDIA GPU\n"
                f"  {_without_reading(has_gpu)}")
    lines = [head]
    for name, size in estimate.parts().items():
        note = estimate.details.get(name, "")
        lines.append(f"  {_LABELS[name]:<16}{_size(size):>10}" + (f"  ({note})" if note else ""))
    return "\n".join(lines)



def estimate_for_this_machine(values: dict):
    """(estimate, NVML reading): the estimate for these settings beside this machine's GPU total, read by the
    same monitor as the live gauge (without a GPU the estimate itself says what its number means)."""
    from .monitor import default_monitor

    reading = default_monitor().read()
    return estimate_vram(values, reading.total_bytes if reading.available else None), reading


def estimate_text(values: dict) -> str:
    """The estimate for these settings on this machine, as the app and the CLI print it."""
    return format_estimate(estimate_for_this_machine(values)[0])
