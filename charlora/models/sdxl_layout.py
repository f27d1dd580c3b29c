"""diffusers names -> the original single-file SDXL layout (Stability's `sgm`), to write SDXL-shaped test
models as single files, as `sd_layout` does for SD 1.5.

An SDXL single file (sd_xl_base_1.0.safetensors, and the fine-tunes users download) holds:

    model.diffusion_model.*                          the UNet (LDM names, as SD 1.5, plus label_emb)
    first_stage_model.*                              the VAE (as SD 1.5)
    conditioner.embedders.0.transformer.text_model.* CLIP ViT-L (transformers' names)
    conditioner.embedders.1.model.*                  OpenCLIP ViT-bigG (open_clip's names: resblocks,
                                                     one in_proj for q/k/v, text_projection transposed)

Reading is diffusers' own `single_file_utils` (models/loading.py); the facts here are the inverse of its
`convert_open_clip_checkpoint` and `DIFFUSERS_TO_LDM_MAPPING["openclip"]`, and the tests read every file
this module writes back through diffusers.
"""

import re

import torch

from charlora.models.sd_layout import UNET_PREFIX, VAE_PREFIX, unet_to_original, vae_to_original

TE1_PREFIX = "conditioner.embedders.0.transformer.text_model."
TE2_PREFIX = "conditioner.embedders.1.model."

_OPENCLIP_FIXED = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPENCLIP_LAYER = {
    "self_attn.out_proj.": "attn.out_proj.",
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}
_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)$")
_QKV = re.compile(r"self_attn\.(q|k|v)_proj\.(weight|bias)$")


def openclip_from_diffusers(te2_sd):
    """CLIPTextModelWithProjection state dict -> open_clip names (without the `conditioner...model.` prefix)."""
    out, qkv, unmapped = {}, {}, []
    for key, value in te2_sd.items():
        if key.endswith("position_ids"):
            continue  # a buffer every tool rebuilds
        if key in _OPENCLIP_FIXED:
            out[_OPENCLIP_FIXED[key]] = value
            continue
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()  # open_clip multiplies x @ P, a Linear computes x @ W.T
            continue
        match = _LAYER.match(key)
        if match is None:
            unmapped.append(key)
            continue
        layer, rest = match.groups()
        projection = _QKV.match(rest)
        if projection:
            qkv.setdefault((layer, projection.group(2)), {})[projection.group(1)] = value
            continue
        for diffusers_name, original_name in _OPENCLIP_LAYER.items():
            if rest.startswith(diffusers_name):
                out[f"transformer.resblocks.{layer}.{original_name}{rest[len(diffusers_name):]}"] = value
                break
        else:
            unmapped.append(key)
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            unmapped.append(f"layer {layer} {kind}: only {sorted(parts)} of q, k, v")
            continue
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    if unmapped:
        raise ValueError(f"{len(unmapped)} text encoder 2 key(s) have no place in the open_clip layout, "
                         f"e.g. {unmapped[:5]}")
    return out


def diffusers_to_sgm(unet_sd, vae_sd, te1_sd, te2_sd):
    """Four diffusers/transformers state dicts -> one single-file SDXL state dict."""
    out = {UNET_PREFIX + key: value for key, value in unet_to_original(unet_sd).items()}
    out.update({VAE_PREFIX + key: value for key, value in vae_to_original(vae_sd).items()})
    out.update({TE1_PREFIX + key.removeprefix("text_model."): value for key, value in te1_sd.items()
                if not key.endswith("position_ids")})
    out.update({TE2_PREFIX + key: value for key, value in openclip_from_diffusers(te2_sd).items()})
    return out
