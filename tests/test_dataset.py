"""The dataset read as Kohya reads it, every number checked against hand-computed values."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from charlora.dataset import (BucketPlanner, DatasetError, build_plan, check_dataset, make_bucket_resolutions,
                              parse_concept_name, prepare_dataset)
from charlora.dataset.images import load_rgb, upright_size
from charlora.params import defaults, normalize

from dataset_helpers import build_user_dataset, pattern, save

REPO = Path(__file__).resolve().parents[1]


def config(**overrides):
    values = dict(defaults(), max_resolution="512,512", min_bucket_reso=256, max_bucket_reso=1024,
                  bucket_reso_steps=64, bucket_no_upscale=False, enable_bucket=True, caption_extension=".txt",
                  train_batch_size=1, epoch=12)
    values.update(overrides)
    return normalize(values).values


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_user_dataset(tmp_path_factory.mktemp("user"))


def problems_of(report, name):
    return [p.problem for p in report.problems if Path(p.file).name == name]


def test_concept_names():
    assert parse_concept_name("10_wwaa girl") == (10, "wwaa girl")
    assert parse_concept_name("3_a_b c") == (3, "a_b c")
    assert parse_concept_name("girl") is None and parse_concept_name("x10_girl") is None


def test_bucket_resolutions_match_kohya_for_512():
    resos = make_bucket_resolutions((512, 512), 256, 1024, 64)
    assert (512, 512) in resos and (256, 1024) in resos and (1024, 256) in resos
    assert (320, 768) in resos and (768, 320) in resos and (384, 640) in resos and (448, 576) in resos
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in resos)
    assert resos == sorted(resos) and len(resos) == 17


def test_exif_orientation_and_alpha(data):
    d = data["concept"] / "d.jpg"
    assert upright_size(d) == (448, 640)
    img = load_rgb(d)
    assert img.size == (448, 640)
    r, g, b = img.getpixel((224, 100))  # top half must be red once upright
    assert r > 200 and b < 60
    c = load_rgb(data["concept"] / "c.png")
    assert c.mode == "RGB" and c.getpixel((400, 10)) == (255, 255, 255)  # transparent -> white
    assert c.getpixel((10, 10)) == (200, 30, 30)


def test_buckets_and_steps_without_no_upscale(data):
    plan = build_plan(config(train_data_dir=str(data["img"]), reg_data_dir=str(data["reg"])))
    chosen = {s.item.path.name: (s.choice.bucket, s.choice.resized) for s in plan.samples}
    assert chosen["a.png"] == ((512, 512), (512, 512))
    assert chosen["b.jpg"] == ((640, 384), (640, 427))
    assert chosen["c.png"] == ((384, 640), (427, 640))
    assert chosen["d.jpg"] == ((448, 576), (448, 640))
    assert chosen["e.png"] == ((512, 512), (512, 512))
    assert chosen["f.png"] == ((640, 384), (640, 427))
    assert plan.num_train_samples == 60  # 6 readable images x 10 repeats
    assert [s.repeats for s in plan.samples if s.is_reg] == [20, 20, 20]  # cycled up to 60
    assert plan.bucket_counts == {(384, 640): 10, (448, 576): 10, (512, 512): 80, (640, 384): 20}
    assert plan.steps_per_epoch == 120 and plan.total_steps == 1440
    plan.batch_size = 4
    assert plan.steps_per_epoch == 3 + 3 + 20 + 5


def test_buckets_with_no_upscale(data):
    plan = build_plan(config(train_data_dir=str(data["img"]), reg_data_dir=str(data["reg"]),
                             bucket_no_upscale=True))
    chosen = {s.item.path.name: (s.choice.bucket, s.choice.resized) for s in plan.samples}
    assert chosen["a.png"] == ((512, 512), (512, 512))
    assert chosen["b.jpg"] == ((576, 384), (576, 384))
    assert chosen["c.png"] == ((384, 576), (384, 576))
    assert chosen["d.jpg"] == ((384, 576), (403, 576))
    assert chosen["e.png"] == ((512, 512), (512, 512))
    assert chosen["f.png"] == ((256, 192), (300, 200))  # never enlarged
    assert plan.bucket_counts == {(256, 192): 10, (384, 576): 20, (512, 512): 80, (576, 384): 10}
    assert plan.steps_per_epoch == 120


def test_no_buckets_resizes_everything_to_max_resolution(data):
    plan = build_plan(config(train_data_dir=str(data["img"]), enable_bucket=False))
    assert {s.choice.bucket for s in plan.samples} == {(512, 512)}
    assert plan.steps_per_epoch == 60


def test_step_count_options(data):
    base = dict(train_data_dir=str(data["img"]), reg_data_dir=str(data["reg"]))
    assert build_plan(config(**base, gradient_accumulation_steps=2)).steps_per_epoch == 60
    assert build_plan(config(**base), num_processes=2).steps_per_epoch == 60
    assert build_plan(config(**base, gradient_accumulation_steps=7)).steps_per_epoch == 18  # ceil(120/7)
    capped = build_plan(config(**base, max_train_steps=100))
    assert capped.total_steps == 100 and capped.total_epochs == 1
    assert build_plan(config(**base, max_train_epochs=3)).total_steps == 360
    no_reg = build_plan(config(train_data_dir=str(data["img"])))
    assert no_reg.steps_per_epoch == 60


def test_kohya_example_14_images_10_repeats_with_reg(tmp_path):
    for i in range(14):
        save(tmp_path / "img" / "10_wwaa girl" / f"{i}.png", pattern(64, 64, i), "wwaa girl")
    for i in range(5):
        save(tmp_path / "reg" / "1_girl" / f"{i}.png", pattern(64, 64, 50 + i))
    values = config(train_data_dir=str(tmp_path / "img"), reg_data_dir=str(tmp_path / "reg"),
                    max_resolution="64,64", min_bucket_reso=64, max_bucket_reso=128)
    assert build_plan(values).steps_per_epoch == 280


def test_surplus_reg_images_go_unused(tmp_path):
    save(tmp_path / "img" / "2_wwaa girl" / "a.png", pattern(64, 64, 1), "wwaa girl")
    for i in range(5):
        save(tmp_path / "reg" / "1_girl" / f"{i}.png", pattern(64, 64, 50 + i))
    plan = build_plan(config(train_data_dir=str(tmp_path / "img"), reg_data_dir=str(tmp_path / "reg"),
                             max_resolution="64,64", min_bucket_reso=64, max_bucket_reso=128))
    assert [s.repeats for s in plan.samples if s.is_reg] == [1, 1]
    assert plan.num_reg_samples == plan.num_train_samples == 2


def test_report_names_every_problem(data):
    report = check_dataset(config(train_data_dir=str(data["img"]), reg_data_dir=str(data["reg"])))
    assert any("unreadable or truncated" in p for p in problems_of(report, "broken.png"))
    assert any("not an image" in p for p in problems_of(report, "notes.png"))
    assert any("caption file without an image" in p for p in problems_of(report, "orphan.txt"))
    assert any("no leading repeat count" in p and "10_name" in p for p in problems_of(report, "girl_without_number"))
    assert any("no caption file" in p for p in problems_of(report, "f.png"))
    assert any("enlarged" in p for p in problems_of(report, "f.png"))
    assert any("trigger word 'wwaa'" in p for p in problems_of(report, "c.png"))
    dup = problems_of(report, "a.png") + problems_of(report, "e.png")
    assert any("near-duplicate" in p for p in dup)
    # the good images have no problem at all
    for name in ("b.jpg", "d.jpg"):
        assert problems_of(report, name) == [], name
    summary = report.as_dict()
    concept = summary["concepts"][0]
    assert concept == {"folder": "10_wwaa girl", "repeats": 10, "class_tokens": "wwaa girl", "images": 6,
                       "captions_found": 5, "captions_missing": 1, "captions_empty": 0}
    assert summary["reg_concepts"][0]["images"] == 3
    assert summary["buckets"] == {"384x640": 1, "448x576": 1, "512x512": 5, "640x384": 2}
    assert summary["steps_per_epoch"] == 120 and summary["total_steps"] == 1440


def test_no_near_duplicate_between_different_images(tmp_path):
    for i in range(4):
        save(tmp_path / "img" / "1_wwaa girl" / f"{i}.png", pattern(128, 128, i), "wwaa girl")
    report = check_dataset(config(train_data_dir=str(tmp_path / "img"), max_resolution="128,128",
                                  min_bucket_reso=64, max_bucket_reso=256))
    assert [p for p in report.problems if "near-duplicate" in p.problem] == []


def test_wrong_caption_extension_is_pointed_out(tmp_path):
    save(tmp_path / "img" / "1_wwaa girl" / "a.png", pattern(64, 64, 1), "wwaa girl", ext=".txt")
    report = check_dataset(config(train_data_dir=str(tmp_path / "img"), caption_extension="",
                                  max_resolution="64,64", min_bucket_reso=64, max_bucket_reso=128))
    assert any("caption_extension" in p.problem and "'.txt'" in p.problem for p in report.problems)


def test_bom_and_first_line_captions(tmp_path):
    folder = tmp_path / "img" / "1_wwaa girl"
    save(folder / "a.png", pattern(64, 64, 1))
    (folder / "a.txt").write_bytes("\ufeffwwaa girl, red dress\nsecond line ignored\n".encode("utf-8"))
    save(folder / "b.png", pattern(64, 64, 2))
    (folder / "b.txt").write_text("\n")
    plan = build_plan(config(train_data_dir=str(tmp_path / "img"), max_resolution="64,64",
                             min_bucket_reso=64, max_bucket_reso=128))
    captions = {s.item.path.name: s.item.caption for s in plan.samples}
    assert captions == {"a.png": "wwaa girl, red dress", "b.png": "wwaa girl"}
    assert any("empty" in p.problem for p in plan.problems)


def test_pointing_at_the_concept_folder_itself(data):
    with pytest.raises(DatasetError, match="parent"):
        check_dataset(config(train_data_dir=str(data["concept"])))


def test_missing_and_empty_dataset(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        check_dataset(config(train_data_dir=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no usable training images"):
        check_dataset(config(train_data_dir=str(tmp_path / "empty")))


def test_cli_dataset_check_json(data, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"max_resolution": "512,512", "max_bucket_reso": 1024, "bucket_no_upscale": False,
                               "epoch": 12, "caption_extension": ".txt"}))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "charlora", "dataset", "check", str(data["img"]), "--config",
                             str(cfg), "--reg", str(data["reg"]), "--json"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert {"concepts", "reg_concepts", "problems", "buckets", "steps_per_epoch", "total_steps"} <= set(out)
    assert out["steps_per_epoch"] == 120 and out["total_steps"] == 1440
    assert out["concepts"][0]["captions_missing"] == 1
    missing = subprocess.run([sys.executable, "-m", "charlora", "dataset", "check", str(tmp_path / "nope")],
                             capture_output=True, text=True, env=env, timeout=120)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_prepare_copies_never_moves(tmp_path):
    src = tmp_path / "mine"
    for i in range(3):
        save(src / f"{i}.png", pattern(64, 64, i))
    (src / "readme.txt").write_text("not an image")
    result = prepare_dataset(src, tmp_path / "project", "wwaa", "girl", 10, write_captions=True)
    concept = tmp_path / "project" / "img" / "10_wwaa girl"
    assert result.concept_dir == concept and result.copied == 3 and result.captions_written == 3
    assert sorted(p.name for p in src.iterdir()) == ["0.png", "1.png", "2.png", "readme.txt"]
    assert (concept / "0.txt").read_text() == "wwaa girl\n"
    for sub in ("reg", "model", "log"):
        assert (tmp_path / "project" / sub).is_dir()
    (concept / "0.txt").write_text("my own caption\n")
    again = prepare_dataset(src, tmp_path / "project", "wwaa", "girl", 10, write_captions=True)
    assert again.copied == 0 and len(again.skipped) == 3
    assert (concept / "0.txt").read_text() == "my own caption\n"  # never overwritten
    plan = build_plan(config(train_data_dir=str(result.img_dir), max_resolution="64,64", min_bucket_reso=64,
                             max_bucket_reso=128))
    assert plan.num_train_samples == 30


def test_every_supported_format_and_mode_loads_as_rgb(tmp_path):
    folder = tmp_path / "img" / "1_wwaa girl"
    base = pattern(64, 64, 5)
    save(folder / "w.webp", base, "wwaa girl", quality=90)
    save(folder / "b.bmp", base, "wwaa girl")
    save(folder / "p.png", base.convert("P"), "wwaa girl")
    save(folder / "g.jpeg", base.convert("L"), "wwaa girl")
    save(folder / "u.PNG", base.convert("LA"), "wwaa girl")
    plan = build_plan(config(train_data_dir=str(tmp_path / "img"), max_resolution="64,64", min_bucket_reso=64,
                             max_bucket_reso=128))
    assert sorted(s.item.path.name for s in plan.samples) == ["b.bmp", "g.jpeg", "p.png", "u.PNG", "w.webp"]
    assert plan.problems == []
    for sample in plan.samples:
        image = load_rgb(sample.item.path)
        assert image.mode == "RGB" and image.size == (64, 64)


def test_cli_dataset_prepare(tmp_path):
    src = tmp_path / "mine"
    save(src / "one.png", pattern(64, 64, 1))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "charlora", "dataset", "prepare", str(src), str(tmp_path / "p"),
                             "--trigger", "wwaa", "--class-word", "girl", "--repeats", "5", "--captions"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "p" / "img" / "5_wwaa girl" / "one.txt").read_text() == "wwaa girl\n"
    bad = subprocess.run([sys.executable, "-m", "charlora", "dataset", "prepare", str(src), str(tmp_path / "q"),
                          "--trigger", "two words", "--class-word", "girl"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert bad.returncode == 2 and "trigger" in bad.stderr and not (tmp_path / "q").exists()
