"""The grid, seed batches and scoring on the tiny model with a tiny trained LoRA set."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from charlora.errors import CharLoRAError
from charlora.evaluate import (EvaluationError, GridSpec, LoraIndex, Renderer, ScoreSpec, SeedBatchSpec, build_grid,
                               plan_cells, resolve_lora, score_run, seed_batch)
from charlora.evaluate.render import Cell
from charlora.evaluate.layout import MISSING
from charlora.params import load_config, normalize
from charlora.train import train

from dataset_helpers import pattern, save

REPO = Path(__file__).resolve().parents[1]
USER_PROMPT = "anime, comic, cartoon, portrait of a girl <lora:wwaa-g13l-1-chk:1>, illustration, dark hair"


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-run")
    for i in range(3):
        save(root / "img" / "2_wwaa girl" / f"{i}.png", pattern(64, 64, i), "wwaa girl, smiling")
    values = dict(load_config(REPO / "presets" / "quick-tiny-demo.json").values,
                  pretrained_model_name_or_path=str(tiny_model.single_file), train_data_dir=str(root / "img"),
                  output_dir=str(root / "model"), output_name="wwaa-g13l-1", epoch=3, unet_lr=5e-3,
                  text_encoder_lr=2e-3, save_precision="fp16")
    result = train(normalize(values).values)
    assert result.status == "completed"
    return root


@pytest.fixture(scope="module")
def renderer(tiny_model):
    return Renderer(str(tiny_model.folder), device="cpu")


def spec(run, tiny_model, tmp_path, **overrides):
    values = dict(base_model=str(tiny_model.folder), lora_folder=str(run / "model"), prompt=USER_PROMPT,
                  output_dir=str(tmp_path), x_kind="prompt_sr", x_values="chk,1,2", y_kind="cfg", y_values="7,8",
                  steps=2, width=64, height=64, seed=5)
    values.update(overrides)
    return GridSpec(**values)


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_users_grid_case(run, tiny_model, renderer, tmp_path):
    result = build_grid(spec(run, tiny_model, tmp_path), renderer)
    assert len(result.grids) == 1 and len(result.cells) == 6
    assert any("'chk' cells render without a LoRA ('wwaa-g13l-1-chk' names no file)" in w for w in result.warnings)
    grid = Image.open(result.grids[0])
    axes = json.loads(grid.text["charlora.grid"])["axes"]
    assert axes["x"]["kind"] == "prompt_sr" and axes["x"]["values"] == ["chk", "1", "2"]
    assert axes["y"]["labels"] == ["CFG Scale: 7.0", "CFG Scale: 8.0"]
    assert "Prompt S/R" in grid.text["parameters"] and "CFG" in grid.text["parameters"]
    # geometry: 3 columns x 2 rows of 64 px cells, label margins on the left and above only
    cell = pixels(result.cells[0])
    left, top = grid.width - 3 * 64, grid.height - 2 * 64
    assert left > 0 and top > 0
    assert np.array_equal(np.asarray(grid.convert("RGB"))[top:top + 64, left:left + 64], cell)
    cells = {Path(p).stem.split("-")[-2:][0] + Path(p).stem.split("-")[-1]: p for p in result.cells}
    chk, epoch1, epoch2 = cells["y0x0"], cells["y0x1"], cells["y0x2"]
    # the chk cell is the base model, bit for bit (a renderer that never loaded a LoRA)
    fresh = Renderer(str(tiny_model.folder), device="cpu")
    base = fresh.render(Cell("anime, comic, cartoon, portrait of a girl , illustration, dark hair", "", 7.0, 5, 2,
                             "euler_a", [], ("", "", "")), 64, 64)
    assert np.array_equal(pixels(chk), np.asarray(base))
    assert not np.array_equal(pixels(chk), pixels(epoch2))
    assert not np.array_equal(pixels(epoch1), pixels(epoch2))
    assert "Lora hashes" in Image.open(epoch2).text["parameters"]


def test_fixed_seed_reproduces_a_cell(run, tiny_model, renderer, tmp_path):
    lora = run / "model" / "wwaa-g13l-1.safetensors"
    cell = Cell("portrait of a girl", "", 7.0, 11, 2, "euler_a", [(lora, 1.0, 1.0)], ("", "", ""))
    first = np.asarray(renderer.render(cell, 64, 64))
    renderer.render(Cell("portrait of a girl", "", 7.0, 11, 2, "euler_a", [], ("", "", "")), 64, 64)
    assert np.array_equal(first, np.asarray(renderer.render(cell, 64, 64)))


def test_loras_are_merged_into_the_weights_and_the_base_comes_back_bit_for_bit(run, tiny_model, tmp_path):
    """A1111's way: a LoRA cell runs on merged weights (no side path per step); the base model returns exactly."""
    renderer = Renderer(str(tiny_model.folder), device="cpu")
    unet = renderer.pipe.unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    base_cell = Cell("portrait of a girl", "", 7.0, 11, 2, "euler_a", [], ("", "", ""))
    base = np.asarray(renderer.render(base_cell, 64, 64))
    loras = [(run / "model" / "wwaa-g13l-1-000001.safetensors", 1.0, 1.0),
             (run / "model" / "wwaa-g13l-1.safetensors", 0.5, 0.7)]
    cell = Cell("portrait of a girl", "", 7.0, 11, 2, "euler_a", loras, ("", "", ""))
    merged = np.asarray(renderer.render(cell, 64, 64))  # loads both files
    side_calls = []
    hooks = [m.register_forward_hook(lambda *a: side_calls.append(1))
             for name, m in unet.named_modules() if name.endswith(("lora_A.lora0", "lora_A.lora1"))]
    assert len(hooks) > 10
    renderer.merged.restore()
    assert np.array_equal(np.asarray(renderer.render(cell, 64, 64)), merged)  # merged again, the same picture
    assert side_calls == [] and renderer.merged.merged is not None  # the LoRA's layers never ran: merged
    # the same cell through peft's side path (nothing merged) draws the same picture
    renderer.merged.restore()
    side = np.asarray(generate_side_path(renderer, cell))
    assert side_calls and np.abs(merged.astype(int) - side.astype(int)).max() <= 2
    for hook in hooks:
        hook.remove()
    assert not np.array_equal(merged, base)
    # back to no LoRA: every base weight as loaded, the picture bit for bit
    assert np.array_equal(np.asarray(renderer.render(cell, 64, 64)), merged)
    assert np.array_equal(np.asarray(renderer.render(base_cell, 64, 64)), base)
    after = {k.replace(".base_layer", ""): v for k, v in unet.state_dict().items() if "lora_" not in k}
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def generate_side_path(renderer, cell):
    from charlora.train.sampling import SamplePrompt, generate_samples

    renderer.pipe.enable_lora()
    renderer.pipe.set_adapters(["lora0", "lora1"], adapter_weights=[{"unet": u, "text_encoder": t}
                                                                    for _, t, u in cell.loras])
    sample = SamplePrompt(cell.prompt, cell.negative, 64, 64, cell.steps, cell.cfg, cell.seed, sampler=cell.sampler)
    return generate_samples(renderer.pipe, [sample], cell.sampler, renderer.device)[0]


