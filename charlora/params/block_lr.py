"""Block-wise learning rates, as sd-scripts' networks/lora.py has them (commit 48d368fa:
`parse_block_lr_kwargs`, `get_block_lr_weight`, `get_block_index`).

`down_lr_weight`, `mid_lr_weight` and `up_lr_weight` weight the UNet's learning rate per block: a comma list
("1,1,0.5,...", an empty item is 0) or, for down/up, a curve by name (`cosine`, `sine`, `linear`,
`reverse_linear`, `zeros`, each with an optional `+base`, e.g. `cosine+.25`). Weights at or below
`block_lr_zero_threshold` become 0, and a block of weight 0 gets no LoRA modules at all (sd-scripts sets its
dim to 0). SD 1.5: 12 down, 1 mid and 12 up weights, by diffusers' block names; SDXL: 9 input, 3 middle and 9
output weights, by the original ones. A list that is too short is filled with 1.0, one too long is cut,
as sd-scripts does (and says). Text-encoder modules get no block weight. Which block a module is in:
`lora.targets.block_index`.
"""

from __future__ import annotations

import math

KEYS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight")
CURVES = ("cosine", "sine", "linear", "reverse_linear", "zeros")
_SIZES = {False: (12, 1), True: (9, 3)}  # (down/up blocks, mid blocks): SD 1.5, SDXL


def _curve(text: str, key: str, length: int) -> list[float]:
    name, _, base = text.partition("+")
    try:
        base = float(base) if base else 0.0
    except ValueError:
        raise ValueError(f"{key} {text!r}: the part after '+' must be a number, as in cosine+.25") from None
    steps = [i / (length - 1) for i in range(length)]
    curves = {"cosine": [math.sin(math.pi * s / 2) for s in reversed(steps)],
              "sine": [math.sin(math.pi * s / 2) for s in steps],
              "linear": steps, "reverse_linear": list(reversed(steps)), "zeros": [0.0] * length}
    if name not in curves:
        raise ValueError(f"{key} {text!r}: use numbers separated by commas, or one of {', '.join(CURVES)} "
                         "(with an optional +base, e.g. cosine+.25)")
    return [w + base for w in curves[name]]


def parse_weights(text, key: str, length: int) -> list[float] | None:
    """One key's weights (None when empty), not yet fitted to `length`. ValueError names the key."""
    text = str(text or "").strip()
    if not text:
        return None
    if "," not in text and key != "mid_lr_weight":
        try:
            float(text)
        except ValueError:
            return _curve(text, key, length)
        # sd-scripts reads it as a curve name and fails; and its first slot is conv_in's, which has no LoRA
        raise ValueError(f"{key} {text!r}: give one number per block ({length}, separated by commas) or a curve "
                         f"({', '.join(CURVES)})")
    try:
        return [float(item) if item.strip() else 0.0 for item in text.split(",")]
    except ValueError:
        raise ValueError(f"{key} {text!r}: use numbers separated by commas (an empty item counts as 0)") from None


def check(values: dict) -> list[str]:
    """Problems with the block-wise settings, each naming its key (for the config's cross-checks)."""
    problems = []
    for key in KEYS:
        try:
            parse_weights(values[key], key, _SIZES[bool(values["sdxl"])][key == "mid_lr_weight"])
        except ValueError as error:
            problems.append(str(error))
    threshold = str(values["block_lr_zero_threshold"] or "").strip()
    if threshold:
        try:
            float(threshold)
        except ValueError:
            problems.append(f"block_lr_zero_threshold {threshold!r}: must be a number (e.g. 0.1)")
    return problems


def block_lr_weights(values: dict, notes: list | None = None) -> tuple[float, ...] | None:
    """sd-scripts' list of weights indexed by `lora.targets.block_index` (25 for SD 1.5, 23 for SDXL), or None when no
    block weight is set. `notes` receives what was filled in or cut, as sd-scripts logs it."""
    sdxl = bool(values["sdxl"])
    blocks, mids = _SIZES[sdxl]
    given = {key: parse_weights(values[key], key, mids if key == "mid_lr_weight" else blocks) for key in KEYS}
    if all(w is None for w in given.values()):
        return None
    threshold = float(str(values["block_lr_zero_threshold"] or "0").strip() or 0)
    fitted = {}
    for key, weights in given.items():
        length = mids if key == "mid_lr_weight" else blocks
        if weights is None:
            fitted[key] = [1.0] * length
            continue
        if len(weights) != length and notes is not None:
            notes.append(f"{key} has {len(weights)} value(s) for {length} blocks: "
                         + ("the rest are 1.0" if len(weights) < length else f"values after the {length}th are ignored"))
        weights = (weights + [1.0] * length)[:length]
        fitted[key] = [w if w > threshold else 0.0 for w in weights]
    weights = fitted["down_lr_weight"] + fitted["mid_lr_weight"] + fitted["up_lr_weight"]
    return tuple([1.0] + weights + [1.0] if sdxl else weights)  # SDXL: its embedding and out slots
