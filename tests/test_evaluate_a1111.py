"""The grid's cell plan against AUTOMATIC1111's own rules (1.10), derived by hand from its code:

- extensions-builtin/Lora/networks.py (list_available_networks, load_networks) and modules/util.py
  (walk_files, natural_sort_key): LoRAs in subfolders, the last file listed wins a shared name;
- modules/processing_scripts/comments.py (strip_comments): `#` hides the rest of its line;
- modules/processing.py (parse_extra_network_prompts): tags are read from the prompt only, so a
  `<lora:...>` in the negative prompt stays there as text;
- scripts/xyz_grid.py: each axis' Prompt S/R applied in turn; the grid's infotext is the first cell's;
- modules/sd_samplers_kdiffusion.py, sd_samplers.get_sampler_and_scheduler: sampler names and schedules.

No model is loaded: the plans use LoRA files that only carry Kohya's metadata, and build_grid runs with a
renderer that records the cells it is asked for.
"""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from charlora.errors import CharLoRAError
from charlora.evaluate import GridSpec, LoraIndex, build_grid, files_used, plan_cells, resolve_lora
from charlora.evaluate.prompts import EvaluationError, strip_comments
from charlora.train import sampling

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "docs" / "evaluation.md").read_text(encoding="utf-8")


def write_lora(folder: Path, relative: str, **metadata) -> Path:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 2)}, str(path), metadata=metadata or None)
    return path


@pytest.fixture
def loras(tmp_path):
    """A1111's models/Lora as a user fills it: a Kohya run (epochs 1-3 and the final file, epoch 4), a LoRA in
    a subfolder, two more at the top, and `dup` three times (top, v2/, v10/)."""
    for epoch in (1, 2, 3):
        write_lora(tmp_path, f"char-{epoch:06d}.safetensors", ss_output_name="char", ss_epoch=str(epoch))
    write_lora(tmp_path, "char.safetensors", ss_output_name="char", ss_epoch="4")
    write_lora(tmp_path, "chars/x.safetensors")
    write_lora(tmp_path, "a.safetensors")
    write_lora(tmp_path, "b.safetensors")
    for place in ("", "v2/", "v10/"):
        write_lora(tmp_path, f"{place}dup.safetensors")
    return tmp_path


# --------------------------------------------------------------------------- the table

# (id, prompt, negative, (x kind, x values), (y kind, y values), expected cells row by row, A1111's cells
# where CharLoRA deliberately differs (None: the same), the words docs/evaluation.md lists that difference by).
# A cell: (prompt encoded, negative encoded, [(LoRA file relative to the folder, te weight, unet weight)]).
CASES = [
    ("multi-axis Prompt S/R: X then Y replace in the same prompt",
     "a girl <lora:char-chk:1>", "", ("prompt_sr", "chk,000001,000002"), ("prompt_sr", "girl,boy"),
     [[("a girl", "", []), ("a girl", "", [("char-000001.safetensors", 1, 1)]),
       ("a girl", "", [("char-000002.safetensors", 1, 1)])],
      [("a boy", "", []), ("a boy", "", [("char-000001.safetensors", 1, 1)]),
       ("a boy", "", [("char-000002.safetensors", 1, 1)])]],
     None, None),
    ("final-epoch names: NAME-<epoch> finds Kohya's files, the last epoch's is NAME.safetensors",
     "<lora:char-chk:0.8> portrait", "", ("prompt_sr", "chk,1,3,4"), ("nothing", ""),
     [[("portrait", "", []), ("portrait", "", [("char-000001.safetensors", 0.8, 0.8)]),
       ("portrait", "", [("char-000003.safetensors", 0.8, 0.8)]),
       ("portrait", "", [("char.safetensors", 0.8, 0.8)])]],
     # A1111 knows file names and ss_output_name only: char-1, char-3 and char-4 name no file there
     [[("portrait", "", [])] * 4], "`NAME-8` or `NAME-000008`"),
    ("subfolders: found by file name; a name in several folders: the last A1111 lists (natural order)",
     "portrait <lora:x:0.5> <lora:dup:1>", "", ("nothing", ""), ("nothing", ""),
     [[("portrait", "", [("chars/x.safetensors", 0.5, 0.5), ("v10/dup.safetensors", 1, 1)])]],
     None, None),
    ("comments: a whole comment line, a comment after a tag, S/R text inside a comment",
     "portrait\n# old: <lora:b:1>\n<lora:a:1> # <lora:x:1> try chk\nsmile", "", ("prompt_sr", "chk,dup"),
     ("nothing", ""),
     [[("portrait\n \nsmile", "", [("a.safetensors", 1, 1)]), ("portrait\n \nsmile", "", [("a.safetensors", 1, 1)])]],
     None, None),
    ("negative prompt: a <lora:...> there is text, applies nothing; S/R replaces in it too",
     "portrait <lora:a:1>", "ugly <lora:b:1> # no hands", ("prompt_sr", "<lora:b:,<lora:x:"), ("nothing", ""),
     [[("portrait", "ugly <lora:b:1>", [("a.safetensors", 1, 1)]),
       ("portrait", "ugly <lora:x:1>", [("a.safetensors", 1, 1)])]],
     None, None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0].split(":")[0] for c in CASES])
