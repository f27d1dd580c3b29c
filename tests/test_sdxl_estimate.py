"""The VRAM estimate for SDXL: SDXL base's architecture and LoRA targets from the carried configs, sizes read
from an SDXL file's header, the presets against 12 and 16 GB cards, and what it suggests."""

import math
from pathlib import Path

from charlora import vram_estimate as ve
from charlora.models.loading import load_base_model
from charlora.params import load_config, normalize
from charlora.vram import model_sizes as vm
from charlora.vram.model_sizes import GIB

from run_helpers import sdxl_on_meta

KEY = lambda t: (t.part, t.in_features, t.out_features, t.conv)  # noqa: E731
PRESETS = Path(__file__).resolve().parents[1] / "presets"


def numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_sdxl_architecture_matches_models_built_from_the_carried_configs():
    unet, vae, te1, te2 = sdxl_on_meta()
    assert (numel(unet), numel(vae), numel(te1) + numel(te2)) == (vm.SDXL.unet_params, vm.SDXL.vae_params,
                                                                  vm.SDXL.text_encoder_params)
    assert vm.SDXL.depths == (0, 2, 10) and vm.SDXL.mid_depth == 10 and vm.SDXL.cross_attention_dim == 2048
    targets = vm.model_targets(unet, te1, te2)
    assert len(targets) == 722 + 72 + 192
    assert sorted(vm.architecture_targets(vm.SDXL), key=KEY) == sorted(targets, key=KEY)


def test_sizes_are_read_from_an_sdxl_file(tiny_sdxl):
    sizes = vm.model_sizes(str(tiny_sdxl.single_file))
    pipe = load_base_model(tiny_sdxl.single_file)
    assert sizes.arch is vm.SDXL and sizes.source == "sizes from the model file"
    assert (sizes.unet, sizes.vae, sizes.text_encoder) == (numel(pipe.unet), numel(pipe.vae),
                                                          numel(pipe.text_encoder) + numel(pipe.text_encoder_2))
    # the targets found in the file's keys (open_clip's in_proj counted as q, k, v) are the trainer's
    assert sorted(sizes.targets, key=KEY) == sorted(vm.model_targets(pipe.unet, pipe.text_encoder,
                                                                     pipe.text_encoder_2), key=KEY)
    folder = vm.model_sizes(str(tiny_sdxl.folder))
    assert folder.arch is vm.SDXL and (folder.unet, folder.text_encoder) == (sizes.unet, sizes.text_encoder)
    assert sorted(folder.targets, key=KEY) == sorted(sizes.targets, key=KEY)


def values_of(preset: str, **overrides) -> dict:
    return normalize(dict(load_config(PRESETS / f"{preset}.json").values, **overrides)).values


def test_sdxl_with_no_model_chosen_uses_sdxl_base_sizes():
    estimate = ve.estimate_vram(values_of("sdxl-character-16gb"))
    assert estimate.weights == (vm.SDXL.unet_params + vm.SDXL.text_encoder_params) * 2  # fp16, VAE off (cached)
    assert "SDXL's sizes: no model chosen yet" in estimate.details["weights"]
    rank = 32
    assert estimate.lora_parameter_count == sum(rank * (t.in_features + t.out_features)
                                                for t in vm.architecture_targets(vm.SDXL))


def test_the_sdxl_presets_fit_the_cards_they_are_named_for():
    card = lambda gb: int((gb - 0.3) * GIB)  # noqa: E731  (what an "N GB" card reports, less the driver's)
    assert ve.estimate_vram(values_of("sdxl-character-16gb"), card(16)).verdict().startswith("fits")
    low = ve.estimate_vram(values_of("sdxl-character-12gb-lowvram"), card(12))
    assert low.verdict().startswith("fits")
    assert low.total < ve.estimate_vram(values_of("sdxl-character-16gb")).total
    assert low.weights == vm.SDXL.unet_params * 2  # the text encoders leave the GPU: their outputs are cached


def test_the_users_config_moved_to_sdxl_is_told_what_to_change():
    values = values_of("character-16gb", sdxl=True, max_resolution="1024,1024")
    estimate = ve.estimate_vram(values, int(15.7 * GIB))
    verdict = estimate.verdict()
    assert verdict.startswith("does not fit") and "gradient_checkpointing on" in verdict
    assert "sdxl_cache_text_encoder_outputs on" in verdict and "max_resolution 512" not in verdict
    # per-block depth: SDXL's activations at 1024 px are several times SD 1.5's at 512
    sd15 = ve.estimate_vram(values_of("character-16gb"))
    assert estimate.activations > 4 * sd15.activations
    assert math.isclose(estimate.weights / GIB, 6.31, abs_tol=0.01)


def test_the_text_encoder_cache_flag_takes_the_encoders_off_the_gpu_even_with_samples():
    sampling = values_of("sdxl-character-12gb-lowvram", sample_every_n_epochs=1,
                         sample_prompts="wwaa girl --w 1024 --h 1024")
    kept = values_of("sdxl-character-12gb-lowvram", sample_every_n_epochs=1, sample_prompts="wwaa girl",
                     sdxl_cache_text_encoder_outputs=False)
    vae = vm.SDXL.vae_params * 4  # sampling keeps the VAE on the GPU
    assert ve.estimate_vram(sampling).weights == vm.SDXL.unet_params * 2 + vae
    assert ve.estimate_vram(kept).weights == (vm.SDXL.unet_params + vm.SDXL.text_encoder_params) * 2 + vae
