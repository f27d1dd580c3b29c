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

import math
from dataclasses import dataclass, field
from typing import Any

from .vram.activations import text_encoder_activation_bytes, unet_activation_bytes
from .vram.coefficients import ALLOCATOR_OVERHEAD_FRACTION, CUDA_CONTEXT_BYTES, VAE_ENCODE_BYTES_PER_PIXEL
from .vram.model_sizes import (GIB, MIB, SD15, SD15_UNET_PARAMS, SDXL, TOKENS_PER_CHUNK,  # noqa: F401 (SD15_UNET_PARAMS: read from here too)
                               lora_tensor_shapes, model_sizes, trained_parts)
from .vram.optimizer_state import optimizer_state_bytes
PARTS = ("weights", "lora_parameters", "lora_gradients", "optimizer_state", "activations", "cuda_context",
         "allocator_overhead")
_LABELS = {"weights": "model weights", "lora_parameters": "LoRA weights", "lora_gradients": "LoRA gradients",
           "optimizer_state": "optimizer state", "activations": "activations", "cuda_context": "CUDA context",
           "allocator_overhead": "allocator slack"}



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



# ---------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class Workload:
    """What of the config decides the memory: read once from the normalised values."""

    mixed: bool  # fp16/bf16 compute
    weight_bytes: int  # frozen weights are stored in the compute dtype on CUDA
    lora_bytes: int  # LoRA weights and gradients: fp32 unless full_fp16/full_bf16
    rank: int
    batch: int
    train_unet: bool
    train_te: bool
    sampling: bool  # sample images during training: the VAE and text encoder stay on the GPU
    cached: bool  # latents cached: the VAE leaves the GPU
    te_on_gpu: bool  # trained, or captions that change, or sampling (else its outputs are cached)
    width: int
    height: int
    context_tokens: int  # what the UNet attends to: the caption chunks joined, plus start/end
    te_tokens: int  # what the text encoder runs: 77 per chunk
    plain_attention: bool
    checkpointing: bool

    @property
    def vae_on_gpu(self) -> bool:
        return not self.cached or self.sampling

    @property
    def latent(self) -> tuple[int, int]:
        return math.ceil(self.height / 8), math.ceil(self.width / 8)

    @classmethod
    def from_values(cls, values: dict) -> "Workload":
        mixed = values["mixed_precision"] in ("fp16", "bf16")
        train_unet, train_te = trained_parts(values)
        sampling = bool(values["sample_every_n_epochs"] or values["sample_every_n_steps"])
        captions_change = bool(values["shuffle_caption"] or values["caption_dropout_rate"]
                               or values["caption_dropout_every_n_epochs"])
        width, height = (int(side) for side in str(values["max_resolution"]).split(","))
        tokens = int(values["max_token_length"])
        return cls(mixed=mixed, weight_bytes=2 if mixed else 4,
                   lora_bytes=2 if (values["full_fp16"] or values["full_bf16"]) and mixed else 4,
                   rank=int(values["network_dim"]), batch=int(values["train_batch_size"]), train_unet=train_unet,
                   train_te=train_te, sampling=sampling,
                   cached=bool(values["cache_latents"] or values["cache_latents_to_disk"]),
                   te_on_gpu=train_te or captions_change or (sampling and not values["sdxl_cache_text_encoder_outputs"]),
                   width=width, height=height,
                   context_tokens=tokens + 2,  # the UNet sees the chunks joined (train/text.py)
                   te_tokens=TOKENS_PER_CHUNK * math.ceil(tokens / (TOKENS_PER_CHUNK - 2)),  # each chunk
                   plain_attention=values["xformers"] == "none", checkpointing=bool(values["gradient_checkpointing"]))


def estimate_vram(values: dict, gpu_total_bytes: int | None = None) -> VramEstimate:
    """Estimate peak GPU memory of one training process from normalised config values and the model they name
    (its sizes read from its file headers, SD 1.5's when it cannot be read: see `model_sizes`)."""
    wl = Workload.from_values(values)
    mixed, weight_bytes, lora_bytes, rank, batch = wl.mixed, wl.weight_bytes, wl.lora_bytes, wl.rank, wl.batch
    train_unet, train_te, cached, plain, checkpointing = (wl.train_unet, wl.train_te, wl.cached,
                                                          wl.plain_attention, wl.checkpointing)
    te_on_gpu, vae_on_gpu, width, height = wl.te_on_gpu, wl.vae_on_gpu, wl.width, wl.height
    h, w = wl.latent

    sizes = model_sizes(values["pretrained_model_name_or_path"], SDXL if values["sdxl"] else SD15)
    arch = sizes.arch
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
                                             checkpointing, wl.context_tokens, arch=arch)
    if train_te:
        activations += text_encoder_activation_bytes(batch, rank, weight_bytes, checkpointing, wl.te_tokens, arch)
    if mixed and lora_bytes == 4:  # autocast's fp16/bf16 copies of the fp32 LoRA weights, kept for backward
        activations += count * weight_bytes
    activations += batch * 4 * h * w * (weight_bytes + 5 * 4)  # prediction, fp32 copies, noise, target, loss
    if not cached:  # the VAE encodes each batch first; its peak comes before the UNet's
        activations = max(activations, batch * width * height * VAE_ENCODE_BYTES_PER_PIXEL)

    base = weights + 2 * count * lora_bytes + optimizer + activations
    precision = {2: values["mixed_precision"], 4: "fp32"}
    details = {
        "weights": "UNet" + ((" + text encoders" if len(arch.text_encoders) > 1 else " + text encoder")
                             if te_on_gpu else "") + f" in {precision[weight_bytes]}"
                   + ("; VAE (fp32) on the GPU" if vae_on_gpu else "; VAE on the CPU") + f"; {sizes.source}",
        "lora_parameters": (f"{count / 1e6:.1f} M" if count >= 100_000 else f"{count:,}")
                           + f" parameters, rank {rank}, {'fp32' if lora_bytes == 4 else '16-bit'}, "
                           + " + ".join(p for p, on in (("UNet", train_unet),
                                                        ("text encoders" if len(arch.text_encoders) > 1
                                                         else "text encoder", train_te)) if on),
        "optimizer_state": str(values["optimizer"]),
        "activations": f"{width}x{height}, batch {batch}, "
                       + ("plain attention" if plain else "memory-efficient attention")
                       + (", gradient checkpointing" if checkpointing else "")
                       + ("" if sizes.unet == arch.unet_params else f"; modelled on {arch.name}'s UNet, not this model's"),
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
    if values["sdxl"]:
        # SDXL is made for 1024 px: the text encoders and the rank are what to let go first (Kohya's SDXL
        # docs fit 8 GB with UNet only, cached text-encoder outputs and dim 4-8)
        if 8 < values["network_dim"] <= 32:
            changes.append(("network_dim 8", {"network_dim": 8}))
        if trained_parts(values)[1]:
            changes.append(("text_encoder_lr 0 with sdxl_cache_text_encoder_outputs on (UNet only)",
                            {"text_encoder_lr": 0.0, "unet_lr": values["unet_lr"] or values["learning_rate"],
                             "sdxl_cache_text_encoder_outputs": True, "shuffle_caption": False,
                             "caption_dropout_rate": 0.0, "caption_dropout_every_n_epochs": 0}))
    elif width * height > 512 * 512:
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

