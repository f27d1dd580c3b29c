"""The command line, run as a user runs it: a real subprocess, real files."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from conftest import SEED_CONFIG  # noqa: E402

SEED = SEED_CONFIG


def run(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "charlora", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_help_lists_subcommands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("config", "params", "make-tiny-model"):
        assert command in result.stdout


def test_config_check_seed_prints_normalised_json():
    result = run("config", "check", SEED)
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    expected = {"network_dim": 128, "network_alpha": 1.0, "learning_rate": 1e-4, "unet_lr": 1e-4,
                "text_encoder_lr": 5e-5, "lr_scheduler": "cosine", "lr_warmup": 10, "epoch": 12,
                "train_batch_size": 1, "optimizer": "AdamW8bit", "mixed_precision": "fp16", "clip_skip": 1,
                "max_resolution": "512,512", "seed": None}
    assert {k: values[k] for k in expected} == expected
    assert result.stderr == ""


def test_config_check_set_overrides():
    result = run("config", "check", SEED, "--set", "network_dim=64", "--set", "seed=1234")
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["network_dim"] == 64 and values["seed"] == 1234


def test_config_check_bad_file_exits_2_with_every_problem(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"network_dim": "abc", "v2": True, "mystery": 1}))
    result = run("config", "check", bad)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "network_dim" in result.stderr and "'abc'" in result.stderr
    assert "v2" in result.stderr and "2.x" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_check_not_json(tmp_path):
    bad = tmp_path / "notes.json"
    bad.write_text("hello")
    result = run("config", "check", bad)
    assert result.returncode == 2 and "not valid JSON" in result.stderr and "notes.json" in result.stderr


def test_params_markdown_matches_docs():
    result = run("params", "--markdown")
    assert result.returncode == 0
    assert result.stdout == (REPO / "docs" / "parameters.md").read_text()


def test_params_unknown_group():
    result = run("params", "--group", "nope")
    assert result.returncode == 2 and "network" in result.stderr


def test_make_tiny_model_writes_both_forms(tmp_path):
    result = run("make-tiny-model", tmp_path / "tiny", "--seed", "3")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "tiny" / "tiny-sd15"
    single = tmp_path / "tiny" / "tiny-sd15.safetensors"
    assert (folder / "model_index.json").is_file() and single.is_file()
    assert str(single) in result.stdout and single.stat().st_size < 20 * 1024 * 1024


def test_config_check_into_a_closed_pipe_is_quiet(tmp_path):
    raw = json.loads(SEED.read_text())
    raw["sample_prompts"] = "a portrait of wwaa girl --n blurry\n" * 30_000  # ~1 MB: more than a pipe holds
    (tmp_path / "big.json").write_text(json.dumps(raw))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    shell = subprocess.run(f"'{sys.executable}' -m charlora config check '{tmp_path / 'big.json'}' | head -1",
                           shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert shell.stdout == "{\n" and shell.stderr == "", shell.stderr