def test_cell_plan_matches_a1111(case, loras, tmp_path):
    _, prompt, negative, (x_kind, x_values), (y_kind, y_values), expected, a1111, documented = case
    spec = GridSpec(base_model="", lora_folder=str(loras), prompt=prompt, negative=negative,
                    output_dir=str(tmp_path / "out"), x_kind=x_kind, x_values=x_values, y_kind=y_kind,
                    y_values=y_values)
    index = LoraIndex(loras)
    grids, _, _ = plan_cells(spec, index)
    plan = [[(c.prompt, c.negative, [(index.relative(p), te, unet) for p, te, unet in c.loras]) for c in row]
            for row in grids[0]]
    assert plan == expected
    if a1111 is not None:  # a deliberate difference: docs/evaluation.md lists it beside A1111's behaviour
        assert plan != a1111 and documented in DOCS


def test_strip_comments_is_a1111s():
    # modules/processing_scripts/comments.py, case by case
    assert strip_comments("portrait\n# old: <lora:b:1>\n<lora:a:1>") == "portrait\n<lora:a:1>"
    assert strip_comments("# first line\nportrait") == "\nportrait"
    assert strip_comments("portrait # the rest\nsmile") == "portrait \nsmile"
    assert strip_comments("a\n#x\n#y\nb") == "a\n\nb"  # the second line falls to the mid-line rule
    assert strip_comments("portrait #") == "portrait \n"
    assert strip_comments("no comment") == "no comment" and strip_comments(None) == ""


def test_prompt_sr_search_text_only_in_a_comment_is_found_as_in_a1111(loras, tmp_path):
    # A1111 replaces before it strips comments: the search text in a comment counts as found, changes nothing
    spec = GridSpec(base_model="", lora_folder=str(loras), prompt="portrait # chk", output_dir=str(tmp_path),
                    x_kind="prompt_sr", x_values="chk,2", y_kind="nothing", y_values="")
    grids, _, _ = plan_cells(spec, LoraIndex(loras))
    assert [c.prompt for c in grids[0][0]] == ["portrait", "portrait"]


def test_negative_prompt_tag_is_reported(loras, tmp_path):
    spec = GridSpec(base_model="", lora_folder=str(loras), prompt="portrait", negative="<lora:b:1>",
                    output_dir=str(tmp_path), x_kind="cfg", x_values="7", y_kind="nothing", y_values="")
    _, warnings, _ = plan_cells(spec, LoraIndex(loras))
    assert warnings == ["negative prompt: <lora:b:1> applies no LoRA and stays in the negative prompt as text, "
                        "as in AUTOMATIC1111 (LoRAs are read from the prompt only); remove it if that is not "
                        "what you want"]


# --------------------------------------------------------------------------- LoRAs in subfolders

def test_subfolders_as_a1111_lists_them(loras):
    index = LoraIndex(loras)
    assert [index.relative(p) for p in index.files] == [
        "a.safetensors", "b.safetensors", "char-000001.safetensors", "char-000002.safetensors",
        "char-000003.safetensors", "char.safetensors", "dup.safetensors", "chars/x.safetensors",
        "v2/dup.safetensors", "v10/dup.safetensors"]  # folders in natural order: v2 before v10
    assert index.resolve("x") == (loras / "chars" / "x.safetensors", None)
    path, note = index.resolve("dup")
    assert path == loras / "v10" / "dup.safetensors"
    assert note == ("3 LoRA files are named 'dup' (dup.safetensors, v2/dup.safetensors, v10/dup.safetensors): "
                    "v10/dup.safetensors is used, as AUTOMATIC1111 uses the last one it lists; rename the others "
                    "to choose")
    assert index.names() == ["a", "b", "char-000001", "char-000002", "char-000003", "char", "dup", "x"]
    # the seed batch's field, and a path relative to the folder
    assert resolve_lora("x", loras) == resolve_lora("x.safetensors", loras) == loras / "chars" / "x.safetensors"
    assert resolve_lora("chars/x.safetensors", loras) == loras / "chars" / "x.safetensors"
    with pytest.raises(EvaluationError, match=r"available: a, b, char-000001, .*, dup, x "):
        resolve_lora("y", loras)


