"""Faults around a run's files: re-saved states, leftovers of a kill, a full disk, the run's log file."""

import errno
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from charlora.cli import main as cli_main
from charlora.params import load_config, normalize
from charlora.train import checkpoints as ckpt
from charlora.train import train

from dataset_helpers import pattern, save

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault-data")
    for i in range(2):
        save(root / "img" / "1_wwaa girl" / f"{i}.png", pattern(64, 64, i), "wwaa girl")
    return root


def config(tiny_model, data, out, **overrides):
    values = dict(load_config(REPO / "presets" / "quick-tiny-demo.json").values,
                  pretrained_model_name_or_path=str(tiny_model.single_file), train_data_dir=str(data / "img"),
                  output_dir=str(out), output_name="k", seed=1234)
    values.update(overrides)
    return normalize(values).values


def tiny_state(folder: Path, step: int) -> Path:
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    position = ckpt.Position(epoch=1, batch=0, step=step, seed=1, total_steps=10)
    weights = {"lora_unet_x": (torch.ones(2, 3), torch.ones(3, 2), 2.0)}
    return ckpt.save_state(folder, weights, optimizer, scheduler, torch.Generator(), position, [])


def test_resaving_a_state_keeps_the_old_one_until_the_new_one_is_in(tmp_path, monkeypatch):
    folder = tiny_state(tmp_path / "k-000002-state", step=2)
    real_replace = ckpt.os.replace

    def failing_swap(src, dst):  # the moment the new state would take the final name, the process dies
        if Path(dst) == folder:
            raise OSError(errno.EIO, "simulated failure")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", failing_swap)
    with pytest.raises(ckpt.CharLoRAError):
        tiny_state(folder, step=5)
    # before: the old state was deleted first, and lost with the failed swap
    assert ckpt.load_state(folder).position.step == 2
    assert [p.name for p in tmp_path.iterdir()] == ["k-000002-state"]
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    tiny_state(folder, step=5)
    assert ckpt.load_state(folder).position.step == 5 and [p.name for p in tmp_path.iterdir()] == ["k-000002-state"]


def test_leftovers_of_a_kill_are_cleaned_at_the_start_and_said(tiny_model, data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    ours = [out / ".k-000001.safetensors.ab12_xyz.tmp", out / ".k.safetensors.q1w2e3r4.tmp",
            out / ".k.config.json.zz9_aa00.tmp"]
    for path in ours:
        path.write_bytes(b"")
    (out / ".k-000001-state.abcd1234").mkdir()
    (out / ".k-000001-state.abcd1234" / "optimizer.pt").write_bytes(b"half")
    # an interrupted swap: the old state is only aside, so it is put back, not deleted
    aside = tiny_state(out / ".k-step00000003-state.0f0f0f0f.old", step=3)
    others = [out / ".other.safetensors.ab12_xyz.tmp", out / "notes.txt", out / ".k-notes.tmp"]
    for path in others:
        path.write_bytes(b"keep me")
    messages = []
    result = train(config(tiny_model, data, out, epoch=1), [lambda e: messages.append(getattr(e, "text", ""))])
    assert result.status == "completed", result.message
    assert not any(p.exists() for p in ours) and not (out / ".k-000001-state.abcd1234").exists()
    assert not aside.exists() and ckpt.load_state(out / "k-step00000003-state").position.step == 3
    assert all(p.read_bytes() == b"keep me" for p in others)
    said = [m for m in messages if m.startswith(("removed", "put back"))]
    assert len(said) == 2 and "4 leftover(s)" in said[1] and ".k.safetensors.q1w2e3r4.tmp" in said[1]
    assert said[0].startswith("put back k-step00000003-state")


def test_full_disk_names_the_file_and_keeps_earlier_ones(tiny_model, data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    from charlora.lora import kohya_file

    real = kohya_file.save_file
    calls = []

    def writer(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # the disk fills up while the second file is written
            Path(filename).write_bytes(b"\0" * 16)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(kohya_file, "save_file", writer)
    result = train(config(tiny_model, data, out, epoch=3, save_every_n_epochs=1))
    assert result.status == "failed"
    assert "disk is full" in result.message and "k-000002.safetensors was not written" in result.message
    assert "earlier are intact" in result.message and "internal error" not in result.message
    first = out / "k-000001.safetensors"
    assert result.files == [str(first)] and load_file(str(first))  # the earlier file loads
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["k-000001.safetensors"]
    assert not list(out.glob(".*.tmp"))


def test_full_disk_while_saving_the_state(tiny_model, data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = torch.save

    def writer(obj, f, *args, **kwargs):
        if str(f).endswith("scheduler.pt"):  # torch's zip writer on a full disk
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", writer)
    result = train(config(tiny_model, data, out, epoch=2, save_every_n_epochs=1, save_state=True))
    assert result.status == "failed" and "disk is full" in result.message
    assert "k-000001-state was not written" in result.message and "internal error" not in result.message
    assert load_file(str(out / "k-000001.safetensors")) and not (out / "k-000001-state").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_each_run_writes_a_log_file_and_an_internal_error_points_to_it(tiny_model, data, tmp_path, monkeypatch):
    out, logs = tmp_path / "out", tmp_path / "logs"
    result = train(config(tiny_model, data, out, epoch=1))
    log_file = Path(result.log_file)
    assert log_file.parent == out and log_file.name.startswith("k-") and log_file.suffix == ".log"
    assert "saved " in log_file.read_text() and "completed" in log_file.read_text()

    from charlora.train import setup

    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(setup, "make_dataset", broken)
    result = train(config(tiny_model, data, out, epoch=1, logging_dir=str(logs)))
    log_file = Path(result.log_file)
    assert log_file.parent == logs and str(log_file) in result.message  # "(details in <the log>)"
    text = log_file.read_text()
    assert "Traceback" in text and "ValueError: a bug" in text and "Traceback" in result.traceback


def test_cli_prints_a_training_error_once_and_debug_shows_the_traceback(tiny_model, data, tmp_path, monkeypatch,
                                                                         capsys):
    values = config(tiny_model, data, tmp_path / "out", epoch=1)
    (tmp_path / "run.json").write_text(json.dumps(values))
    from charlora.train import setup

    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(setup, "make_dataset", broken)
    assert cli_main(["train", "--config", str(tmp_path / "run.json")]) == 1
    err = capsys.readouterr().err
    assert err.count("ValueError: a bug") == 1 and "Traceback" not in err and ".log)" in err
    assert cli_main(["--debug", "train", "--config", str(tmp_path / "run.json")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.count("internal error: ValueError: a bug") == 1
