"""An SDXL-base-sized single file (random weights, fp16, ~6.5 GiB, written to a temporary folder) through
load_base_model: the carried configs, the fit check, diffusers' from_single_file; every tensor must come back.

    .venv/bin/python tools/sdxl_load_check.py      (about 1-2 minutes and 17 GiB of RAM on a 2-core CPU)

Exit 0 when all four models come back bit for bit, 1 otherwise.
"""

from __future__ import annotations

import gc
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def random_sdxl_state_dicts() -> dict:
    """SDXL base 1.0's four models from the carried configs, random weights, fp16 (built one at a time)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from charlora.models import SDXL_CONFIG_DIR as D

    torch.manual_seed(0)
    builders = {
        "unet": lambda: UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(D / "unet")),
        "vae": lambda: AutoencoderKL.from_config(AutoencoderKL.load_config(D / "vae")),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig.from_pretrained(D / "text_encoder")),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(D / "text_encoder_2")),
    }
    parts = {}
    for name, build in builders.items():
        model = build().half()
        parts[name] = {k: v.clone() for k, v in model.state_dict().items()}
        del model
        gc.collect()
    return parts


def main() -> int:
    import torch
    from safetensors.torch import save_file

    from charlora.models.loading import load_base_model
    from charlora.models.sdxl_layout import diffusers_to_sgm

    parts = random_sdxl_state_dicts()
    with tempfile.TemporaryDirectory(prefix="charlora-sdxl-") as folder:
        path = Path(folder) / "sdxl-random-fp16.safetensors"
        state_dict = diffusers_to_sgm(*parts.values())
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
        print(f"written: {path.stat().st_size / 2**30:.2f} GiB, {len(state_dict)} tensors")
        del state_dict
        gc.collect()
        started = time.time()
        pipe = load_base_model(path, dtype=torch.float16)
        print(f"loaded in {time.time() - started:.1f} s as {type(pipe).__name__}; peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")
        failed = False
        for name, want in parts.items():
            got = getattr(pipe, name).state_dict()
            missing = [k for k in want if k not in got and not k.endswith("position_ids")]
            different = [k for k in want if k in got and not torch.equal(got[k].to(want[k].dtype), want[k])]
            print(f"{name}: {len(want)} tensors; missing {missing[:3]}; different {different[:3]}")
            failed = failed or bool(missing or different)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
