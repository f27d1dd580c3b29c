"""Seed batches: one checkpoint over several seeds, as one sheet: does the character hold?"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..params.evaluation import EVALUATION
from ..train.sampling import sampler_name
from .layout import make_sheet, save_png
from .lora_names import resolve_lora
from .prompts import EvaluationError, parse_prompt, strip_comments
from .render import MAX_CELLS, Cell, GenerationSettings, Renderer, check_settings, how_far, output_folder


@dataclass(kw_only=True)
class SeedBatchSpec(GenerationSettings):
    """One checkpoint over several seeds, as one sheet: does the character hold?"""

    base_model: str
    prompt: str  # its <lora:...> tags are removed: the batch renders with `lora` alone
    seeds: list
    output: str  # the sheet's PNG file
    lora: str = ""  # a path, a file name, or a name as the grid lists it (NAME-000002, NAME-2, NAME); "": none
    lora_folder: str = "."  # where a name is looked up (and a relative path, first)
    weight: float = EVALUATION["weight"].default
    columns: int = 4


@dataclass
class SeedBatchResult:
    sheet: str | None  # full path of the sheet PNG; None when stopped before the first image
    images: list  # the PIL images, in seed order
    seeds: list  # the seeds rendered
    lora: str | None  # full path of the LoRA file used; None: the base model
    stopped: bool = False
    done: int = 0
    total: int = 0
    message: str = ""  # "8 images" or "stopped after 3 of 8 images"

    @property
    def files(self) -> list:
        """Every file written."""
        return [self.sheet] if self.sheet else []


def seed_batch(spec: SeedBatchSpec, renderer: Renderer | None = None, progress=None, stop=None) -> SeedBatchResult:
    """Render `spec.lora` over every seed and save the sheet. `progress(done, total, image)` is called
    after each image; `stop()` returning True ends after the current image, keeping what was made."""
    if not spec.seeds:
        raise EvaluationError("a seed batch needs at least one seed (e.g. 1-8 or 3,5,7)")
    check_settings(spec)
    if len(spec.seeds) > MAX_CELLS:
        raise EvaluationError(f"{len(spec.seeds):,} seeds: at most {MAX_CELLS:,} in one batch")
    output_folder(Path(spec.output).parent)
    lora = resolve_lora(spec.lora, spec.lora_folder)
    sampler = sampler_name(spec.sampler)
    clean = parse_prompt(strip_comments(spec.prompt))[0].strip()  # the batch renders `lora` alone
    negative = strip_comments(spec.negative).strip()  # a <lora:...> tag there stays text, as in A1111
    renderer = renderer or Renderer(spec.base_model, clip_skip=spec.clip_skip)
    loras = [(lora, spec.weight, spec.weight)] if lora is not None else []
    total = len(spec.seeds)
    result = SeedBatchResult(sheet=None, images=[], seeds=[], lora=str(lora.absolute()) if lora else None,
                             total=total)
    for seed in spec.seeds:
        if stop is not None and stop():
            result.stopped = True
            break
        cell = Cell(clean, negative, spec.cfg, int(seed), spec.steps, sampler, loras, ("", "", ""))
        image = renderer.render(cell, spec.width, spec.height)
        result.images.append(image)
        result.seeds.append(int(seed))
        result.done += 1
        if progress is not None:
            progress(result.done, total, image)
    result.message = how_far(result)
    if result.images:
        sheet = make_sheet(result.images, [f"Seed: {s}" for s in result.seeds], spec.columns)
        output = Path(spec.output).absolute()
        output.parent.mkdir(parents=True, exist_ok=True)
        save_png(sheet, output, {"charlora.seeds": json.dumps(result.seeds), "prompt": spec.prompt,
                                 "lora": lora.name if lora else "none", "sampler": sampler,
                                 **({"charlora.stopped": result.message} if result.stopped else {})})
        result.sheet = str(output)
    return result
