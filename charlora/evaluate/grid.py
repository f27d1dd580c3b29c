"""The checkpoint x CFG grid (AUTOMATIC1111's X/Y/Z plot semantics) and seed batches.

The base model is loaded once, each LoRA file once (as a diffusers adapter), and each cell only
switches adapters and weights: a cell without LoRA disables them, which gives the base model's image
bit for bit. One fixed seed for every cell unless an axis is the seed.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CharLoRAError
from ..models.loading import load_base_model
from ..train.sampling import SamplePrompt, generate_samples
from .layout import cell_parameters, draw_grid, grid_text_chunks, make_sheet, save_png
from .prompts import AXIS_KINDS, EvaluationError, LoraIndex, axis_label, parse_axis_values, parse_prompt, prompt_sr

NO_LORA = ("none", "no lora", "no-lora", "base")


@dataclass(kw_only=True)
class GenerationSettings:
    """How each image is generated (shared by grids, seed batches and scoring)."""

    negative: str = ""
    steps: int = 20
    cfg: float = 7.0
    sampler: str = "euler_a"
    width: int = 512
    height: int = 512
    clip_skip: int = 1


@dataclass(kw_only=True)
class GridSpec(GenerationSettings):
    base_model: str
    lora_folder: str
    prompt: str
    output_dir: str
    x_kind: str = "checkpoint"
    x_values: str = ""
    y_kind: str = "cfg"
    y_values: str = "7,8,9,10"
    z_kind: str = "nothing"
    z_values: str = ""
    seed: int = 1234
    name: str = "grid"


@dataclass
class Cell:
    prompt: str
    negative: str
    cfg: float
    seed: int
    steps: int
    sampler: str
    loras: list  # [(path, te_weight, unet_weight)]
    labels: tuple  # (x label, y label, z label)


@dataclass
class GridResult:
    grids: list = field(default_factory=list)  # one PNG per Z value
    cells: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    stopped: bool = False


def _apply(kind: str, value, cell: dict, index: LoraIndex, warnings: list) -> None:
    """Set one axis value on a cell under construction (A1111's per-axis `apply` functions)."""
    if kind == "nothing":
        return
    if kind == "prompt_sr":
        cell["prompt"], cell["negative"] = value
    elif kind == "cfg":
        cell["cfg"] = float(value)
    elif kind == "seed":
        cell["seed"] = int(value)
    elif kind == "steps":
        cell["steps"] = int(value)
    elif kind == "sampler":
        cell["sampler"] = str(value)
    elif kind == "lora_weight":
        cell["weight"] = float(value)
    elif kind == "checkpoint":
        if value is None or str(value).strip().lower() in NO_LORA:
            cell["checkpoint"] = None
        else:
            path, warning = index.resolve(str(value).strip())
            if path is None:
                raise EvaluationError(f"checkpoint axis: {value!r} is not a LoRA file in {index.folder}"
                                      + (f" ({warning})" if warning else ""))
            cell["checkpoint"] = path


def _axis(kind: str, text: str, spec: GridSpec) -> tuple[list, list[str], list]:
    """(values to apply, labels, the values as written) for one axis."""
    if kind not in AXIS_KINDS:
        raise EvaluationError(f"unknown axis {kind!r}; choose one of {', '.join(AXIS_KINDS)}")
    if kind == "nothing":
        return [None], [""], [None]
    values = parse_axis_values(kind, text)
    labels = [axis_label(kind, v) for v in values]
    if kind == "prompt_sr":
        return prompt_sr(spec.prompt, spec.negative, values), labels, values
    return values, labels, values


def plan_cells(spec: GridSpec, index: LoraIndex) -> tuple[list[list[list[Cell]]], list[str], list]:
    """Cells as [z][y][x], the warnings, and the (labels, values) of the three axes."""
    axes = [_axis(spec.x_kind, spec.x_values, spec), _axis(spec.y_kind, spec.y_values, spec),
            _axis(spec.z_kind, spec.z_values, spec)]
    warnings: list[str] = []
    grids = []
    for z, (zv, zl) in enumerate(zip(axes[2][0], axes[2][1])):
        rows = []
        for yv, yl in zip(axes[1][0], axes[1][1]):
            row = []
            for xv, xl in zip(axes[0][0], axes[0][1]):
                draft = {"prompt": spec.prompt, "negative": spec.negative, "cfg": spec.cfg, "seed": spec.seed,
                         "steps": spec.steps, "sampler": spec.sampler, "checkpoint": "prompt", "weight": None}
                for kind, value in ((spec.x_kind, xv), (spec.y_kind, yv), (spec.z_kind, zv)):
                    _apply(kind, value, draft, index, warnings)
                row.append(_finish(draft, index, warnings, (xl, yl, zl)))
            rows.append(row)
        grids.append(rows)
    return grids, sorted(set(warnings)), [(a[1], a[2]) for a in axes]


def _finish(draft: dict, index: LoraIndex, warnings: list, labels: tuple) -> Cell:
    prompt, tags = parse_prompt(draft["prompt"])[:2]
    negative = parse_prompt(draft["negative"])[0]
    loras = []
    replaced = tags[0] if tags and draft["checkpoint"] != "prompt" else None  # the checkpoint axis sets that one
    for tag in tags:  # A1111: a tag naming no file renders without it, with a warning
        if tag is replaced:
            continue
        path, warning = index.resolve(tag.name)
        if warning:
            warnings.append(warning)
        if path is not None:
            loras.append((path, tag.te_weight, tag.unet_weight))
    if draft["checkpoint"] != "prompt":
        # the checkpoint axis replaces the prompt's first LoRA (keeping its weights), or adds one at 1.0
        te, unet = (replaced.te_weight, replaced.unet_weight) if replaced else (1.0, 1.0)
        if draft["checkpoint"] is not None:
            loras.insert(0, (draft["checkpoint"], te, unet))
    if draft["weight"] is not None:
        loras = [(path, draft["weight"], draft["weight"]) if i == 0 else (path, te, unet)
                 for i, (path, te, unet) in enumerate(loras)]
    return Cell(prompt.strip(), negative.strip(), draft["cfg"], draft["seed"], draft["steps"], draft["sampler"],
                loras, labels)


class Renderer:
    """A base model with LoRA files loaded on demand, once each; renders one cell at a time."""

    def __init__(self, base_model: str, device: str | None = None, clip_skip: int = 1):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.pipe = load_base_model(base_model, dtype=dtype, device=self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.clip_skip = clip_skip
        self.adapters: dict[tuple, str] = {}

    def _adapter(self, path: Path) -> str:
        stat = path.stat()
        key = (path.resolve(), stat.st_mtime_ns, stat.st_size)  # a retrained file of the same name is new
        if key not in self.adapters:
            name = f"lora{len(self.adapters)}"  # peft adapter names must be plain identifiers
            try:
                with warnings.catch_warnings():  # peft warns that a second adapter is a second adapter
                    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                    self.pipe.load_lora_weights(str(path), adapter_name=name)
            except Exception as exc:
                raise CharLoRAError(f"{path} could not be loaded as a LoRA ({exc})") from exc
            self.adapters[key] = name
        return self.adapters[key]

    def render(self, cell: Cell, width: int, height: int):
        if cell.loras:
            names = [self._adapter(Path(p)) for p, _, _ in cell.loras]
            self.pipe.enable_lora()
            self.pipe.set_adapters(names, adapter_weights=[{"unet": u, "text_encoder": t} for _, t, u in cell.loras])
        elif self.adapters:
            self.pipe.disable_lora()  # the base model, exactly
        sample = SamplePrompt(cell.prompt, cell.negative, width, height, cell.steps, cell.cfg, cell.seed,
                              sampler=cell.sampler)
        return generate_samples(self.pipe, [sample], cell.sampler, self.device, clip_skip=self.clip_skip)[0]


def build_grid(spec: GridSpec, renderer: Renderer | None = None, progress=None, stop=None) -> GridResult:
    """Render every cell and save the grid PNG(s) and each cell with its parameters.
    `progress(done, total, image)` is called after each cell; `stop()` returning True ends early."""
    index = LoraIndex(spec.lora_folder)
    grids, warnings, labels = plan_cells(spec, index)
    renderer = renderer or Renderer(spec.base_model, clip_skip=spec.clip_skip)
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result = GridResult(warnings=warnings)
    total = sum(len(row) for rows in grids for row in rows)
    (x_labels, x_values), (y_labels, y_values), (z_labels, z_values) = labels
    hashes: dict = {}
    done = 0
    for z, rows in enumerate(grids):
        images = []
        for y, row in enumerate(rows):
            images.append([])
            for x, cell in enumerate(row):
                if stop is not None and stop():
                    result.stopped = True
                    return result
                image = renderer.render(cell, spec.width, spec.height)
                images[-1].append(image)
                params = cell_parameters(cell.prompt, cell.negative, cell.steps, cell.sampler, cell.cfg, cell.seed,
                                         spec.width, spec.height,
                                         [(Path(p).stem, t, u, _hash(p, hashes)) for p, t, u in cell.loras])
                path = out / f"{spec.name}-{stamp}-z{z}-y{y}-x{x}.png"
                save_png(image, path, {"parameters": params})
                result.cells.append(str(path))
                done += 1
                if progress is not None:
                    progress(done, total, image)
        grid, _ = draw_grid(images, x_labels, y_labels, title=z_labels[z] or None)
        chunks = grid_text_chunks(spec.x_kind, x_values, spec.y_kind, y_values,
                                  z=(spec.z_kind, [z_values[z]]) if spec.z_kind != "nothing" else None,
                                  extra={"prompt": spec.prompt, "negative": spec.negative, "seed": str(spec.seed),
                                         "steps": str(spec.steps), "sampler": spec.sampler,
                                         "warnings": json.dumps(warnings)})
        path = out / (f"{spec.name}-{stamp}" + (f"-z{z}" if len(grids) > 1 else "") + ".png")
        save_png(grid, path, chunks)
        result.grids.append(str(path))
    return result


def _hash(path, cache: dict) -> str:
    """A1111's "Lora hashes" entry: the first 12 hex of Kohya's sshs_model_hash."""
    if path not in cache:
        from ..lora.kohya_file import read_header

        cache[path] = read_header(path).metadata.get("sshs_model_hash", "")[:12]
    return cache[path]


def seed_batch(renderer: Renderer, lora: Path | None, prompt: str, negative: str, seeds: list[int], output: Path,
               steps: int = 20, cfg: float = 7.0, sampler: str = "euler_a", width: int = 512, height: int = 512,
               weight: float = 1.0, columns: int = 4) -> tuple[Path, list]:
    """The chosen checkpoint over several seeds, as one sheet: does the character hold?"""
    clean, tags = parse_prompt(prompt)[:2]
    loras = [(lora, weight, weight)] if lora is not None else []
    images = []
    for seed in seeds:
        images.append(renderer.render(Cell(clean.strip(), negative, cfg, seed, steps, sampler, loras, ("", "", "")),
                                      width, height))
    sheet = make_sheet(images, [f"Seed: {s}" for s in seeds], columns)
    save_png(sheet, output, {"charlora.seeds": json.dumps(seeds), "prompt": prompt,
                             "lora": str(lora) if lora else "none"})
    return output, images


def cells_count(spec: GridSpec) -> int:
    index = LoraIndex(spec.lora_folder)
    grids, _, _ = plan_cells(spec, index)
    return sum(len(row) for rows in grids for row in rows)


_SHARED: dict = {}


def shared_renderer(base_model: str, clip_skip: int = 1) -> Renderer:
    """One renderer per process for the GUI: the base model stays loaded between grids, seed batches and
    scores, and is replaced (its memory freed) when another base model is asked for."""
    key = (base_model, clip_skip)
    if _SHARED.get("key") != key:
        _SHARED.clear()
        _SHARED.update(key=key, renderer=Renderer(base_model, clip_skip=clip_skip))
    return _SHARED["renderer"]
