"""The LoRA network and its file: Kohya's names, round trips, A1111/diffusers loading, inspection."""

import hashlib
import json
import logging
import os
import random
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from charlora.errors import CharLoRAError
from charlora.lora import (LoRAFileError, LoRANetwork, LoRASettings, RunInfo, build_metadata, file_rank,
                           load_lora_weights, save_lora)
from charlora.lora.inspect import inspect_lora
from charlora.lora.targets import text_encoder_targets, unet_targets
from charlora.models.loading import load_base_model
from charlora.models.tiny import build_tiny_components
from charlora.params import defaults, normalize

REPO = Path(__file__).resolve().parents[1]
UNET_LEAVES = ("proj_in", "proj_out", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q",
               "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
TE_LEAVES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def expected_names(unet, text_encoder):
    """Derived from the model's own module tree, independently of charlora.lora.targets."""
    names = set()
    block = re.compile(r"^(down_blocks\.\d+\.attentions\.\d+|up_blocks\.\d+\.attentions\.\d+|mid_block\.attentions\.\d+)"
                       r"\.(.+)$")
    for path, _ in unet.named_modules():
        match = block.match(path)
        if match:
            rest = re.sub(r"^transformer_blocks\.\d+\.", "", match.group(2))
            if rest in UNET_LEAVES:
                names.add("lora_unet_" + path.replace(".", "_"))
    for path, _ in text_encoder.named_modules():
        match = re.match(r"^(?:text_model\.)?(encoder\.layers\.\d+)\.(.+)$", path)
        if match and match.group(2) in TE_LEAVES:
            names.add("lora_te_text_model_" + path.removeprefix("text_model.").replace(".", "_"))
    return names


def trained_network(unet, text_encoder, rank=4, alpha=2.0, seed=1):
    """A network with non-zero up weights, as after training."""
    net = LoRANetwork.attach(unet, text_encoder, LoRASettings(rank=rank, alpha=alpha))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in net.layers.values():
            weight = layer.lora_B["default"].weight
            weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
    return net


def metadata_for(values=None):
    values = values or normalize(dict(defaults(), network_dim=4, network_alpha=2.0, output_name="girl")).values
    return build_metadata(values, RunInfo(seed=42, num_train_images=140, epoch=3, steps=420,
                                          optimizer="bitsandbytes.optim.adamw.AdamW8bit"))


@pytest.fixture
def pipe(tiny_model):
    pipe = load_base_model(tiny_model.folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe):
    generator = torch.Generator().manual_seed(0)
    return pipe("a photo of a cat", num_inference_steps=2, height=64, width=64, guidance_scale=7.0,
                generator=generator, output_type="pt").images


def test_kohya_targets_count_on_real_sd15_shape():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sd15 = REPO / "charlora" / "models" / "sd15"
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(json.loads((sd15 / "unet" / "config.json").read_text()))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(sd15 / "text_encoder"))
    assert len(unet_targets(unet)) == 192 and len(text_encoder_targets(te)) == 72
    from charlora.lora import kohya_names
    assert set(kohya_names(unet, te)) == expected_names(unet, te)
    assert len(expected_names(unet, te)) == 264


def test_saved_names_follow_kohya_rule(tmp_path):
    parts = build_tiny_components()
    net = trained_network(parts["unet"], parts["text_encoder"])
    path = save_lora(net.kohya_tensors(), tmp_path / "girl.safetensors", "fp16", metadata_for())
    with safe_open(str(path), "pt") as fh:
        keys = set(fh.keys())
        modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys}
        assert modules == expected_names(parts["unet"], parts["text_encoder"])
        for name in modules:
            assert {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"} <= keys
            assert fh.get_tensor(f"{name}.alpha").dtype == torch.float16
            assert fh.get_tensor(f"{name}.alpha").item() == 2.0
        proj_in = "lora_unet_down_blocks_0_attentions_0_proj_in"
        assert fh.get_tensor(f"{proj_in}.lora_down.weight").shape[2:] == (1, 1)  # 1x1 conv stays 4-D
        assert fh.get_tensor(f"{proj_in}.lora_up.weight").ndim == 4
        assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj") for k in keys)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("precision,dtype,tolerance", [("float", "F32", 0.0), ("fp16", "F16", 1e-3),
                                                      ("bf16", "BF16", 1e-2)])
