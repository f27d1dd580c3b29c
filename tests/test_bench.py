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


def test_bench_sdxl_shape_runs_the_sdxl_preset():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "charlora", "bench", "--shape", "tiny-sdxl", "--steps", "1",
                             "--generation-steps", "2", "--json"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["shape"] == "tiny-sdxl" and report["config"].endswith("sdxl-character-16gb.json")
    assert report["network_dim"] == 32 and report["gradient_checkpointing"] is True
    assert report["median_s_per_step"] > 0 and report["generation_images_per_s"] > 0


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
    assert len(report["runs"]) == 8 and all("error" not in r for r in report["runs"])
    assert [r["shape"] for r in report["runs"][6:]] == ["tiny-sdxl", "tiny-sdxl"]  # the SDXL presets' runs
    assert report["runs"][7]["text_encoder_trained"] is False  # the low-VRAM preset trains the UNet only
    first = report["runs"][0]
    assert first["estimate_total_bytes"] > 0 and first["generation_images_per_s"] > 0
    assert set(first["estimate_parts_bytes"]) >= {"weights", "lora_parameters", "optimizer_state", "activations"}
    assert "finished" in report and report["environment"]["torch"]


def test_app_overhead_bench_prints_its_figures():
    import re

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE")
    result = subprocess.run([sys.executable, "-m", "charlora", "bench", "--app-overhead", "--steps", "2", "--warmup",
                             "1", "--rounds", "1", "--poll-interval", "0.2"], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    number = r"(\d+\.\d+)"
    assert re.search(rf"^round 1  cli +CPU {number} s/step  wall {number} s/step$", out, re.M), out
    app = re.search(rf"^round 1  app +CPU {number} s/step  wall {number} s/step  poller: (\d+) polls, {number} ms CPU "
                    r"per poll$", out, re.M)
    assert app and int(app[3]) >= 1, out  # the page-load poll at least
    assert re.search(rf"^app/CLI: CPU per step {number}x, wall per step {number}x \(medians\); CPU per step within a "
                     rf"round {number}x \(median\)$", out, re.M), out
    assert "tiny at 64 px, 2 timed steps after 1 warm-up, 1 round(s)" in out
    assert "round 1  cli" in result.stderr  # each run as it ends
    bad = subprocess.run([sys.executable, "-m", "charlora", "bench", "--app-overhead", "--warmup", "0"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "--warmup >= 1" in bad.stderr