def test_checkpoint_axis_with_no_lora_entry(run, tiny_model, renderer, tmp_path):
    s = spec(run, tiny_model, tmp_path, prompt="portrait of a girl", x_kind="checkpoint",
             x_values="none, wwaa-g13l-1-000001, wwaa-g13l-1", y_kind="nothing", y_values="")
    result = build_grid(s, renderer)
    assert len(result.cells) == 3 and result.warnings == []
    labels = json.loads(Image.open(result.grids[0]).text["charlora.grid"])
    assert "no LoRA" in json.dumps(labels)


def test_stopped_grid_is_laid_out_whole_with_grey_cells(run, tiny_model, renderer, tmp_path):
    calls = []
    result = build_grid(spec(run, tiny_model, tmp_path), renderer, progress=lambda d, t, i: calls.append(d),
                        stop=lambda: len(calls) >= 2)
    assert result.stopped and len(result.cells) == 2 and (result.done, result.total) == (2, 6)
    assert result.message == "stopped after 2 of 6 images"
    assert len(result.grids) == 1 and result.files == result.grids + result.cells
    image = Image.open(result.grids[0])
    assert image.text["charlora.stopped"] == "stopped after 2 of 6 images"
    grid = np.asarray(image.convert("RGB"))
    left, top = grid.shape[1] - 3 * 64, grid.shape[0] - 2 * 64  # 3 columns x 2 rows, labels still there
    assert left > 0 and top > 0 and (grid[:top] < 128).any() and (grid[:, :left] < 128).any()

    def cell(r, c):
        return grid[top + r * 64:top + (r + 1) * 64, left + c * 64:left + (c + 1) * 64]

    assert np.array_equal(cell(0, 0), pixels(result.cells[0])) and np.array_equal(cell(0, 1), pixels(result.cells[1]))
    for r, c in [(0, 2), (1, 0), (1, 1), (1, 2)]:
        assert (cell(r, c) == MISSING).all()


