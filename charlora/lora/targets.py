"""Which modules carry LoRA, and their names in Kohya's file format.

Kohya's SD 1.5 targets: every Linear and 1x1 Conv2d inside each transformer block module of the
UNet (proj_in, proj_out, attn1/attn2 to_q/to_k/to_v/to_out.0, ff.net.0.proj, ff.net.2: 16 blocks
x 12 = 192 modules), and in the text encoder q/k/v/out_proj, fc1 and fc2 of every layer (72).
A module's Kohya name is a prefix plus its path with "." replaced by "_":
`lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`,
`lora_te_text_model_encoder_layers_0_self_attn_q_proj`.

SDXL (sd-scripts' networks/lora.py with sdxl_train_network.py): the same rule over both text encoders,
named `lora_te1_...` (CLIP-L, 72) and `lora_te2_...` (OpenCLIP-G, 192), and over the UNet's 11
transformers (722 modules), but named by the original (LDM) module paths, because Kohya's SDXL UNet is its
own port of Stability's: `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q` for diffusers'
`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`.
"""

from __future__ import annotations

import re

from torch import nn

UNET_PREFIX = "lora_unet_"
TE_PREFIX = "lora_te_"
PREFIXES = {"unet": UNET_PREFIX, "te": TE_PREFIX, "te1": "lora_te1_", "te2": "lora_te2_"}
TE_PREFIXES = (TE_PREFIX, PREFIXES["te1"], PREFIXES["te2"])
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


def is_sdxl_unet(unet: nn.Module) -> bool:
    """SDXL's UNet embeds the pooled text and the image sizes ("text_time"); SD 1.5's does not."""
    return getattr(getattr(unet, "config", None), "addition_embed_type", None) == "text_time"


def original_unet_paths(unet: nn.Module):
    """A function from the UNet's module paths to their original (LDM) paths."""
    from ..models.sd_layout import original_path, unet_prefixes

    prefixes = unet_prefixes(unet.state_dict().keys())
    return lambda path: original_path(path, prefixes)


def kohya_name(path: str, part: str, unet_path=None) -> str:
    """`part` is "unet", "te" (SD 1.5) or "te1"/"te2" (SDXL); `unet_path` maps an SDXL UNet's paths to
    the original ones (original_unet_paths)."""
    if part == "unet":
        return UNET_PREFIX + (unet_path(path) if unet_path else path).replace(".", "_")
    return PREFIXES[part] + te_kohya_path(path).replace(".", "_")


def network_parts(unet: nn.Module | None, text_encoder: nn.Module | None,
                  text_encoder_2: nn.Module | None = None) -> list[tuple[str, nn.Module]]:
    """(part, model) for each model given: an SDXL pair of text encoders is "te1"/"te2", a single one "te"."""
    encoders = [("te1", text_encoder), ("te2", text_encoder_2)] if text_encoder_2 is not None \
        else [("te", text_encoder)]
    return [(part, model) for part, model in [("unet", unet)] + encoders if model is not None]


def kohya_names(unet: nn.Module | None, text_encoder: nn.Module | None,
                text_encoder_2: nn.Module | None = None) -> dict[str, tuple[str, str]]:
    """Kohya name -> (part, module path) for every target of the given models."""
    names: dict[str, tuple[str, str]] = {}
    for part, model in network_parts(unet, text_encoder, text_encoder_2):
        if part == "unet":
            unet_path = original_unet_paths(model) if is_sdxl_unet(model) else None
            names.update({kohya_name(p, part, unet_path): (part, p) for p in unet_targets(model)})
        else:
            names.update({kohya_name(p, part): (part, p) for p in text_encoder_targets(model)})
    return names


# sd-scripts' networks/lora.py RE_UPDOWN and get_block_index: SD 1.5's 12 down + mid + 12 up blocks by
# diffusers' names; SDXL's 9 input + 3 middle + 9 output blocks (and its embedding and out slots 0 and 22)
_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")


def block_index(kohya_name: str, sdxl: bool) -> int:
    """The block of a UNet LoRA module by its Kohya name, an index into params.block_lr's weights; -1: none."""
    if not sdxl:
        match = _UPDOWN.search(kohya_name)
        if match:
            updown, i, kind, j = match.groups()
            index = 3 * int(i) + (2 if kind in ("upsamplers", "downsamplers") else int(j))
            return 1 + index if updown == "down" else 12 + 1 + index
        return 12 if "mid_block_" in kohya_name else -1
    name = kohya_name.removeprefix("lora_unet_")
    for prefix, first in (("input_blocks_", 1), ("middle_block_", 10), ("output_blocks_", 13)):
        if name.startswith(prefix):
            return first + int(name.split("_")[2])
    return -1
