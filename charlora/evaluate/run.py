"""Scoring a finished run: generate with every checkpoint (and without LoRA), embed, score, recommend.

For each checkpoint of the run (epoch files in order, then the final file) the same prompts are
rendered over the same seeds; the base model without LoRA gives the baseline. Images are embedded
with the configured scorer and compared with the training images (identity), with each other
(consistency) and with their prompts (prompt fidelity). The report is written as JSON beside the
images, and the recommended checkpoint comes with its reasons (docs/evaluation.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..dataset.folders import scan_parent
from ..dataset.images import load_rgb
from ..errors import CharLoRAError
from ..fileio import atomic_write_text
from ..lora.kohya_file import read_header
from .grid import Cell, GenerationSettings, Renderer
from .keep import run_files_of
from .prompts import parse_prompt
from .score import BASELINE_NAME, load_embedder, score_images, score_report, tiny_clip


@dataclass(kw_only=True)
class ScoreSpec(GenerationSettings):
    base_model: str
    lora_folder: str
    output_name: str
    train_data_dir: str
    output_dir: str
    prompts: list = field(default_factory=lambda: ["portrait of a girl"])
    seeds: list = field(default_factory=lambda: [1, 2, 3, 4])
    scorer: str = ""  # local folder, SD folder with safety_checker, Hub id, or "tiny" (tests and demos)
    caption_extension: str = ".txt"


def checkpoint_epoch(path: Path) -> int | None:
    """Epoch of a Kohya-named file (NAME-000004 -> 4); for the final file, its ss_epoch metadata."""
    match = re.search(r"-(\d{6})$", path.stem)
    if match:
        return int(match.group(1))
    try:
        epoch = read_header(path).metadata.get("ss_epoch")
        return int(epoch) if epoch and epoch.isdigit() else None
    except CharLoRAError:
        return None


def training_images(train_data_dir: str, caption_extension: str) -> list:
    problems: list = []
    concepts = scan_parent(Path(train_data_dir), caption_extension, False, problems) \
        if Path(train_data_dir).is_dir() else []
    images = [load_rgb(item.path) for c in concepts for item in c.images]
    if not images:
        raise CharLoRAError(f"no training images found in {train_data_dir!r}: the identity score compares "
                            "generations with them (set train_data_dir to the run's image folder)")
    return images


def score_run(spec: ScoreSpec, renderer: Renderer | None = None, embedder=None, progress=None, stop=None) -> dict:
    """Score every checkpoint of the run; returns (and writes) the report with the recommendation."""
    if not [p for p in spec.prompts if p.strip()] or not spec.seeds:
        raise CharLoRAError("scoring needs at least one prompt and one seed (prompts: one per line; seeds: e.g. 1-4)")
    files = run_files_of(Path(spec.lora_folder), spec.output_name)
    if not files:
        raise CharLoRAError(f"no LoRA files named {spec.output_name}-000001.safetensors ... {spec.output_name}"
                            f".safetensors in {spec.lora_folder}; check the folder and output_name")
    if embedder is None:
        embedder = tiny_clip() if spec.scorer == "tiny" else load_embedder(spec.scorer or spec.base_model)
    renderer = renderer or Renderer(spec.base_model, clip_skip=spec.clip_skip)
    train_embs = embedder.embed_images(training_images(spec.train_data_dir, spec.caption_extension))
    prompts = [parse_prompt(p)[0].strip() for p in spec.prompts]  # the checkpoint is applied, not named
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = (len(files) + 1) * len(prompts) * len(spec.seeds)
    done = 0

    def render_all(lora: Path | None, label: str):
        nonlocal done
        images, image_prompts = [], []
        for p_index, prompt in enumerate(prompts):
            for seed in spec.seeds:
                if stop is not None and stop():
                    raise StopScoring
                cell = Cell(prompt, spec.negative, spec.cfg, seed, spec.steps, spec.sampler,
                            [(lora, 1.0, 1.0)] if lora else [], ("", "", ""))
                image = renderer.render(cell, spec.width, spec.height)
                image.save(out / f"score-{label}-p{p_index}-s{seed}.png")
                images.append(image)
                image_prompts.append(prompt)
                done += 1
                if progress is not None:
                    progress(done, total, image)
        return images, image_prompts

    try:
        images, image_prompts = render_all(None, "nolora")
        baseline = score_images(embedder, BASELINE_NAME, images, train_embs, image_prompts)
        scores = []
        for path in files:
            images, image_prompts = render_all(path, path.stem)
            scores.append(score_images(embedder, path.stem, images, train_embs, image_prompts,
                                       epoch=checkpoint_epoch(path), baseline=baseline))
    except StopScoring:
        return {"stopped": True}
    report = score_report(scores, baseline, scorer=embedder.name)
    report["files"] = {p.stem: str(p) for p in files}
    report["recommended_file"] = report["files"][report["recommendation"]["name"]]
    atomic_write_text(out / f"{spec.output_name}-scores.json", json.dumps(report, indent=2))
    return report


class StopScoring(Exception):
    """Raised inside score_run when the user pressed Stop."""