def test_stop_before_the_first_cell_writes_no_grid(run, tiny_model, renderer, tmp_path):
    result = build_grid(spec(run, tiny_model, tmp_path), renderer, stop=lambda: True)
    assert result.stopped and result.grids == [] and result.message == "stopped after 0 of 6 images"


def test_last_epoch_column_renders_with_the_final_file(run, tiny_model, renderer, tmp_path):
    # The run saved wwaa-g13l-1-000001, -000002 and wwaa-g13l-1 (its last epoch, 3): column 3 is the final file.
    result = build_grid(spec(run, tiny_model, tmp_path, x_values="chk,1,2,3", y_kind="nothing", y_values=""), renderer)
    assert not any("wwaa-g13l-1-3" in w for w in result.warnings)
    assert result.files_used == ["column chk -> no LoRA", "column 1 -> wwaa-g13l-1-000001.safetensors",
                                 "column 2 -> wwaa-g13l-1-000002.safetensors", "column 3 -> wwaa-g13l-1.safetensors"]
    assert json.loads(Image.open(result.grids[0]).text["charlora.files"]) == result.files_used
    chk, _, _, last = [pixels(p) for p in result.cells]
    assert not np.array_equal(chk, last)
    final = Cell("anime, comic, cartoon, portrait of a girl , illustration, dark hair", "", 7.0, 5, 2, "euler_a",
                 [(run / "model" / "wwaa-g13l-1.safetensors", 1.0, 1.0)], ("", "", ""))
    assert np.array_equal(last, np.asarray(renderer.render(final, 64, 64)))
    assert "<lora:wwaa-g13l-1:1>" in Image.open(result.cells[3]).text["parameters"]


def test_two_prompt_sr_axes_both_replace(run, tiny_model, tmp_path):
    # A1111 applies X's replacement, then Y's, to the same prompt: x=2, y=boy renders "a boy" with epoch 2.
    s = spec(run, tiny_model, tmp_path, prompt="a girl <lora:wwaa-g13l-1-chk:1>", x_values="chk,1,2",
             y_kind="prompt_sr", y_values="girl,boy")
    grids, warnings, _ = plan_cells(s, LoraIndex(run / "model"))
    cell = grids[0][1][2]
    assert cell.prompt == "a boy" and [p.name for p, _, _ in cell.loras] == ["wwaa-g13l-1-000002.safetensors"]
    assert grids[0][0][1].prompt == "a girl" and grids[0][0][1].loras[0][0].name == "wwaa-g13l-1-000001.safetensors"
    assert [c.loras for c in (grids[0][0][0], grids[0][1][0])] == [[], []]  # the chk column: no LoRA
    # Y searches the prompt as X left it, and fails there as A1111 does
    bad = spec(run, tiny_model, tmp_path, prompt="a girl", x_values="girl,boy", y_kind="prompt_sr",
               y_values="girl,woman")
    with pytest.raises(EvaluationError, match=r"Y axis: Prompt S/R did not find girl.*'a boy'"):
        plan_cells(bad, LoraIndex(run / "model"))


