"""A run killed (SIGKILL) at random moments while it saves, as a power cut or the OOM killer would:
no final-named file is ever partial, the next start in the same folder removes the leftovers and says
so, and a resume from the last complete state gives the uninterrupted run's losses bit for bit."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from charlora.train import checkpoints as ckpt

from dataset_helpers import pattern, save

REPO = Path(__file__).resolve().parents[1]
NAME = "kill"
TRIALS = 4
pytestmark = pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")


def write_config(tmp: Path, tiny_model, out: Path, **overrides) -> Path:
    raw = json.loads((REPO / "presets" / "quick-tiny-demo.json").read_text())
    raw.update(pretrained_model_name_or_path=str(tiny_model.single_file), train_data_dir=str(tmp / "img"),
               output_dir=str(out), output_name=NAME, epoch=2, save_every_n_steps=1, save_every_n_epochs=1,
               save_state=True, seed="7", **overrides)
    path = tmp / f"{out.name}-{len(list(tmp.glob('*.json')))}.json"
    path.write_text(json.dumps(raw))
    return path


def start(config: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE",
               PYTHONUNBUFFERED="1")
    # text mode turns tqdm's carriage returns into line ends, so each "saved" message is a line
    return subprocess.Popen([sys.executable, "-m", "charlora", "train", "--config", str(config)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(config: Path) -> str:
    proc = start(config)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    return output


def leftovers(out: Path) -> set:
    return {p.name for p in out.iterdir() if p.name.startswith(".")}


def assert_final_files_complete(out: Path):
    for path in out.glob("*.safetensors"):
        with safe_open(str(path), "pt") as fh:  # the header parses and every tensor's bytes are there
            for key in fh.keys():
                fh.get_tensor(key)
    for folder in out.glob("*-state"):
        ckpt.load_state(folder)  # a final-named state is a whole state


def last_state(out: Path) -> Path:
    return max(out.glob(f"{NAME}-step*-state"), key=lambda p: p.name)


def test_kill_during_saves_leaves_whole_files_and_resume_matches(tiny_model, tmp_path):
    for i in range(3):
        save(tmp_path / "img" / "2_wwaa girl" / f"{i}.png", pattern(64, 64, i), "wwaa girl")
    whole = tmp_path / "whole"
    finish(write_config(tmp_path, tiny_model, whole))
    total = 3 * 2 * 2  # images x repeats x epochs, batch 1

    out = tmp_path / "out"
    rng = random.Random(20261129)
    left, cleaned = set(), 0
    for _ in range(TRIALS):
        proc = start(write_config(tmp_path, tiny_model, out))
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "saved " in line:  # saves go on every step from here: kill somewhere among them
                break
        else:
            pytest.fail("the run ended before its first save:\n" + "".join(seen))
        delay = rng.uniform(0.0, 0.6)
        # keep reading so the run never blocks on a full pipe (nor dies of a closed one) while we wait
        drain = threading.Thread(target=seen.extend, args=(proc.stdout,), daemon=True)
        drain.start()
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        drain.join(timeout=30)
        output = "".join(seen)
        if left:  # what the previous kill left was removed (or a state put back) at this start, and said
            assert "leftover" in output or "put back" in output, output
            assert not (left & leftovers(out)), (left, leftovers(out))
            cleaned += 1
        assert_final_files_complete(out)
        left = leftovers(out)

    state = last_state(out)
    output = finish(write_config(tmp_path, tiny_model, out, resume=str(state)))
    if left:
        assert "leftover" in output or "put back" in output, output
        cleaned += 1
    assert not leftovers(out)
    assert_final_files_complete(out)
    print(f"{cleaned} start(s) cleaned leftovers; resumed from {state.name}")

    # the resumed run is the uninterrupted one: the loss history (JSON floats round-trip exactly) and weights
    before_last = f"{NAME}-step{total - 1:08d}-state"
    assert (out / before_last / "losses.json").read_text() == (whole / before_last / "losses.json").read_text()
    points = json.loads((out / before_last / "losses.json").read_text())["points"]
    assert [p[0] for p in points] == list(range(1, total))
    a, b = load_file(str(out / f"{NAME}.safetensors")), load_file(str(whole / f"{NAME}.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