def test_grid_warns_of_a_shared_name_and_uses_a1111s_choice(loras, tmp_path):
    spec = GridSpec(base_model="", lora_folder=str(loras), prompt="portrait <lora:dup:1>", output_dir=str(tmp_path),
                    x_kind="cfg", x_values="7,8", y_kind="nothing", y_values="")
    grids, warnings, _ = plan_cells(spec, LoraIndex(loras))
    assert {c.loras[0][0] for c in grids[0][0]} == {loras / "v10" / "dup.safetensors"}
    assert len(warnings) == 1 and warnings[0].startswith("3 LoRA files are named 'dup'")


# --------------------------------------------------------------------------- the user's grid

class RecordingRenderer:
    """Stands in for the model: an image whose colour says which LoRA files the cell used."""

    def __init__(self):
        self.cells = []

    def render(self, cell, width, height):
        self.cells.append(cell)
        shade = sum(hash(Path(p).name) % 200 for p, _, _ in cell.loras) % 256
        return Image.new("RGB", (width, height), (shade, 255 - shade, 40 * len(self.cells) % 256))


USER_PROMPT = "anime, comic, cartoon, portrait of a girl <lora:wwaa-g13l-1-chk:1>, illustration, dark hair"


@pytest.fixture
def twelve_epochs(tmp_path):
    """Kohya's files of a 12-epoch run saved every epoch: NAME-000001..11 and NAME.safetensors (epoch 12)."""
    folder = tmp_path / "model"
    for epoch in range(1, 13):
        stem = "wwaa-g13l-1" if epoch == 12 else f"wwaa-g13l-1-{epoch:06d}"
        write_lora(folder, f"{stem}.safetensors", ss_output_name="wwaa-g13l-1", ss_epoch=str(epoch),
                   sshs_model_hash=f"{epoch:02d}" + "ab" * 31)
    return folder


def test_users_grid_uses_a_lora_in_every_column_but_chk(twelve_epochs, tmp_path):
    spec = GridSpec(base_model="not loaded", lora_folder=str(twelve_epochs), prompt=USER_PROMPT,
                    output_dir=str(tmp_path / "grids"), x_kind="prompt_sr", x_values="chk,2,4,6,8,10,12",
                    y_kind="cfg", y_values="7,8,9,10", width=64, height=64)
    renderer = RecordingRenderer()
    result = build_grid(spec, renderer)
    assert result.files_used == ["column chk -> no LoRA"] + [
        f"column {e} -> wwaa-g13l-1-{e:06d}.safetensors" for e in (2, 4, 6, 8, 10)] + [
        "column 12 -> wwaa-g13l-1.safetensors"]
    assert len(renderer.cells) == 28
    for i, cell in enumerate(renderer.cells):  # row by row: 7 columns per CFG value
        column = i % 7
        assert cell.cfg == 7.0 + i // 7
        assert len(cell.loras) == (0 if column == 0 else 1)
    grid = Image.open(result.grids[0])
    assert json.loads(grid.text["charlora.files"]) == result.files_used
    # A1111's grid infotext: the first cell's whole infotext, then the X/Y/Z plot's fields as typed
    assert grid.text["parameters"] == (
        USER_PROMPT + "\nSteps: 20, Sampler: Euler a, CFG scale: 7.0, Seed: 1234, Size: 64x64, "
        'Script: X/Y/Z plot, X Type: Prompt S/R, X Values: "chk,2,4,6,8,10,12", Y Type: CFG Scale, '
        'Y Values: "7,8,9,10"')
    # each cell keeps the tag where it was typed, under the name A1111 finds the file by
    cells = sorted(result.cells)
    second = Image.open(next(p for p in cells if p.endswith("-z0-y1-x1.png"))).text["parameters"]
    assert second == ("anime, comic, cartoon, portrait of a girl <lora:wwaa-g13l-1-000002:1>, illustration, dark "
                      "hair\nSteps: 20, Sampler: Euler a, CFG scale: 8.0, Seed: 1234, Size: 64x64, "
                      'Lora hashes: "wwaa-g13l-1-000002: 02ababababab"')
    last = Image.open(next(p for p in cells if p.endswith("-z0-y0-x6.png"))).text["parameters"]
    assert last.startswith("anime, comic, cartoon, portrait of a girl <lora:wwaa-g13l-1:1>, illustration, dark hair\n")
    assert 'Lora hashes: "wwaa-g13l-1: 12ababababab"' in last


