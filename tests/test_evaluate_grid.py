"""The grid, seed batches and scoring on the tiny model with a tiny trained LoRA set."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from charlora.evaluate import GridSpec, Renderer, ScoreSpec, build_grid, score_run, seed_batch
from charlora.evaluate.grid import Cell
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
    assert any("wwaa-g13l-1-chk" in w and "not found" in w for w in result.warnings)
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


def test_checkpoint_axis_with_no_lora_entry(run, tiny_model, renderer, tmp_path):
    s = spec(run, tiny_model, tmp_path, prompt="portrait of a girl", x_kind="checkpoint",
             x_values="none, wwaa-g13l-1-000001, wwaa-g13l-1", y_kind="nothing", y_values="")
    result = build_grid(s, renderer)
    assert len(result.cells) == 3 and result.warnings == []
    labels = json.loads(Image.open(result.grids[0]).text["charlora.grid"])
    assert "no LoRA" in json.dumps(labels)


def test_stop_ends_the_grid_early(run, tiny_model, renderer, tmp_path):
    calls = []
    result = build_grid(spec(run, tiny_model, tmp_path), renderer, progress=lambda d, t, i: calls.append(d),
                        stop=lambda: len(calls) >= 2)
    assert result.stopped and len(result.cells) == 2 and result.grids == []


def test_seed_batch_sheet(run, renderer, tmp_path):
    path, images = seed_batch(renderer, run / "model" / "wwaa-g13l-1.safetensors", "portrait of a girl", "",
                              [1, 2, 3, 4], tmp_path / "sheet.png", steps=2, width=64, height=64, columns=2)
    assert path.is_file() and len(images) == 4
    assert len({np.asarray(i).tobytes() for i in images}) == 4
    sheet = Image.open(path)
    assert sheet.width >= 2 * 64 and sheet.height >= 2 * 64 and json.loads(sheet.text["charlora.seeds"]) == [1, 2, 3, 4]


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


def test_cli_grid_score_keep(run, tiny_model, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    common = [sys.executable, "-m", "charlora"]
    grid = subprocess.run(common + ["grid", "--base-model", str(tiny_model.folder), "--lora-folder",
                                    str(run / "model"), "--prompt", USER_PROMPT, "--x", "prompt_sr=chk,1",
                                    "--y", "cfg=7,8", "--steps", "2", "--size", "64", "--out", str(tmp_path / "g")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert grid.returncode == 0, grid.stderr
    assert "grid:" in grid.stdout and "not found" in grid.stdout + grid.stderr
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
