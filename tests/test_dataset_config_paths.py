"""A config from another computer (the user's Windows Kohya config) names folders that are not here:
the dataset check reports them as problems and checks the folders it was given."""

import json
import shutil

import pytest

from charlora.cli import main
from charlora.dataset import DatasetError, build_plan, check_dataset
from charlora.params import load_config

from conftest import SEED_CONFIG
from dataset_helpers import pattern, save

SEED_REG = "C:/AI/Training/Girl-lora/reg"
REG_PROBLEM = (f"reg_data_dir '{SEED_REG}' does not exist on this computer; "
               "fix the path or clear it to train without regularisation")


@pytest.fixture
def seed_copy(tmp_path):
    path = tmp_path / "seed.json"
    shutil.copy(SEED_CONFIG, path)
    assert json.loads(path.read_text(encoding="utf-8"))["reg_data_dir"] == SEED_REG
    return path


@pytest.fixture
def dataset(tmp_path):
    img = tmp_path / "img"
    for i in range(3):
        save(img / "10_wwaa girl" / f"{i}.png", pattern(64, 64, i), "wwaa girl", ext=".caption")
    return img


def test_cli_check_with_the_seed_config_reports_its_missing_reg_folder(seed_copy, dataset, capsys):
    rc = main(["dataset", "check", str(dataset), "--config", str(seed_copy), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    out = json.loads(captured.out)
    assert {"file": SEED_REG, "problem": REG_PROBLEM} in out["problems"]
    assert out["concepts"][0]["images"] == 3 and out["train_samples_per_epoch"] == 30
    assert out["reg_concepts"] == [] and out["reg_samples_per_epoch"] == 0

    assert main(["dataset", "check", str(dataset), "--config", str(seed_copy)]) == 0
    assert f"  {SEED_REG}: {REG_PROBLEM}" in capsys.readouterr().out


def test_cli_check_refuses_folders_given_on_the_command_line(seed_copy, dataset, tmp_path, capsys):
    assert main(["dataset", "check", str(tmp_path / "nope"), "--config", str(seed_copy)]) == 2
    assert f"train_data_dir '{tmp_path / 'nope'}' does not exist on this computer" in capsys.readouterr().err
    assert main(["dataset", "check", str(dataset), "--config", str(seed_copy), "--reg", str(tmp_path / "noreg")]) == 2
    assert f"--reg '{tmp_path / 'noreg'}' does not exist on this computer" in capsys.readouterr().err


def test_check_dataset_reports_a_missing_reg_folder(seed_copy, dataset):
    values = dict(load_config(seed_copy).values, train_data_dir=str(dataset))
    report = check_dataset(values)
    assert [(p.file, p.problem) for p in report.problems] == [(SEED_REG, REG_PROBLEM)]
    assert report.plan.num_train_samples == 30 and report.plan.num_reg_samples == 0


def test_check_dataset_still_refuses_a_missing_or_empty_train_folder(seed_copy, dataset, tmp_path):
    values = load_config(seed_copy).values
    with pytest.raises(DatasetError, match="train_data_dir is empty"):
        check_dataset(dict(values, train_data_dir=""))
    with pytest.raises(DatasetError) as caught:
        check_dataset(values)  # the seed's own C:/... train_data_dir
    assert str(caught.value) == ("train_data_dir 'C:/AI/Training/Girl-lora/img' does not exist on this computer; "
                                 "choose the folder that holds folders like 10_name")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(DatasetError, match="is not a folder"):
        check_dataset(dict(values, train_data_dir=str(a_file)))


def test_training_plan_names_a_missing_reg_folder(seed_copy, dataset):
    # The trainer plans with build_plan: a missing reg folder stops it with the same words, not a traceback.
    values = dict(load_config(seed_copy).values, train_data_dir=str(dataset))
    with pytest.raises(DatasetError) as caught:
        build_plan(values)
    assert str(caught.value) == REG_PROBLEM
    assert build_plan(dict(values, reg_data_dir="")).num_train_samples == 30
