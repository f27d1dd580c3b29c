"""SDXL LoRA training on the tiny SDXL: Kohya's names, the conditioning, a full run, resume, the file in
diffusers, the grid."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file


from charlora.errors import CharLoRAError
from charlora.lora import LoRANetwork, LoRASettings, kohya_names, load_lora_weights
from charlora.models.loading import load_base_model
from charlora.errors import ConfigError
from charlora.params import load_config, normalize
from charlora.train import RunStarted, Step, StopRequest, train

from dataset_helpers import pattern, save
from run_helpers import Recorder, sdxl_on_meta

REPO = Path(__file__).resolve().parents[1]
UNET_LEAVES = ("proj_in", "proj_out", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q",
               "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
TE_LEAVES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl-data")
    for i in range(4):  # two aspect ratios: two buckets, and size numbers that differ
        save(root / "img" / "2_wwaa girl" / f"{i}.png", pattern(64, 96 if i % 2 else 64, i), "wwaa girl, smiling")
    return root


def config(tiny_sdxl, data, out, **overrides):
    values = dict(load_config(REPO / "presets" / "quick-tiny-demo.json").values,
                  pretrained_model_name_or_path=str(tiny_sdxl.single_file), train_data_dir=str(data / "img"),
                  output_dir=str(out), seed=1234, sdxl=True, bucket_reso_steps=32)
    values.update(overrides)
    return normalize(values).values


def expected_sdxl_names(single_file) -> set:
    """Kohya's SDXL names derived from the single file's own keys, independently of charlora.lora: the UNet's
    LoRA layers by their original (LDM) key, as ComfyUI's model_lora_keys_unet maps them (`lora_unet_` + the
    key without `diffusion_model.` and `.weight`), the text encoders' by lora_te1_/lora_te2_ + the layer."""
    with safe_open(str(single_file), "pt") as fh:
        keys = list(fh.keys())
    names = set()
    transformer = re.compile(r"^model\.diffusion_model\.((?:input_blocks|output_blocks)\.\d+\.1|middle_block\.1)\.(.+)"
                             r"\.weight$")
    for key in keys:
        match = transformer.match(key)
        if match and re.sub(r"^transformer_blocks\.\d+\.", "", match.group(2)) in UNET_LEAVES:
            names.add("lora_unet_" + key[len("model.diffusion_model."):-len(".weight")].replace(".", "_"))
        match = re.match(r"^conditioner\.embedders\.0\.transformer\.text_model\.encoder\.layers\.(\d+)\.(.+)\.weight$",
                         key)
        if match and match.group(2) in TE_LEAVES:
            names.add(f"lora_te1_text_model_encoder_layers_{match.group(1)}_{match.group(2).replace('.', '_')}")
        match = re.match(r"^conditioner\.embedders\.1\.model\.transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$", key)
        if match:  # open_clip holds q, k and v in one in_proj; Kohya names the three projections
            names |= {f"lora_te2_text_model_encoder_layers_{match.group(1)}_self_attn_{p}_proj" for p in "qkv"}
        match = re.match(r"^conditioner\.embedders\.1\.model\.transformer\.resblocks\.(\d+)\."
                         r"(attn\.out_proj|mlp\.c_fc|mlp\.c_proj)\.weight$", key)
        if match:
            leaf = {"attn.out_proj": "self_attn_out_proj", "mlp.c_fc": "mlp_fc1", "mlp.c_proj": "mlp_fc2"}[match.group(2)]
            names.add(f"lora_te2_text_model_encoder_layers_{match.group(1)}_{leaf}")
    return names


# --- names ------------------------------------------------------------------------------------


def test_names_on_sdxl_base_are_the_ones_sd_scripts_gives():
    unet, _, te1, te2 = sdxl_on_meta()
    names = kohya_names(unet, te1, te2)
    fixture = REPO / "tests" / "fixtures" / "kohya-sdxl-base-lora-names.txt"
    kohya = {line for line in fixture.read_text().split("\n") if line and not line.startswith("#")}
    assert set(names) == kohya
    parts = [part for part, _ in names.values()]
    assert (parts.count("unet"), parts.count("te1"), parts.count("te2")) == (722, 72, 192)