def test_round_trip_within_save_precision(tmp_path, precision, dtype, tolerance):
    parts = build_tiny_components()
    net = trained_network(parts["unet"], parts["text_encoder"])
    original = net.kohya_tensors()
    path = save_lora(original, tmp_path / "r.safetensors", precision, metadata_for())
    lora, loaded = load_lora_weights(path)
    assert set(loaded) == set(original) and set(lora.dtypes.values()) == {dtype}
    for name, (down, up, alpha) in original.items():
        assert torch.allclose(loaded[name][0], down, rtol=tolerance, atol=tolerance)
        assert torch.allclose(loaded[name][1], up, rtol=tolerance, atol=tolerance)
        assert loaded[name][2] == alpha
    # and back onto a fresh network
    fresh = build_tiny_components()
    other = LoRANetwork.attach(fresh["unet"], fresh["text_encoder"], LoRASettings(rank=file_rank(loaded), alpha=1.0))
    other.load_kohya_tensors(loaded, str(path))
    for name, (down, up, alpha) in other.kohya_tensors().items():
        assert torch.equal(down, loaded[name][0]) and torch.equal(up, loaded[name][1]) and alpha == 2.0


def test_file_loads_in_diffusers_like_the_trained_model(pipe, tiny_model, tmp_path, caplog):
    base = generate(pipe)
    net = trained_network(pipe.unet, pipe.text_encoder)
    path = save_lora(net.kohya_tensors(), tmp_path / "girl.safetensors", "float", metadata_for())
    fresh = load_base_model(tiny_model.folder)
    fresh.set_progress_bar_config(disable=True)
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh.load_lora_weights(str(path), adapter_name="girl")
    noisy = [r.getMessage() for r in caplog.records if re.search(r"unexpected|missing|not loaded", r.getMessage(), re.I)]
    noisy += [str(w.message) for w in caught if re.search(r"unexpected|missing|not loaded", str(w.message), re.I)]
    assert noisy == []
    for weight in (1.0, 0.7):
        net.set_multiplier(weight)
        fresh.set_adapters(["girl"], adapter_weights=[weight])
        assert torch.allclose(generate(fresh), generate(pipe), atol=1e-5)
    fresh.set_adapters(["girl"], adapter_weights=[0.0])
    assert torch.equal(generate(fresh), base)
    assert not torch.allclose(generate(pipe), base, atol=1e-3)  # the LoRA does change the image


