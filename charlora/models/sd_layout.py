"""Key mapping between diffusers' state dicts and the original single-file SD 1.x layout.

A single-file checkpoint (what A1111, ComfyUI and Kohya read and write) holds three models under
three prefixes:

    model.diffusion_model.*                      the UNet   (LDM names: input_blocks.4.1.proj_in...)
    first_stage_model.*                          the VAE    (LDM names: encoder.down.0.block.1...)
    cond_stage_model.transformer.text_model.*    the CLIP text encoder (transformers' names)

The mapping is built as a table of (diffusers prefix, original prefix) pairs from the shape of the
model (number of blocks, layers per block, which blocks have attention), which is read from the
keys themselves, so the same code serves the tiny test model and the real SD 1.5.

Only the writing direction lives here (the tiny and toy models are written as single files):
diffusers has no converter that way. Reading is diffusers' own `single_file_utils.convert_ldm_*`
(models/loading.py), and the tests read every file this module writes back through it.
"""

import re

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TE_PREFIX = "cond_stage_model.transformer.text_model."

# --- UNet -------------------------------------------------------------------------------------

_UNET_FIXED = [
    ("time_embedding.linear_1.", "time_embed.0."),
    ("time_embedding.linear_2.", "time_embed.2."),
    ("conv_in.", "input_blocks.0.0."),
    ("conv_norm_out.", "out.0."),
    ("conv_out.", "out.2."),
    # SDXL's size/pooled-text embedding (absent from SD 1.5 UNets, so these pairs never match there)
    ("add_embedding.linear_1.", "label_emb.0.0."),
    ("add_embedding.linear_2.", "label_emb.0.2."),
]
# Inside a ResnetBlock2D: diffusers' names vs LDM's ResBlock (Sequential indices).
_UNET_RESNET = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
]


def _indices(keys, pattern):
    """Sorted set of the integers captured by `pattern` (one group) over `keys`."""
    regex = re.compile(pattern)
    found = set()
    for key in keys:
        match = regex.match(key)
        if match:
            found.add(int(match.group(1)))
    return sorted(found)


def _has_prefix(keys, prefix, but_not=None):
    return any(k.startswith(prefix) and not (but_not and k.startswith(but_not)) for k in keys)


def _unet_shape_from_diffusers(keys):
    num_blocks = len(_indices(keys, r"down_blocks\.(\d+)\."))
    layers = len(_indices(keys, r"down_blocks\.0\.resnets\.(\d+)\."))
    down_attn = [_has_prefix(keys, f"down_blocks.{b}.attentions.") for b in range(num_blocks)]
    up_attn = [_has_prefix(keys, f"up_blocks.{b}.attentions.") for b in range(num_blocks)]
    return num_blocks, layers, down_attn, up_attn


def _unet_table(num_blocks, layers, down_attn, up_attn):
    pairs = list(_UNET_FIXED)

    def resnet(diffusers_prefix, original_prefix):
        for d, o in _UNET_RESNET:
            pairs.append((diffusers_prefix + d, original_prefix + o))

    for b in range(num_blocks):
        for layer in range(layers):
            i = 1 + b * (layers + 1) + layer
            resnet(f"down_blocks.{b}.resnets.{layer}.", f"input_blocks.{i}.0.")
            if down_attn[b]:
                pairs.append((f"down_blocks.{b}.attentions.{layer}.", f"input_blocks.{i}.1."))
        if b < num_blocks - 1:
            pairs.append((f"down_blocks.{b}.downsamplers.0.conv.", f"input_blocks.{(b + 1) * (layers + 1)}.0.op."))

    resnet("mid_block.resnets.0.", "middle_block.0.")
    pairs.append(("mid_block.attentions.0.", "middle_block.1."))
    resnet("mid_block.resnets.1.", "middle_block.2.")

    # Up blocks have one layer more than down blocks (they also take the skip of the downsampler).
    for b in range(num_blocks):
        for layer in range(layers + 1):
            i = b * (layers + 1) + layer
            resnet(f"up_blocks.{b}.resnets.{layer}.", f"output_blocks.{i}.0.")
            if up_attn[b]:
                pairs.append((f"up_blocks.{b}.attentions.{layer}.", f"output_blocks.{i}.1."))
        if b < num_blocks - 1:
            last = b * (layers + 1) + layers
            slot = 2 if up_attn[b] else 1  # the upsampler follows the attention when there is one
            pairs.append((f"up_blocks.{b}.upsamplers.0.conv.", f"output_blocks.{last}.{slot}.conv."))
    return pairs


# --- VAE --------------------------------------------------------------------------------------

