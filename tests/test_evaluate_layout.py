"""Grid layout, seed sheets and PNG text (charlora.evaluate.layout) with real images and files."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from charlora.evaluate.layout import (GridGeometry, cell_parameters, draw_grid, grid_text_chunks, make_sheet,
                                      save_png)
from charlora.evaluate.prompts import EvaluationError

COLOURS = [[(255, 0, 0), (0, 255, 0), (0, 0, 255)], [(255, 255, 0), (0, 255, 255), (255, 0, 255)]]
CW, CH = 64, 48


def solid_cells(colours=COLOURS, size=(CW, CH)):
    return [[Image.new("RGB", size, c) for c in row] for row in colours]


def dark(pixels: np.ndarray) -> bool:
    return bool((pixels.max(axis=-1) < 128).any())


def check_cells(image, geometry, colours):
    """Every pixel of every cell is its colour: cells land exactly where the geometry says."""
    arr = np.asarray(image)
    for r, row in enumerate(colours):
        for c, colour in enumerate(row):
            x0, y0, x1, y1 = geometry.cell_box(r, c)
            assert (x1 - x0, y1 - y0) == (geometry.cell_width, geometry.cell_height)
            assert image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == colour
            assert (arr[y0:y1, x0:x1] == colour).all(), (r, c)


# --------------------------------------------------------------------------- grid

def test_grid_geometry_cells_and_margins():
    image, g = draw_grid(solid_cells(), ["CFG Scale: 7.0", "CFG Scale: 8.0", "CFG Scale: 9.0"],
                         ["no LoRA", "wwaa-000002"])
    assert isinstance(g, GridGeometry) and (g.columns, g.rows, g.cell_width, g.cell_height) == (3, 2, CW, CH)
    assert g.left == CW * 3 // 4 and g.top > 0
    assert image.size == (g.width, g.height) == (g.left + 3 * CW, g.top + 2 * CH)
    check_cells(image, g, COLOURS)
    arr = np.asarray(image)
    corner, header, side = arr[:g.top, :g.left], arr[:g.top, g.left:], arr[g.top:, :g.left]
    assert (corner == 255).all()  # nothing drawn above the row labels
    assert dark(header) and dark(side)  # the labels
    for margin in (header, side):  # white with grey/black text only: no cell colour leaked out
        assert (margin.min(-1) == margin.max(-1)).all()
    for c in range(3):  # each column label sits above its own column
        assert dark(arr[:g.top, g.left + c * CW:g.left + (c + 1) * CW])
    for r in range(2):
        assert dark(arr[g.top + r * CH:g.top + (r + 1) * CH, :g.left])


def test_nothing_axes_leave_no_margins():
    image, g = draw_grid(solid_cells(), ["", "", ""], ["", ""])
    assert (g.left, g.top) == (0, 0) and image.size == (3 * CW, 2 * CH)
    check_cells(image, g, COLOURS)
    image, g = draw_grid(solid_cells(), ["a", "b", "c"], ["", ""])
    assert g.left == 0 and g.top > 0
    check_cells(image, g, COLOURS)


def test_long_labels_wrap_into_taller_margins_not_into_cells():
    short, gs = draw_grid(solid_cells(), ["x", "y", "z"], ["r1", "r2"])
    long_label = "portrait of a girl with dark hair in a garden"
    image, g = draw_grid(solid_cells(), [long_label, "y", "z"], ["r1", "a verylongunbrokenwordthatcannotwrap"])
    assert g.top > gs.top and g.left == gs.left
    check_cells(image, g, COLOURS)  # no text bled over a cell


def test_title_goes_above_everything():
    plain, gp = draw_grid(solid_cells(), ["a", "b", "c"], ["r1", "r2"])
    image, g = draw_grid(solid_cells(), ["a", "b", "c"], ["r1", "r2"], title="Steps: 20")
    assert g.top > gp.top and g.height == g.top + 2 * CH and g.width == gp.width
    check_cells(image, g, COLOURS)
    band = np.asarray(image)[:g.top - gp.top]
    assert dark(band)


def test_missing_cell_and_bad_shapes():
    cells = solid_cells()
    cells[1][2] = None
    image, g = draw_grid(cells, ["a", "b", "c"], ["r1", "r2"])
    check_cells(image, g, [COLOURS[0], [COLOURS[1][0], COLOURS[1][1], (128, 128, 128)]])
    with pytest.raises(EvaluationError, match="one size"):
        draw_grid([[Image.new("RGB", (8, 8)), Image.new("RGB", (9, 8))]], ["a", "b"], ["r"])
    with pytest.raises(EvaluationError, match="2 column labels"):
        draw_grid(solid_cells(), ["a", "b"], ["r1", "r2"])
    with pytest.raises(EvaluationError, match="rectangle"):
        draw_grid([[Image.new("RGB", (8, 8))], []], ["a"], ["r1", "r2"])


# --------------------------------------------------------------------------- sheet

def test_sheet_layout_and_labels():
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200)]
    images = [Image.new("RGB", (CW, CH), c) for c in colours]
    sheet = make_sheet(images, [f"Seed: {s}" for s in range(5)], columns=2)
    band = sheet.height // 3 - CH
    assert band > 0 and sheet.size == (2 * CW, 3 * (band + CH))
    arr = np.asarray(sheet)
    for i, colour in enumerate(colours):
        x, y = (i % 2) * CW, (i // 2) * (band + CH)
        assert (arr[y + band:y + band + CH, x:x + CW] == colour).all()
        assert dark(arr[y:y + band, x:x + CW])  # its label, above it
    assert (arr[2 * (band + CH):, CW:] == 255).all()  # the empty sixth place
    bare = make_sheet(images, None, columns=5)
    assert bare.size == (5 * CW, CH)
    with pytest.raises(EvaluationError):
        make_sheet([], [], 2)


# --------------------------------------------------------------------------- PNG text

def test_save_png_text_atomic_and_mode(tmp_path):
    path = tmp_path / "out" / "grid.png"
    text = {"parameters": "a girl\nSteps: 20", "charlora.grid": json.dumps({"x": [1, 2]}), "prompt": "少女, 笑顔"}
    save_png(Image.new("RGB", (8, 8), "red"), path, text)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.text == text and im.getpixel((0, 0)) == (255, 0, 0)
    assert os.stat(path).st_mode & 0o777 == 0o644
    save_png(Image.new("RGB", (4, 4), "blue"), path, {"parameters": "again"})  # overwrite in place
    with Image.open(path) as im:
        assert im.size == (4, 4) and im.text == {"parameters": "again"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["grid.png"]  # no temporary file left
    with pytest.raises(TypeError):
        save_png(Image.new("RGB", (4, 4)), path, {"seed": 5})


def test_cell_parameters_a1111_infotext():
    text = cell_parameters("a girl <lora:wwaa:0.8>", "ugly, blurry", 20, "euler_a", 7.0, 1234, 512, 512,
                           [("wwaa", 0.8, 0.8, "0123456789abcdef0123")])
    assert text == ("a girl <lora:wwaa:0.8>\nNegative prompt: ugly, blurry\n"
                    'Steps: 20, Sampler: Euler a, CFG scale: 7.0, Seed: 1234, Size: 512x512, '
                    'Lora hashes: "wwaa: 0123456789ab"')
    # no negative prompt: no line; a LoRA set by the checkpoint axis is written as a tag, A1111-style
    text = cell_parameters("a girl", "", 20, "euler_a", 7.5, 1, 512, 768, [("wwaa-000002", 1.0, 0.5)],
                           extra={"Clip skip": 2})
    assert text == "a girl<lora:wwaa-000002:1:0.5>\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 1, " \
                   "Size: 512x768, Clip skip: 2"
    assert cell_parameters("x", None, 20, "ddim", 7, 1, 64, 64) == "x\nSteps: 20, Sampler: DDIM, CFG scale: 7, " \
                                                                  "Seed: 1, Size: 64x64"


@pytest.mark.parametrize("sampler, written", [
    # A1111's own name, so that pasting the infotext into A1111 (1.10, or before Schedule type existed) picks
    # the same sampler and schedule; Kohya's names are written as their A1111 twin (the same scheduler here)
    ("euler_a", "Sampler: Euler a"), ("Euler a", "Sampler: Euler a"), ("heun", "Sampler: Heun"),
    ("dpm++ 2m karras", "Sampler: DPM++ 2M Karras"),
    ("DPM++ 2M", "Sampler: DPM++ 2M Karras"),  # 1.10's Automatic schedule for DPM++ 2M is Karras
    ("dpmsolver++", "Sampler: DPM++ 2M, Schedule type: Uniform"),  # uniform: 1.10 must not read it as Karras
    ("DPM++ 2M Uniform", "Sampler: DPM++ 2M, Schedule type: Uniform"),
    ("DPM++ SDE Karras", "Sampler: DPM++ SDE Karras"), ("DPM++ 2M SDE", "Sampler: DPM++ 2M SDE Exponential"),
    ("UniPC", "Sampler: UniPC"), ("PLMS", "Sampler: PLMS"), ("DDIM", "Sampler: DDIM"),
    ("pndm", "Sampler: pndm"), ("dpmsolver", "Sampler: dpmsolver"),  # no A1111 twin: Kohya's name
])
def test_cell_parameters_write_a1111_sampler_names(sampler, written):
    text = cell_parameters("x", "", 20, sampler, 7, 1, 64, 64)
    assert text == f"x\nSteps: 20, {written}, CFG scale: 7, Seed: 1, Size: 64x64"


def test_grid_text_chunks():
    chunks = grid_text_chunks("checkpoint", [None, "wwaa-000002"], "cfg", [7.0, 8.0],
                              z=("seed", [5, 6]), extra={"prompt": "a girl"})
    grid = json.loads(chunks["charlora.grid"])["axes"]
    assert grid["x"] == {"kind": "checkpoint", "title": "LoRA checkpoint", "values": [None, "wwaa-000002"],
                         "labels": ["no LoRA", "wwaa-000002"]}
    assert grid["y"]["labels"] == ["CFG Scale: 7.0", "CFG Scale: 8.0"] and grid["z"]["values"] == [5, 6]
    assert chunks["prompt"] == "a girl"
    assert chunks["parameters"] == ('Script: X/Y/Z plot, X Type: LoRA checkpoint, X Values: "none,wwaa-000002", '
                                    'Y Type: CFG Scale, Y Values: "7.0,8.0", Z Type: Seed, Z Values: "5,6", '
                                    'Fixed Z Values: "5, 6"')
    # the first cell's infotext is extended, as A1111 writes a grid's parameters; Nothing is left out
    first = cell_parameters("a girl", "", 20, "euler_a", 7.0, 1, 512, 512)
    chunks = grid_text_chunks("prompt_sr", ["chk", "2, 4"], "nothing", [None], extra={"parameters": first})
    assert chunks["parameters"] == first + ', Script: X/Y/Z plot, X Type: Prompt S/R, X Values: "chk,\\"2, 4\\""'
    assert json.loads(chunks["charlora.grid"])["axes"]["y"]["labels"] == [""]


def test_grid_text_chunks_write_the_values_as_typed():
    # xyz_grid.py writes the X/Y values the user typed (a range stays a range)
    first = cell_parameters("a girl", "", 20, "euler_a", 7.0, 1, 512, 512)
    chunks = grid_text_chunks("seed", [1, 3, 5], "cfg", [7.0, 8.0], extra={"parameters": first},
                              texts={"x": "1-5 (+2)", "y": " 7,8 "})
    assert chunks["parameters"] == first + (', Script: X/Y/Z plot, X Type: Seed, X Values: 1-5 (+2), '
                                            'Fixed X Values: "1, 3, 5", Y Type: CFG Scale, Y Values: "7,8"')


def test_narrow_columns_break_file_names_after_hyphens_and_keep_a_gap():
    from charlora.evaluate.layout import _font, _wrap

    lines = _wrap("wwaa-demo-000001", 10, 59)  # a 64 px cell's column, less the gap between neighbours
    assert [text for text, _ in lines] == ["wwaa-demo-", "000001"]
    assert all(_font(size).getlength(text) <= 59 for text, size in lines)
    assert _wrap("portrait of a girl", 10, 200) == [("portrait of a girl", 10)]  # words still join with spaces
