"""The checkpoint x CFG grid: CharLoRA's `grid` against diffusers' own pipeline loop, in alternating rounds.

    tools/compare_generation.py [--model FILE] [--rounds 3] [--rows 7] [--cols 4] [--steps 20] [--size 512]

The user's grid: a first row without LoRA, then one row per epoch checkpoint (rank 128 / alpha 1 LoRA
files), CFG 7, 8, 9, 10 as columns, one fixed seed, Euler a, 20 steps. Each side is a fresh process:

- charlora: `python -m charlora grid ...` as the README types it (cells as PNGs with infotext, the grid);
- diffusers: the loop a diffusers user writes (`StableDiffusionPipeline`, `load_lora_weights` and
  `unload_lora_weights` per row, `pipe(prompt, guidance_scale=cfg, ...)` per cell, a PNG per cell).

Printed per round and as medians: CPU seconds of the process (all threads), wall seconds, spawn to first
image, peak RSS, and the ratios CharLoRA / diffusers. Without `--model` a tiny SD 1.5-shaped model is
made (this measures what each side does around the UNet: start, LoRA switching, saving); with the
peers' `models/sd15-random-fp32.safetensors` it measures SD 1.5's real work (use a small grid, --size 256).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = "portrait of a girl"
SEED = 1234
sys.path.insert(0, str(REPO))
from charlora.models import SD15_CONFIG_DIR as SD15_CONFIG  # noqa: E402  (the configs CharLoRA carries; no torch)


def make_inputs(work: Path, model: str | None, rows: int, rank: int) -> tuple[str, Path, list[str]]:
    """(base model single file, for diffusers its folder or SD 1.5's config folder, LoRA names); writes the LoRAs."""
    import torch

    from charlora.lora.kohya_file import save_lora
    from charlora.lora.network import LoRANetwork, LoRASettings
    from charlora.models.loading import load_base_model
    from charlora.models.tiny import make_tiny_model

    if model is None:
        tiny = make_tiny_model(work / "model")
        model_file, config = str(tiny.single_file), tiny.folder
    else:
        model_file, config = model, SD15_CONFIG
    pipe = load_base_model(model_file, dtype=torch.float32, device=torch.device("cpu"))
    network = LoRANetwork(pipe.unet, pipe.text_encoder, LoRASettings(rank=rank, alpha=1.0))
    names = []
    for epoch in range(1, rows):
        torch.manual_seed(epoch)
        with torch.no_grad():
            for parameter in network.parameters():
                parameter.normal_(std=0.02)
        names.append(f"char-{epoch:06d}")
        save_lora(network.kohya_tensors(), work / "loras" / f"{names[-1]}.safetensors", "fp16",
                  {"ss_output_name": "char", "ss_epoch": str(epoch)})
    return model_file, config, names


def charlora_command(work: Path, model: str, names: list[str], cols: int, steps: int, size: int) -> list[str]:
    epochs = ",".join(["chk"] + [name.split("-")[1] for name in names])  # "chk": no such file -> no LoRA, as A1111
    cfgs = ",".join(str(7 + c) for c in range(cols))
    return [sys.executable, "-m", "charlora", "grid", "--base-model", model, "--lora-folder", str(work / "loras"),
            "--prompt", f"{PROMPT} <lora:char-chk:1>", "--x", f"cfg={cfgs}", "--y", f"prompt_sr={epochs}",
            "--steps", str(steps), "--size", str(size), "--seed", str(SEED), "--sampler", "euler_a",
            "--out", str(work / "out-charlora")]


def diffusers_command(work: Path, model: str, config: Path, names: list[str], cols: int, steps: int,
                      size: int) -> list[str]:
    spec = dict(model=model, config=str(config), folder=config != SD15_CONFIG,
                loras=[str(work / "loras" / f"{n}.safetensors") for n in names],
                cols=cols, steps=steps, size=size, out=str(work / "out-diffusers"))
    return [sys.executable, __file__, "--diffusers-loop", json.dumps(spec)]


def diffusers_loop(spec: dict) -> None:
    """diffusers' own loop, as its docs show it; prints `image N/T` to stderr as charlora's grid does."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    load = dict(safety_checker=None, requires_safety_checker=False, local_files_only=True)
    if spec["folder"]:  # the tiny model's own diffusers folder
        pipe = StableDiffusionPipeline.from_pretrained(spec["config"], **load)
    else:
        pipe = StableDiffusionPipeline.from_single_file(spec["model"], config=spec["config"], **load)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    rows = [None] + spec["loras"]
    total, done = len(rows) * spec["cols"], 0
    for row, lora in enumerate(rows):
        if lora:
            pipe.load_lora_weights(lora)
        for col in range(spec["cols"]):
            image = pipe(PROMPT, negative_prompt="", guidance_scale=7 + col, num_inference_steps=spec["steps"],
                         height=spec["size"], width=spec["size"],
                         generator=torch.Generator().manual_seed(SEED)).images[0]
            image.save(out / f"{row:02d}-{col:02d}.png")
            done += 1
            print(f"image {done}/{total}", file=sys.stderr, flush=True)
        if lora:
            pipe.unload_lora_weights()


def measure(command: list[str], env: dict) -> dict:
    """CPU seconds, wall seconds, spawn to first image and peak RSS of one process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first, lines = None, []
    for line in process.stdout:
        lines.append(line.rstrip())
        if first is None and (line.startswith("cell 1/") or line.startswith("image 1/")):
            first = time.perf_counter() - start
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("failed: " + " ".join(command) + "\n" + "\n".join(lines[-15:]))
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": wall, "first_image_s": first,
            "peak_rss_gib": usage.ru_maxrss / 2**20}