_VAE_FIXED = [
    ("encoder.conv_in.", "encoder.conv_in."),
    ("encoder.conv_out.", "encoder.conv_out."),
    ("encoder.conv_norm_out.", "encoder.norm_out."),
    ("decoder.conv_in.", "decoder.conv_in."),
    ("decoder.conv_out.", "decoder.conv_out."),
    ("decoder.conv_norm_out.", "decoder.norm_out."),
    ("quant_conv.", "quant_conv."),
    ("post_quant_conv.", "post_quant_conv."),
]
_VAE_RESNET = [
    ("norm1.", "norm1."),
    ("conv1.", "conv1."),
    ("norm2.", "norm2."),
    ("conv2.", "conv2."),
    ("conv_shortcut.", "nin_shortcut."),
]
_VAE_ATTENTION = [
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
]
# Attention projections are nn.Linear in diffusers but 1x1 convs in the original VAE.
_VAE_CONV_ATTENTION = re.compile(r"(en|de)coder\.mid\.attn_1\.(q|k|v|proj_out)\.weight$")


def _vae_table(num_blocks, layers):
    pairs = list(_VAE_FIXED)

    def block(diffusers_prefix, original_prefix, subs):
        for d, o in subs:
            pairs.append((diffusers_prefix + d, original_prefix + o))

    for b in range(num_blocks):
        for layer in range(layers):
            block(f"encoder.down_blocks.{b}.resnets.{layer}.", f"encoder.down.{b}.block.{layer}.", _VAE_RESNET)
        if b < num_blocks - 1:
            pairs.append((f"encoder.down_blocks.{b}.downsamplers.0.conv.", f"encoder.down.{b}.downsample.conv."))
    for part in ("encoder", "decoder"):
        block(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", _VAE_RESNET)
        block(f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", _VAE_RESNET)
        block(f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _VAE_ATTENTION)
    # The decoder's up blocks are numbered from the bottom in the original layout.
    for b in range(num_blocks):
        original = num_blocks - 1 - b
        for layer in range(layers + 1):
            block(f"decoder.up_blocks.{b}.resnets.{layer}.", f"decoder.up.{original}.block.{layer}.", _VAE_RESNET)
        if b < num_blocks - 1:
            pairs.append((f"decoder.up_blocks.{b}.upsamplers.0.conv.", f"decoder.up.{original}.upsample.conv."))
    return pairs


def _vae_shape_from_diffusers(keys):
    return (
        len(_indices(keys, r"encoder\.down_blocks\.(\d+)\.")),
        len(_indices(keys, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")),
    )


def _rename(state_dict, pairs, what):
    """Rename every key by its longest matching prefix in `pairs` (a dict from -> to)."""
    renamed, unmapped = {}, []
    for key, value in state_dict.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut]) + "."
            if prefix in pairs:
                renamed[pairs[prefix] + key[len(prefix):]] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise ValueError(f"{len(unmapped)} {what} key(s) have no place in the SD 1.x layout, e.g. {unmapped[:5]}")
    if len(renamed) != len(state_dict):
        raise ValueError(f"two {what} keys map to the same name; the model is not SD 1.x shaped")
    return renamed


def unet_prefixes(unet_keys):
    """{diffusers prefix: original prefix} for a UNet with these state-dict keys (its shape is read from them)."""
    return dict(_unet_table(*_unet_shape_from_diffusers(unet_keys)))


def original_path(path, prefixes):
    """A diffusers module path (or key) in the original LDM names, by its longest prefix in `prefixes`."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut]) + "."
        if prefix in prefixes:
            return prefixes[prefix] + path[len(prefix):] if cut < len(parts) else prefixes[prefix].rstrip(".")
    raise ValueError(f"{path} has no place in the SD layout")


def unet_to_original(unet_sd):
    """diffusers UNet2DConditionModel state dict -> LDM names (without the `model.diffusion_model.` prefix)."""
    table = _unet_table(*_unet_shape_from_diffusers(unet_sd.keys()))
    return _rename(unet_sd, dict(table), "UNet")


def vae_to_original(vae_sd):
    table = _vae_table(*_vae_shape_from_diffusers(vae_sd.keys()))
    out = _rename(vae_sd, dict(table), "VAE")
    for key, value in out.items():
        if _VAE_CONV_ATTENTION.search(key) and value.ndim == 2:
            out[key] = value.reshape(*value.shape, 1, 1)
    return out


def diffusers_to_original(unet_sd, vae_sd, text_encoder_sd):
    """Three diffusers/transformers state dicts -> one single-file SD 1.x state dict.

    The text encoder's keys get the `text_model.` level back (transformers >= 5.6 drops it).
    `embeddings.position_ids` is not written: it is a buffer (0..76), not a weight, and every SD
    tool rebuilds it.
    """
    out = {}
    for key, value in unet_to_original(unet_sd).items():
        out[UNET_PREFIX + key] = value
    for key, value in vae_to_original(vae_sd).items():
        out[VAE_PREFIX + key] = value
    for key, value in text_encoder_sd.items():
        out[TE_PREFIX + key.removeprefix("text_model.")] = value
    return out
