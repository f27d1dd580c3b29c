"""Hostile datasets (issue 13, item 6): each odd thing on disk is a named problem in the report, the scan
never blocks on a FIFO or follows a symlink loop, and absurd repeat counts are refused before any work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from charlora.dataset import DatasetError, build_plan, check_dataset
from charlora.dataset.plan import MAX_SAMPLES_PER_EPOCH
from charlora.params import defaults, normalize

from dataset_helpers import pattern, save

REPO = Path(__file__).resolve().parents[1]


def config(root, reg=None, **overrides):
    values = dict(defaults(), max_resolution="512,512", min_bucket_reso=256, max_bucket_reso=1024,
                  bucket_reso_steps=64, enable_bucket=True, caption_extension=".txt", train_batch_size=1, epoch=1,
                  train_data_dir=str(root), reg_data_dir=str(reg) if reg else "")
    values.update(overrides)
    return normalize(values).values


def one_good_concept(root: Path) -> Path:
    concept = root / "10_wwaa girl"
    save(concept / "good.png", pattern(64, 64, 1), "wwaa girl")
    return concept


def problem_of(report, path: Path) -> str:
    found = [p.problem for p in report.problems if p.file == str(path)]
    assert len(found) == 1, (path, [p.as_dict() for p in report.problems])
    return found[0]


def test_a_1x1_image_is_named_and_skipped(tmp_path):
    concept = one_good_concept(tmp_path)
    save(concept / "dot.png", Image.new("RGB", (1, 1), (255, 0, 0)), "wwaa girl")
    report = check_dataset(config(tmp_path))
    assert "1x1 px" in problem_of(report, concept / "dot.png") and "skipped" in problem_of(report, concept / "dot.png")
    assert [i.path.name for i in report.plan.concepts[0].images] == ["good.png"]


def test_fifo_folder_and_dangling_symlink_named_png_are_named(tmp_path):
    concept = one_good_concept(tmp_path)
    os.mkfifo(concept / "pipe.png")  # opening it would block the scan forever
    (concept / "folder.png").mkdir()
    (concept / "gone.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(concept / "good_pipe.txt")  # a caption that is a FIFO
    save(concept / "good_pipe.png", pattern(64, 64, 2))
    report = check_dataset(config(tmp_path))
    assert "FIFO" in problem_of(report, concept / "pipe.png")
    assert "is a folder, not a file" in problem_of(report, concept / "folder.png")
    dangling = problem_of(report, concept / "gone.png")
    assert "dangling symlink" in dangling and "nowhere.png" in dangling
    assert "FIFO" in problem_of(report, concept / "good_pipe.txt")
    assert sorted(i.path.name for i in report.plan.concepts[0].images) == ["good.png", "good_pipe.png"]


def test_the_cli_does_not_hang_on_a_fifo(tmp_path):
    concept = one_good_concept(tmp_path)
    os.mkfifo(concept / "pipe.png")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "charlora", "dataset", "check", str(tmp_path), "--json"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    problems = json.loads(result.stdout)["problems"]
    assert {"file": str(concept / "pipe.png"), "problem": "a FIFO (named pipe), not a regular file; ignored: "
                                                          "remove it"} in problems


def test_symlink_loops_are_named_not_followed(tmp_path):
    concept = one_good_concept(tmp_path)
    (concept / "self.png").symlink_to(concept / "self.png")  # a link to itself
    (tmp_path / "5_loop").symlink_to(tmp_path)  # a concept folder that is its own parent
    (concept / "3_up").symlink_to(concept)  # a folder inside a concept pointing back at it
    report = check_dataset(config(tmp_path))
    assert "symlink loop" in problem_of(report, concept / "self.png")
    assert "symlink loop" in problem_of(report, tmp_path / "5_loop")
    assert [c.folder.name for c in report.plan.concepts] == ["10_wwaa girl"]
    assert [i.path.name for i in report.plan.concepts[0].images] == ["good.png"]


def test_empty_concept_and_reg_folders_are_named(tmp_path):
    one_good_concept(tmp_path / "img")
    (tmp_path / "img" / "4_empty").mkdir()
    (tmp_path / "reg" / "1_girl").mkdir(parents=True)
    report = check_dataset(config(tmp_path / "img", reg=tmp_path / "reg"))
    assert problem_of(report, tmp_path / "reg" / "1_girl").startswith("regularisation folder has no images")
    assert problem_of(report, tmp_path / "img" / "4_empty").startswith("concept folder has no images")


def test_a_1_mb_caption_is_named_and_a_huge_one_not_read(tmp_path):
    concept = one_good_concept(tmp_path)
    save(concept / "long.png", pattern(64, 64, 3))
    (concept / "long.txt").write_text("wwaa girl, " + "x" * 1_000_000 + "\n")
    save(concept / "huge.png", pattern(64, 64, 4))
    (concept / "huge.txt").write_text("wwaa girl " * 200_000)  # 2 MB on one line
    report = check_dataset(config(tmp_path))
    assert "caption is 1,000,011 characters long" in problem_of(report, concept / "long.txt")
    huge = problem_of(report, concept / "huge.txt")
    assert "2,000,000 bytes" in huge and "not read" in huge
    captions = {i.path.name: i.caption for i in report.plan.concepts[0].images}
    assert captions["huge.png"] == "wwaa girl"  # the class tokens


@pytest.mark.parametrize("key", ["train_data_dir", "reg_data_dir"])
def test_absurd_repeats_are_refused_before_any_image_is_read(tmp_path, monkeypatch, key):
    one_good_concept(tmp_path / "img")
    parent = tmp_path / ("img" if key == "train_data_dir" else "reg")
    save(parent / "999999999_name" / "a.png", pattern(64, 64, 5))
    from charlora.dataset import folders

    read = []
    monkeypatch.setattr(folders, "verify_image", lambda path: read.append(path))
    values = config(tmp_path / "img", reg=tmp_path / "reg" if key == "reg_data_dir" else None)
    with pytest.raises(DatasetError) as refused:
        build_plan(values)
    message = str(refused.value)
    assert f"{key} folder" in message and "999999999_name" in message and "repeat count 999999999" in message
    assert read == []


def test_a_total_past_the_samples_limit_is_refused_naming_the_folder(tmp_path):
    concept = tmp_path / "10000_wwaa"  # the largest allowed count, but 101 images of it is too many
    for i in range(MAX_SAMPLES_PER_EPOCH // 10000 + 1):
        save(concept / f"{i}.png", pattern(8, 8, i))
    with pytest.raises(DatasetError, match=r"1,010,000 samples per epoch.*'10000_wwaa'.*101 images x 10000 repeats"):
        build_plan(config(tmp_path))


def test_the_cli_refuses_absurd_repeats_with_exit_2(tmp_path):
    save(tmp_path / "999999999_name" / "a.png", pattern(64, 64, 5))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "charlora", "dataset", "check", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and "999999999_name" in result.stderr and "Traceback" not in result.stderr