def report(rounds: list[dict]) -> str:
    keys = (("cpu_s", "CPU s"), ("wall_s", "wall s"), ("first_image_s", "to first image s"),
            ("peak_rss_gib", "peak RSS GiB"))
    lines = ["| round | " + " | ".join(f"{label} (CharLoRA / diffusers) | ratio" for _, label in keys) + " |",
             "|---|" + "---|---|" * len(keys)]
    ratios = {key: [] for key, _ in keys}
    for number, pair in enumerate(rounds, 1):
        cells = []
        for key, _ in keys:
            ours, theirs = pair["charlora"][key], pair["diffusers"][key]
            ratios[key].append(ours / theirs)
            cells.append(f"{ours:.2f} / {theirs:.2f} | {ours / theirs:.2f}")
        lines.append(f"| {number} | " + " | ".join(cells) + " |")
    lines.append("| **median** | " + " | ".join(f" | **{statistics.median(ratios[key]):.2f}**" for key, _ in keys)
                 + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="an SD 1.5 single file (default: a tiny model made here)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=7, help="rows: no LoRA, then rows - 1 checkpoints")
    parser.add_argument("--cols", type=int, default=4, help="CFG 7, 8, ... as columns")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--diffusers-loop", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.diffusers_loop:
        diffusers_loop(json.loads(args.diffusers_loop))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="compare-generation-"))
    model, config, names = make_inputs(work, args.model, args.rows, args.rank)
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    commands = {"charlora": charlora_command(work, model, names, args.cols, args.steps, args.size),
                "diffusers": diffusers_command(work, model, config, names, args.cols, args.steps, args.size)}
    rounds = []
    for number in range(args.rounds):
        order = ["charlora", "diffusers"] if number % 2 == 0 else ["diffusers", "charlora"]
        pair = {}
        for tool in order:
            pair[tool] = measure(commands[tool], env)
            print(f"round {number + 1} {tool}: " + json.dumps({k: round(v, 2) for k, v in pair[tool].items()}),
                  flush=True)
        rounds.append(pair)
    print(f"\n{args.rows}x{args.cols} grid, {args.steps} steps, {args.size} px, rank {args.rank}, "
          f"{os.environ.get('OMP_NUM_THREADS') or 'default'} threads, model {model}")
    print(report(rounds))


if __name__ == "__main__":
    main()
