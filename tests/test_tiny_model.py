"""The tiny SD 1.5 test model: deterministic, SD 1.5-shaped, small, and written in both layouts."""

import json
import stat

import pytest
import torch
from safetensors import safe_open

from charlora.models.tiny import COMPONENTS_METADATA_KEY, build_tiny_components


def _weights(components):
    return {
        f"{name}.{key}": value
        for name in ("unet", "vae", "text_encoder")
        for key, value in components[name].state_dict().items()
    }


@pytest.fixture(scope="module")
def components():
    return build_tiny_components(seed=0)


def test_same_seed_gives_identical_weights_and_other_seed_differs(components):
    again = _weights(build_tiny_components(seed=0))
    first = _weights(components)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)

    other = _weights(build_tiny_components(seed=1))
    for key in ("unet.conv_in.weight", "vae.encoder.conv_in.weight", "text_encoder.embeddings.token_embedding.weight"):
        assert not torch.equal(first[key], other[key]), key


def test_build_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_components(seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_unet_has_sd15_structure(components):
    unet = components["unet"]
    # Cross-attention transformers in every down block but the last, mirrored on the way up.
    assert [hasattr(block, "attentions") for block in unet.down_blocks] == [True, False]
    assert [hasattr(block, "attentions") for block in unet.up_blocks] == [False, True]
    assert hasattr(unet.mid_block, "attentions")
    cross = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    assert cross.to_k.in_features == 32 == unet.config.cross_attention_dim
    assert unet.config.layers_per_block == 2
    assert sum(p.numel() for p in unet.parameters()) < 2_000_000

    sample = torch.randn(1, 4, 8, 8)
    context = torch.randn(1, 77, 32)
    with torch.no_grad():
        out = unet(sample, torch.tensor([10]), encoder_hidden_states=context).sample
    assert out.shape == sample.shape


def test_vae_downsamples_8x_to_4_channels(components):
    vae = components["vae"]
    assert vae.config.scaling_factor == 0.18215
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(image).latent_dist.sample(generator=torch.Generator().manual_seed(0))
        decoded = vae.decode(latents).sample
    assert latents.shape == (1, 4, 8, 8)
    assert decoded.shape == (1, 3, 64, 64)


def test_text_encoder_and_tokenizer_fit_together(components):
    tokenizer, text_encoder = components["tokenizer"], components["text_encoder"]
    assert len(tokenizer) == text_encoder.config.vocab_size
    assert tokenizer.model_max_length == 77 == text_encoder.config.max_position_embeddings
    ids = tokenizer("a photo of a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids[0, 0].item() == tokenizer.bos_token_id == text_encoder.config.bos_token_id
    assert ids[0, 7].item() == tokenizer.eos_token_id == text_encoder.config.eos_token_id
    # The hand-made merges make whole-word tokens, like the real vocabulary does.
    assert tokenizer.tokenize("a photo of the cat") == ["a</w>", "photo</w>", "of</w>", "the</w>", "cat</w>"]
    with torch.no_grad():
        hidden = text_encoder(ids)[0]
    assert hidden.shape == (1, 77, 32)


def test_files_are_small_and_readable_by_others(tiny_model):
    assert (tiny_model.folder / "model_index.json").is_file()
    for part in ("unet", "vae", "text_encoder", "scheduler", "tokenizer"):
        assert (tiny_model.folder / part).is_dir(), part
    folder_bytes = sum(f.stat().st_size for f in tiny_model.folder.rglob("*") if f.is_file())
    file_bytes = tiny_model.single_file.stat().st_size
    assert 1_000_000 < file_bytes < 10_000_000
    assert folder_bytes < 10_000_000
    assert stat.S_IMODE(tiny_model.single_file.stat().st_mode) == 0o644
    index = json.loads((tiny_model.folder / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None]


def test_single_file_is_in_the_original_sd_layout(tiny_model, components):
    with safe_open(str(tiny_model.single_file), framework="pt") as f:
        keys = set(f.keys())
        metadata = f.metadata()
        q_shape = f.get_slice("first_stage_model.encoder.mid.attn_1.q.weight").get_shape()
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")
    assert all(key.startswith(prefixes) for key in keys)
    for key in (
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",  # upsampler of an up block without attention
        "model.diffusion_model.output_blocks.5.1.proj_out.weight",
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.encoder.down.0.block.1.conv2.weight",
        "first_stage_model.quant_conv.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    ):
        assert key in keys, key
    assert q_shape == [32, 32, 1, 1]  # 1x1 conv in the original VAE, Linear in diffusers
    total = sum(len(components[name].state_dict()) for name in ("unet", "vae", "text_encoder"))
    assert len(keys) == total

    stored = json.loads(metadata[COMPONENTS_METADATA_KEY])
    assert set(stored) == {"unet", "vae", "text_encoder", "scheduler", "tokenizer"}
    assert stored["unet"]["cross_attention_dim"] == 32
    assert stored["scheduler"]["beta_schedule"] == "scaled_linear"
