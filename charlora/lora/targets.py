"""Which modules carry LoRA, and their names in Kohya's file format.

Kohya's SD 1.5 targets: every Linear and 1x1 Conv2d inside each transformer block module of the
UNet (proj_in, proj_out, attn1/attn2 to_q/to_k/to_v/to_out.0, ff.net.0.proj, ff.net.2: 16 blocks
x 12 = 192 modules), and in the text encoder q/k/v/out_proj, fc1 and fc2 of every layer (72).
A module's Kohya name is a prefix plus its path with "." replaced by "_":
`lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`,
`lora_te_text_model_encoder_layers_0_self_attn_q_proj`.
"""

from __future__ import annotations

from torch import nn

UNET_PREFIX = "lora_unet_"
TE_PREFIX = "lora_te_"
_UNET_CONTAINER = "Transformer2DModel"  # diffusers' name for SD's SpatialTransformer
_TE_CONTAINERS = ("CLIPAttention", "CLIPMLP", "CLIPSdpaAttention", "CLIPFlashAttention2")


def _is_target_layer(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)


def _targets_inside(model: nn.Module, container_names: tuple[str, ...]) -> list[str]:
    names = []
    for path, container in model.named_modules():
        if type(container).__name__ not in container_names:
            continue
        for sub_path, module in container.named_modules():
            if sub_path and _is_target_layer(module):
                names.append(f"{path}.{sub_path}")
    return sorted(set(names), key=names.index)


def unet_targets(unet: nn.Module) -> list[str]:
    """Module paths of the UNet's LoRA targets, in model order."""
    return _targets_inside(unet, (_UNET_CONTAINER,))


def text_encoder_targets(text_encoder: nn.Module) -> list[str]:
    return _targets_inside(text_encoder, _TE_CONTAINERS)


def te_kohya_path(path: str) -> str:
    """transformers >= 5.6 builds CLIPTextModel without the `text_model.` level; Kohya's names keep it."""
    return path if path.startswith("text_model.") else "text_model." + path


def kohya_name(path: str, part: str) -> str:
    """`part` is "unet" or "te"."""
    if part == "unet":
        return UNET_PREFIX + path.replace(".", "_")
    return TE_PREFIX + te_kohya_path(path).replace(".", "_")


def kohya_names(unet: nn.Module | None, text_encoder: nn.Module | None) -> dict[str, tuple[str, str]]:
    """Kohya name -> (part, module path) for every target of the given models."""
    names: dict[str, tuple[str, str]] = {}
    if unet is not None:
        names.update({kohya_name(p, "unet"): ("unet", p) for p in unet_targets(unet)})
    if text_encoder is not None:
        names.update({kohya_name(p, "te"): ("te", p) for p in text_encoder_targets(text_encoder)})
    return names
