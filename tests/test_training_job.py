"""The process-wide job the GUI polls: start returns at once, snapshots follow the run, errors are messages."""

from pathlib import Path

import pytest

from charlora.errors import CharLoRAError
from charlora.params import load_config, normalize
from charlora.train import TrainingJob
from charlora.ui.training_tab import files_text, loss_chart, status_text

from dataset_helpers import pattern, save

REPO = Path(__file__).resolve().parents[1]


def values_for(tiny_model, tmp_path, **overrides):
    for i in range(2):
        save(tmp_path / "img" / "2_wwaa girl" / f"{i}.png", pattern(64, 64, i), "wwaa girl")
    values = dict(load_config(REPO / "presets" / "quick-tiny-demo.json").values,
                  pretrained_model_name_or_path=str(tiny_model.single_file), train_data_dir=str(tmp_path / "img"),
                  output_dir=str(tmp_path / "out"))
    values.update(overrides)
    return normalize(values).values


def test_job_runs_in_a_thread_and_reports(tiny_model, tmp_path):
    job = TrainingJob()
    job.start(values_for(tiny_model, tmp_path))
    assert job.snapshot().running
    assert job.wait(timeout=300)
    snap = job.snapshot()
    assert snap.state == "completed" and snap.step == snap.total_steps == 8
    assert [Path(f).name for f in snap.files] == ["tiny-demo-000001.safetensors", "tiny-demo.safetensors"]
    assert len(snap.losses) == 8 and snap.plan.startswith("images: 2 (4 samples per epoch")
    assert "Completed" in status_text(snap) and "tiny-demo.safetensors" in files_text(snap.files)
    chart = loss_chart(snap.plot_points())
    assert chart.count('data-points="8"') == 2  # the loss and its epoch average, a point per step


def test_failure_is_a_message_not_a_traceback(tiny_model, tmp_path):
    job = TrainingJob()
    job.start(values_for(tiny_model, tmp_path, pretrained_model_name_or_path=str(tmp_path / "gone.safetensors")))
    assert job.wait(timeout=120)
    snap = job.snapshot()
    assert snap.state == "failed" and "gone.safetensors" in snap.message
    text = status_text(snap)
    assert "**Error:**" in text and "Traceback" not in text


def test_second_start_is_refused_while_running(tiny_model, tmp_path):
    job = TrainingJob()
    values = values_for(tiny_model, tmp_path, epoch=200)
    job.start(values)
    try:
        with pytest.raises(CharLoRAError, match="already going"):
            job.start(values)
    finally:
        job.stop(save=False)
        assert job.wait(timeout=300)
    assert job.snapshot().state == "stopped"


def test_plot_points_are_thinned_to_1000():
    from charlora.train.job import JobSnapshot

    snap = JobSnapshot(losses=[(i, 1.0, 1.0) for i in range(1, 5001)])
    points = snap.plot_points()
    assert len(points) == 1000 and points[0][0] == 1 and points[-1][0] == 5000
