"""SDXL base models: the tiny SDXL, the carried SDXL configs, every load route and every refusal."""

import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from charlora.errors import ModelLoadError
from charlora.models import SD15, SDXL, family_of
from charlora.models.checkpoint_file import describe_checkpoint
from charlora.models.loading import load_base_model
from charlora.models.sdxl_layout import diffusers_to_sgm

from run_helpers import assert_same_weights, sdxl_on_meta

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _assert_same_weights(a, b):
    assert_same_weights(a, b, PARTS)


@pytest.fixture(scope="module")
def original_sd(tiny_sdxl):
    return load_file(str(tiny_sdxl.single_file))


@pytest.fixture(scope="module")
def metadata(tiny_sdxl):
    with safe_open(str(tiny_sdxl.single_file), "pt") as fh:
        return fh.metadata()


@pytest.fixture(scope="module")
def sdxl_meta_models():
    return sdxl_on_meta()


def test_single_file_and_folder_load_the_same_sdxl(tiny_sdxl, no_network):
    from diffusers import StableDiffusionXLPipeline

    from_file = load_base_model(tiny_sdxl.single_file)
    from_folder = load_base_model(tiny_sdxl.folder)
    assert isinstance(from_file, StableDiffusionXLPipeline) and isinstance(from_folder, StableDiffusionXLPipeline)
    assert family_of(from_file) is SDXL and family_of(load_base_model(str(tiny_sdxl.folder))) is SDXL
    _assert_same_weights(from_file, from_folder)
    assert type(from_file.scheduler) is type(from_folder.scheduler)
    assert from_file.vae.config.scaling_factor == 0.13025
    # SDXL's second tokenizer pads with "!" (id 0 in CLIP's vocabulary), the first with <|endoftext|>
    assert from_file.tokenizer_2.pad_token == "!" and from_file.tokenizer.pad_token == "<|endoftext|>"
    assert from_file.tokenizer("a girl").input_ids == from_folder.tokenizer("a girl").input_ids


def test_written_sdxl_layout_reads_back_exactly(tiny_sdxl, original_sd, no_network):
    pipe = load_base_model(tiny_sdxl.single_file)
    back = diffusers_to_sgm(*(getattr(pipe, part).state_dict() for part in PARTS))
    assert back.keys() == original_sd.keys()
    assert all(torch.equal(back[k], original_sd[k]) for k in back)


def test_an_sdxl_ckpt_and_an_fp16_file_load(tiny_sdxl, original_sd, metadata, tmp_path, no_network):
    reference = load_base_model(tiny_sdxl.single_file)
    ckpt = tmp_path / "tiny-sdxl.ckpt"
    torch.save({"state_dict": original_sd, "charlora.components": metadata["charlora.components"]}, ckpt)
    half = tmp_path / "tiny-sdxl-fp16.safetensors"
    save_file({k: v.half() for k, v in original_sd.items()}, str(half), metadata=metadata)
    as_fp32 = load_base_model(half, dtype=torch.float32)
    assert as_fp32.unet.dtype == torch.float32
    assert torch.equal(as_fp32.unet.conv_in.weight, reference.unet.conv_in.weight.half().float())
    _assert_same_weights(load_base_model(ckpt), reference)
    bare = tmp_path / "tiny-sdxl-bare.ckpt"
    torch.save({"state_dict": original_sd}, bare)
    with pytest.raises(ModelLoadError, match="do not fit an SDXL UNet") as info:
        load_base_model(bare)  # no configs carried: SDXL base's, which the toy shapes do not fit
    assert str(bare) in str(info.value)


@pytest.mark.parametrize("key, what", [
    ("model.diffusion_model.label_emb.0.2.bias", "UNet"),
    ("first_stage_model.decoder.conv_out.bias", "VAE"),
    ("conditioner.embedders.0.transformer.text_model.final_layer_norm.bias", "text encoder 1"),
    ("conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight", "text encoder 2"),
    ("conditioner.embedders.1.model.text_projection", "text encoder 2"),
])
def test_a_missing_sdxl_tensor_is_named(original_sd, metadata, tmp_path, no_network, key, what):
    path = tmp_path / "incomplete.safetensors"
    save_file({k: v for k, v in original_sd.items() if k != key}, str(path), metadata=metadata)
    with pytest.raises(ModelLoadError, match=f"the {what} weights do not fit an SDXL {what} .*missing") as info:
        load_base_model(path)
    assert str(path) in str(info.value)


def test_sdxl_files_that_are_not_a_base_model_are_refused(original_sd, tmp_path, no_network):
    refiner = {k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v for k, v in original_sd.items()
               if not k.startswith("conditioner.embedders.0.")}
    inpaint = dict(original_sd, **{"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 9, 3, 3)})
    unet_only = {k: v for k, v in original_sd.items() if k.startswith("model.diffusion_model.")}
    no_te2 = {k: v for k, v in original_sd.items() if not k.startswith("conditioner.embedders.1.")}
    for name, tensors, expected in (("refiner", refiner, "SDXL refiner"), ("inpaint", inpaint, "9 input channels"),
                                    ("no-te2", no_te2, "lacks the UNet, the VAE or one of the two text encoders")):
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path))
        with pytest.raises(ModelLoadError, match=expected) as info:
            load_base_model(path)
        assert str(path) in str(info.value)
    # a UNet alone, with SDXL's 2048-wide context, is an incomplete SDXL, not an SD 1.5
    wide = {k: (torch.zeros(v.shape[0], 2048) if k.endswith("attn2.to_k.weight") else v) for k, v in unet_only.items()}
    path = tmp_path / "unet-only.safetensors"
    save_file(wide, str(path))
    with pytest.raises(ModelLoadError, match="has SDXL weights but lacks"):
        load_base_model(path)


