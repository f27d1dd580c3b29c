"""LoRA on Kohya's SD 1.5 and SDXL targets, with peft.

peft's LoRA layers are exactly Kohya's: `lora_A` is Kohya's `lora_down` (kaiming-uniform init),
`lora_B` is `lora_up` (zeros, so training starts from the base model), the effect is
W x + B(A(x)) * alpha / rank, and 1x1 convolutions stay 1x1 convolutions. Only the names and the
file differ; `kohya_file.py` translates those.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from ..errors import CharLoRAError
from ..params.block_lr import block_lr_weights
from .targets import block_index, is_sdxl_unet, kohya_names

ADAPTER = "default"


@dataclass(frozen=True)
class LoRASettings:
    rank: int
    alpha: float  # Kohya's network_alpha with "0 means alpha = rank" already applied
    dropout: float = 0.0
    train_unet: bool = True
    train_text_encoder: bool = True
    # the learning rates from the config (from_config); None for a network only built to read or write files
    unet_lr: float | None = None
    text_encoder_lr: float | None = None
    # sd-scripts' block-wise UNet lr weights (params.block_lr), indexed by targets.block_index; None: off
    block_lr_weights: tuple | None = None

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_config(cls, values: dict, rank: int | None = None) -> "LoRASettings":
        """From normalised config values. Learning rates as Kohya's GUI: a text-encoder lr of 0 (with
        a UNet lr set) trains the UNet only, a UNet lr of 0 the text encoder only; where both are 0,
        `learning_rate` is used for both."""
        rank = rank or values["network_dim"]
        alpha = values["network_alpha"] or float(rank)
        base = values["learning_rate"]
        unet_lr, te_lr = values["unet_lr"], values["text_encoder_lr"]
        if unet_lr == 0 and te_lr == 0:
            unet_lr = te_lr = base
        if unet_lr == 0 and te_lr == 0:
            raise CharLoRAError("learning_rate, unet_lr and text_encoder_lr are all 0: nothing would train")
        return cls(rank=rank, alpha=float(alpha), dropout=values["network_dropout"], train_unet=unet_lr > 0,
                   train_text_encoder=te_lr > 0, unet_lr=unet_lr, text_encoder_lr=te_lr,
                   block_lr_weights=block_lr_weights(values))


class LoRANetwork:
    """The LoRA layers injected into a UNet and/or text encoder, addressed by Kohya name."""

    def __init__(self, unet: nn.Module | None, text_encoder: nn.Module | None, settings: LoRASettings,
                 text_encoder_2: nn.Module | None = None):
        """`text_encoder_2`: SDXL's second text encoder (its two encoders are then parts "te1" and "te2")."""
        self.unet = unet
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.settings = settings
        self.layers: dict[str, tuple[str, LoraLayer]] = {}  # kohya name -> (part, peft layer)
        names = kohya_names(unet, text_encoder, text_encoder_2)
        self.sdxl = text_encoder_2 is not None or (unet is not None and is_sdxl_unet(unet))
        if settings.block_lr_weights is not None:  # a block of weight 0 gets no modules (sd-scripts: dim 0)
            names = {name: where for name, where in names.items()
                     if where[0] != "unet" or self.block_weight(name) > 0}
        models = {"unet": unet, "te": text_encoder, "te1": text_encoder, "te2": text_encoder_2}
        for part in dict.fromkeys(part for part, _ in names.values()):
            model = models[part]
            paths = [path for name, (p, path) in names.items() if p == part]
            config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                                target_modules=paths, init_lora_weights=True)
            inject_adapter_in_model(config, model, adapter_name=ADAPTER)
            modules = dict(model.named_modules())
            for name, (p, path) in names.items():
                if p != part:
                    continue
                layer = modules[path]
                if not isinstance(layer, LoraLayer):
                    raise RuntimeError(f"peft did not wrap {path}")
                self.layers[name] = (part, layer)
        self.to_dtype(torch.float32)

    @classmethod
    def attach(cls, unet, text_encoder, settings: LoRASettings, text_encoder_2=None) -> "LoRANetwork":
        """Attach to the parts that are trained (Kohya creates no text-encoder modules for UNet-only runs)."""
        train_te = settings.train_text_encoder
        return cls(unet if settings.train_unet else None, text_encoder if train_te else None, settings,
                   text_encoder_2 if train_te else None)

    def to_dtype(self, dtype: torch.dtype) -> None:
        """LoRA weights train in fp32 even when the base model runs in fp16 (unless full_fp16/bf16)."""
        for _, layer in self.layers.values():
            for module in (layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]):
                module.to(dtype=dtype)

    def block_weight(self, name: str) -> float:
        """The block-wise lr weight of a UNet module (1.0 without block weights or outside any block)."""
        weights = self.settings.block_lr_weights
        index = block_index(name, self.sdxl)
        return 1.0 if weights is None or index < 0 else weights[index]

    def unet_blocks(self) -> dict[int, list[nn.Parameter]]:
        """The UNet's LoRA parameters by block index (sd-scripts groups them so for block-wise lrs)."""
        blocks: dict[int, list[nn.Parameter]] = {}
        for name, (part, layer) in self.layers.items():
            if part == "unet":
                blocks.setdefault(block_index(name, self.sdxl), []).extend(
                    [layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight])
        return blocks

    def parameters(self, part: str | None = None) -> list[nn.Parameter]:
        """All LoRA parameters, or those of one part: "unet", or "te" for every text encoder's."""
        params = []
        for layer_part, layer in self.layers.values():
            if part is None or layer_part == part or (part == "te" and layer_part.startswith("te")):
                params += [layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight]
        return params

    def parts(self) -> list[str]:
        return sorted({part for part, _ in self.layers.values()})

    def set_multiplier(self, multiplier: float) -> None:
        """Scale the LoRA's effect, like A1111's <lora:name:multiplier> (1 = as trained)."""
        for _, layer in self.layers.values():
            layer.set_scale(ADAPTER, multiplier)

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        """sd-scripts' `apply_max_norm_regularization` (scale_weight_norms): each module's weight change
        up @ down * alpha/rank is scaled back to a Frobenius norm of at most `max_norm`, half of it taken from
        each of up and down. Returns (modules scaled, mean norm, largest norm) after scaling, as sd-scripts logs."""
        scaled, norms = 0, []
        for _, layer in self.layers.values():
            down, up = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            change = (up.flatten(1).float() @ down.flatten(1).float()) * (layer.lora_alpha[ADAPTER] / down.shape[0])
            norm = change.norm().clamp(min=max_norm / 2)  # sd-scripts' clamp: only a norm above max_norm moves
            ratio = float(norm.clamp(max=max_norm) / norm)
            if ratio != 1:
                scaled += 1
                up.mul_(ratio**0.5)
                down.mul_(ratio**0.5)
            norms.append(float(change.norm()) * ratio)
        return scaled, sum(norms) / len(norms), max(norms)

    def kohya_tensors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
        """Kohya name -> (down weight, up weight, alpha), detached, on the CPU, in their own dtype."""
        out = {}
        for name, (_, layer) in self.layers.items():
            down = layer.lora_A[ADAPTER].weight.detach().cpu()
            up = layer.lora_B[ADAPTER].weight.detach().cpu()
            out[name] = (down, up, float(layer.lora_alpha[ADAPTER]))
        return out

    def load_kohya_tensors(self, weights: dict[str, tuple[torch.Tensor, torch.Tensor, float]], source: str) -> None:
        """Copy weights in (warm start, resume). Every module must be present with matching shapes."""
        missing = sorted(set(self.layers) - set(weights))
        extra = sorted(set(weights) - set(self.layers))
        problems = []
        if missing:
            problems.append(f"{len(missing)} modules of this network are not in the file (e.g. {missing[0]})")
        if extra:
            problems.append(f"{len(extra)} modules of the file are not in this network (e.g. {extra[0]})")
        for name in sorted(set(self.layers) & set(weights)):
            _, layer = self.layers[name]
            down, up, _ = weights[name]
            if down.shape != layer.lora_A[ADAPTER].weight.shape or up.shape != layer.lora_B[ADAPTER].weight.shape:
                problems.append(f"{name}: rank or shape differs (file {tuple(down.shape)}, network "
                                f"{tuple(layer.lora_A[ADAPTER].weight.shape)}); set network_dim to the file's "
                                "rank or turn on dim_from_weights")
                break
        if problems:
            raise CharLoRAError(f"{source} does not fit this network: " + "; ".join(problems))
        with torch.no_grad():
            for name, (_, layer) in self.layers.items():
                down, up, alpha = weights[name]
                layer.lora_A[ADAPTER].weight.copy_(down)
                layer.lora_B[ADAPTER].weight.copy_(up)
                layer.lora_alpha[ADAPTER] = alpha
                layer.scaling[ADAPTER] = alpha / layer.r[ADAPTER]