def test_cell_infotext_keeps_tags_comments_out_negative_as_text(loras, tmp_path):
    spec = GridSpec(base_model="", lora_folder=str(loras), output_dir=str(tmp_path / "g"),
                    prompt="portrait # old <lora:b:1>\n<lora:a:0.7>, <lora:char-2:1:0.5> smile",
                    negative="ugly <lora:b:1>", x_kind="checkpoint", x_values="none,char-3", y_kind="nothing",
                    y_values="", sampler="DPM++ 2M", width=64, height=64, clip_skip=2)
    result = build_grid(spec, RecordingRenderer())
    texts = [Image.open(p).text["parameters"] for p in sorted(result.cells)]
    tail = "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.0, Seed: 1234, Size: 64x64, Clip skip: 2"
    # the checkpoint axis replaces the first LoRA where it was typed ("none": the tag goes); char-2 is
    # CharLoRA's name for char-000002.safetensors, written as the file name A1111 knows
    assert texts == [
        "portrait \n, <lora:char-000002:1:0.5> smile\nNegative prompt: ugly <lora:b:1>\n" + tail,
        "portrait \n<lora:char-000003:0.7>, <lora:char-000002:1:0.5> smile\nNegative prompt: ugly <lora:b:1>\n"
        + tail]
    assert Image.open(result.grids[0]).text["parameters"].startswith(texts[0] + ", Script: X/Y/Z plot, ")


def test_weight_axis_is_written_into_the_tag(loras, tmp_path):
    spec = GridSpec(base_model="", lora_folder=str(loras), output_dir=str(tmp_path), prompt="a <lora:a:1> b",
                    x_kind="lora_weight", x_values="0.25,1", y_kind="nothing", y_values="")
    grids, _, _ = plan_cells(spec, LoraIndex(loras))
    assert [c.text for c in grids[0][0]] == ["a <lora:a:0.25> b", "a <lora:a:1> b"]


# --------------------------------------------------------------------------- samplers

@pytest.mark.parametrize("name, scheduler, config", [
    ("Euler a", "EulerAncestralDiscreteScheduler", {}),
    ("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    ("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    ("dpm++ 2m uniform", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    ("DPM++ SDE Karras", "DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    ("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++",
                                                     "use_exponential_sigmas": True}),
    ("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    ("LMS Karras", "LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    ("DDIM", "DDIMScheduler", {}),
    ("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
    ("UniPC", "UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1", "lower_order_final": True,
                                          "final_sigmas_type": "sigma_min"}),
])
def test_a1111_sampler_maps_to_the_same_diffusers_scheduler(name, scheduler, config):
    assert sampling._scheduler(name) == (scheduler, config)


DDPM = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon"}


@pytest.mark.parametrize("name", ["DPM++ 2M Karras", "DPM++ 2M SDE", "DPM2 a", "Euler Exponential", "UniPC", "PLMS"])
def test_a1111_samplers_build_and_step(name):
    sampler = sampling.make_sampler(name, DDPM)
    if "Karras" in name or name == "DPM2 a":
        assert sampler.config.use_karras_sigmas
    sampler.set_timesteps(3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g) * sampler.init_noise_sigma
    for t in sampler.timesteps:
        sampler.scale_model_input(x, t)
        x = sampler.step(torch.randn(1, 4, 8, 8, generator=g) * 0.1, t, x).prev_sample
    assert torch.isfinite(x).all()  # UniPC bh1 ending at sigma 0 gave NaN: it ends at sigma_min, as A1111's


def test_dpmpp_sde_without_torchsde_says_what_to_install():
    try:
        import torchsde  # noqa: F401
    except ImportError:
        with pytest.raises(CharLoRAError, match=r"DPM\+\+ SDE Karras needs .*torchsde.*pip install torchsde"):
            sampling.make_sampler("DPM++ SDE Karras", DDPM)
    else:
        assert type(sampling.make_sampler("DPM++ SDE Karras", DDPM)).__name__ == "DPMSolverSDEScheduler"


def test_sampler_axis_takes_schedule_types(loras, tmp_path):
    spec = GridSpec(base_model="", lora_folder=str(loras), prompt="a", output_dir=str(tmp_path), x_kind="sampler",
                    x_values="dpm++ 2m uniform, DPM++ 2M, UniPC", y_kind="nothing", y_values="")
    grids, _, labels = plan_cells(spec, LoraIndex(loras))
    assert [c.sampler for c in grids[0][0]] == ["DPM++ 2M Uniform", "DPM++ 2M", "UniPC"]
    with pytest.raises(EvaluationError, match=r"Unknown sampler: DPM\+\+ 2M Beta; choose from .*UniPC"):
        plan_cells(GridSpec(base_model="", lora_folder=str(loras), prompt="a", output_dir=str(tmp_path),
                            x_kind="sampler", x_values="DPM++ 2M Beta"), LoraIndex(loras))


def test_files_used_names_subfolder_files(loras, tmp_path):
    spec = GridSpec(base_model="", lora_folder=str(loras), prompt="a <lora:x:1>", output_dir=str(tmp_path),
                    x_kind="nothing", x_values="", y_kind="nothing", y_values="")
    grids, _, _ = plan_cells(spec, LoraIndex(loras))
    assert files_used(grids) == ["every cell -> x.safetensors"]
