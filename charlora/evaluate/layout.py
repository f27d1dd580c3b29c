"""Grid images, seed sheets and their PNG text, laid out as AUTOMATIC1111's X/Y/Z plot (Pillow only).

A1111's `images.draw_grid_annotations`: font size (cell width + cell height) // 25, line spacing half of
it, labels wrapped word by word to the column width (row labels: 3/4 of a cell width, the left margin),
a line still too wide drawn smaller; no margin on a side whose labels are all empty ("Nothing" axis).
The PNG text follows A1111's infotext (`processing.create_infotext`) under the key "parameters".
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from io import StringIO
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from ..errors import CharLoRAError
from ..fileio import atomic_path
from .axes import AXIS_TITLES, axis_label
from .prompts import EvaluationError, format_lora_tag, parse_prompt

TEXT = (0, 0, 0)
MISSING = (128, 128, 128)  # a cell not rendered (failed, or the grid was stopped first)
MIN_FONT = 6


@dataclass
class GridGeometry:
    cell_width: int
    cell_height: int
    columns: int
    rows: int
    left: int  # the cell area starts at (left, top) and is columns*cell_width x rows*cell_height
    top: int
    width: int
    height: int

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        x, y = self.left + column * self.cell_width, self.top + row * self.cell_height
        return x, y, x + self.cell_width, y + self.cell_height


# --------------------------------------------------------------------------- text

@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _wrap(text: str, size: int, width: int) -> list[tuple[str, int]]:
    """[(line, font size)]: words wrapped to `width`; a word wider than it gets a smaller font, and is cut
    with "…" if even the smallest size is too wide (A1111 lets it run over the cells)."""
    font = _font(size)
    lines = []
    for paragraph in str(text).split("\n"):
        line = ""
        for word in paragraph.split():
            # a file name too wide for its column breaks after its hyphens ("wwaa-demo-" / "000001")
            pieces = [word] if font.getlength(word) <= width else re.findall(r"[^-_]+[-_]*|[-_]+", word)
            for k, piece in enumerate(pieces):
                candidate = f"{line}{'' if k else ' '}{piece}" if line else piece
                if not line or font.getlength(candidate) <= width:
                    line = candidate
                else:
                    lines.append(line)
                    line = piece
        lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    fitted = []
    for line in lines:
        line_size = size
        while line_size > MIN_FONT and _font(line_size).getlength(line) > width:
            line_size -= 1
        if _font(line_size).getlength(line) > width:  # too long even at the smallest size: cut it
            while len(line) > 1 and _font(line_size).getlength(line + "…") > width:
                line = line[:-1]
            line += "…"
        fitted.append((line, line_size))
    return fitted


class _Label:
    """A wrapped label and the height of its block of lines."""

    def __init__(self, text: str, size: int, width: int):
        self.lines = _wrap(text, size, width)
        ascent, descent = _font(size).getmetrics()
        self.line_height, self.spacing = ascent + descent, size // 2
        self.height = len(self.lines) * self.line_height + max(len(self.lines) - 1, 0) * self.spacing

    def draw(self, draw: ImageDraw.ImageDraw, center_x: float, top: float) -> None:
        y = top
        for line, size in self.lines:
            draw.text((center_x, y + self.line_height / 2), line, font=_font(size), fill=TEXT, anchor="mm")
            y += self.line_height + self.spacing


def _font_size(cell_width: int, cell_height: int) -> int:
    return max(10, (cell_width + cell_height) // 25)  # A1111's size; 10 at least for thumbnails


# --------------------------------------------------------------------------- grid

def _cell_size(cells) -> tuple[int, int]:
    sizes = {image.size for row in cells for image in row if image is not None}
    if len(sizes) != 1:
        raise EvaluationError(f"grid cells must all have one size; got {sorted(sizes) or 'no images'}")
    return sizes.pop()


def draw_grid(cells, column_labels, row_labels, title=None) -> tuple[Image.Image, GridGeometry]:
    """Rows x columns of equal-size cells (`cells[row][column]`, None for a failed cell) with labels on
    white margins above the columns and left of the rows, and `title` (the Z value) above everything."""
    rows, columns = len(cells), len(cells[0]) if cells else 0
    if not rows or not columns or any(len(row) != columns for row in cells):
        raise EvaluationError(f"grid cells must be a non-empty rectangle; got rows of {[len(r) for r in cells]}")
    if len(column_labels) != columns or len(row_labels) != rows:
        raise EvaluationError(f"{len(column_labels)} column labels and {len(row_labels)} row labels for a grid "
                              f"of {columns} columns and {rows} rows")
    cw, ch = _cell_size(cells)
    size = _font_size(cw, ch)
    spacing = size // 2
    left = cw * 3 // 4 if any(str(t).strip() for t in row_labels) else 0
    column_texts = [_Label(t, size, max(cw - spacing, 1)) for t in column_labels]  # a gap between neighbours
    row_texts = [_Label(t, size, max(left - spacing, 1)) for t in row_labels]
    head = max(t.height for t in column_texts)
    pad_top = head + 2 * spacing if head else 0
    width = left + columns * cw
    title_text = _Label(title, size, max(width - 2 * spacing, 1)) if title and str(title).strip() else None
    title_band = title_text.height + 2 * spacing if title_text else 0
    top = title_band + pad_top
    geometry = GridGeometry(cw, ch, columns, rows, left, top, width, top + rows * ch)

    grid = Image.new("RGB", (geometry.width, geometry.height), "white")
    for r, row in enumerate(cells):
        for c, image in enumerate(row):
            box = geometry.cell_box(r, c)
            if image is None:
                grid.paste(MISSING, box)
            else:
                grid.paste(image.convert("RGB"), box[:2])
    draw = ImageDraw.Draw(grid)
    if title_text:
        title_text.draw(draw, width / 2, spacing)
    for c, text in enumerate(column_texts):
        text.draw(draw, left + c * cw + cw / 2, title_band + (pad_top - text.height) / 2)
    for r, text in enumerate(row_texts):
        text.draw(draw, left / 2, top + r * ch + (ch - text.height) / 2)
    return grid, geometry


def make_sheet(images, labels, columns: int) -> Image.Image:
    """Images in rows of `columns` (a seed batch), each with its label on white above it."""
    if not images:
        raise EvaluationError("a sheet needs at least one image")
    labels = list(labels) if labels is not None else [""] * len(images)
    if len(labels) != len(images):
        raise EvaluationError(f"{len(labels)} labels for {len(images)} images")
    columns = max(1, min(int(columns), len(images)))
    rows = math.ceil(len(images) / columns)
    cw, ch = max(i.width for i in images), max(i.height for i in images)
    size = _font_size(cw, ch)
    texts = [_Label(t, size, cw - size) for t in labels]
    band = max(t.height for t in texts)
    band = band + size if band else 0
    sheet = Image.new("RGB", (columns * cw, rows * (band + ch)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, text) in enumerate(zip(images, texts)):
        x, y = (i % columns) * cw, (i // columns) * (band + ch)
        sheet.paste(image.convert("RGB"), (x + (cw - image.width) // 2, y + band + (ch - image.height) // 2))
        text.draw(draw, x + cw / 2, y + (band - text.height) / 2)
    return sheet


# --------------------------------------------------------------------------- PNG text

def save_png(image: Image.Image, path, text: dict) -> Path:
    """A PNG with text chunks, written atomically with mode 0644 (A1111 reads "parameters")."""
    info = PngInfo()
    for key, value in text.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"PNG text must map str to str; {key!r} -> {type(value).__name__}")
        info.add_text(key, value)  # falls back to iTXt (UTF-8) for text Latin-1 cannot hold
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG", pnginfo=info)
    except OSError as exc:
        raise CharLoRAError(f"cannot write {path} ({exc.strerror or exc}); check that the folder is writable "
                            "and the disk has space") from exc
    return path


def _quote(value) -> str:
    # infotext_utils.quote: JSON-quote a value holding a comma, colon or newline
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def _params_line(params: dict) -> str:
    return ", ".join(k if k == v else f"{k}: {_quote(v)}" for k, v in params.items() if v is not None)


def cell_parameters(prompt, negative, steps, sampler, cfg, seed, width, height, loras=(), extra=None) -> str:
    """A1111's infotext for one cell: the prompt (its `<lora:...>` tags where they were typed), "Negative
    prompt: ...", then `Steps: 20, Sampler: Euler a, CFG scale: 7.0, Seed: 1, Size: 512x512[, extra...],
    Lora hashes: "..."`. The sampler is written under A1111's name (`euler_a` -> `Euler a`, `DPM++ 2M Karras`,
    or `DPM++ 2M, Schedule type: Uniform`; charlora.train.sampling.infotext_sampler).

    `loras`: (name, te_weight, unet_weight[, hash]) per LoRA applied. A LoRA whose tag the prompt lacks
    (one set by the checkpoint axis) gets `<lora:name:w>` appended, as A1111 does for its "additional
    network" option, so pasting the text into A1111 renders the same cell. A hash (the file's addnet
    sha256, Kohya's sshs_model_hash) goes into "Lora hashes" as its first 12 characters, as A1111."""
    from ..train.sampling import infotext_sampler  # (that module imports torch; this one needs only Pillow)

    mentioned = {tag.name for tag in parse_prompt(prompt).tags}
    tags, hashes = [], {}
    for name, te, unet, *rest in loras:
        if name not in mentioned:
            tags.append(format_lora_tag(name, te, unet))
        if rest and rest[0]:
            hashes[name.replace(":", "").replace(",", "")] = rest[0][:12]
    prompt_text = prompt + "".join(tags)
    params = {"Steps": steps, **infotext_sampler(sampler), "CFG scale": cfg, "Seed": seed,
              "Size": f"{width}x{height}", **(extra or {})}
    if hashes:
        params["Lora hashes"] = ", ".join(f"{k}: {v}" for k, v in hashes.items())
    negative_text = f"\nNegative prompt: {negative}" if negative else ""
    return f"{prompt_text}{negative_text}\n{_params_line(params)}".strip()


def _values_text(values) -> str:
    # xyz_grid.list_to_csv_string: what the user would type back into "X values"
    with StringIO() as out:
        csv.writer(out).writerow(["none" if v is None else v for v in values])
        return out.getvalue().strip()


def grid_text_chunks(x_kind, x_values, y_kind, y_values, z=None, extra=None, texts=None) -> dict:
    """PNG text for a grid: "charlora.grid" (JSON: each axis' kind, title, values and labels) and
    "parameters" as A1111 writes on an X/Y/Z grid: `Script: X/Y/Z plot, X Type: CFG Scale,
    X Values: "7,8"` (seeds also `Fixed X Values`). `z`: (kind, values) or None. `extra`: more chunks;
    its "parameters", if any, is the first cell's infotext, which the grid line extends (as A1111 does).
    `texts`: {"x": the values as the user typed them, ...}; A1111 writes those (`1-5 (+2)` stays a range),
    else the values are written back as CSV."""
    axes = {"x": (x_kind, x_values), "y": (y_kind, y_values)}
    if z is not None:
        axes["z"] = (z[0], z[1] if isinstance(z[1], (list, tuple)) else [z[1]])
    described, script = {}, {"Script": "X/Y/Z plot"}
    for letter, (kind, values) in axes.items():
        if kind not in AXIS_TITLES:
            raise EvaluationError(f"unknown axis type {kind!r}; choose one of {', '.join(AXIS_TITLES)}")
        values = list(values)
        described[letter] = {"kind": kind, "title": AXIS_TITLES[kind], "values": values,
                             "labels": [axis_label(kind, v) for v in values]}
        if kind != "nothing":
            axis = letter.upper()
            script[f"{axis} Type"] = AXIS_TITLES[kind]
            typed = str((texts or {}).get(letter) or "").strip()
            script[f"{axis} Values"] = typed or _values_text(values)
            if kind == "seed":
                script[f"Fixed {axis} Values"] = ", ".join(str(v) for v in values)
    chunks = dict(extra or {})
    base = chunks.pop("parameters", None)
    line = _params_line(script)
    chunks["parameters"] = f"{base}, {line}" if base else line
    chunks["charlora.grid"] = json.dumps({"axes": described}, ensure_ascii=False, default=str)
    return chunks