def test_describe_an_sdxl_checkpoint(tiny_sdxl, original_sd):
    info = describe_checkpoint(tiny_sdxl.single_file)
    assert info["architecture"] == "sdxl" and "Stable Diffusion XL" in info["architecture_name"]
    assert set(info["components"]) == {"unet", "vae", "text_encoder", "text_encoder_2"}
    assert sum(info["components"].values()) == info["parameters"] == sum(v.numel() for v in original_sd.values())


# --- the carried SDXL configs -----------------------------------------------------------------


def test_sdxl_configs_give_sdxl_base_parameter_counts(sdxl_meta_models):
    counts = [sum(p.numel() for p in model.parameters()) for model in sdxl_meta_models]
    assert counts == [2_567_463_684, 83_653_863, 123_060_480, 694_659_840]


def test_sdxl_writer_covers_every_key_with_sdxl_base_shapes(sdxl_meta_models):
    """Our SDXL layout, run on SDXL base's own shapes, gives the names and shapes of sd_xl_base_1.0.safetensors
    (spot checks), and diffusers' converters find every diffusers name again from them."""
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint, convert_open_clip_checkpoint)

    unet, vae, te1, te2 = (model.state_dict() for model in sdxl_meta_models)
    original = diffusers_to_sgm(unet, vae, te1, te2)
    for key, shape in {
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        "model.diffusion_model.input_blocks.4.1.proj_in.weight": (640, 640),
        "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
        "model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.2.weight": (1280, 5120),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (640, 640, 3, 3),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
        "conditioner.embedders.1.model.transformer.resblocks.31.mlp.c_fc.weight": (5120, 1280),
        "conditioner.embedders.1.model.text_projection": (1280, 1280),
        "conditioner.embedders.1.model.positional_embedding": (77, 1280),
    }.items():
        assert tuple(original[key].shape) == shape, key
    assert set(convert_ldm_unet_checkpoint(original, dict(sdxl_meta_models[0].config))) == set(unet)
    assert set(convert_ldm_vae_checkpoint(original, dict(sdxl_meta_models[1].config))) == set(vae)
    assert {k.removeprefix("text_model.") for k in convert_ldm_clip_checkpoint(original)} == \
        {k.removeprefix("text_model.") for k in te1 if not k.endswith("position_ids")}
    converted = convert_open_clip_checkpoint(sdxl_meta_models[3], original, prefix="conditioner.embedders.1.model.")
    assert set(converted) == {k for k in te2 if not k.endswith("position_ids")}


def test_sdxl_carried_tokenizers():
    from charlora.models.loading import tokenizers

    found = tokenizers("sd_xl_base_1.0.safetensors", None, SDXL)
    assert found["tokenizer"].pad_token_id == 49407 and found["tokenizer_2"].pad_token_id == 0
    ids = found["tokenizer"]("a photo of a girl").input_ids
    assert ids == found["tokenizer_2"]("a photo of a girl").input_ids == [49406, 320, 1125, 539, 320, 1611, 49407]
    assert list(tokenizers("v1-5.safetensors", None, SD15)) == ["tokenizer"]


def test_make_tiny_model_sdxl_cli(tmp_path):
    run = subprocess.run([sys.executable, "-m", "charlora", "make-tiny-model", str(tmp_path), "--sdxl"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "tiny-sdxl.safetensors").is_file() and (tmp_path / "tiny-sdxl" / "model_index.json").is_file()
    assert "tiny-sdxl.safetensors" in run.stdout


def test_training_names_an_sdxl_base_model_with_sdxl_off(tiny_sdxl, tmp_path):
    from charlora.params import normalize
    from charlora.train import train

    from dataset_helpers import pattern, save

    save(tmp_path / "img" / "2_wwaa girl" / "0.png", pattern(64, 64, 0), "wwaa girl")
    values = normalize({"pretrained_model_name_or_path": str(tiny_sdxl.single_file),
                        "train_data_dir": str(tmp_path / "img"), "output_dir": str(tmp_path / "out"),
                        "max_resolution": "64,64", "min_bucket_reso": 64}).values
    result = train(values)
    assert result.status == "failed"
    assert "is an SDXL model, but sdxl is off" in result.message and str(tiny_sdxl.single_file) in result.message


def test_extra_tensors_real_sdxl_files_carry_load(tiny_sdxl, original_sd, metadata, tmp_path, no_network):
    """sd_xl_base_1.0.safetensors also holds text encoder 1's position_ids and open_clip's logit_scale (and
    v-pred fine-tunes an empty v_pred): none of them is a weight the models need, and none stops the load."""
    path = tmp_path / "with-extras.safetensors"
    extras = {"conditioner.embedders.0.transformer.text_model.embeddings.position_ids":
              torch.arange(77, dtype=torch.int64)[None], "conditioner.embedders.1.model.logit_scale": torch.tensor(4.6)}
    save_file(dict(original_sd, **extras), str(path), metadata=metadata)
    _assert_same_weights(load_base_model(path), load_base_model(tiny_sdxl.single_file))
