"""What the UNet and the text encoder keep for the backward pass, per unit, from the coefficients."""

from __future__ import annotations

import math

from .coefficients import (BACKWARD_TRANSIENT_SAVES, CKPT_TRANSFORMER_CAST_COPIES, CKPT_TRANSFORMER_COMPUTE_SAVES,
                           CONTEXT_SAVES_PER_CHANNEL, PLAIN_ATTENTION_FEWER_SAVES, RESNET_COMPUTE_SAVES,
                           RESNET_NORM_SAVES, RESNET_SHORTCUT_SAVES, TE_COMPUTE_SAVES, TE_INTERMEDIATE_SAVES,
                           TE_LORA_SAVES, TE_NORM_SAVES, TRANSFORMER_CAST_COPIES, TRANSFORMER_COMPUTE_SAVES,
                           TRANSFORMER_LORA_SAVES, TRANSFORMER_NORM_SAVES)
from .model_sizes import (CROSS_ATTENTION_DIM, TE_HIDDEN, TE_INTERMEDIATE, TE_LAYERS, TOKENS_PER_CHUNK,
                          UNET_ATTENTION_LEVELS, UNET_CHANNELS, UNET_HEADS, UNET_LAYERS_PER_BLOCK)

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

