"""The training engine on the tiny model: files, learning, options, stop/resume, failures, processes."""

import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from charlora.errors import CharLoRAError
from charlora.params import load_config, normalize, save_config
from charlora.train import RunFinished, RunStarted, SamplesSaved, Saved, Step, StopRequest, train, training_command

from dataset_helpers import pattern, save
from run_helpers import Recorder

REPO = Path(__file__).resolve().parents[1]
from conftest import SEED_CONFIG  # noqa: E402

SEED = SEED_CONFIG


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-data")
    for i in range(4):
        save(root / "img" / "2_wwaa girl" / f"{i}.png", pattern(64, 64, i), "wwaa girl, smiling")
    save(root / "reg" / "1_girl" / "r.png", pattern(64, 64, 50))
    save(root / "one" / "100_wwaa girl" / "a.png", pattern(64, 64, 1), "wwaa girl")
    return root


def config(tiny_model, data, out, **overrides):
    values = dict(load_config(REPO / "presets" / "quick-tiny-demo.json").values,
                  pretrained_model_name_or_path=str(tiny_model.single_file), train_data_dir=str(data / "img"),
                  output_dir=str(out), seed=1234)
    values.update(overrides)
    return normalize(values).values


def test_seed_config_trains_and_writes_kohya_files(tiny_model, data, tmp_path):
    raw = json.loads(SEED.read_text())
    raw.update(pretrained_model_name_or_path=str(tiny_model.single_file), train_data_dir=str(data / "img"),
               reg_data_dir=str(data / "reg"), output_dir=str(tmp_path / "model"), logging_dir=str(tmp_path / "log"),
               max_resolution="64,64", min_bucket_reso=64, max_bucket_reso=128, network_dim=4, epoch=3, seed="7",
               caption_extension=".txt")
    values = normalize(raw).values
    recorder = Recorder()
    result = train(values, [recorder])
    assert result.status == "completed", result.message
    out = tmp_path / "model"
    names = sorted(p.name for p in out.glob("*.safetensors"))
    assert names == ["wwaa-g13l-1-000001.safetensors", "wwaa-g13l-1-000002.safetensors", "wwaa-g13l-1.safetensors"]
    started = recorder.of(RunStarted)[0]
    # 4 images x 2 repeats = 8 samples, + 8 reg samples cycled from 1 image = 16 steps per epoch
    assert (started.steps_per_epoch, started.total_steps, started.samples_per_epoch) == (16, 48, 8)
    assert started.reg_samples_per_epoch == 8 and started.precision == "fp32" and started.attention == "sdpa"
    assert "AdamW8bit" in started.optimizer
    assert any("fp16 needs an NVIDIA GPU" in e.text for e in recorder.events if hasattr(e, "text"))
    assert len(recorder.of(Step)) == 48 and recorder.of(RunFinished)[0].status == "completed"
    with safe_open(str(out / "wwaa-g13l-1.safetensors"), "pt") as fh:
        meta = fh.metadata()
        assert fh.get_tensor("lora_unet_down_blocks_0_attentions_0_proj_in.alpha").dtype == torch.float16
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "1.0" and meta["ss_steps"] == "48"
    assert meta["ss_epoch"] == "3" and meta["ss_seed"] == "7" and meta["ss_num_train_images"] == "8"
    assert json.loads(meta["ss_dataset_dirs"]) == {"2_wwaa girl": {"n_repeats": 2, "img_count": 4}}
    assert json.loads(meta["ss_tag_frequency"])["2_wwaa girl"] == {"wwaa girl": 4, "smiling": 4}
    assert (out / "wwaa-g13l-1.config.json").is_file()
    assert load_config(out / "wwaa-g13l-1.config.json").values["network_dim"] == 4
    assert list((tmp_path / "log").glob("*/events.out.tfevents.*"))


def test_loss_falls_when_overfitting_one_image(tiny_model, data, tmp_path):
    values = config(tiny_model, data, tmp_path, train_data_dir=str(data / "one"), epoch=1, unet_lr=1e-2,
                    text_encoder_lr=5e-3, learning_rate=1e-2, save_every_n_epochs=0)
    result = train(values)
    assert result.status == "completed" and len(result.losses) == 100
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert last < first * 0.8, (first, last)


def test_lr_curve_follows_warmup_and_cosine(tiny_model, data, tmp_path):
    values = config(tiny_model, data, tmp_path, lr_scheduler="cosine", lr_warmup=25, epoch=2, unet_lr=1e-3)
    recorder = Recorder()
    assert train(values, [recorder]).status == "completed"
    steps = recorder.of(Step)
    total, warmup = len(steps), round(0.25 * len(steps))
    for event in steps:
        s = event.step  # the lr shown after step s is the one the next step uses
        expected = s / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
        assert event.lr["unet"] == pytest.approx(1e-3 * expected, abs=1e-12), s


