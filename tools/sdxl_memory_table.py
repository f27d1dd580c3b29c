"""What the VRAM estimate says for SDXL LoRA training at 1024 px on 8, 12, 16 and 24 GB cards.

    .venv/bin/python tools/sdxl_memory_table.py

Prints one row per setup (the two SDXL presets, the user's SD 1.5 config moved to SDXL as it is, and steps
between) with the estimate and its verdict per card; the markdown table in docs/benchmarks.md is this output.
No model is needed: with no base model chosen the estimate uses SDXL base 1.0's sizes (its carried configs).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from charlora.params import load_config, normalize  # noqa: E402
from charlora.vram.model_sizes import GIB  # noqa: E402
from charlora.vram_estimate import estimate_vram  # noqa: E402

PRESETS = Path(__file__).resolve().parents[1] / "presets"
CARDS_GB = (8, 12, 16, 24)
SDXL = {"sdxl": True, "max_resolution": "1024,1024", "min_bucket_reso": 512}


def setups():
    user = load_config(PRESETS / "character-16gb.json").values
    yield "the user's config (rank 128, TE trained) moved to SDXL as it is", dict(user, **SDXL)
    yield "the same + gradient_checkpointing", dict(user, **SDXL, gradient_checkpointing=True)
    yield "preset sdxl-character-16gb (rank 32, TE trained, checkpointing)", \
        load_config(PRESETS / "sdxl-character-16gb.json").values
    yield "preset sdxl-character-12gb-lowvram (rank 16, UNet only, TE outputs cached)", \
        load_config(PRESETS / "sdxl-character-12gb-lowvram.json").values
    low = load_config(PRESETS / "sdxl-character-12gb-lowvram.json").values
    yield "12gb-lowvram with rank 8", dict(low, network_dim=8, network_alpha=4.0)


def main() -> int:
    print("| setup | estimate | " + " | ".join(f"{gb} GB card" for gb in CARDS_GB) + " |")
    print("|---|---|" + "---|" * len(CARDS_GB))
    for label, values in setups():
        values = normalize(values).values
        total = estimate_vram(values).total
        cells = []
        for gb in CARDS_GB:
            # an "N GB" card reports N GiB minus what the driver keeps (~0.3 GiB); the estimate's verdict
            verdict = estimate_vram(values, int((gb - 0.3) * GIB)).verdict()
            cells.append("fits" if verdict.startswith("fits") else "does not fit")
        print(f"| {label} | {total / GIB:.1f} GiB | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
