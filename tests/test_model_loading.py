"""Base-model loading: SD layout mapping, the carried SD 1.5 configs/tokenizer, every load route and error."""

import json
import random
import pathlib
import socket

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from charlora.errors import ModelLoadError
from charlora.models import sd_layout
from charlora.models.checkpoint_file import describe_checkpoint
from charlora.models.loading import SD15_CONFIG_DIR, load_base_model
from charlora.models.tiny import COMPONENTS_METADATA_KEY

from run_helpers import assert_same_weights

PARTS = ("unet", "vae", "text_encoder")


def _assert_same_weights(a, b):
    assert_same_weights(a, b, PARTS)


def _image(pipe):
    return pipe(
        "a photo of a cat",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images


@pytest.fixture(scope="module")
def original_sd(tiny_model):
    return load_file(str(tiny_model.single_file))


@pytest.fixture(scope="module")
def sd15_meta_models():
    """SD 1.5's UNet, VAE and text encoder built from sd15/ on the meta device (no memory used)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG_DIR / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIG_DIR / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR / "text_encoder"))
    return unet, vae, text_encoder


# --- the layout mapping -----------------------------------------------------------------------


def test_written_layout_reads_back_exactly(original_sd, tiny_model, no_network):
    """sd_layout writes single files (tiny and toy models); diffusers' converters read them: the weights
    loaded from the file, written back, are the file's tensors bit for bit."""
    pipe = load_base_model(tiny_model.single_file)
    back = sd_layout.diffusers_to_original(*(getattr(pipe, part).state_dict() for part in PARTS))
    assert back.keys() == original_sd.keys()
    assert all(torch.equal(back[k], original_sd[k]) for k in back)


def test_the_config_folder_written_from_metadata_matches_the_model_folder(tiny_model, no_network):
    from diffusers import StableDiffusionPipeline

    theirs = StableDiffusionPipeline.from_single_file(
        str(tiny_model.single_file), config=str(tiny_model.folder), local_files_only=True
    )
    ours = load_base_model(tiny_model.single_file)
    _assert_same_weights(ours, theirs)
    assert type(ours.scheduler) is type(theirs.scheduler) and ours.scheduler.config == theirs.scheduler.config
    assert ours.tokenizer("a girl").input_ids == theirs.tokenizer("a girl").input_ids


def test_layout_writer_refuses_unmapped_keys(tiny_model):
    pipe = load_base_model(tiny_model.single_file)
    unet = dict(pipe.unet.state_dict(), **{"down_blocks.0.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="no place"):
        sd_layout.diffusers_to_original(unet, pipe.vae.state_dict(), pipe.text_encoder.state_dict())


@pytest.mark.parametrize("key, what", [
    ("model.diffusion_model.out.2.bias", "UNet"),
    ("model.diffusion_model.input_blocks.1.1.proj_in.weight", "UNet"),
    ("first_stage_model.decoder.conv_out.bias", "VAE"),
    # diffusers alone would leave this one a meta tensor and load "successfully"
    ("cond_stage_model.transformer.text_model.final_layer_norm.bias", "text encoder"),
])
def test_a_missing_tensor_is_named(original_sd, tiny_model, tmp_path, no_network, key, what):
    with safe_open(str(tiny_model.single_file), "pt") as fh:
        metadata = fh.metadata()
    path = tmp_path / "incomplete.safetensors"
    save_file({k: v for k, v in original_sd.items() if k != key}, str(path), metadata=metadata)
    with pytest.raises(ModelLoadError, match=f"the {what} weights do not fit an SD 1.5 {what} .*missing") as info:
        load_base_model(path)
    assert str(path) in str(info.value)


def test_a_misshaped_tensor_is_named(original_sd, tiny_model, tmp_path, no_network):
    with safe_open(str(tiny_model.single_file), "pt") as fh:
        metadata = fh.metadata()
    key = "first_stage_model.decoder.conv_out.bias"
    path = tmp_path / "misshaped.safetensors"
    save_file(dict(original_sd, **{key: torch.zeros(7)}), str(path), metadata=metadata)
    with pytest.raises(ModelLoadError, match=r"VAE .*wrong shape, e.g. decoder.conv_out.bias: \[7\] in the file"):
        load_base_model(path)


def test_ema_copies_are_left_alone(original_sd, tiny_model, tmp_path, no_network):
    """Files with EMA weights (model_ema.*) load their regular weights, as A1111 and diffusers do."""
    with safe_open(str(tiny_model.single_file), "pt") as fh:
        metadata = fh.metadata()
    ema = dict(original_sd)
    for key, value in original_sd.items():
        if key.startswith("model.diffusion_model."):
            ema["model_ema." + key.removeprefix("model.diffusion_model.").replace(".", "")] = value + 1
    path = tmp_path / "with-ema.safetensors"
    save_file(ema, str(path), metadata=metadata)
    _assert_same_weights(load_base_model(path), load_base_model(tiny_model.single_file))


# --- the carried SD 1.5 configs and tokenizer -------------------------------------------------


def test_sd15_configs_give_sd15_parameter_counts(sd15_meta_models):
    counts = [sum(p.numel() for p in model.parameters()) for model in sd15_meta_models]
    assert counts == [859_520_964, 83_653_863, 123_060_480]


def test_sd15_mapping_covers_every_key(sd15_meta_models):
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)

    unet, vae, te = (model.state_dict() for model in sd15_meta_models)
    original = sd_layout.diffusers_to_original(unet, vae, te)
    assert len(original) == len(unet) + len(vae) + len(te) == 686 + 248 + 196  # no name lost or shared
    for key, shape in {
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "model.diffusion_model.input_blocks.9.0.op.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.input_blocks.10.0.in_layers.2.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.middle_block.2.out_layers.3.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    }.items():
        assert tuple(original[key].shape) == shape, key
    # diffusers' own converters, run on our original-layout names, find every diffusers name again.
    config = dict(sd15_meta_models[0].config)
    assert set(convert_ldm_unet_checkpoint(original, config)) == set(unet)
    assert set(convert_ldm_vae_checkpoint(original, dict(sd15_meta_models[1].config))) == set(vae)
    assert {k.removeprefix("text_model.") for k in convert_ldm_clip_checkpoint(original)} == set(te)


def test_sd15_tokenizer_gives_the_known_ids():
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(SD15_CONFIG_DIR / "tokenizer", local_files_only=True)
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 49407
    for path in SD15_CONFIG_DIR.rglob("*"):
        if path.is_file():
            assert path.stat().st_size < 2 * 1024 * 1024, path


# --- loading ----------------------------------------------------------------------------------


def test_folder_and_single_file_load_the_same_model(tiny_model, no_network):
    from_folder = load_base_model(tiny_model.folder)
    from_file = load_base_model(tiny_model.single_file)
    _assert_same_weights(from_folder, from_file)
    assert type(from_file.scheduler) is type(from_folder.scheduler)
    assert from_file.safety_checker is None and from_folder.safety_checker is None
    image = _image(from_file)
    assert image.shape == (1, 64, 64, 3)
    assert (image == _image(from_folder)).all()


def test_quoted_paths_are_accepted(tiny_model, no_network):
    for source in (f'"{tiny_model.single_file}"', f"  '{tiny_model.single_file}' ", f'"{tiny_model.folder}"'):
        assert load_base_model(source).unet is not None


def test_fp16_file_loads_as_requested_dtype(tiny_model, original_sd, tmp_path, no_network):
    half = tmp_path / "tiny-fp16.safetensors"
    with safe_open(str(tiny_model.single_file), framework="pt") as f:
        metadata = f.metadata()
    save_file({k: v.half() for k, v in original_sd.items()}, str(half), metadata=metadata)
    assert describe_checkpoint(half)["dtype"] == "float16"

    pipe = load_base_model(half, dtype=torch.float32)
    assert {p.dtype for part in PARTS for p in getattr(pipe, part).parameters()} == {torch.float32}
    key = "first_stage_model.encoder.mid.attn_1.q.weight"
    loaded = pipe.vae.state_dict()["encoder.mid_block.attentions.0.to_q.weight"]
    assert torch.equal(loaded, original_sd[key].half().float()[:, :, 0, 0])
    pipe16 = load_base_model(half, dtype=torch.float16)
    assert {p.dtype for part in PARTS for p in getattr(pipe16, part).parameters()} == {torch.float16}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy-pickle"])
def test_ckpt_loads_like_the_safetensors_file(tiny_model, original_sd, tmp_path, no_network, zip_format):
    with safe_open(str(tiny_model.single_file), framework="pt") as f:
        components = f.metadata()[COMPONENTS_METADATA_KEY]
    ckpt = tmp_path / "tiny.ckpt"
    # Top-level strings of a .ckpt stand in for safetensors metadata: the tiny configs travel along.
    checkpoint = {"state_dict": original_sd, "global_step": 10, COMPONENTS_METADATA_KEY: components}
    torch.save(checkpoint, ckpt, _use_new_zipfile_serialization=zip_format)
    _assert_same_weights(load_base_model(ckpt), load_base_model(tiny_model.single_file))


def test_checkpoint_without_configs_must_fit_sd15(original_sd, tmp_path, no_network):
    ckpt = tmp_path / "tiny-no-configs.ckpt"
    torch.save({"state_dict": original_sd}, ckpt)
    # No carried configs, so the SD 1.5 ones are used, and the toy shapes do not fit them.
    with pytest.raises(ModelLoadError, match="do not fit an SD 1.5 UNet") as info:
        load_base_model(ckpt)
    assert str(ckpt) in str(info.value)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_ckpt_with_pickled_code_is_refused_not_run(original_sd, tmp_path):
    marker = tmp_path / "code-ran"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": original_sd, "callback": _RunsCode(marker)}, ckpt)
    with pytest.raises(ModelLoadError, match="pickled Python objects") as info:
        load_base_model(ckpt)
    assert str(ckpt) in str(info.value)
    assert not marker.exists()


def _save(path, tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _bad_files(tmp_path, original_sd, single_file):
    data = single_file.read_bytes()
    # fixed noise whose first bytes look like neither format (os.urandom made this test flaky: one run
    # in 256 has "{" at byte 8, which is what a safetensors header looks like)
    noise = bytearray(random.Random(1).randbytes(4096))
    noise[0], noise[8] = 0x01, 0x00
    (tmp_path / "random.safetensors").write_bytes(bytes(noise))
    (tmp_path / "random.ckpt").write_bytes(b"\x00" + bytes(noise))
    (tmp_path / "page.safetensors").write_bytes(b"<!DOCTYPE html><html>Sign in</html>")
    (tmp_path / "half.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "header-cut.safetensors").write_bytes(data[:100])
    (tmp_path / "empty-folder").mkdir()
    sd2_context = {
        k: (torch.zeros(v.shape[0], 1024) if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) else v)
        for k, v in original_sd.items()
    }
    sd2_openclip = {
        k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.model."): v
        for k, v in original_sd.items()
    }
    sdxl = {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.zeros(4)}
    sdxl.update({k: v for k, v in original_sd.items() if k.startswith("model.diffusion_model.")})
    lora = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
    }
    inpaint = dict(original_sd)
    inpaint["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 9, 3, 3)
    unet_only = {k: v for k, v in original_sd.items() if k.startswith("model.diffusion_model.")}
    vae_only = {
        k.removeprefix("first_stage_model."): v for k, v in original_sd.items() if k.startswith("first_stage_model.")
    }
    return {
        "missing.safetensors": "does not exist",
        "empty-folder": "model_index.json",
        "random.safetensors": "neither a .safetensors file nor a PyTorch",
        "random.ckpt": "neither a .safetensors file nor a PyTorch",
        "page.safetensors": "download it again",
        "half.safetensors": "truncated or corrupt",
        "header-cut.safetensors": "truncated or corrupt",
        _save(tmp_path / "sd2-context.safetensors", sd2_context).name: "2.x",
        _save(tmp_path / "sd2-openclip.safetensors", sd2_openclip).name: "2.x",
        _save(tmp_path / "sdxl.safetensors", sdxl).name: "SDXL",
        _save(tmp_path / "my-character.safetensors", lora).name: "is a LoRA.*LoRA field",
        _save(tmp_path / "inpainting.safetensors", inpaint).name: "9 input channels",
        _save(tmp_path / "unet-only.safetensors", unet_only).name: "lacks the VAE or the text encoder",
        _save(tmp_path / "vae.safetensors", vae_only).name: "VAE on its own",
        _save(tmp_path / "other.safetensors", {"weight": torch.zeros(2)}).name: "not a Stable Diffusion 1.5 checkpoint",
    }


def test_every_bad_source_gives_a_clear_error(tiny_model, original_sd, tmp_path, no_network):
    for name, expected in _bad_files(tmp_path, original_sd, tiny_model.single_file).items():
        path = tmp_path / name
        with pytest.raises(ModelLoadError, match=expected) as info:
            load_base_model(path)
        assert str(path) in str(info.value), name


def test_hub_id_offline_says_what_to_do(no_network):
    with pytest.raises(ModelLoadError, match="internet connection") as info:
        load_base_model("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in str(info.value)


def test_no_network_fixture_blocks_outside_connections(no_network):
    with pytest.raises(OSError, match="network disabled"):
        socket.create_connection(("203.0.113.1", 80), timeout=1)
    with pytest.raises(OSError, match="network disabled"):
        socket.getaddrinfo("huggingface.co", 443)


def test_describe_checkpoint(tiny_model, tmp_path):
    info = describe_checkpoint(f'"{tiny_model.single_file}"')
    assert info["architecture"] == "sd1"
    assert info["format"] == "safetensors"
    assert info["dtype"] == "float32"
    assert info["parameters"] == sum(info["components"].values()) > 1_000_000
    assert info["has_ema"] is False
    lora = _save(tmp_path / "lora.safetensors", {"lora_unet_x.lora_down.weight": torch.zeros(2, 2)})
    assert describe_checkpoint(lora)["architecture"] == "lora"
    with pytest.raises(ModelLoadError, match="does not exist"):
        describe_checkpoint(tmp_path / "nope.safetensors")
    assert json.dumps(info)  # plain data, ready for `model inspect --json`