def test_metadata_is_strings_holds_settings_and_no_secret(tmp_path):
    raw = dict(defaults(), network_dim=4, network_alpha=2.0, learning_rate=3e-4, output_name="girl",
               wandb_api_key="SECRET-KEY-123", train_data_dir="/home/parent/private/img",
               pretrained_model_name_or_path="C:\\AI\\models\\v1-5-pruned-emaonly.safetensors")
    values = normalize(raw).values
    parts = build_tiny_components()
    net = trained_network(parts["unet"], parts["text_encoder"])
    path = save_lora(net.kohya_tensors(), tmp_path / "girl.safetensors", "fp16", metadata_for(values))
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert meta["ss_learning_rate"] == "0.0003" and meta["ss_output_name"] == "girl"
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_sd_model_name"] == "v1-5-pruned-emaonly.safetensors"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["ss_seed"] == "42" and meta["ss_steps"] == "420" and meta["ss_epoch"] == "3"
    config = json.loads(meta["charlora.config"])
    assert config["network_dim"] == 4 and config["train_data_dir"] == "img"
    blob = path.read_bytes()
    assert b"SECRET-KEY-123" not in blob and b"/home/parent" not in blob and b"wandb_api_key" not in blob
    header_length = int.from_bytes(blob[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(blob[8 + header_length:]).hexdigest()


def test_settings_from_config():
    s = LoRASettings.from_config(dict(defaults(), network_dim=16, network_alpha=0.0))
    assert s.alpha == 16.0 and s.scale == 1.0
    unet_only = LoRASettings.from_config(dict(defaults(), text_encoder_lr=0.0))
    assert unet_only.train_unet and not unet_only.train_text_encoder
    te_only = LoRASettings.from_config(dict(defaults(), unet_lr=0.0))
    assert te_only.train_text_encoder and not te_only.train_unet
    both = LoRASettings.from_config(dict(defaults(), unet_lr=0.0, text_encoder_lr=0.0, learning_rate=2e-4))
    assert both.unet_lr == both.text_encoder_lr == 2e-4
    with pytest.raises(CharLoRAError):
        LoRASettings.from_config(dict(defaults(), unet_lr=0.0, text_encoder_lr=0.0, learning_rate=0.0))


def test_unet_only_network_writes_no_text_encoder_modules(tmp_path):
    parts = build_tiny_components()
    settings = LoRASettings.from_config(dict(defaults(), network_dim=4, text_encoder_lr=0.0))
    net = LoRANetwork.attach(parts["unet"], parts["text_encoder"], settings)
    assert net.parts() == ["unet"]
    assert not any(name.startswith("lora_te_") for name in net.kohya_tensors())


def test_init_matches_kohya_and_dropout_reaches_peft():
    parts = build_tiny_components()
    net = LoRANetwork.attach(parts["unet"], parts["text_encoder"], LoRASettings(rank=4, alpha=4.0, dropout=0.1))
    for _, layer in net.layers.values():
        assert torch.count_nonzero(layer.lora_B["default"].weight) == 0  # up = zeros: starts as the base model
        assert torch.count_nonzero(layer.lora_A["default"].weight) > 0
        assert layer.lora_dropout["default"].p == 0.1
    assert all(p.dtype == torch.float32 and p.requires_grad for p in net.parameters())


def test_kohya_sd_scripts_file_loads(tmp_path):
    """A file written the way sd-scripts writes it (names built by hand, one module without alpha)."""
    parts = build_tiny_components()
    names = sorted(expected_names(parts["unet"], parts["text_encoder"]))
    modules = dict(parts["unet"].named_modules())
    tensors = {}
    for name in names:
        if name.startswith("lora_unet_"):
            layer = next(m for p, m in modules.items() if "lora_unet_" + p.replace(".", "_") == name)
            in_f = layer.in_features if hasattr(layer, "in_features") else layer.in_channels
            out_f = layer.out_features if hasattr(layer, "out_features") else layer.out_channels
            extra = (1, 1) if isinstance(layer, torch.nn.Conv2d) else ()
        else:
            in_f = out_f = 32
            extra = ()
            if name.endswith("fc1"):
                out_f = parts["text_encoder"].config.intermediate_size
            if name.endswith("fc2"):
                in_f = parts["text_encoder"].config.intermediate_size
        tensors[f"{name}.lora_down.weight"] = torch.randn(8, in_f, *extra, dtype=torch.float16)
        tensors[f"{name}.lora_up.weight"] = torch.randn(out_f, 8, *extra, dtype=torch.float16)
        if name != names[0]:
            tensors[f"{name}.alpha"] = torch.tensor(4.0, dtype=torch.float16)
    path = tmp_path / "kohya.safetensors"
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": "8"})
    _, weights = load_lora_weights(path)
    assert file_rank(weights) == 8
    assert weights[names[0]][2] == 8.0  # no alpha: alpha = rank, scale 1 (as A1111)
    assert weights[names[1]][2] == 4.0
    net = LoRANetwork.attach(parts["unet"], parts["text_encoder"], LoRASettings(rank=8, alpha=8.0))
    net.load_kohya_tensors(weights, str(path))
    assert net.layers[names[1]][1].scaling["default"] == 0.5
    small = build_tiny_components()
    wrong_rank = LoRANetwork.attach(small["unet"], small["text_encoder"], LoRASettings(rank=4, alpha=4.0))
    with pytest.raises(CharLoRAError, match="dim_from_weights"):
        wrong_rank.load_kohya_tensors(weights, str(path))


@pytest.mark.parametrize("keys,fragment", [
    ({"lora_unet_a.hada_w1_a": (4, 4), "lora_unet_a.hada_w1_b": (4, 4)}, "LoHa"),
    ({"lora_unet_a.lokr_w1": (4, 4)}, "LoKr"),
    ({"lora_te1_text_model_x.lora_down.weight": (4, 4), "lora_te1_text_model_x.lora_up.weight": (4, 4)}, "SDXL"),
    ({"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": (4, 8, 3, 3),
      "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": (8, 4, 1, 1)}, "LoCon"),
    ({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (4, 4)}, "PEFT"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (4, 4)}, "checkpoint"),
    ({"something.else": (4,)}, "not a LoRA"),
])
def test_other_kinds_are_refused_with_what_they_are(tmp_path, keys, fragment):
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, str(path))
    with pytest.raises(LoRAFileError, match=fragment) as err:
        load_lora_weights(path)
    assert str(path) in str(err.value)


def test_damaged_files(tmp_path):
    parts = build_tiny_components()
    good = save_lora(trained_network(parts["unet"], parts["text_encoder"]).kohya_tensors(),
                     tmp_path / "good.safetensors", "fp16", metadata_for())
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(LoRAFileError, match="truncated"):
        load_lora_weights(cut)
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(random.Random(2).randbytes(4096))
    with pytest.raises(LoRAFileError, match="not a safetensors|truncated"):
        load_lora_weights(noise)
    with pytest.raises(LoRAFileError, match="no such file"):
        load_lora_weights(tmp_path / "missing.safetensors")


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    parts = build_tiny_components()
    net = trained_network(parts["unet"], parts["text_encoder"])
    path = save_lora(net.kohya_tensors(), tmp_path / "girl.safetensors", "fp16", metadata_for())
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("charlora.lora.kohya_file.save_file", full_disk)
    with pytest.raises(CharLoRAError, match="the disk is full: .*girl.safetensors was not written.*earlier are intact"):
        save_lora(net.kohya_tensors(), path, "fp16", metadata_for())
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["girl.safetensors"]


