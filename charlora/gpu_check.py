"""The prepared GPU check: one command, one JSON, for the moment a machine with an NVIDIA GPU is at hand.

`python -m charlora gpu-check --out gpu-check.json` (minutes on one modern GPU, not yet timed on one; no network):
1. the environment (torch, CUDA, GPU, NVML reading before anything is loaded);
2. the user's config (fp16 + AdamW8bit + SDPA, rank 128, cached latents) on the SD 1.5 shape at
   512 px: batch 1 and 4, with and without gradient checkpointing — s/step, samples/s, phase split,
   torch's peak allocated and NVML's device use beside the VRAM estimate for the same config;
3. the text-encoder output cache (UNet-only training) against the same run without it;
4. grid generation speed (images/s at 20 steps);
5. SDXL at 1024 px: the presets sdxl-character-16gb and sdxl-character-12gb-lowvram on SDXL base's shape
   (random weights), each beside the VRAM estimate.
Each part is written to the JSON as soon as it is measured, so a run cut short still reports.
`--quick` runs the same script on the tiny shapes (for trying it on a CPU).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from .bench import PRESETS, run_bench
from .fileio import atomic_write_text


def _environment() -> dict:
    import torch

    from .monitor import default_monitor

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_total_bytes"] = torch.cuda.get_device_properties(0).total_memory
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
    reading = default_monitor().read()
    env["nvml"] = reading.message
    env["nvml_used_before_bytes"] = reading.used_bytes
    env["packages"] = _versions()
    env["adamw8bit"] = _probe_adamw8bit("cuda" if torch.cuda.is_available() else "cpu")
    return env


def _versions() -> dict:
    from importlib import metadata

    found = {}
    for name in ("diffusers", "transformers", "peft", "accelerate", "bitsandbytes", "safetensors", "nvidia-ml-py"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _probe_adamw8bit(device: str) -> str:
    """Whether AdamW8bit really runs here (the config's name alone says nothing after a fallback)."""
    import torch

    from .params import defaults
    from .train.optim import build_optimizer

    param = torch.nn.Parameter(torch.zeros(8192, device=device))
    try:
        optimizer, description, warnings = build_optimizer(
            "AdamW8bit", [{"params": [param], "lr": 1e-4}], dict(defaults(), optimizer_fallback=True), device)
    except Exception as exc:  # recorded, not raised: the check goes on
        return f"error: {type(exc).__name__}: {exc}"
    return "; ".join([description, *warnings])


def _with_estimate(report: dict, gpu_total: int | None) -> dict:
    from .vram_estimate import estimate_vram

    values = report.pop("values")
    estimate = estimate_vram(values, gpu_total)
    report["estimate_total_bytes"] = estimate.total
    report["estimate_parts_bytes"] = estimate.parts()
    measured = report.get("nvml_used_bytes") or report.get("torch_peak_allocated_bytes")
    if measured:
        report["estimate_over_measured"] = round(estimate.total / measured, 3)
    return report


def run_gpu_check(out: str | Path, quick: bool = False, steps: int = 10) -> dict:
    shape, resolution, device = ("tiny", 64, "cpu") if quick else ("sd15", 512, "cuda")
    steps = 2 if quick else steps
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "shape": shape, "resolution": resolution,
                     "environment": _environment(), "runs": []}
    gpu_total = results["environment"].get("gpu_total_bytes")
    out = Path(out)

    def write():
        atomic_write_text(out, json.dumps(results, indent=2, default=str))

    write()
    plans = [
        ("seed config, batch 1", 1, (), True),
        ("seed config, batch 4", 4, (), False),
        ("seed config, batch 1, gradient checkpointing", 1, ("gradient_checkpointing=true",), False),
        ("seed config, batch 4, gradient checkpointing", 4, ("gradient_checkpointing=true",), False),
        ("UNet only, text-encoder outputs cached", 1, ("text_encoder_lr=0",), False),
        ("UNet only, cache off (shuffle_caption, keep_tokens=3)", 1,
         ("text_encoder_lr=0", "shuffle_caption=true", "keep_tokens=3"), False),
    ]
    sdxl_shape, sdxl_resolution = ("tiny-sdxl", 64) if quick else ("sdxl", 1024)
    plans = [(label, batch, overrides, generation, shape, resolution, None)
             for label, batch, overrides, generation in plans]
    plans += [(f"SDXL preset {name}, {sdxl_resolution} px", 1, (), name == "sdxl-character-16gb", sdxl_shape,
               sdxl_resolution, str(PRESETS / f"{name}.json"))
              for name in ("sdxl-character-16gb", "sdxl-character-12gb-lowvram")]
    for label, batch, overrides, generation, bench_shape, bench_resolution, config in plans:
        started = time.perf_counter()
        try:
            report = run_bench(bench_shape, bench_resolution, batch, device, steps, warmup=2, config=config,
                               overrides=overrides, generation=generation)
            report = _with_estimate(report, gpu_total)
        except Exception as exc:  # record and go on: one failed part must not lose the others
            report = {"error": f"{type(exc).__name__}: {exc}"}
        report.update(label=label, wall_s=round(time.perf_counter() - started, 1))
        results["runs"].append(report)
        write()
        import gc

        gc.collect()
        try:
            import torch

            torch.cuda.empty_cache()
        except Exception:
            pass
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write()
    return results
