"""A toy SDXL built from random weights, for tests and offline demos (`make-tiny-model --sdxl`).

SDXL's structure at toy size: a UNet of three levels (no attention in the first, transformer depth 1 and 2
after it, linear projections, cross-attention over both text encoders' widths together, and the
"text_time" embedding of the pooled text and the six size numbers), SDXL's VAE at toy size (scaling
0.13025), a CLIP text encoder and a CLIP text encoder with projection (OpenCLIP-G's role), the tiny
tokenizer twice (the second pads with "!", as SDXL's tokenizer_2 does). Built in a fraction of a second.

Written twice, as `tiny.make_tiny_model` does for SD 1.5: a diffusers folder and one single file in the
original SDXL layout (sdxl_layout), carrying its component configs and tokenizers in its metadata.
"""

import json
import os
from pathlib import Path

import torch

from charlora.models.tiny import (COMPONENTS_METADATA_KEY, TinyModel, _vae_config, load_tokenizer_from_files,
                                  tiny_tokenizer_files)

# SDXL base 1.0's inference schedule (its scheduler_config.json); training uses the DDPM betas it names
SDXL_SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}
# The text encoders' widths (SDXL: 768 and 1280). They must differ: diffusers tells SDXL's two encoders
# apart in a single file by their width. The UNet's cross-attention sees both together.
TEXT_WIDTH, TEXT_WIDTH_2 = 32, 48
TIME_EMBED = 8  # per size number (SDXL: 256)


def _unet_config():
    return {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": (32, 64, 64),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 1, 2),
        "attention_head_dim": (2, 4, 4),  # as in SDXL's config: the number of heads
        "cross_attention_dim": TEXT_WIDTH + TEXT_WIDTH_2,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": TIME_EMBED,
        "projection_class_embeddings_input_dim": TEXT_WIDTH_2 + 6 * TIME_EMBED,  # pooled text 2 + 6 sizes
        "norm_num_groups": 32,
    }


def _tokenizer_2_files():
    files = dict(tiny_tokenizer_files())
    config = json.loads(files["tokenizer_config.json"])
    config["pad_token"] = "!"  # SDXL's tokenizer_2 pads with "!", its tokenizer with <|endoftext|>
    files["tokenizer_config.json"] = json.dumps(config, indent=2)
    return files


def _text_config(tokenizer, width, hidden_act):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=37,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                          hidden_act=hidden_act, layer_norm_eps=1e-5, projection_dim=width,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=1)


def build_tiny_sdxl_components(seed=0):
    """Fresh tiny SDXL components, as StableDiffusionXLPipeline takes them. Same seed => bit-identical
    weights; the caller's global RNG is left untouched."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = load_tokenizer_from_files(tiny_tokenizer_files())
    tokenizer_2 = load_tokenizer_from_files(_tokenizer_2_files())
    vae_config = dict(_vae_config(), scaling_factor=0.13025, force_upcast=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**_unet_config())
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**vae_config)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(_text_config(tokenizer, TEXT_WIDTH, "quick_gelu"))  # CLIP ViT-L's activation
        torch.manual_seed(seed + 3)
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, TEXT_WIDTH_2, "gelu"))  # OpenCLIP-G's
    components = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2,
                  "tokenizer": tokenizer, "tokenizer_2": tokenizer_2,
                  "scheduler": EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG)}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        components[name].eval()
    return components


def sdxl_components_metadata(components):
    """JSON text for the single file's metadata: every component's config and both tokenizers' files."""
    return json.dumps({
        "unet": json.loads(components["unet"].to_json_string()),
        "vae": json.loads(components["vae"].to_json_string()),
        "text_encoder": json.loads(components["text_encoder"].config.to_json_string()),
        "text_encoder_2": json.loads(components["text_encoder_2"].config.to_json_string()),
        "scheduler": json.loads(components["scheduler"].to_json_string()),
        "tokenizer": tiny_tokenizer_files(),
        "tokenizer_2": _tokenizer_2_files(),
    })


def make_tiny_sdxl_model(out_dir, seed=0):
    """Write the tiny SDXL to `out_dir` as a diffusers folder (tiny-sdxl/) and a single file."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    from charlora.models.sdxl_layout import diffusers_to_sgm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    components = build_tiny_sdxl_components(seed)
    pipe = StableDiffusionXLPipeline(**components, add_watermarker=False)
    folder = out_dir / "tiny-sdxl"
    pipe.save_pretrained(folder, safe_serialization=True)
    state_dict = diffusers_to_sgm(*(components[name].state_dict()
                                    for name in ("unet", "vae", "text_encoder", "text_encoder_2")))
    state_dict = {key: value.contiguous() for key, value in state_dict.items()}
    single_file = out_dir / "tiny-sdxl.safetensors"
    save_file(state_dict, str(single_file),
              metadata={"format": "pt", COMPONENTS_METADATA_KEY: sdxl_components_metadata(components)})
    os.chmod(single_file, 0o644)  # safetensors writes 0600; other tools (A1111, ComfyUI) may run as another user
    return TinyModel(folder=folder, single_file=single_file)
