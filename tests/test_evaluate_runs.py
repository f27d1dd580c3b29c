"""A run's files are the ones that run wrote: two real training runs with one output_name in one folder."""

from pathlib import Path

import pytest

from charlora.evaluate import Renderer, ScoreSpec, checkpoint_info, keep_checkpoint, run_files, run_files_of, score_run
from charlora.lora import read_header
from charlora.params import load_config, normalize
from charlora.train import train

from dataset_helpers import pattern, save

REPO = Path(__file__).resolve().parents[1]
NAME = "char"


def session(path: Path) -> str:
    return read_header(path).metadata["ss_session_id"]


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """An earlier run (seed 1, 1 epoch of 6 steps, a file every 2 steps) and a later one with the same
    output_name (seed 7, 2 epochs, a file at step 9): the earlier run's step files are left behind."""
    root = tmp_path_factory.mktemp("two-runs")
    for i in range(3):
        save(root / "img" / "2_char girl" / f"{i}.png", pattern(64, 64, i), "char girl, smiling")
    base = dict(load_config(REPO / "presets" / "quick-tiny-demo.json").values,
                pretrained_model_name_or_path=str(tiny_model.single_file), train_data_dir=str(root / "img"),
                output_dir=str(root / "model"), output_name=NAME, unet_lr=5e-3, text_encoder_lr=2e-3)
    earlier = train(normalize(dict(base, seed=1, epoch=1, save_every_n_steps=2)).values)
    assert earlier.status == "completed"
    earlier_files = {p.name: session(p) for p in (root / "model").glob("*.safetensors")}
    later = train(normalize(dict(base, seed=7, epoch=2, save_every_n_steps=9)).values)
    assert later.status == "completed"
    return root, earlier_files


def test_the_two_runs_have_different_session_ids(runs):
    root, earlier = runs
    model = root / "model"
    assert sorted(earlier) == ["char-step00000002.safetensors", "char-step00000004.safetensors", "char.safetensors"]
    assert session(model / "char.safetensors") != earlier["char.safetensors"]  # the later run rewrote it
    assert session(model / "char-step00000002.safetensors") == earlier["char-step00000002.safetensors"]


def test_run_files_are_the_newest_runs(runs):
    model = runs[0] / "model"
    found = run_files(model, NAME)
    assert [p.name for p in found.files] == ["char-000001.safetensors", "char-step00000009.safetensors",
                                             "char.safetensors"]  # in training order: steps 6, 9, 12
    assert [p.name for p in found.others] == ["char-step00000002.safetensors", "char-step00000004.safetensors"]
    assert found.session_id == session(model / "char.safetensors")
    assert found.note() == ("2 file(s) of other runs with this name: not scored, not archived "
                            "(char-step00000002.safetensors, char-step00000004.safetensors)")
    assert run_files_of(model, NAME) == found.files
    # the earlier run, asked for by one of its files
    earlier = run_files(model, NAME, member=model / "char-step00000004.safetensors")
    assert [p.name for p in earlier.files] == ["char-step00000002.safetensors", "char-step00000004.safetensors"]


def test_checkpoint_labels_from_metadata(runs):
    model = runs[0] / "model"
    step = checkpoint_info(model / "char-step00000009.safetensors")
    assert (step.kind, step.epoch, step.steps, step.label) == ("step", None, 9, "step 9 (during epoch 2)")
    epoch = checkpoint_info(model / "char-000001.safetensors")
    assert (epoch.kind, epoch.epoch, epoch.steps, epoch.label) == ("epoch", 1, 6, "epoch 1")
    final = checkpoint_info(model / "char.safetensors")
    assert (final.kind, final.epoch, final.steps, final.label) == ("final", 2, 12, "epoch 2 (final file)")
    old = checkpoint_info(model / "char-step00000002.safetensors")
    assert old.label == "step 2 (during epoch 1)" and old.epoch is None


def test_score_leaves_other_runs_out(runs, tiny_model, tmp_path):
    root = runs[0]
    spec = ScoreSpec(base_model=str(tiny_model.folder), lora_folder=str(root / "model"), output_name=NAME,
                     train_data_dir=str(root / "img"), output_dir=str(tmp_path), prompts=["portrait of char girl"],
                     seeds=[1], scorer="tiny", steps=2, width=64, height=64, sampler="DPM++ 2M")
    report = score_run(spec, Renderer(str(tiny_model.folder), device="cpu"))
    rows = report["rows"][1:]
    assert [r["name"] for r in rows] == ["char-000001", "char-step00000009", "char"]
    assert [r["label"] for r in rows] == ["epoch 1", "step 9 (during epoch 2)", "epoch 2 (final file)"]
    assert [r["steps"] for r in rows] == [6, 9, 12]
    assert report["other_runs"] == [str(root / "model" / "char-step00000002.safetensors"),
                                    str(root / "model" / "char-step00000004.safetensors")]
    assert "2 file(s) of other runs" in report["other_runs_note"]
    assert not any("step00000002" in p or "step00000004" in p for p in report["images"])


def test_keep_never_archives_other_runs(runs, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(runs[0] / "model", model)
    chosen = model / "char-000001.safetensors"
    result = keep_checkpoint(chosen, tmp_path / "Lora", run_files_of(model, NAME))
    assert sorted(p.name for p in result.archived) == ["char-step00000009.safetensors", "char.safetensors"]
    assert (model / "char-step00000002.safetensors").is_file() and (model / "char-step00000004.safetensors").is_file()
    # even when a caller passes every file of that name, another run's files stay where they are
    again = keep_checkpoint(model / "archive" / "char.safetensors", tmp_path / "Lora2",
                            [model / "char-step00000002.safetensors", model / "char-step00000004.safetensors"])
    assert again.archived == [] and [p.name for p in again.others] == ["char-step00000002.safetensors",
                                                                        "char-step00000004.safetensors"]
    assert (model / "char-step00000002.safetensors").is_file()
