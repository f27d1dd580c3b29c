"""Bytes of optimizer state, as each optimizer Kohya names allocates it (bitsandbytes' 8-bit blocks,
Adafactor's factored moments, Prodigy's copies)."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from .coefficients import BNB_BLOCK_SIZE, BNB_MIN_8BIT_SIZE, BNB_QMAP_BYTES

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