def test_a1111_sampler_names(run, tiny_model, renderer, tmp_path):
    s = spec(run, tiny_model, tmp_path, prompt="a girl", x_kind="sampler", x_values="Euler a, dpm++ 2m KARRAS, ddim",
             y_kind="nothing", y_values="", sampler="euler A")
    grids, _, labels = plan_cells(s, LoraIndex(run / "model"))
    assert [c.sampler for c in grids[0][0]] == ["Euler a", "DPM++ 2M Karras", "ddim"]
    assert labels[0][0] == ["Euler a", "DPM++ 2M Karras", "ddim"]
    karras = np.asarray(renderer.render(grids[0][0][1], 64, 64))
    plain = np.asarray(renderer.render(Cell("a girl", "", 7.0, 5, 2, "dpmsolver++", [], ("", "", "")), 64, 64))
    assert not np.array_equal(karras, plain)  # Karras sigmas: another schedule, another image
    with pytest.raises(CharLoRAError, match=r"Unknown sampler: Euler b; choose from .*Euler a.*DPM\+\+ 2M Karras"):
        plan_cells(spec(run, tiny_model, tmp_path, x_kind="sampler", x_values="Euler b"), LoraIndex(run / "model"))
    with pytest.raises(CharLoRAError, match=r"sampler 'k_dpmpp_2m' is not known; choose one of: .*DPM\+\+ 2M"):
        plan_cells(spec(run, tiny_model, tmp_path, sampler="k_dpmpp_2m"), LoraIndex(run / "model"))


def test_resolve_lora_as_the_grid_lists_names(run, tmp_path, monkeypatch):
    model = run / "model"
    epoch2 = model / "wwaa-g13l-1-000002.safetensors"
    for name in ("wwaa-g13l-1-000002", "wwaa-g13l-1-2", "wwaa-g13l-1-000002.safetensors", str(epoch2)):
        assert resolve_lora(name, model) == epoch2
    final = model / "wwaa-g13l-1.safetensors"
    assert resolve_lora("wwaa-g13l-1", model) == resolve_lora("wwaa-g13l-1-3", model) == final
    assert resolve_lora("none", model) is None and resolve_lora("", model) is None
    monkeypatch.chdir(run)
    relative = Path("model/wwaa-g13l-1-000002.safetensors")
    assert resolve_lora(relative, tmp_path) == relative  # not in the folder: relative to the working folder
    with pytest.raises(EvaluationError) as err:
        resolve_lora("wwaa-g13l-1-000009", model)
    assert "'wwaa-g13l-1-000009' not found in" in str(err.value)
    assert "available: wwaa-g13l-1-000001, wwaa-g13l-1-000002, wwaa-g13l-1 " in str(err.value)
    with pytest.raises(EvaluationError, match="LoRA folder .*nowhere does not exist"):
        resolve_lora("wwaa-g13l-1", tmp_path / "nowhere")


def seeds_spec(run, tiny_model, tmp_path, **overrides):
    values = dict(base_model=str(tiny_model.folder), lora="wwaa-g13l-1-000002", lora_folder=str(run / "model"),
                  prompt="portrait of a girl <lora:wwaa-g13l-1-chk:1>", seeds=[1, 2, 3, 4],
                  output=str(tmp_path / "sheet.png"), steps=2, width=64, height=64, columns=2)
    values.update(overrides)
    return SeedBatchSpec(**values)


