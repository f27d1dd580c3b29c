"""What the UNet and the text encoder keep for the backward pass, per unit, from the coefficients."""

from __future__ import annotations

import math

from .coefficients import (BACKWARD_TRANSIENT_SAVES, CKPT_TRANSFORMER_CAST_COPIES, CKPT_TRANSFORMER_COMPUTE_SAVES,
                           CONTEXT_SAVES_PER_CHANNEL, PLAIN_ATTENTION_FEWER_SAVES, RESNET_COMPUTE_SAVES,
                           RESNET_NORM_SAVES, RESNET_SHORTCUT_SAVES, TE_COMPUTE_SAVES, TE_INTERMEDIATE_SAVES,
                           TE_LORA_SAVES, TE_NORM_SAVES, TRANSFORMER_CAST_COPIES, TRANSFORMER_COMPUTE_SAVES,
                           TRANSFORMER_LORA_SAVES, TRANSFORMER_NORM_SAVES)
from .model_sizes import SD15, TOKENS_PER_CHUNK, Architecture

# ---------------------------------------------------------------- activations


def _unet_units(h: int, w: int, arch: Architecture = SD15) -> list[tuple]:
    """The UNet's units in forward order: (kind, input channels, output channels, tokens, transformer depth,
    attention heads), h x w latent."""
    levels = len(arch.channels)
    tokens = [math.ceil(h / 2**level) * math.ceil(w / 2**level) for level in range(levels)]
    units = []
    ch = arch.channels[0]
    skips = [ch]  # conv_in's output
    for level, c in enumerate(arch.channels):
        for _ in range(arch.layers_per_block):
            units.append(("resnet", ch, c, tokens[level], 0, 0))
            if arch.depths[level]:
                units.append(("transformer", c, c, tokens[level], arch.depths[level], arch.heads[level]))
            ch = c
            skips.append(c)
        if level < levels - 1:
            units.append(("resample", c, c, tokens[level], 0, 0))  # stride-2 conv keeps its input
            skips.append(c)
    units += [("resnet", ch, ch, tokens[-1], 0, 0), ("transformer", ch, ch, tokens[-1], arch.mid_depth, arch.heads[-1]),
              ("resnet", ch, ch, tokens[-1], 0, 0)]
    for level in reversed(range(levels)):
        c = arch.channels[level]
        for _ in range(arch.layers_per_block + 1):
            units.append(("resnet", ch + skips.pop(), c, tokens[level], 0, 0))  # input: concatenated with the skip
            if arch.depths[level]:
                units.append(("transformer", c, c, tokens[level], arch.depths[level], arch.heads[level]))
            ch = c
        if level > 0:
            units.append(("resample", c, c, tokens[level - 1], 0, 0))  # upsampled, then a conv keeps its input
    units.append(("out", ch, ch, tokens[0], 0, 0))  # norm_out, SiLU, conv_out
    return units


def unet_activation_bytes(h: int, w: int, batch: int, rank: int, compute_bytes: int, plain_attention: bool,
                          checkpointing: bool, context_tokens: int = TOKENS_PER_CHUNK,
                          include_transient: bool = True, arch: Architecture = SD15) -> int:
    """Bytes of UNet activations at the training step's peak, for an h x w latent (see the coefficients):
    what the forward keeps for backward, plus (include_transient) the backward pass's working memory.

    The coefficients were counted on SD 1.5's transformers of one block; a transformer of `depth` blocks
    (SDXL: 2 and 10) keeps its proj_in/proj_out part once and the rest per block."""
    cb, nb = compute_bytes, 4
    mixed = cb < 4
    # Plain attention keeps every attention matrix: softmax's output (fp32 under autocast) and its
    # compute-dtype copy for the product with the values. SDPA/xformers keep none.
    attn_bytes = nb + cb if mixed else nb

    def unit_bytes(kind, cin, cout, n, depth, heads, kept_only):
        if kind == "resnet":
            if kept_only:
                return cb * cin * n
            shortcut = RESNET_SHORTCUT_SAVES * cb * cin if mixed and cin != cout else 0
            return (RESNET_NORM_SAVES * nb + RESNET_COMPUTE_SAVES * cb) * (cin + cout) * n + shortcut * n
        if kind == "transformer":
            # per block beyond the first: everything but the GroupNorm and proj_in/proj_out (their inputs,
            # peft's copies of them and their LoRA outputs: 2 of each)
            extra = depth - 1
            if kept_only:
                saves = CKPT_TRANSFORMER_COMPUTE_SAVES + (CKPT_TRANSFORMER_CAST_COPIES if mixed else 0) + extra
                return (nb + cb * saves) * cout * n + 2 * cb * rank * n  # + proj_in/proj_out LoRA outputs
            saves = TRANSFORMER_COMPUTE_SAVES + (TRANSFORMER_CAST_COPIES if mixed else 0)
            saves -= PLAIN_ATTENTION_FEWER_SAVES if plain_attention else 0
            block_saves = saves - 2 - (2 if mixed else 0)
            norms = TRANSFORMER_NORM_SAVES + extra * (TRANSFORMER_NORM_SAVES - 1)
            lora = TRANSFORMER_LORA_SAVES + extra * (TRANSFORMER_LORA_SAVES - 2)
            kept = (norms * nb + (saves + extra * block_saves) * cb) * cout * n + lora * cb * rank * n
            per_context = CONTEXT_SAVES_PER_CHANNEL * (cout + rank + (arch.cross_attention_dim if mixed else 0))
            kept += depth * cb * per_context * context_tokens
            if plain_attention:
                kept += depth * attn_bytes * heads * n * (n + context_tokens)
            return kept
        if kind == "resample":
            return cb * cin * n
        return (RESNET_NORM_SAVES * nb + RESNET_COMPUTE_SAVES * cb) * cin * n  # "out"

    units = _unet_units(h, w, arch)
    if not checkpointing:
        units = units[1:]  # the first resnet runs before any LoRA layer: nothing in it needs a gradient
    kept = sum(unit_bytes(*unit, kept_only=checkpointing) for unit in units)
    if not include_transient:
        return batch * kept
    transient = BACKWARD_TRANSIENT_SAVES * cb * arch.channels[0] * h * w
    if checkpointing:  # backward recomputes one checkpointed unit at a time: the largest one's activations
        transient += max(unit_bytes(*unit, False) - unit_bytes(*unit, True) for unit in units)
    if plain_attention:  # softmax's backward: gradients of the largest attention matrix
        n, heads = max((unit[3], unit[5]) for unit in units if unit[0] == "transformer")
        transient += attn_bytes * heads * n**2
    return batch * (kept + transient)


def text_encoder_activation_bytes(batch: int, rank: int, compute_bytes: int, checkpointing: bool,
                                  tokens: int = TOKENS_PER_CHUNK, arch: Architecture = SD15) -> int:
    """Bytes the trained text encoder(s) keep for backward (see the TE_* coefficients)."""
    cb = compute_bytes
    total = 0
    for e in arch.text_encoders:
        per_layer = (TE_NORM_SAVES * 4 + TE_COMPUTE_SAVES * cb) * e.hidden + TE_INTERMEDIATE_SAVES * cb * e.intermediate
        per_layer += TE_LORA_SAVES * cb * rank
        if checkpointing:  # each layer keeps its input; backward recomputes one layer at a time
            total += batch * tokens * (e.layers * cb * e.hidden + per_layer)
        else:
            total += batch * tokens * e.layers * per_layer
    return total

