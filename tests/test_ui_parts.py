"""The app's pieces without a browser: the SVG chart, status lines, sample captions, recent paths,
and the evaluation poll after a job that failed before the page heard of it."""

import re

from charlora import recent
from charlora.evaluate import current_evaluation
from charlora.errors import CharLoRAError
from charlora.train import JobSnapshot
from charlora.ui.charts import line_chart
from charlora.ui.evaluation_tab import poll as evaluation_poll
from charlora.ui.training_tab import loss_chart, sample_caption, status_text


def polyline_points(svg, series):
    match = re.search(rf'data-series="{re.escape(series)}" data-points="(\d+)" points="([^"]*)"', svg)
    return int(match[1]), match[2].split()


def test_chart_draws_from_the_first_points_and_skips_nan():
    assert "<polyline" not in loss_chart([])  # empty: a note, no line
    svg = loss_chart([(1, 1.2, 1.2), (2, 0.9, 1.05), (3, float("nan"), 1.05)])
    count, coords = polyline_points(svg, "loss")
    assert count == 2 and len(coords) == 2 and 'stroke="none"' not in svg
    assert polyline_points(svg, "average (epoch)")[0] == 3
    # higher loss is drawn higher up (smaller y)
    (x1, y1), (x2, y2) = (map(float, c.split(",")) for c in coords)
    assert x1 < x2 and y1 < y2


def test_chart_of_one_point_shows_a_dot():
    svg = line_chart({"a": [(5.0, 1.0)]}, "t", "x", "y")
    assert "<circle" in svg and polyline_points(svg, "a")[0] == 1


def test_a_long_legend_wraps_inside_the_chart():
    """Three long series names (the toy-identity chart's) ran past the right edge: 'no LoRA' was cut off."""
    import re

    names = ["wwaa LoRA (the character)", "zzkk LoRA (another character)", "no LoRA"]
    svg = line_chart({n: [(0, 0.1 * i), (1, 0.2)] for i, n in enumerate(names)}, "t", "x", "y")
    width, height = map(float, re.search(r'viewBox="0 0 (\S+) (\S+)"', svg).groups())
    labels = re.findall(r'<text x="([\d.]+)" y="([\d.]+)">([^<]+)</text>', svg)
    assert [label for _, _, label in labels] == names
    for x, y, label in labels:  # each label starts inside, ends inside (7 px per character, generous)
        assert float(x) + 7 * len(label) <= width and float(y) <= height, label
    assert height > 260  # a second legend row
    short = line_chart({"loss": [(0, 1), (1, 2)], "average": [(0, 1), (1, 1)]}, "t", "x", "y")
    assert 'viewBox="0 0 560 260"' in short  # one row: the chart keeps its size


def snap(**kw):
    base = dict(version=3, state="stopped", step=24, total_steps=280, epoch=1, total_epochs=2, loss=0.5,
                average_loss=0.6, lr={"unet": 1e-4}, it_per_s=2.0, eta_s=128.0)
    return JobSnapshot(**{**base, **kw})


def test_status_has_no_eta_once_the_run_ended():
    assert "ETA" not in status_text(snap(state="stopped"))
    assert "ETA 2:08" in status_text(snap(state="running"))
    stopping = status_text(snap(state="stopping"))
    assert "Stopping after the current step" in stopping and "ETA" not in stopping
    assert "Resume the stopped run" in status_text(snap(resumable_state="/x/run-step00000024-state"))


def test_sample_captions_name_epoch_step_and_prompt():
    values = {"sample_prompts": "wwaa girl, smiling --w 64 --d 1\nwwaa girl, in a park"}
    assert sample_caption("/o/sample/my_run_e000003_01_20261129120000.png", values) == "epoch 3 · wwaa girl, in a park"
    assert sample_caption("/o/sample/my_run_000500_00_20261129120000_1.png", values) == "step 500 · wwaa girl, smiling"
    assert sample_caption("/o/sample/other.png", values) == "other.png"


def test_recent_paths_are_remembered_newest_first(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARLORA_HOME", str(tmp_path / "home"))
    models = tmp_path / "models"
    models.mkdir()
    (models / "a.safetensors").write_bytes(b"x")
    (models / "b.ckpt").write_bytes(b"x")
    recent.remember({"train_data_dir": "/data/one", "pretrained_model_name_or_path": str(models / "a.safetensors")})
    recent.remember({"train_data_dir": "/data/two", "output_dir": ""})
    assert recent.recent_paths("train_data_dir") == ["/data/two", "/data/one"]
    assert recent.recent_paths("output_dir") == []
    # the base model's list also offers the other checkpoints beside the one used
    assert recent.choices_for("pretrained_model_name_or_path")[:2] == [str(models / "a.safetensors"),
                                                                      str(models / "b.ckpt")]
    (tmp_path / "home" / "recent-paths.json").write_text("{damaged")
    assert recent.recent_paths("train_data_dir") == []  # a damaged list is only a lost convenience


def test_evaluation_poll_shows_a_failure_that_came_before_the_start_reply():
    job = current_evaluation()

    def work(progress, stop):
        raise CharLoRAError("lora 'girl-9' not found in /x; available: girl-000001, girl")

    job.start("seeds", work)
    assert job.wait(timeout=30)
    # the start handler resets the page's seen version, so the next poll redraws even an old failure
    outputs = evaluation_poll({"version": -1})
    bar, message = outputs[0]["value"], outputs[1]["value"]
    assert 'data-state="failed"' in bar
    assert "Seeds failed" in message and "girl-9" in message
    assert outputs[2]["value"] is None  # no earlier job's image left under the error


def test_whole_number_axes_get_no_fractional_ticks():
    import re

    svg = line_chart({"identity": [(1.0, 0.93), (2.0, 0.94)]}, "Scores over epochs", "epoch", "score")
    x_labels = re.findall(r'text-anchor="middle" fill="#444">([^<]+)<', svg)
    assert x_labels == ["1", "2"]  # epochs 1 and 2, not 1.2, 1.4 ...
