"""The benchmark command's output (not its speed: speed is measured, never asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_tiny_json_shape():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "charlora", "bench", "--shape", "tiny", "--steps", "2",
                             "--generation-steps", "2", "--json"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("median_s_per_step", "samples_per_s", "peak_rss_bytes", "generation_images_per_s", "model_build_s"):
        assert report[key] > 0, key
    assert set(report["phases_median_s"]) == {"data", "forward", "backward", "optimizer"}
    assert report["steps_timed"] == 2 and report["shape"] == "tiny" and report["resolution"] == 64
    assert report["optimizer"] == "AdamW8bit" and report["network_dim"] == 128  # the user's config by default
    text = subprocess.run([sys.executable, "-m", "charlora", "bench", "--steps", "1", "--no-generation"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert text.returncode == 0 and "s/step" in text.stdout and "split: data" in text.stdout


def test_bench_refuses_cuda_without_a_gpu():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "charlora", "bench", "--device", "cuda"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 2 and "no CUDA GPU" in result.stderr


def test_gpu_check_script_runs_in_quick_mode(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = tmp_path / "gpu-check.json"
    result = subprocess.run([sys.executable, "-m", "charlora", "gpu-check", "--quick", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert len(report["runs"]) == 6 and all("error" not in r for r in report["runs"])
    first = report["runs"][0]
    assert first["estimate_total_bytes"] > 0 and first["generation_images_per_s"] > 0
    assert set(first["estimate_parts_bytes"]) >= {"weights", "lora_parameters", "optimizer_state", "activations"}
    assert "finished" in report and report["environment"]["torch"]