def test_inspect(tmp_path):
    parts = build_tiny_components()
    path = save_lora(trained_network(parts["unet"], parts["text_encoder"]).kohya_tensors(),
                     tmp_path / "girl.safetensors", "fp16", metadata_for())
    info = inspect_lora(path)
    assert info["rank"] == 4 and info["alpha"] == 2.0 and info["scale"] == 0.5
    assert info["modules"] == {"unet": 72, "text_encoder": 12}
    assert info["precision"] == ["F16"] and info["base_model_version"] == "sd_v1"
    assert info["metadata"]["ss_output_name"] == "girl"
    assert set(info["block_weight_norms"]) == {"unet down_blocks.0", "unet mid_block", "unet up_blocks.1",
                                               "text encoder layer 00", "text encoder layer 01"}
    assert all(v > 0 for v in info["block_weight_norms"].values())
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "charlora", "lora", "inspect", str(path), "--json"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["modules"]["unet"] == 72
    text = subprocess.run([sys.executable, "-m", "charlora", "lora", "inspect", str(path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert "rank / alpha:   4 / 2.0" in text.stdout
    not_lora = tmp_path / "ckpt.safetensors"
    save_file({"model.diffusion_model.x": torch.zeros(2)}, str(not_lora))
    bad = subprocess.run([sys.executable, "-m", "charlora", "lora", "inspect", str(not_lora)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "checkpoint, not a LoRA" in bad.stderr


def test_huge_training_comment_is_cut_in_the_file_and_warned(tmp_path):
    comment = "a long story. " * 300_000 + "end"  # 4.2 MB
    loaded = normalize(dict(defaults(), network_dim=4, output_name="girl", training_comment=comment))
    assert any("training_comment is 4,200,003 bytes" in w and "64 KiB" in w for w in loaded.warnings)
    parts = build_tiny_components()
    path = save_lora(trained_network(parts["unet"], parts["text_encoder"]).kohya_tensors(),
                     tmp_path / "girl.safetensors", "fp16", metadata_for(loaded.values))
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    stored = meta["ss_training_comment"]
    assert len(stored.encode()) <= 64 * 1024 and stored.startswith("a long story.") and "cut by CharLoRA" in stored
    in_config = json.loads(meta["charlora.config"])["training_comment"]
    assert len(in_config.encode()) <= 64 * 1024 and "cut by CharLoRA" in in_config
    assert path.stat().st_size < 400_000  # before: 8 MB (the comment twice)


def test_inspect_names_non_finite_tensors_and_writes_valid_json(tmp_path):
    from charlora.lora.inspect import format_report, to_json

    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    up = torch.ones(8, 4)
    up[0, 0] = float("inf")
    save_file({f"{name}.lora_down.weight": torch.full((4, 8), float("nan")), f"{name}.lora_up.weight": up,
               f"{name}.alpha": torch.tensor(4.0)}, str(tmp_path / "nan.safetensors"))
    info = inspect_lora(tmp_path / "nan.safetensors")
    assert info["verdict"].startswith("damaged") and "loadable" not in info["verdict"]
    assert info["problems"] == [f"{name}.lora_down.weight holds NaN or infinite values",
                                f"{name}.lora_up.weight holds NaN or infinite values"]
    data = json.loads(to_json(info), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert data["block_weight_norms"] == {"unet down_blocks.0": None}
    assert f"problem:        {name}.lora_down.weight" in format_report(info)


@pytest.mark.parametrize("edit, fragment", [
    (lambda h, n: h[f"{n}.lora_down.weight"].pop("shape"), "no valid shape"),
    (lambda h, n: h.__setitem__(f"{n}.lora_up.weight", 7), "not a tensor description"),
    (lambda h, n: h[f"{n}.alpha"].__setitem__("shape", [3]), "alpha of shape [3]"),
    (lambda h, n: h[f"{n}.lora_up.weight"].__setitem__("shape", [8, 2]), "its 2nd size must be 4"),
    (lambda h, n: h[f"{n}.lora_up.weight"].__setitem__("shape", [32]), "lora_up of shape [32]"),
])
def test_malformed_headers_are_named(tmp_path, edit, fragment):
    import struct

    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    header = {f"{name}.lora_down.weight": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 128]},
              f"{name}.lora_up.weight": {"dtype": "F32", "shape": [8, 4], "data_offsets": [128, 256]},
              f"{name}.alpha": {"dtype": "F32", "shape": [], "data_offsets": [256, 260]}}
    edit(header, name)
    blob = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(260))
    with pytest.raises(LoRAFileError) as caught:
        inspect_lora(path)
    assert fragment in str(caught.value) and "bad.safetensors" in str(caught.value) and name in str(caught.value)


def test_torch_pickle_named_safetensors_is_named(tmp_path):
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, tmp_path / "old.safetensors")
    with pytest.raises(LoRAFileError, match="PyTorch pickle"):
        load_lora_weights(tmp_path / "old.safetensors")
