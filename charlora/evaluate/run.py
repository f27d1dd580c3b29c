"""Scoring a finished run: generate with every checkpoint (and without LoRA), embed, score, recommend.

For each checkpoint of the run (epoch files in order, then the final file) the same prompts are
rendered over the same seeds; the base model without LoRA gives the baseline. Images are embedded
with the configured scorer and compared with the training images (identity), with each other
(consistency) and with their prompts (prompt fidelity). The report is written as JSON beside the
images, and the recommended checkpoint comes with its reasons (docs/evaluation.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..dataset.folders import scan_parent
from ..dataset.images import load_rgb
from ..errors import CharLoRAError
from ..fileio import atomic_write_text
from ..params import PARAMS_BY_KEY
from ..params.evaluation import EVALUATION
from ..train.sampling import sampler_name
from .embedders import scorer_for
from .keep import run_files
from .prompts import parse_prompt, strip_comments
from .render import Cell, GenerationSettings, Renderer, check_settings
from .score import BASELINE_NAME, score_images, score_report


@dataclass(kw_only=True)
class ScoreSpec(GenerationSettings):
    base_model: str
    lora_folder: str
    output_name: str
    train_data_dir: str
    output_dir: str
    prompts: list
    seeds: list
    scorer: str = EVALUATION["scorer"].default  # its help (params/evaluation.py) says each value in words
    caption_extension: str = PARAMS_BY_KEY["caption_extension"].default  # the training run's


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
    """Score every checkpoint of the run; returns (and writes) the report with the recommendation.

    `progress(done, total, image)` is called after each image; `stop()` returning True ends early with
    {"stopped": True, "message", "images", "output_dir"}. The report also names what it did not score
    ("other_runs": files of other runs with this name) and every file it wrote ("report_file", "images")."""
    if not [p for p in spec.prompts if p.strip()] or not spec.seeds:
        raise CharLoRAError("scoring needs at least one prompt and one seed (prompts: one per line; seeds: e.g. 1-4)")
    check_settings(spec)
    sampler = sampler_name(spec.sampler)
    run = run_files(Path(spec.lora_folder), spec.output_name)
    files = run.files
    if not files:
        raise CharLoRAError(f"no LoRA files named {spec.output_name}-000001.safetensors ... {spec.output_name}"
                            f".safetensors in {spec.lora_folder}; check the folder and output_name")
    if embedder is None:  # loaded before any image is rendered: a scorer that cannot load stops at once
        embedder = scorer_for(spec.scorer, spec.base_model)
    renderer = renderer or Renderer(spec.base_model, clip_skip=spec.clip_skip)
    train_embs = embedder.embed_images(training_images(spec.train_data_dir, spec.caption_extension))
    # the checkpoint is applied, not named: tags and comments go, as in A1111
    prompts = [parse_prompt(strip_comments(p))[0].strip() for p in spec.prompts]
    negative = strip_comments(spec.negative).strip()  # a <lora:...> tag there stays text, as in A1111
    out = Path(spec.output_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    total = (len(files) + 1) * len(prompts) * len(spec.seeds)
    done = 0
    written: list[str] = []

    def render_all(lora: Path | None, label: str):
        nonlocal done
        images, image_prompts = [], []
        for p_index, prompt in enumerate(prompts):
            for seed in spec.seeds:
                if stop is not None and stop():
                    raise StopScoring
                cell = Cell(prompt, negative, spec.cfg, seed, spec.steps, sampler,
                            [(lora, 1.0, 1.0)] if lora else [], ("", "", ""))
                image = renderer.render(cell, spec.width, spec.height)
                path = out / f"score-{label}-p{p_index}-s{seed}.png"
                image.save(path)
                written.append(str(path))
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
            info = run.checkpoints[path]
            images, image_prompts = render_all(path, path.stem)
            score = score_images(embedder, path.stem, images, train_embs, image_prompts, epoch=info.epoch,
                                 baseline=baseline)
            score.steps, score.label = info.steps, info.label
            scores.append(score)
    except StopScoring:
        return {"stopped": True, "message": f"stopped after {done} of {total} images", "images": written,
                "output_dir": str(out)}
    report = score_report(scores, baseline, scorer=embedder.name)
    report["files"] = {p.stem: str(p.absolute()) for p in files}
    report["recommended_file"] = report["files"][report["recommendation"]["name"]]
    report["other_runs"] = [str(p.absolute()) for p in run.others]
    report["other_runs_note"] = run.note()
    report["output_dir"] = str(out)
    report["report_file"] = str(out / f"{spec.output_name}-scores.json")
    report["images"] = written
    atomic_write_text(Path(report["report_file"]), json.dumps(report, indent=2))
    return report


class StopScoring(Exception):
    """Raised inside score_run when the user pressed Stop."""