def test_names_on_the_tiny_sdxl_follow_the_file_layout(tiny_sdxl):
    pipe = load_base_model(tiny_sdxl.single_file)
    assert set(kohya_names(pipe.unet, pipe.text_encoder, pipe.text_encoder_2)) == expected_sdxl_names(
        tiny_sdxl.single_file)


# --- conditioning -----------------------------------------------------------------------------


def test_sdxl_text_conditioning_is_what_diffusers_computes(tiny_sdxl):
    from charlora.train.text import encode_captions

    pipe = load_base_model(tiny_sdxl.single_file)
    prompts = ["wwaa girl, smiling, a photo", ""]
    hidden, pooled = encode_captions(pipe, prompts, {"clip_skip": 1, "max_token_length": 75}, torch.device("cpu"))
    theirs, _, theirs_pooled, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False)
    assert hidden.shape == (2, 77, 32 + 48) and pooled.shape == (2, 48)
    assert torch.allclose(hidden, theirs, atol=1e-6) and torch.allclose(pooled, theirs_pooled, atol=1e-6)
    long_hidden, long_pooled = encode_captions(pipe, prompts, {"clip_skip": 1, "max_token_length": 150},
                                               torch.device("cpu"))
    assert long_hidden.shape == (2, 152, 80)
    assert torch.allclose(long_pooled, pooled, atol=1e-6)  # the first chunk's pooled output, as sd-scripts


def test_size_numbers_follow_kohya(tiny_sdxl, data):
    from charlora.dataset import BucketBatches, build_plan

    values = config(tiny_sdxl, data, data / "unused", flip_aug=False)
    plan = build_plan(values)
    batches = BucketBatches(plan, values, seed=1)
    seen = set()
    for index in range(len(batches)):
        batch = batches[index]
        for row, path in zip(batch["time_ids"].tolist(), batch["paths"]):
            seen.add((Path(path).name, tuple(int(x) for x in row)))
    # 64x64 images: their 64x64 bucket, no crop. 64x96 (w x h) in 64x64's area: the 32x64 bucket, and
    # Kohya's get_crop_ltrb says top 8 (where the image would sit letterboxed: 32x48 in 32x64), though the
    # image was really resized to 43x64 and cut at the sides (kohya-ss/sd-scripts#1443): as Kohya computes it
    assert seen == {("0.png", (64, 64, 0, 0, 64, 64)), ("2.png", (64, 64, 0, 0, 64, 64)),
                    ("1.png", (96, 64, 8, 0, 64, 32)), ("3.png", (96, 64, 8, 0, 64, 32))}


# --- training ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_sdxl, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sdxl-run")
    recorder = Recorder()
    result = train(config(tiny_sdxl, data, out, epoch=2, save_every_n_epochs=1,
                          sample_prompts="wwaa girl --w 64 --h 64 --d 1 --s 3", sample_every_n_epochs=1), [recorder])
    return result, recorder, out


def test_a_run_writes_kohya_sdxl_files_per_epoch(trained, tiny_sdxl):
    result, recorder, out = trained
    assert result.status == "completed", result.message
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["tiny-demo-000001.safetensors",
                                                                 "tiny-demo.safetensors"]
    assert len(recorder.of(Step)) == recorder.of(RunStarted)[0].total_steps == 16
    assert "model: SDXL" in recorder.of(RunStarted)[0].summary_lines()[-1]
    assert len(list((out / "sample").glob("*.png"))) == 2
    with safe_open(str(out / "tiny-demo.safetensors"), "pt") as fh:
        meta = fh.metadata()
        modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in fh.keys()}
    assert modules == expected_sdxl_names(tiny_sdxl.single_file)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert json.loads(meta["charlora.config"])["sdxl"] is True
    assert all(math_finite(x) for x in result.losses)


def math_finite(x):
    return x == x and abs(x) != float("inf")


