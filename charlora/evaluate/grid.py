"""The checkpoint x CFG grid, with AUTOMATIC1111's X/Y/Z plot semantics: axes -> cells (`plan_cells`),
cells -> images (render.Renderer), images -> the grid PNG with A1111's infotext (`build_grid`).
One fixed seed for every cell unless an axis is the seed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CharLoRAError
from ..models import SDXL, family_of
from ..params.evaluation import EVALUATION
from ..train.sampling import SAMPLER_CHOICES, sampler_name
from .axes import AXIS_KINDS, AXIS_TITLES, apply_prompt_sr, axis_label, parse_axis_values
from .layout import cell_parameters, draw_grid, grid_text_chunks, save_png
from .lora_names import NO_LORA, LoraIndex
from .prompts import (RE_EXTRA_NET, EvaluationError, format_lora_tag, lora_tag_of, negative_lora_note, parse_prompt,
                      rename_lora_tag, strip_comments)
from .render import MAX_CELLS, Cell, GenerationSettings, Renderer, check_settings, how_far, output_folder

AXIS_LETTERS = ("X", "Y", "Z")


@dataclass(kw_only=True)
class GridSpec(GenerationSettings):
    base_model: str
    lora_folder: str
    prompt: str
    output_dir: str
    x_kind: str = EVALUATION["x_kind"].default
    x_values: str = ""
    y_kind: str = EVALUATION["y_kind"].default
    y_values: str = EVALUATION["y_values"].default
    z_kind: str = EVALUATION["z_kind"].default
    z_values: str = ""
    seed: int = EVALUATION["seed"].default
    name: str = "grid"


@dataclass
class GridResult:
    grids: list = field(default_factory=list)  # full paths of the grid PNGs, one per Z value rendered
    cells: list = field(default_factory=list)  # full paths of the cell PNGs, in rendering order
    warnings: list = field(default_factory=list)
    files_used: list = field(default_factory=list)  # "column 4 -> NAME.safetensors": the LoRA file(s) used
    stopped: bool = False
    done: int = 0  # images rendered
    total: int = 0  # images planned
    message: str = ""  # "6 images" or "stopped after 2 of 6 images"
    output_dir: str | None = None  # full path of the folder written to

    @property
    def files(self) -> list:
        """Every file written: the grids, then the cells."""
        return self.grids + self.cells


def _apply(axis: int, kind: str, value, cell: dict, index: LoraIndex) -> None:
    """Set one axis value on a cell under construction (A1111's per-axis `apply` functions, called for
    X, then Y, then Z on the same cell: two Prompt S/R axes both replace, each in what the other left)."""
    if kind == "nothing":
        return
    if kind == "prompt_sr":
        search, replacement = value
        try:
            cell["prompt"], cell["negative"] = apply_prompt_sr(cell["prompt"], cell["negative"], search, replacement)
        except EvaluationError as exc:
            changed = f" (the prompt as the earlier axes left it: {cell['prompt']!r})" if cell["changed"] else ""
            raise EvaluationError(f"{AXIS_LETTERS[axis]} axis: {exc}{changed}") from None
        cell["changed"] = True
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


def _axis(kind: str, text: str) -> tuple[list, list[str], list]:
    """(values to apply, labels, the values as written) for one axis."""
    if kind not in AXIS_KINDS:
        raise EvaluationError(f"unknown axis {kind!r}; choose one of {', '.join(AXIS_KINDS)}")
    if kind == "nothing":
        return [None], [""], [None]
    values = parse_axis_values(kind, text)
    if kind == "sampler":  # Kohya's and A1111's names in any case, a schedule type too ("DPM++ 2M Uniform")
        unknown = [v for v in values if not _known(v)]
        if unknown:
            raise EvaluationError(f"Unknown sampler: {', '.join(unknown)}; choose from {', '.join(SAMPLER_CHOICES)} "
                                  "(an A1111 sampler may name its schedule type: Uniform, Karras or Exponential)")
        values = [sampler_name(v) for v in values]
    labels = [axis_label(kind, v) for v in values]
    if kind == "prompt_sr":
        return [(values[0], v) for v in values], labels, values  # (search, replacement), applied per cell
    return values, labels, values


def _known(sampler: str) -> bool:
    try:
        sampler_name(sampler)
    except CharLoRAError:
        return False
    return True


def plan_cells(spec: GridSpec, index: LoraIndex) -> tuple[list[list[list[Cell]]], list[str], list]:
    """Cells as [z][y][x], the warnings, and the (labels, values) of the three axes."""
    kinds = [k for k in (spec.x_kind, spec.y_kind, spec.z_kind) if k != "nothing"]
    # several Prompt S/R axes are A1111's way to vary two words; any other type twice is a mistake
    twice = sorted({k for k in kinds if kinds.count(k) > 1 and k in AXIS_KINDS and k != "prompt_sr"})
    if twice:
        raise EvaluationError(f"two axes are both {AXIS_TITLES[twice[0]]!r}: each axis type may be used once "
                              "(put all its values on one axis)")
    axes = [_axis(spec.x_kind, spec.x_values), _axis(spec.y_kind, spec.y_values), _axis(spec.z_kind, spec.z_values)]
    cells = math.prod(len(a[0]) for a in axes)
    if cells > MAX_CELLS:
        raise EvaluationError(f"this grid has {cells:,} cells ({' x '.join(str(len(a[0])) for a in axes)}); at "
                              f"most {MAX_CELLS:,} are made in one grid: use fewer values")
    sampler = sampler_name(spec.sampler)
    warnings: list[str] = []
    grids = []
    for zv, zl in zip(axes[2][0], axes[2][1]):
        rows = []
        for yv, yl in zip(axes[1][0], axes[1][1]):
            row = []
            for xv, xl in zip(axes[0][0], axes[0][1]):
                draft = {"prompt": spec.prompt, "negative": spec.negative, "cfg": spec.cfg, "seed": spec.seed,
                         "steps": spec.steps, "sampler": sampler, "checkpoint": "prompt", "weight": None,
                         "changed": False}
                for axis, (kind, value) in enumerate(((spec.x_kind, xv), (spec.y_kind, yv), (spec.z_kind, zv))):
                    _apply(axis, kind, value, draft, index)
                row.append(_finish(draft, index, warnings, (xl, yl, zl)))
            rows.append(row)
        grids.append(rows)
    searches = [values[0] for kind, values in zip((spec.x_kind, spec.y_kind, spec.z_kind), (a[2] for a in axes))
                if kind == "prompt_sr" and values]
    return grids, sorted({_reference_note(w, searches) for w in warnings}), [(a[1], a[2]) for a in axes]


def _reference_note(warning: str, searches: list[str]) -> str:
    """The Prompt S/R's first value leaves `<lora:NAME-chk:1>` as it is: naming no file, those cells are the
    base-model reference row or column (the blog's `chk`), which is intended, not a typo to warn about."""
    for search in searches:
        name = f"'{search}'"
        if warning.startswith("lora '") and search in warning.split("'")[1]:
            lora = warning.split("'")[1]
            return (f"the {name} cells render without a LoRA ('{lora}' names no file): the base-model reference, "
                    "as in AUTOMATIC1111")
    return warning


def _finish(draft: dict, index: LoraIndex, warnings: list, labels: tuple) -> Cell:
    """The cell as A1111 renders it: comments stripped after the axes' replacements (the Comments script runs
    after the X/Y/Z plot sets the prompt), then the prompt's tags read; the negative prompt keeps its tags as
    text (A1111 reads extra networks from the prompt only)."""
    prompt_text = strip_comments(draft["prompt"])
    negative = strip_comments(draft["negative"])
    note = negative_lora_note(negative)
    if note:
        warnings.append(note)
    prompt, tags, tag_warnings = parse_prompt(prompt_text)
    warnings.extend(tag_warnings)
    loras, names = [], []
    replaced = tags[0] if tags and draft["checkpoint"] != "prompt" else None  # the checkpoint axis sets that one
    for tag in tags:  # A1111: a tag naming no file renders without it, with a warning
        if tag is replaced:
            continue
        path, warning = index.resolve(tag.name)
        if warning:
            warnings.append(warning)
        if path is not None:
            loras.append((path, tag.te_weight, tag.unet_weight))
            names.append(tag.name)
    if draft["checkpoint"] != "prompt":
        # the checkpoint axis replaces the prompt's first LoRA (keeping its weights), or adds one at 1.0
        te, unet = (replaced.te_weight, replaced.unet_weight) if replaced else (1.0, 1.0)
        if draft["checkpoint"] is not None:
            loras.insert(0, (draft["checkpoint"], te, unet))
            names.insert(0, None)  # not a tag of the prompt: written under its file stem
    if draft["weight"] is not None:
        loras = [(path, draft["weight"], draft["weight"]) if i == 0 else (path, te, unet)
                 for i, (path, te, unet) in enumerate(loras)]
    text, infotext_names = _infotext_prompt(prompt_text, index, loras, names, replaced, draft["weight"] is not None)
    return Cell(prompt.strip(), negative.strip(), draft["cfg"], draft["seed"], draft["steps"], draft["sampler"],
                loras, labels, text=text, lora_names=infotext_names)


def _infotext_prompt(prompt: str, index: LoraIndex, loras: list, names: list, replaced, weight_axis: bool):
    """(the prompt as the cell's infotext writes it, the infotext's name of each LoRA). Every `<lora:...>` tag
    stays where the user typed it, so that pasting the infotext into A1111 renders the same cell: a name only
    CharLoRA knows (`NAME-2`) becomes the file's stem; the tag the checkpoint axis replaced names the axis'
    file (or goes, for "no LoRA"); a LoRA the weight axis set gets that weight (once); a tag naming no file
    stays as typed (A1111 does not find it either); other networks' tags, not rendered, go."""
    final = [index.a1111_name(name, path) if name is not None else Path(path).stem
             for (path, _, _), name in zip(loras, names)]
    by_name = {name: i for i, name in enumerate(names) if name is not None}
    written: set = set()

    def tag_for(i: int) -> str:
        return format_lora_tag(final[i], loras[i][1], loras[i][2])

    def replace(match):
        tag = lora_tag_of(match.group(0))
        if tag is None:
            return ""  # <hypernet:...> and the like: removed and not rendered (with a warning)
        if replaced is not None and tag.name == replaced.name:
            first = tag.name not in written
            written.add(tag.name)
            return tag_for(0) if first and names and names[0] is None else ""
        i = by_name.get(tag.name)
        if i is None:
            return match.group(0)  # names no file: as typed
        if i == 0 and weight_axis:
            first = tag.name not in written
            written.add(tag.name)
            return tag_for(0) if first else ""
        return match.group(0) if final[i] == tag.name else rename_lora_tag(match.group(0), final[i])

    return RE_EXTRA_NET.sub(replace, prompt), final


def files_used(grids: list[list[list[Cell]]]) -> list[str]:
    """Which LoRA file(s) each column, row, grid or cell renders with, e.g. "column 4 -> NAME.safetensors":
    per the first axis whose value alone decides the files, so the user sees what each label really used
    (a Prompt S/R over epochs, the final epoch being NAME.safetensors, reads as one line per column)."""
    cells = [cell for rows in grids for row in rows for cell in row]

    def used(cell: Cell) -> str:
        return ", ".join(Path(p).name for p, _, _ in cell.loras) or "no LoRA"

    if len({used(c) for c in cells}) == 1:
        return [f"every cell -> {used(cells[0])}"]
    for axis, what in enumerate(("column", "row", "grid")):
        by_label: dict[str, set] = {}
        for cell in cells:
            by_label.setdefault(cell.labels[axis], set()).add(used(cell))
        if all(len(files) == 1 for files in by_label.values()):
            return [f"{what} {label} -> {files.pop()}" for label, files in by_label.items()]
    return ["cell " + " / ".join(label for label in c.labels if label) + f" -> {used(c)}" for c in cells]


def build_grid(spec: GridSpec, renderer: Renderer | None = None, progress=None, stop=None) -> GridResult:
    """Render every cell and save the grid PNG(s) and each cell with its parameters.

    `progress(done, total, image)` is called after each cell; `stop()` returning True ends early: the
    grid is still laid out whole, the cells not rendered in grey, and `message` says how far it got."""
    check_settings(spec)
    out = output_folder(spec.output_dir)
    index = LoraIndex(spec.lora_folder)
    grids, warnings, labels = plan_cells(spec, index)
    renderer = renderer or Renderer(spec.base_model, clip_skip=spec.clip_skip)
    pipe = getattr(renderer, "pipe", None)  # a renderer stand-in (tests) may have none
    if pipe is not None and family_of(pipe) is SDXL and max(spec.width, spec.height) < 768:
        warnings.append(f"SDXL draws best at 1024 px; at {spec.width}x{spec.height} its images (and so the "
                        "comparison) are poorer: set width and height to the run's resolution")
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    total = sum(len(row) for rows in grids for row in rows)
    result = GridResult(warnings=warnings, files_used=files_used(grids), total=total, output_dir=str(out))
    (x_labels, x_values), (y_labels, y_values), (z_labels, z_values) = labels
    hashes: dict = {}

    def infotext(cell: Cell) -> str:
        names = cell.lora_names or [Path(p).stem for p, _, _ in cell.loras]
        return cell_parameters(cell.text or cell.prompt, cell.negative, cell.steps, cell.sampler, cell.cfg,
                               cell.seed, spec.width, spec.height,
                               [(name, t, u, _hash(p, hashes)) for (p, t, u), name in zip(cell.loras, names)],
                               extra={"Clip skip": spec.clip_skip} if spec.clip_skip > 1 else None)

    for z, rows in enumerate(grids):
        images = [[None] * len(row) for row in rows]  # None: not rendered, drawn grey
        for y, row in enumerate(rows):
            for x, cell in enumerate(row):
                if result.stopped or (stop is not None and stop()):
                    result.stopped = True
                    continue
                image = renderer.render(cell, spec.width, spec.height)
                images[y][x] = image
                path = out / f"{spec.name}-{stamp}-z{z}-y{y}-x{x}.png"
                save_png(image, path, {"parameters": infotext(cell)})
                result.cells.append(str(path))
                result.done += 1
                if progress is not None:
                    progress(result.done, total, image)
        if not any(image is not None for row in images for image in row):
            continue  # stopped before this grid began: nothing to lay out
        grid, _ = draw_grid(images, x_labels, y_labels, title=z_labels[z] or None)
        # A1111's grid infotext: the first cell's whole infotext (prompt, steps, sampler, CFG, seed, size, LoRA
        # hashes), then the X/Y/Z plot's own fields, so dropping the grid into PNG Info restores the settings
        chunks = grid_text_chunks(spec.x_kind, x_values, spec.y_kind, y_values,
                                  z=(spec.z_kind, [z_values[z]]) if spec.z_kind != "nothing" else None,
                                  texts={"x": spec.x_values, "y": spec.y_values, "z": spec.z_values},
                                  extra={"parameters": infotext(rows[0][0]),
                                         "prompt": spec.prompt, "negative": spec.negative, "seed": str(spec.seed),
                                         "steps": str(spec.steps), "sampler": sampler_name(spec.sampler),
                                         "warnings": json.dumps(warnings),
                                         "charlora.files": json.dumps(result.files_used),
                                         **({"charlora.stopped": how_far(result)} if result.stopped else {})})
        path = out / (f"{spec.name}-{stamp}" + (f"-z{z}" if len(grids) > 1 else "") + ".png")
        save_png(grid, path, chunks)
        result.grids.append(str(path))
    result.message = how_far(result)
    return result


def _hash(path, cache: dict) -> str:
    """A1111's "Lora hashes" entry: the first 12 hex of Kohya's sshs_model_hash."""
    if path not in cache:
        from ..lora.kohya_file import read_header

        cache[path] = read_header(path).metadata.get("sshs_model_hash", "")[:12]
    return cache[path]


def cells_count(spec: GridSpec) -> int:
    index = LoraIndex(spec.lora_folder)
    grids, _, _ = plan_cells(spec, index)
    return sum(len(row) for rows in grids for row in rows)