def test_seed_batch_sheet(run, tiny_model, renderer, tmp_path):
    calls = []
    result = seed_batch(seeds_spec(run, tiny_model, tmp_path), renderer, progress=lambda d, t, i: calls.append((d, t)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert result.lora == str(run / "model" / "wwaa-g13l-1-000002.safetensors")
    assert Path(result.sheet).is_absolute() and Path(result.sheet).is_file() and result.files == [result.sheet]
    assert len(result.images) == 4 and len({np.asarray(i).tobytes() for i in result.images}) == 4
    assert not result.stopped and result.message == "4 images"
    sheet = Image.open(result.sheet)
    assert sheet.width >= 2 * 64 and sheet.height >= 2 * 64 and json.loads(sheet.text["charlora.seeds"]) == [1, 2, 3, 4]
    lora = Cell("portrait of a girl", "", 7.0, 2, 2, "euler_a", [(run / "model" / "wwaa-g13l-1-000002.safetensors",
                                                                 1.0, 1.0)], ("", "", ""))
    assert np.array_equal(np.asarray(result.images[1]), np.asarray(renderer.render(lora, 64, 64)))


def test_seed_batch_stops_after_the_current_image(run, tiny_model, renderer, tmp_path):
    calls = []
    result = seed_batch(seeds_spec(run, tiny_model, tmp_path, lora="wwaa-g13l-1-2", sampler="Euler a"), renderer,
                        progress=lambda d, t, i: calls.append((d, t)), stop=lambda: len(calls) >= 2)
    assert calls == [(1, 4), (2, 4)] and result.stopped and result.message == "stopped after 2 of 4 images"
    assert result.seeds == [1, 2] and len(result.images) == 2
    sheet = Image.open(result.sheet)
    assert json.loads(sheet.text["charlora.seeds"]) == [1, 2] and sheet.text["charlora.stopped"] == result.message


def test_seed_batch_unknown_lora_is_named(run, tiny_model, renderer, tmp_path):
    listed = "available: wwaa-g13l-1-000001, wwaa-g13l-1-000002, wwaa-g13l-1 "
    with pytest.raises(EvaluationError, match=r"'wwaa-000002' not found in .*model; " + listed):
        seed_batch(seeds_spec(run, tiny_model, tmp_path, lora="wwaa-000002"), renderer)
    assert not (tmp_path / "sheet.png").exists()


def test_score_run_recommends_a_checkpoint(run, tiny_model, renderer, tmp_path):
    s = ScoreSpec(base_model=str(tiny_model.folder), lora_folder=str(run / "model"), output_name="wwaa-g13l-1",
                  train_data_dir=str(run / "img"), output_dir=str(tmp_path), prompts=["portrait of wwaa girl"],
                  seeds=[1, 2], scorer="tiny", steps=2, width=64, height=64)
    report = score_run(s, renderer)
    names = [row["name"] for row in report["rows"]]
    assert names[0] == "no LoRA" and set(names[1:]) == {"wwaa-g13l-1-000001", "wwaa-g13l-1-000002", "wwaa-g13l-1"}
    assert report["recommendation"]["name"] in names[1:] and report["recommendation"]["reasons"]
    assert Path(report["recommended_file"]).is_file()
    saved = json.loads((tmp_path / "wwaa-g13l-1-scores.json").read_text())
    assert saved["rows"] == report["rows"]
    epochs = [row["epoch"] for row in report["rows"][1:]]
    assert epochs == [1, 2, 3]
    assert [row["label"] for row in report["rows"][1:]] == ["epoch 1", "epoch 2", "epoch 3 (final file)"]
    assert report["report_file"] == str(tmp_path / "wwaa-g13l-1-scores.json")
    assert report["output_dir"] == str(tmp_path) and len(report["images"]) == 4 * 2
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in report["images"])
    assert report["other_runs"] == [] and report["other_runs_note"] == ""


def test_cli_grid_score_keep(run, tiny_model, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    common = [sys.executable, "-m", "charlora"]
    grid = subprocess.run(common + ["grid", "--base-model", str(tiny_model.folder), "--lora-folder",
                                    str(run / "model"), "--prompt", USER_PROMPT, "--x", "prompt_sr=chk,1",
                                    "--y", "cfg=7,8", "--steps", "2", "--size", "64", "--out", str(tmp_path / "g")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert grid.returncode == 0, grid.stderr
    assert "grid:" in grid.stdout and "the base-model reference" in grid.stdout + grid.stderr
    assert "lora: column chk -> no LoRA" in grid.stdout
    assert "lora: column 1 -> wwaa-g13l-1-000001.safetensors" in grid.stdout
    score = subprocess.run(common + ["score", "--base-model", str(tiny_model.folder), "--lora-folder",
                                     str(run / "model"), "--name", "wwaa-g13l-1", "--train-data-dir", str(run / "img"),
                                     "--prompt", "portrait of a girl", "--seeds", "1,2", "--scorer", "tiny",
                                     "--steps", "2", "--size", "64", "--out", str(tmp_path / "s")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert score.returncode == 0, score.stderr
    assert "recommended:" in score.stdout and (tmp_path / "s" / "wwaa-g13l-1-scores.json").is_file()
    bad = subprocess.run(common + ["grid", "--base-model", str(tiny_model.folder), "--lora-folder", str(run / "model"),
                                   "--prompt", "no tag here", "--x", "prompt_sr=chk,1", "--out", str(tmp_path / "b")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "did not find" in bad.stderr


def test_cli_seeds_takes_the_names_the_grid_lists(run, tiny_model, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    common = [sys.executable, "-m", "charlora", "seeds", "--base-model", str(tiny_model.folder), "--lora-folder",
              str(run / "model"), "--prompt", "portrait of a girl", "--seeds", "1,2", "--steps", "2", "--size", "64",
              "--sampler", "DPM++ 2M"]
    ok = subprocess.run(common + ["--lora", "wwaa-g13l-1-000002", "--out", str(tmp_path / "s.png")],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert f"lora: {run / 'model' / 'wwaa-g13l-1-000002.safetensors'}" in ok.stdout
    assert f"sheet: {tmp_path / 's.png'}" in ok.stdout and (tmp_path / "s.png").is_file()
    assert "image 2/2" in ok.stderr
    bad = subprocess.run(common + ["--lora", "wwaa-2", "--out", str(tmp_path / "b.png")], capture_output=True,
                         text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "'wwaa-2' not found" in bad.stderr and "wwaa-g13l-1-000001" in bad.stderr
    assert "Traceback" not in bad.stderr and "internal error" not in bad.stderr


def test_cli_keep_archives_the_rest_of_the_run(run, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(run / "model", model)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "charlora", "keep", str(model / "wwaa-g13l-1-000002.safetensors"),
                             "--to", str(tmp_path / "webui" / "models" / "Lora")], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "webui" / "models" / "Lora" / "wwaa-g13l-1-000002.safetensors").is_file()
    assert sorted(p.name for p in (model / "archive").iterdir()) == ["wwaa-g13l-1-000001.safetensors",
                                                                    "wwaa-g13l-1.safetensors"]
    assert (model / "wwaa-g13l-1-000002.safetensors").is_file() and (model / "wwaa-g13l-1.config.json").is_file()


def test_scoring_without_prompts_is_refused_by_name(run, tiny_model, renderer, tmp_path):
    from charlora.errors import CharLoRAError

    s = ScoreSpec(base_model=str(tiny_model.folder), lora_folder=str(run / "model"), output_name="wwaa-g13l-1",
                  train_data_dir=str(run / "img"), output_dir=str(tmp_path), prompts=["  "], seeds=[1], scorer="tiny")
    with pytest.raises(CharLoRAError, match="at least one prompt"):
        score_run(s, renderer)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_lora_with_nan_weights_is_named_not_rendered_black(run, renderer, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    source = sorted((run / "model").glob("*.safetensors"))[0]
    with safe_open(str(source), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = handle.metadata()
    key = sorted(k for k in tensors if k.endswith("lora_up.weight"))[0]
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] = float("nan")
    broken = tmp_path / "diverged.safetensors"
    save_file(tensors, str(broken), metadata=metadata)
    with pytest.raises(CharLoRAError, match=r"diverged.safetensors holds NaN or infinite values in .*lora_up"):
        renderer.render(Cell("a girl", "", 7.0, 1, 2, "euler_a", [(str(broken), 1.0, 1.0)], ("", "", "")), 64, 64)
