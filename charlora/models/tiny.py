"""A toy Stable Diffusion 1.5 built from random weights, for tests and offline demos.

Same structure as SD 1.5 at toy size: a UNet with cross-attention transformer blocks in every down
block but the last, a VAE that downsamples 8x (64 px -> 8x8 latents, 4 channels, scaling 0.18215),
a 2-layer CLIP text encoder with 77 positions and a small hand-made CLIP BPE tokenizer.
About 1.5 M parameters, built in a fraction of a second, never touches the network.

`make_tiny_model` writes it twice: as a diffusers folder and as one single-file checkpoint in the
original SD layout (like `v1-5-pruned-emaonly.safetensors`). The single file carries its component
configs and tokenizer in its metadata, so `load_base_model` can rebuild it without `sd15/`.
"""

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

# Key of the safetensors metadata entry that holds the configs and tokenizer of the components.
COMPONENTS_METADATA_KEY = "charlora.components"

# SD 1.5's noise schedule (DDPM with these betas is what SD 1.5 was trained with).
SD15_DDPM_CONFIG = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

# A few merges so that common prompt words become single tokens, as with the real vocabulary.
_TINY_MERGES = [
    ("t", "h"),
    ("th", "e</w>"),
    ("o", "f</w>"),
    ("p", "h"),
    ("ph", "o"),
    ("pho", "t"),
    ("phot", "o</w>"),
    ("c", "a"),
    ("ca", "t</w>"),
    ("s", "k"),
    ("sk", "s</w>"),
]


def bytes_to_unicode():
    """The GPT-2/CLIP byte -> printable character table (as in CLIP's simple_tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def tiny_tokenizer_files():
    """{file name: text} of a small CLIP tokenizer, built the way CLIP builds its vocabulary."""
    return clip_tokenizer_files(_TINY_MERGES)


def clip_tokenizer_files(merges):
    """{file name: text} of a CLIP BPE tokenizer: the byte-level vocabulary, then one token per merge
    (in order, each once), then CLIP's start and end tokens."""
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    seen = set(vocab)
    for pair in merges:
        token = "".join(pair)
        if token not in seen:
            vocab.append(token)
            seen.add(token)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer_config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    return {
        "vocab.json": json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2),
    }


def load_tokenizer_from_files(files):
    """Build a CLIPTokenizer from {file name: text} (written to a temporary folder and read back)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="charlora-tok-") as folder:
        for name, text in files.items():
            Path(folder, name).write_text(text, encoding="utf-8")
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def _unet_config():
    return {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": (32, 64),
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 4,  # like SD 1.5's config, this is the number of heads
        "norm_num_groups": 32,
    }


def _vae_config():
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (32, 32, 32, 32),  # four blocks: three downsamplings, 8x like SD
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 64,
        "scaling_factor": 0.18215,
    }


def sd15_family_components(tokenizer, unet_config, vae_config, text_intermediate_size, seed=0):
    """Fresh {unet, vae, text_encoder, tokenizer, scheduler} of SD 1.5's classes at a given size: a
    2-layer CLIP text encoder of width 32 over `tokenizer`, SD 1.5's DDPM schedule. The tiny and the
    toy model are both built by it. Same seed => bit-identical weights; the caller's RNG is untouched."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=text_intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=1,
    )
    with torch.random.fork_rng(devices=[]):
        # One seed per component so that adding a component later does not change the others.
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**vae_config)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(text_config)
    scheduler = DDPMScheduler.from_config(SD15_DDPM_CONFIG)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def build_tiny_components(seed=0):
    """Fresh tiny SD 1.5 components: {unet, vae, text_encoder, tokenizer, scheduler}.

    Same seed => bit-identical weights. The caller's global RNG state is left untouched.
    """
    tokenizer = load_tokenizer_from_files(tiny_tokenizer_files())
    components = sd15_family_components(tokenizer, _unet_config(), _vae_config(), 37, seed)
    for name in ("unet", "vae", "text_encoder"):
        components[name].eval()
    return components


def components_metadata(components, tokenizer_files):
    """JSON text for the single file's metadata: every component's config and the tokenizer files."""
    return json.dumps(
        {
            "unet": json.loads(components["unet"].to_json_string()),
            "vae": json.loads(components["vae"].to_json_string()),
            "text_encoder": json.loads(components["text_encoder"].config.to_json_string()),
            "scheduler": json.loads(components["scheduler"].to_json_string()),
            "tokenizer": tokenizer_files,
        }
    )


@dataclass
class TinyModel:
    folder: Path  # diffusers folder (model_index.json, unet/, vae/, ...)
    single_file: Path  # one .safetensors in the original SD 1.5 layout


def make_tiny_model(out_dir, seed=0):
    """Write the tiny model to `out_dir` as a diffusers folder and as a single file."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from charlora.models.sd_layout import diffusers_to_original

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    components = build_tiny_components(seed)
    pipe = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    folder = out_dir / "tiny-sd15"
    pipe.save_pretrained(folder, safe_serialization=True)

    state_dict = diffusers_to_original(
        components["unet"].state_dict(), components["vae"].state_dict(), components["text_encoder"].state_dict()
    )
    state_dict = {key: value.contiguous() for key, value in state_dict.items()}
    metadata = {"format": "pt", COMPONENTS_METADATA_KEY: components_metadata(components, tiny_tokenizer_files())}
    single_file = out_dir / "tiny-sd15.safetensors"
    save_file(state_dict, str(single_file), metadata=metadata)
    os.chmod(single_file, 0o644)  # safetensors writes 0600; other tools (A1111, ComfyUI) may run as another user
    return TinyModel(folder=folder, single_file=single_file)