def test_stop_and_resume_reproduce_an_uninterrupted_run(tiny_model, data, tmp_path):
    common = dict(epoch=3, network_dropout=0.1, flip_aug=True, shuffle_caption=True, optimizer="AdamW",
                  lr_scheduler="cosine", lr_warmup=10, save_every_n_epochs=0)
    whole = train(config(tiny_model, data, tmp_path / "whole", **common))
    assert whole.status == "completed" and len(whole.losses) == 24

    stop = StopRequest()

    def stop_at_11(event):
        if isinstance(event, Step) and event.step == 11:
            stop.request(save=True)

    first = train(config(tiny_model, data, tmp_path / "part", **common), [stop_at_11], stop)
    assert first.status == "stopped" and first.steps == 11 and "resume" in first.message
    state = tmp_path / "part" / "tiny-demo-step00000011-state"
    assert state.is_dir() and (tmp_path / "part" / "tiny-demo-step00000011.safetensors").is_file()
    second = train(config(tiny_model, data, tmp_path / "part", resume=str(state), **common))
    assert second.status == "completed", second.message
    assert second.losses == whole.losses  # bit for bit, history included
    a = load_file(str(tmp_path / "whole" / "tiny-demo.safetensors"))
    b = load_file(str(tmp_path / "part" / "tiny-demo.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_and_keeps_the_last_good_file(tiny_model, data, tmp_path, monkeypatch):
    import charlora.train.noise as noise_module

    real = noise_module.per_sample_loss
    calls = {"n": 0}

    def overflowing(*args, **kwargs):  # fault injection: the loss overflows at the third step
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setattr(noise_module, "per_sample_loss", overflowing)
    result = train(config(tiny_model, data, tmp_path, save_every_n_steps=1, epoch=1))
    assert result.status == "failed"
    assert "nan" in result.message and "step 3" in result.message
    assert result.last_good_file.endswith("tiny-demo-step00000002.safetensors")
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "tiny-demo-step00000001.safetensors", "tiny-demo-step00000002.safetensors"]


def test_missing_model_is_a_clear_failure(tiny_model, data, tmp_path):
    (tmp_path / "keep.safetensors").write_bytes(b"earlier work")
    recorder = Recorder()
    result = train(config(tiny_model, data, tmp_path, pretrained_model_name_or_path=str(tmp_path / "nope.safetensors")),
                   [recorder])
    assert result.status == "failed" and "nope.safetensors" in result.message and "does not exist" in result.message
    assert recorder.of(RunFinished)[0].status == "failed"
    assert (tmp_path / "keep.safetensors").read_bytes() == b"earlier work"


def test_unwritable_output_folder(tiny_model, data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = train(config(tiny_model, data, blocker / "out"))
    assert result.status == "failed" and "cannot be written" in result.message and "a-file" in result.message


def test_disk_full_while_saving_leaves_earlier_files(tiny_model, data, tmp_path, monkeypatch):
    import charlora.lora.kohya_file as kohya_file

    real = kohya_file.save_file
    calls = {"n": 0}

    def full_after_one(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(kohya_file, "save_file", full_after_one)
    result = train(config(tiny_model, data, tmp_path, epoch=3))
    assert result.status == "failed" and "the disk is full: " in result.message
    assert "tiny-demo-000002.safetensors was not written" in result.message
    assert sorted(p.name for p in tmp_path.iterdir()
                  if not p.name.endswith((".json", ".log"))) == ["tiny-demo-000001.safetensors"]
    load_file(str(tmp_path / "tiny-demo-000001.safetensors"))  # intact


def test_second_run_in_the_same_process_is_refused(tiny_model, data, tmp_path):
    running, release = threading.Event(), threading.Event()

    def hold(event):
        if isinstance(event, Step) and event.step == 1:
            running.set()
            release.wait(timeout=60)

    result = {}
    thread = threading.Thread(target=lambda: result.update(r=train(config(tiny_model, data, tmp_path / "a"), [hold])))
    thread.start()
    assert running.wait(timeout=120)
    try:
        with pytest.raises(CharLoRAError, match="already going"):
            train(config(tiny_model, data, tmp_path / "b"))
    finally:
        release.set()
        thread.join()
    assert result["r"].status == "completed"


def test_saving_schedule_pruning_and_samples(tiny_model, data, tmp_path):
    recorder = Recorder()
    values = config(tiny_model, data, tmp_path, epoch=4, save_every_n_epochs=1, save_last_n_epochs=2,
                    sample_every_n_epochs=2, sample_prompts="wwaa girl, smiling --n blurry --s 3 --d 5\n# note\n")
    result = train(values, [recorder])
    assert result.status == "completed"
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "tiny-demo-000002.safetensors", "tiny-demo-000003.safetensors", "tiny-demo.safetensors"]
    samples = recorder.of(SamplesSaved)
    assert [s.epoch for s in samples] == [2, 4]
    for event in samples:
        assert len(event.paths) == 1 and Path(event.paths[0]).is_file()
        assert Path(event.paths[0]).name.startswith(f"tiny-demo_e{event.epoch:06d}_00_")
    assert [Path(s.path).name for s in recorder.of(Saved)][-1] == "tiny-demo.safetensors"


def test_text_encoder_lr_zero_trains_unet_only(tiny_model, data, tmp_path):
    result = train(config(tiny_model, data, tmp_path, text_encoder_lr=0.0, epoch=1))
    assert result.status == "completed"
    with safe_open(result.files[-1], "pt") as fh:
        assert not any(k.startswith("lora_te_") for k in fh.keys())


def test_cli_prints_the_plan_before_step_one(tiny_model, data, tmp_path):
    cfg = save_config(config(tiny_model, data, tmp_path / "out"), tmp_path / "cfg.json")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "charlora", "train", "--config", str(cfg)], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for fragment in ("images: 4 (8 samples per epoch", "buckets (samples per epoch): 64x64: 8",
                     "steps: 8 per epoch x 2 epochs = 16 total (batch 1)", "precision: fp32", "attention: sdpa"):
        assert fragment in out, fragment
    assert out.index("steps:") < out.index("saved ")
    bad = subprocess.run([sys.executable, "-m", "charlora", "train", "--config", str(cfg), "--set",
                          f"pretrained_model_name_or_path={tmp_path / 'missing.ckpt'}"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "missing.ckpt" in bad.stderr and "Traceback" not in bad.stderr


def test_training_command():
    values = normalize({"num_processes": 1}).values
    assert training_command(values, "my cfg.json") in ("python -m charlora train --config 'my cfg.json'",
                                                       'python -m charlora train --config "my cfg.json"')
    multi = training_command(normalize({"num_processes": 2, "gpu_ids": "0,1"}).values, "c.json")
    assert multi.startswith("accelerate launch --num_processes 2") and "--gpu_ids 0,1" in multi
    assert multi.endswith("-m charlora train --config c.json")


def test_two_processes_match_one_with_the_same_total_batch(tiny_model, data, tmp_path):
    """`accelerate launch` with 2 CPU processes at batch 1 = one process at batch 2 (same seed)."""
    single = config(tiny_model, data, tmp_path / "single", train_batch_size=2, epoch=2)
    result = train(single)
    assert result.status == "completed"
    multi_cfg = save_config(config(tiny_model, data, tmp_path / "multi", train_batch_size=1, epoch=2,
                                   num_processes=2, num_cpu_threads_per_process=1), tmp_path / "multi.json")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "charlora", "train", "--config", str(multi_cfg)]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "x 2 processes" in run.stdout
    files = sorted(p.name for p in (tmp_path / "multi").glob("*.safetensors"))
    assert files == sorted(Path(f).name for f in result.files)  # one set of files, written once
    a = load_file(str(tmp_path / "single" / "tiny-demo.safetensors"))
    b = load_file(str(tmp_path / "multi" / "tiny-demo.safetensors"))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-4), key
    assert any(a[k].abs().sum() > 0 for k in a if "lora_up" in k)  # it did train


@pytest.fixture(scope="module")
def baseline_losses(tiny_model, data, tmp_path_factory):
    result = train(config(tiny_model, data, tmp_path_factory.mktemp("base"), epoch=1))
    assert result.status == "completed"
    return result.losses


@pytest.mark.parametrize("option", [
    {"clip_skip": 2}, {"min_snr_gamma": 5.0}, {"noise_offset": 0.1}, {"noise_offset": 0.1, "adaptive_noise_scale": 0.05},
    {"noise_offset_type": "Multires", "multires_noise_iterations": 6, "multires_noise_discount": 0.3},
    {"v_parameterization": True}, {"max_token_length": 150}, {"min_timestep": 500, "max_timestep": 501},
    {"prior_loss_weight": 0.5, "reg_data_dir": "REG"}, {"caption_dropout_rate": 1.0},
], ids=lambda o: ",".join(o))
def test_each_option_changes_the_losses(tiny_model, data, tmp_path, baseline_losses, option):
    option = {k: (str(data / "reg") if v == "REG" else v) for k, v in option.items()}
    result = train(config(tiny_model, data, tmp_path, epoch=1, **option))
    assert result.status == "completed", result.message
    assert all(math.isfinite(x) for x in result.losses)
    n = min(len(result.losses), len(baseline_losses))
    assert result.losses[:n] != baseline_losses[:n]


def test_gradient_checkpointing_gives_the_same_losses(tiny_model, data, tmp_path, baseline_losses):
    result = train(config(tiny_model, data, tmp_path, epoch=1, gradient_checkpointing=True))
    assert result.status == "completed"
    assert result.losses == pytest.approx(baseline_losses, rel=1e-5)


def test_same_seed_same_run(tiny_model, data, tmp_path, baseline_losses):
    assert train(config(tiny_model, data, tmp_path, epoch=1)).losses == baseline_losses


def test_bf16_on_the_cpu_is_an_opt_in_with_the_base_model_in_bf16(tiny_model, data, tmp_path, baseline_losses):
    """The CPU's bf16 path stores the frozen weights in bf16 (not a bf16 copy beside fp32 ones) and says so."""
    from charlora.models.loading import load_base_model

    pipe = load_base_model(str(tiny_model.single_file), dtype=torch.float32, device=torch.device("cpu"))
    recorder = Recorder()
    result = train(config(tiny_model, data, tmp_path, epoch=1, mixed_precision="bf16"), [recorder], pipe=pipe)
    assert result.status == "completed", result.message
    assert recorder.of(RunStarted)[0].precision == "bf16"
    assert any("bf16 on the CPU" in getattr(e, "text", "") for e in recorder.events)
    assert pipe.unet.conv_in.weight.dtype == pipe.text_encoder.dtype == torch.bfloat16
    assert pipe.vae.dtype == torch.float32  # latents are encoded in fp32
    assert all(math.isfinite(x) for x in result.losses) and result.losses != baseline_losses
    assert sum(result.losses) == pytest.approx(sum(baseline_losses), rel=0.05)  # the same run, in bf16
    with safe_open(str(tmp_path / "tiny-demo.safetensors"), "pt") as fh:
        assert all(torch.isfinite(fh.get_tensor(k)).all() for k in fh.keys())


def test_out_of_memory_gives_advice(tiny_model, data, tmp_path, monkeypatch):
    """CUDA is a hardware edge: the UNet's forward raises what PyTorch raises when VRAM runs out."""
    from diffusers import UNet2DConditionModel

    def out_of_memory(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(UNet2DConditionModel, "forward", out_of_memory)
    result = train(config(tiny_model, data, tmp_path, train_batch_size=2, network_dim=64))
    assert result.status == "failed"
    assert "out of memory" in result.message and "gradient_checkpointing" in result.message
    assert "train_batch_size (now 2)" in result.message and "network_dim (now 64)" in result.message


def test_text_encoder_output_cache_changes_nothing_but_speed(tiny_model, data, tmp_path):
    cached_events = Recorder()
    cached = train(config(tiny_model, data, tmp_path / "a", text_encoder_lr=0.0, epoch=1), [cached_events])
    # shuffle_caption with keep_tokens covering every tag leaves captions as they are but disables the cache
    live = train(config(tiny_model, data, tmp_path / "b", text_encoder_lr=0.0, epoch=1, shuffle_caption=True,
                        keep_tokens=2))
    assert any("text encoder outputs cached" in getattr(e, "text", "") for e in cached_events.events)
    assert cached.losses == pytest.approx(live.losses, rel=1e-6)


def test_dynamo_backend_compiles_the_unet(tiny_model, data, tmp_path):
    recorder = Recorder()
    result = train(config(tiny_model, data, tmp_path, epoch=1, dynamo_backend="eager"), [recorder])
    assert result.status == "completed", result.message
    assert any("torch.compile" in getattr(e, "text", "") for e in recorder.events)


def test_resume_keeps_the_seed_of_the_stopped_run(tiny_model, data, tmp_path):
    stop = StopRequest()
    first_events = Recorder()

    def stop_at_3(event):
        first_events(event)
        if isinstance(event, Step) and event.step == 3:
            stop.request(save=True)

    first = train(config(tiny_model, data, tmp_path, seed=None), [stop_at_3], stop)
    assert first.status == "stopped"
    seed = first_events.of(RunStarted)[0].seed
    resumed_events = Recorder()
    second = train(config(tiny_model, data, tmp_path, seed=None, resume=str(tmp_path / "tiny-demo-step00000003-state")),
                   [resumed_events])
    assert second.status == "completed" and resumed_events.of(RunStarted)[0].seed == seed


def test_pruning_leaves_files_of_an_earlier_run_and_the_new_file(tiny_model, data, tmp_path):
    for epoch in (7, 8, 9):  # an earlier, longer run with the same output_name
        (tmp_path / f"tiny-demo-{epoch:06d}.safetensors").write_bytes(b"earlier run")
    result = train(config(tiny_model, data, tmp_path, epoch=3, save_every_n_epochs=1, save_last_n_epochs=1))
    assert result.status == "completed"
    names = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert names == ["tiny-demo-000002.safetensors", "tiny-demo-000007.safetensors", "tiny-demo-000008.safetensors",
                     "tiny-demo-000009.safetensors", "tiny-demo.safetensors"]


def test_nan_in_an_earlier_micro_batch_is_caught(tiny_model, data, tmp_path, monkeypatch):
    import charlora.train.noise as noise_module

    real = noise_module.per_sample_loss
    calls = {"n": 0}

    def third_micro_batch_overflows(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss  # first micro-batch of step 2

    monkeypatch.setattr(noise_module, "per_sample_loss", third_micro_batch_overflows)
    result = train(config(tiny_model, data, tmp_path, gradient_accumulation_steps=2, save_every_n_steps=1, epoch=1))
    assert result.status == "failed" and "step 2" in result.message
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["tiny-demo-step00000001.safetensors"]


def test_accumulation_steps_at_the_end_of_each_epoch_with_a_short_group(tiny_model, data, tmp_path, monkeypatch):
    """8 batches an epoch, gradient_accumulation_steps 3: groups of 3, 3 and 2 (accelerate's loader marks the
    epoch's last batch), so 3 optimizer steps an epoch, as Kohya counts them; each step reports its group's mean."""
    import charlora.train.noise as noise_module

    real = noise_module.per_sample_loss
    micro = []

    def recording(*args, **kwargs):
        loss = real(*args, **kwargs)
        micro.append(float(loss.detach().sum()))
        return loss

    monkeypatch.setattr(noise_module, "per_sample_loss", recording)
    recorder = Recorder()
    result = train(config(tiny_model, data, tmp_path, gradient_accumulation_steps=3, train_batch_size=1, epoch=2), [recorder])
    assert result.status == "completed", result.message
    started = recorder.of(RunStarted)[0]
    assert (started.steps_per_epoch, started.total_steps) == (3, 6)
    steps = recorder.of(Step)
    assert [s.epoch for s in steps] == [1, 1, 1, 2, 2, 2] and len(micro) == 16
    groups = [micro[0:3], micro[3:6], micro[6:8], micro[8:11], micro[11:14], micro[14:16]]
    assert [s.loss for s in steps] == pytest.approx([sum(g) / len(g) for g in groups], rel=1e-5)


def test_scale_weight_norms_caps_every_modules_change(tiny_model, data, tmp_path):
    """sd-scripts' max-norm regularisation: after every step no module's up @ down * alpha/rank has a norm
    above scale_weight_norms (without it, this run's strongest modules go past it)."""
    cap = 0.01
    capped = train(config(tiny_model, data, tmp_path / "capped", epoch=1, unet_lr=5e-3, text_encoder_lr=5e-3,
                          scale_weight_norms=cap))
    free = train(config(tiny_model, data, tmp_path / "free", epoch=1, unet_lr=5e-3, text_encoder_lr=5e-3))
    assert capped.status == free.status == "completed"

    def norms(path):
        tensors = load_file(str(path))
        found = {}
        for key in tensors:
            if key.endswith(".lora_down.weight"):
                name = key[: -len(".lora_down.weight")]
                down, up = tensors[key].flatten(1), tensors[f"{name}.lora_up.weight"].flatten(1)
                found[name] = float((up @ down).norm() * tensors[f"{name}.alpha"] / down.shape[0])
        return found

    assert max(norms(tmp_path / "free" / "tiny-demo.safetensors").values()) > cap
    assert max(norms(tmp_path / "capped" / "tiny-demo.safetensors").values()) <= cap * (1 + 1e-4)
    with safe_open(str(tmp_path / "capped" / "tiny-demo.safetensors"), "pt") as fh:
        assert fh.metadata()["ss_scale_weight_norms"] == "0.01"
