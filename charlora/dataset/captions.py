"""Caption processing per step, as Kohya's `process_caption` does it, deterministic under `seed`.

Order: caption dropout (a chance per step, or every n-th epoch: the whole caption becomes ""), then
with `shuffle_caption` split on ",", keep the first `keep_tokens` tags in place, shuffle the rest,
and join with ", ".
"""

from __future__ import annotations

import random


def process_caption(caption: str, values: dict, epoch: int, rng: random.Random) -> str:
    """`epoch` counts from 1 (Kohya's `current_epoch`)."""
    rate = values["caption_dropout_rate"]
    every_n = values["caption_dropout_every_n_epochs"]
    dropped = rate > 0 and rng.random() < rate
    dropped = dropped or (every_n > 0 and epoch % every_n == 0)
    if dropped:
        return ""
    if values["shuffle_caption"]:
        tokens = [t.strip() for t in caption.strip().split(",")]
        keep = values["keep_tokens"]
        fixed, flexible = tokens[:keep], tokens[keep:]
        rng.shuffle(flexible)
        caption = ", ".join(fixed + flexible)
    return caption


def sample_rng(seed: int, epoch: int, index: int, salt: str = "") -> random.Random:
    """An independent, reproducible random stream per (seed, epoch, sample): results do not depend on
    data-loader workers or the order in which batches are produced."""
    return random.Random(f"{seed}:{epoch}:{index}:{salt}")
