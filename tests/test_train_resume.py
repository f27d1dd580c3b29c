"""Resuming a stopped run from the job (the app's Resume button): same settings, the loss history and
the epoch average continued, one ss_session_id for all of a run's files, a new one for every run."""

import json
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open

from charlora.errors import CharLoRAError
from charlora.params import load_config, normalize
from charlora.train import Step, StopRequest, TrainingJob, train
from charlora.train import checkpoints as ckpt

from dataset_helpers import pattern, save

REPO = Path(__file__).resolve().parents[1]
STOP_AT = 3  # of 8 steps: mid-way through epoch 1 (4 steps per epoch)


def run_values(tiny_model, data: Path, out: Path, **overrides) -> dict:
    values = dict(load_config(REPO / "presets" / "quick-tiny-demo.json").values,
                  pretrained_model_name_or_path=str(tiny_model.single_file), train_data_dir=str(data),
                  output_dir=str(out), **overrides)
    return normalize(values).values


def session_ids(folder: Path) -> set:
    ids = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as fh:
            ids.add(fh.metadata()["ss_session_id"])
    return ids


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """An uninterrupted run, and the same settings stopped at step 3 by the job and resumed by it."""
    root = tmp_path_factory.mktemp("resume")
    for i in range(2):
        save(root / "img" / "2_wwaa girl" / f"{i}.png", pattern(64, 64, i), "wwaa girl")
    whole_job = TrainingJob()
    whole_job.start(run_values(tiny_model, root / "img", root / "whole"))
    assert whole_job.wait(timeout=300)

    job = TrainingJob()
    values = run_values(tiny_model, root / "img", root / "part")

    def stop_at(event):  # a listener on the training thread: the run stops right after this step
        if isinstance(event, Step) and event.step == STOP_AT:
            job.stop(save=True)

    job.start(values, listeners=[stop_at])
    assert job.wait(timeout=300)
    stopped = job.snapshot()
    state = Path(stopped.resumable_state)
    moved = state.with_name("moved-away")
    state.rename(moved)  # a state folder deleted since the stop is named, not crashed on
    with pytest.raises(CharLoRAError, match="is gone"):
        job.resume()
    moved.rename(state)
    resumed_from = job.resume()
    resuming = job.snapshot()
    assert job.wait(timeout=300)
    return {"whole": whole_job.snapshot(), "values": values, "stopped": stopped, "resumed_from": resumed_from,
            "resuming": resuming, "resumed": job.snapshot(), "job": job, "root": root}


def test_the_job_keeps_the_settings_and_the_state_to_resume(runs):
    stopped = runs["stopped"]
    assert stopped.state == "stopped" and stopped.step == STOP_AT
    assert dict(stopped.values) == runs["values"]  # a page opened now fills its controls from these
    assert stopped.resumable_state == str(Path(runs["values"]["output_dir"]) / "tiny-demo-step00000003-state")
    assert runs["resumed_from"] == stopped.resumable_state
    resuming = runs["resuming"]
    assert resuming.running and resuming.resumable_state is None
    assert dict(resuming.values) == dict(runs["values"], resume=stopped.resumable_state)
    assert runs["whole"].resumable_state is None  # a completed run has nothing to resume


def test_resumed_run_continues_the_loss_history_and_the_epoch_average(runs):
    stopped, resumed, whole = runs["stopped"], runs["resumed"], runs["whole"]
    assert resumed.state == "completed", resumed.message
    assert [p[0] for p in stopped.losses] == list(range(1, STOP_AT + 1))
    assert [p[0] for p in resumed.losses] == list(range(1, resumed.total_steps + 1))  # no gap at the resume
    assert resumed.losses[:STOP_AT] == stopped.losses
    # on the CPU a resumed run is bit for bit the uninterrupted one: losses and epoch averages alike
    assert resumed.losses == whole.losses
    assert resumed.average_loss == whole.average_loss


def test_nothing_to_resume_is_a_clear_error(runs):
    with pytest.raises(CharLoRAError, match="nothing to resume.*Stop saves one"):
        TrainingJob().resume()
    with pytest.raises(CharLoRAError, match="nothing to resume"):
        runs["job"].resume()  # it has completed since


def test_session_id_is_one_per_run_and_kept_across_resume(runs):
    whole = session_ids(runs["root"] / "whole")
    part = session_ids(runs["root"] / "part")
    assert len(list((runs["root"] / "part").glob("*.safetensors"))) == 3  # the stop's, epoch 1's, the final
    assert len(whole) == 1 and len(part) == 1  # a stopped + resumed run's files all share one id
    assert whole != part  # two runs with the same seed are still two runs


def test_saved_history_is_thinned_and_old_states_still_resume(tiny_model, tmp_path, monkeypatch):
    for i in range(2):
        save(tmp_path / "img" / "2_wwaa girl" / f"{i}.png", pattern(64, 64, i), "wwaa girl")
    values = run_values(tiny_model, tmp_path / "img", tmp_path / "out", epoch=3)
    stop = StopRequest()
    monkeypatch.setattr(ckpt, "MAX_HISTORY_POINTS", 4)

    def stop_at_6(event):
        if isinstance(event, Step) and event.step == 6:
            stop.request(save=True)

    assert train(values, [stop_at_6], stop).status == "stopped"
    state = tmp_path / "out" / "tiny-demo-step00000006-state"
    points = json.loads((state / "losses.json").read_text())["points"]
    assert [p[0] for p in points] == [1, 3, 5, 6]  # evenly spaced, first and last kept
    # a state written before the history and the session id were saved (format 1) still resumes
    old = shutil.copytree(state, tmp_path / "old-state")
    (old / "losses.json").unlink()
    info = json.loads((old / "position.json").read_text())
    for key in ("session_id", "epoch_loss_sum", "epoch_loss_count"):
        del info[key]
    (old / "position.json").write_text(json.dumps(dict(info, format=1)))
    messages = []
    result = train(dict(values, resume=str(old)), [lambda e: messages.append(getattr(e, "text", ""))])
    assert result.status == "completed" and result.steps == 12 and len(result.losses) == 6
    assert any("older CharLoRA (state format 1)" in m for m in messages)


def test_thin_points_keeps_the_ends_and_the_limit():
    points = [(i, 1.0, 1.0) for i in range(1, 25_001)]
    thinned = ckpt.thin_points(points, 1000)
    assert len(thinned) == 1000 and thinned[0][0] == 1 and thinned[-1][0] == 25_000
    assert ckpt.thin_points(points[:10], 1000) == points[:10]


def test_resumed_run_lists_the_files_its_stopped_part_saved(runs):
    stopped, resumed = runs["stopped"], runs["resumed"]
    assert stopped.files and set(stopped.files) <= set(resumed.files)  # the stop's file is still listed
    assert len(resumed.files) == len(set(resumed.files))  # a file saved again is listed once
    assert resumed.files[-1].endswith("tiny-demo.safetensors")