def test_the_file_loads_in_diffusers_like_the_trained_network(trained, tiny_sdxl):
    """The trained file in diffusers' SDXL pipeline draws what the network trained in CharLoRA draws."""
    _, _, out = trained
    path = out / "tiny-demo.safetensors"
    ours = load_base_model(tiny_sdxl.single_file)
    _, weights = load_lora_weights(path, "sdxl")
    network = LoRANetwork(ours.unet, ours.text_encoder, LoRASettings(rank=4, alpha=4.0), ours.text_encoder_2)
    network.load_kohya_tensors(weights, str(path))
    theirs = load_base_model(tiny_sdxl.single_file)
    theirs.load_lora_weights(str(path), adapter_name="girl")
    base = load_base_model(tiny_sdxl.single_file)

    def draw(pipe):
        pipe.set_progress_bar_config(disable=True)
        return pipe("wwaa girl", num_inference_steps=2, height=64, width=64, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    assert torch.allclose(draw(theirs), draw(ours), atol=1e-5)
    assert not torch.allclose(draw(theirs), draw(base), atol=1e-4)  # the LoRA does change the image


def test_stop_and_resume_reproduce_an_uninterrupted_sdxl_run(tiny_sdxl, data, tmp_path):
    common = dict(epoch=2, flip_aug=True, save_every_n_epochs=0, lr_scheduler="cosine", lr_warmup=10)
    whole = train(config(tiny_sdxl, data, tmp_path / "whole", **common))
    assert whole.status == "completed", whole.message
    stop = StopRequest()

    def stop_at_5(event):
        if isinstance(event, Step) and event.step == 5:
            stop.request(save=True)

    first = train(config(tiny_sdxl, data, tmp_path / "part", **common), [stop_at_5], stop)
    assert first.status == "stopped" and first.steps == 5
    state = tmp_path / "part" / "tiny-demo-step00000005-state"
    second = train(config(tiny_sdxl, data, tmp_path / "part", resume=str(state), **common))
    assert second.status == "completed", second.message
    assert second.losses == whole.losses
    a = load_file(str(tmp_path / "whole" / "tiny-demo.safetensors"))
    b = load_file(str(tmp_path / "part" / "tiny-demo.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_text_encoder_cache_changes_nothing_but_speed(tiny_sdxl, data, tmp_path):
    cached_events = Recorder()
    cached = train(config(tiny_sdxl, data, tmp_path / "a", text_encoder_lr=0.0, epoch=1,
                          sdxl_cache_text_encoder_outputs=True), [cached_events])
    live = train(config(tiny_sdxl, data, tmp_path / "b", text_encoder_lr=0.0, epoch=1, shuffle_caption=True,
                        keep_tokens=2))
    assert cached.status == live.status == "completed"
    assert any("text encoder outputs cached" in getattr(e, "text", "") for e in cached_events.events)
    assert cached.losses == pytest.approx(live.losses, rel=1e-6)


def test_unet_only_sdxl_run_writes_no_text_encoder_modules(tiny_sdxl, data, tmp_path):
    result = train(config(tiny_sdxl, data, tmp_path, text_encoder_lr=0.0, epoch=1))
    assert result.status == "completed", result.message
    with safe_open(str(tmp_path / "tiny-demo.safetensors"), "pt") as fh:
        assert all(k.startswith("lora_unet_input_blocks_") or k.startswith("lora_unet_middle_block_")
                   or k.startswith("lora_unet_output_blocks_") for k in fh.keys())


# --- settings ---------------------------------------------------------------------------------


def test_kohya_sdxl_rules_are_named(tiny_sdxl, data, tmp_path):
    with pytest.raises(ConfigError) as err:
        config(tiny_sdxl, data, tmp_path, bucket_reso_steps=40)
    assert "bucket_reso_steps 40" in str(err.value) and "multiple of 32" in str(err.value)
    with pytest.raises(ConfigError) as err:
        config(tiny_sdxl, data, tmp_path, sdxl_cache_text_encoder_outputs=True, shuffle_caption=True)
    message = str(err.value)
    assert "text_encoder_lr" in message and "shuffle_caption" in message


def test_sdxl_on_with_an_sd15_model_is_named(tiny_model, data, tmp_path):
    result = train(config(tiny_model, data, tmp_path))
    assert result.status == "failed"
    assert "sdxl is on, but the base model" in result.message and "SD 1.5" in result.message


def test_an_sd15_lora_cannot_start_an_sdxl_run(tiny_model, tiny_sdxl, data, tmp_path):
    from charlora.lora import save_lora
    from charlora.lora.kohya_file import LoRAFileError

    sd15 = load_base_model(tiny_model.single_file)
    net = LoRANetwork(sd15.unet, sd15.text_encoder, LoRASettings(rank=4, alpha=4.0))
    path = save_lora(net.kohya_tensors(), tmp_path / "sd15.safetensors", "float", {"ss_network_dim": "4"})
    with pytest.raises(LoRAFileError, match="is an SD 1.5 LoRA .* this base model is SDXL"):
        load_lora_weights(path, "sdxl")
    result = train(config(tiny_sdxl, data, tmp_path / "out", lora_network_weights=str(path)))
    assert result.status == "failed" and "SD 1.5 LoRA" in result.message


# --- evaluation -------------------------------------------------------------------------------


def test_grid_and_score_render_sdxl_loras(trained, tiny_sdxl, data, tmp_path):
    import numpy as np
    from PIL import Image

    from charlora.evaluate import GridSpec, Renderer, ScoreSpec, build_grid, score_run

    _, _, out = trained
    renderer = Renderer(str(tiny_sdxl.single_file), device="cpu")
    spec = GridSpec(base_model=str(tiny_sdxl.single_file), lora_folder=str(out), prompt="wwaa girl <lora:tiny-demo:1>",
                    output_dir=str(tmp_path / "grid"), x_kind="checkpoint", x_values="none, tiny-demo-1, tiny-demo",
                    y_kind="cfg", y_values="7", steps=2, width=64, height=64, seed=5)
    result = build_grid(spec, renderer)
    assert len(result.grids) == 1 and len(result.cells) == 3
    assert any("SDXL draws best at 1024 px; at 64x64" in w for w in result.warnings)
    base, epoch1, final = (np.asarray(Image.open(p).convert("RGB")) for p in result.cells)
    assert not np.array_equal(base, final) and not np.array_equal(epoch1, final)
    assert "Lora hashes" in Image.open(result.cells[2]).text["parameters"]
    report = score_run(ScoreSpec(base_model=str(tiny_sdxl.single_file), lora_folder=str(out), output_name="tiny-demo",
                                 train_data_dir=str(data / "img"), output_dir=str(tmp_path / "score"),
                                 prompts=["wwaa girl"], seeds=[1], scorer="tiny", steps=2, width=64, height=64),
                       renderer)
    assert [row["name"] for row in report["rows"]] == ["no LoRA", "tiny-demo-000001", "tiny-demo"]
    assert report["recommendation"]["name"] in ("tiny-demo-000001", "tiny-demo")


def test_a_v_prediction_sdxl_model_is_named_and_trains(tiny_sdxl, data, tmp_path):
    """NoobAI-style v-pred files carry an empty `v_pred` tensor: without v_parameterization the run warns; with
    it the LoRA learns the velocity and says so in its metadata."""
    from safetensors.torch import save_file

    with safe_open(str(tiny_sdxl.single_file), "pt") as fh:
        metadata = fh.metadata()
    tensors = dict(load_file(str(tiny_sdxl.single_file)), v_pred=torch.zeros(0))
    vpred = tmp_path / "tiny-sdxl-vpred.safetensors"
    save_file(tensors, str(vpred), metadata=metadata)
    recorder = Recorder()
    off = train(config(tiny_sdxl, data, tmp_path / "off", pretrained_model_name_or_path=str(vpred), epoch=1),
                [recorder])
    assert off.status == "completed"
    assert any("marks itself a v-prediction model" in getattr(e, "text", "") for e in recorder.events)
    on = train(config(tiny_sdxl, data, tmp_path / "on", pretrained_model_name_or_path=str(vpred), epoch=1,
                      v_parameterization=True))
    assert on.status == "completed" and on.losses != off.losses
    with safe_open(str(tmp_path / "on" / "tiny-demo.safetensors"), "pt") as fh:
        assert fh.metadata()["modelspec.prediction_type"] == "v"


def test_sdxl_advice_and_warnings(tiny_sdxl, data, tmp_path):
    from charlora.params import load_config as load
    from charlora.train.setup import oom_advice

    loaded = load(REPO / "presets" / "sdxl-character-16gb.json", ["clip_skip=2"])
    assert any("clip_skip = 2 has no effect on SDXL" in w for w in loaded.warnings)
    advice = oom_advice(loaded.values, 3, [])
    assert "sdxl_cache_text_encoder_outputs" in advice and "512,512" not in advice


def test_v_pred_files_and_watermarks(tiny_sdxl, tmp_path):
    from safetensors.torch import save_file

    with safe_open(str(tiny_sdxl.single_file), "pt") as fh:
        metadata = fh.metadata()
    vpred = tmp_path / "vpred.safetensors"
    save_file(dict(load_file(str(tiny_sdxl.single_file)), v_pred=torch.zeros(0)), str(vpred), metadata=metadata)
    pipe = load_base_model(vpred)
    assert pipe.scheduler.config.prediction_type == "v_prediction"  # the grid and samples draw it as v-pred
    plain = load_base_model(tiny_sdxl.single_file)
    assert plain.scheduler.config.prediction_type == "epsilon"
    assert getattr(plain, "watermark", None) is None  # no invisible watermark on samples and grid cells
    # training samples of a v_parameterization run are drawn as v-prediction too
    from charlora.train.sampling import SamplePrompt, generate_samples

    prompt = [SamplePrompt("wwaa girl", "", 64, 64, 3, 7.0, 1)]
    eps = generate_samples(plain, prompt, "euler_a", torch.device("cpu"))[0]
    vel = generate_samples(plain, prompt, "euler_a", torch.device("cpu"), v_prediction=True)[0]
    import numpy as np

    assert not np.array_equal(np.asarray(eps), np.asarray(vel))
    assert plain.scheduler.config.prediction_type == "epsilon"  # the pipe's own scheduler is left as it was


def test_a_lora_of_the_other_family_is_named_in_the_grid(trained, tiny_model, tmp_path):
    from charlora.evaluate import Renderer
    from charlora.evaluate.render import Cell

    _, _, out = trained
    renderer = Renderer(str(tiny_model.single_file), device="cpu")
    cell = Cell("a girl", "", 7.0, 1, 2, "euler_a", [(out / "tiny-demo.safetensors", 1.0, 1.0)], ("", "", ""))
    with pytest.raises(CharLoRAError, match="is an SDXL LoRA, but the base model is SD 1.5"):
        renderer.render(cell, 64, 64)


def test_two_processes_match_one_with_the_same_total_batch_sdxl(tiny_sdxl, data, tmp_path):
    """`accelerate launch` with 2 CPU processes at batch 1 = one process at batch 2: each process takes its slice
    of the global batch, size numbers included."""
    import os
    import subprocess
    import sys

    from charlora.params import save_config

    # one bucket (64x64) of images of four original sizes: each sample of a batch has its own size numbers
    mixed = tmp_path / "mixed"
    for i, side in enumerate((64, 80, 96, 128)):
        save(mixed / "img" / "1_wwaa girl" / f"{i}.png", pattern(side, side, i), "wwaa girl")
    data = mixed
    single = train(config(tiny_sdxl, data, tmp_path / "single", train_batch_size=2, epoch=1))
    assert single.status == "completed", single.message
    multi_cfg = save_config(config(tiny_sdxl, data, tmp_path / "multi", train_batch_size=1, epoch=1, num_processes=2,
                                   num_cpu_threads_per_process=1), tmp_path / "multi.json")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "charlora", "train", "--config", str(multi_cfg)]
    run = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "x 2 processes" in run.stdout and "model: SDXL" in run.stdout
    a = load_file(str(tmp_path / "single" / "tiny-demo.safetensors"))
    b = load_file(str(tmp_path / "multi" / "tiny-demo.safetensors"))
    assert a.keys() == b.keys()
    # float noise from the other summation order, which Adam amplifies on near-zero gradients in a few
    # elements: the median relative difference of the up weights is ~1e-5; a process taking the wrong
    # sample's size numbers (tried once by breaking the slice) made it 0.24
    ups = [k for k in a if "lora_up" in k and a[k].norm() > 0]  # (text encoder 1's last layer never trains)
    relative = sorted(float((a[k] - b[k]).norm() / a[k].norm()) for k in ups)
    assert relative[len(relative) // 2] < 1e-4, relative[len(relative) // 2]
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 2e-3
    assert all(a[k].abs().sum() > 0 for k in ups if "unet" in k)  # it did train
