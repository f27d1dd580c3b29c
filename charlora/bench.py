"""`python -m charlora bench`: real training steps of a config on a random-weight model, timed.

`--shape sd15` builds SD 1.5's full architecture (UNet 860 M, CLIP ViT-L text encoder, VAE) from the
carried configs with random weights (no download); `--shape sdxl` SDXL base's (UNet 2.6 B, CLIP ViT-L and
OpenCLIP ViT-bigG, VAE; ~14 GB of RAM in fp32); `--shape tiny` / `tiny-sdxl` the test models. The run is a real
`train()` on a generated dataset (so caching, bucketing, the optimizer and the scheduler are the
product's own), profiled per phase. Reported: median s/step and samples/s after warm-up, the split
between data, forward, backward and optimizer, peak memory (CUDA: torch's peak allocated and NVML's
device use; CPU: peak RSS), and generation speed for the grid (images/s at 20 steps).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from .params import load_config, normalize

PRESETS = Path(__file__).resolve().parent.parent / "presets"
DEFAULT_CONFIG = PRESETS / "character-16gb.json"
DEFAULT_CONFIGS = {"tiny": DEFAULT_CONFIG, "sd15": DEFAULT_CONFIG, "tiny-sdxl": PRESETS / "sdxl-character-16gb.json",
                   "sdxl": PRESETS / "sdxl-character-16gb.json"}
SHAPES = tuple(DEFAULT_CONFIGS)


def random_sd15_pipeline(seed: int = 0):
    """SD 1.5's architecture with random weights, from the carried configs (no download, ~10 s on a CPU)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from .models.loading import SD15_CONFIG_DIR

    torch.manual_seed(seed)
    config = lambda name: json.loads((SD15_CONFIG_DIR / name / "config.json").read_text())  # noqa: E731
    unet = UNet2DConditionModel.from_config(config("unet"))
    vae = AutoencoderKL.from_config(config("vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR / "text_encoder"))
    tokenizer = CLIPTokenizer.from_pretrained(SD15_CONFIG_DIR / "tokenizer")
    scheduler = DDPMScheduler.from_config({"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                                           "num_train_timesteps": 1000, "clip_sample": False})
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def random_sdxl_pipeline(seed: int = 0):
    """SDXL base 1.0's architecture with random weights, from the carried configs (no download)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .models import SDXL, SDXL_CONFIG_DIR
    from .models.loading import tokenizers

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SDXL_CONFIG_DIR / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SDXL_CONFIG_DIR / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder"))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder_2"))
    scheduler = DDPMScheduler.from_config({"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                                           "num_train_timesteps": 1000, "clip_sample": False})
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, unet=unet,
                                     scheduler=scheduler, add_watermarker=False,
                                     **tokenizers("SDXL's carried configs", None, SDXL))


def tiny_sdxl_pipeline(seed: int = 0):
    from diffusers import StableDiffusionXLPipeline

    from .models.tiny_sdxl import build_tiny_sdxl_components

    return StableDiffusionXLPipeline(**build_tiny_sdxl_components(seed), add_watermarker=False)


def tiny_pipeline(seed: int = 0):
    from diffusers import StableDiffusionPipeline

    from .models.tiny import build_tiny_components

    parts = build_tiny_components(seed)
    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _dataset(folder: Path, count: int, resolution: int) -> Path:
    import numpy as np
    from PIL import Image

    concept = folder / "img" / "1_bench girl"
    concept.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(concept / f"{i}.png")
        (concept / f"{i}.txt").write_text("bench girl, smiling, outdoors\n")
    return folder / "img"


def _peak_memory(device: str) -> dict:
    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device == "cuda":
        import torch

        from .monitor import default_monitor

        out["torch_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
        out["torch_peak_reserved_bytes"] = torch.cuda.max_memory_reserved()  # what nvidia-smi sees, less context
        reading = default_monitor().read()
        out["nvml_used_bytes"] = reading.used_bytes
        out["nvml_total_bytes"] = reading.total_bytes
    return out


def run_bench(shape: str = "tiny", resolution: int | None = None, batch: int = 1, device: str = "cpu",
              steps: int = 3, warmup: int = 1, config: str | None = None, overrides: tuple = (),
              generation: bool = True, generation_steps: int = 20) -> dict:
    import torch

    resolution = resolution or {"tiny": 64, "sd15": 512, "tiny-sdxl": 64, "sdxl": 1024}[shape]
    config = config or DEFAULT_CONFIGS[shape]
    loaded = load_config(config, overrides)
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    pipe = {"tiny": tiny_pipeline, "sd15": random_sd15_pipeline, "tiny-sdxl": tiny_sdxl_pipeline,
            "sdxl": random_sdxl_pipeline}[shape]()
    build_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="charlora-bench-") as tmp:
        tmp = Path(tmp)
        data = _dataset(tmp, max(2, batch * 2), resolution)
        values = dict(loaded.values, train_data_dir=str(data), reg_data_dir="", output_dir=str(tmp / "out"),
                      logging_dir="", pretrained_model_name_or_path="(random weights)", train_batch_size=batch,
                      max_resolution=f"{resolution},{resolution}", min_bucket_reso=min(256, resolution),
                      max_train_steps=warmup + steps, save_every_n_epochs=0, save_every_n_steps=0,
                      sample_every_n_epochs=0, sample_every_n_steps=0, seed=1234, caption_extension=".txt",
                      max_data_loader_n_workers=0, lr_warmup=0, sdxl=shape.endswith("sdxl"))
        values = normalize(values).values
        from .train import train

        result = train(values, pipe=pipe, profile=True)
        if result.status != "completed":
            raise RuntimeError(f"benchmark run failed: {result.message}")
        timed = result.phase_times[warmup:] or result.phase_times
        per_step = [sum(t.values()) for t in timed]
        median = statistics.median(per_step)
        report = {
            "shape": shape, "resolution": resolution, "batch": batch, "device": device,
            "config": str(config), "network_dim": values["network_dim"],
            "optimizer": values["optimizer"], "mixed_precision": values["mixed_precision"],
            "gradient_checkpointing": values["gradient_checkpointing"], "cache_latents": values["cache_latents"],
            "text_encoder_trained": values["text_encoder_lr"] > 0 or values["unet_lr"] == 0,
            "xformers": values["xformers"], "dynamo_backend": values["dynamo_backend"],
            "model_build_s": round(build_seconds, 2), "steps_timed": len(timed), "warmup_steps": warmup,
            "median_s_per_step": round(median, 4), "samples_per_s": round(batch / median, 4),
            "phases_median_s": {phase: round(statistics.median(t.get(phase, 0.0) for t in timed), 4)
                                for phase in ("data", "forward", "backward", "optimizer")},
        }
        report.update(_peak_memory(device))
        report["values"] = values  # for the VRAM estimate's comparison
        if generation:
            report.update(_bench_generation(pipe, resolution, generation_steps, device))
    del pipe
    return report


def _bench_generation(pipe, resolution: int, steps: int, device: str) -> dict:
    import torch

    from .models import family_of
    from .train.sampling import SamplePrompt, generate_samples

    pipe.set_progress_bar_config(disable=True)
    pipe.unet.eval()
    for name in family_of(pipe).text_encoders:
        getattr(pipe, name).eval()
    dev = torch.device(device if device == "cpu" or torch.cuda.is_available() else "cpu")
    pipe.vae.to(dev)
    prompt = SamplePrompt("bench girl, smiling", "", resolution, resolution, steps, 7.0, 1)
    generate_samples(pipe, [prompt], "euler_a", dev)  # warm-up
    started = time.perf_counter()
    images = 2
    generate_samples(pipe, [prompt] * images, "euler_a", dev)
    seconds = time.perf_counter() - started
    return {"generation_steps": steps, "generation_images_per_s": round(images / seconds, 4),
            "generation_s_per_image": round(seconds / images, 3)}


def format_report(r: dict) -> str:
    gib = 1024**3
    lines = [f"shape {r['shape']} at {r['resolution']} px, batch {r['batch']}, {r['device']}, dim {r['network_dim']}, "
             f"{r['optimizer']}, {r['mixed_precision']}, checkpointing {r['gradient_checkpointing']}",
             f"median {r['median_s_per_step']:.3f} s/step ({r['samples_per_s']:.3f} samples/s) over "
             f"{r['steps_timed']} steps after {r['warmup_steps']} warm-up",
             "split: " + ", ".join(f"{k} {v:.3f} s" for k, v in r["phases_median_s"].items()),
             f"peak RSS {r['peak_rss_bytes'] / gib:.2f} GiB"]
    if "torch_peak_allocated_bytes" in r:
        lines.append(f"CUDA peak tensors {r['torch_peak_allocated_bytes'] / gib:.2f} GiB, NVML device use "
                     f"{(r['nvml_used_bytes'] or 0) / gib:.2f} GiB")
    if "generation_images_per_s" in r:
        lines.append(f"generation: {r['generation_images_per_s']:.3f} images/s at {r['generation_steps']} steps "
                     f"({r['generation_s_per_image']:.2f} s/image)")
    return "\n".join(lines) + "\n"


def force_cpu() -> None:
    """--device cpu on a machine with a GPU: hide it before torch initialises CUDA."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
