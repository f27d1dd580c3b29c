"""Load an SD 1.5 base model from whatever the user points at, with clear errors and no surprises.

Accepted sources: a single-file `.safetensors`; a legacy `.ckpt`/`.pt` (read with
`torch.load(weights_only=True)`, so pickled code is never run); a diffusers folder
(model_index.json); a Hugging Face Hub id such as `stable-diffusion-v1-5/stable-diffusion-v1-5`.

What the file is (and the refusal of anything that is not an SD 1.5 base model) is decided first, by
`checkpoint_file.py`; this module builds the pipeline. Single files are loaded by our own route rather
than `StableDiffusionPipeline.from_single_file`: read the tensors once, check the architecture from the
key names and shapes before building anything, rename with `sd_layout.original_to_diffusers`, and `load_state_dict(strict=True)` into
models built from configs carried in the package (`sd15/`) or in the file's metadata (the tiny test
model). Why: it needs no Hub and no cache (from_single_file looks up Hub repos unless handed a
config folder), it reads .safetensors and .ckpt the same way, a missing or misshaped tensor is an
error instead of a silently random weight, and every failure can name the file and say what to do.
"""

import json

import torch

from charlora.errors import ModelLoadError
from charlora.models import SD15_CONFIG_DIR, sd_layout  # SD15_CONFIG_DIR: bench, tests and tools import it here
from charlora.models.checkpoint_file import (PICK_SD15, clean_path, guess_architecture, looks_like_hub_id, read_header,
                                             refusal, truncated, unquoted)
from charlora.models.tiny import COMPONENTS_METADATA_KEY, load_tokenizer_from_files


# --- building the pipeline --------------------------------------------------------------------


def _component_configs(path, metadata):
    """Configs of unet/vae/text_encoder/scheduler and the tokenizer: from the file, else SD 1.5's."""
    if COMPONENTS_METADATA_KEY in metadata:
        try:
            components = json.loads(metadata[COMPONENTS_METADATA_KEY])
            return components, load_tokenizer_from_files(components["tokenizer"])
        except (ValueError, KeyError, TypeError, OSError) as error:
            raise ModelLoadError(f"{path}: its '{COMPONENTS_METADATA_KEY}' metadata is damaged ({error}).") from error
    from transformers import CLIPTokenizer

    def read(name):
        return json.loads((SD15_CONFIG_DIR / name).read_text(encoding="utf-8"))

    configs = {
        "unet": read("unet/config.json"),
        "vae": read("vae/config.json"),
        "text_encoder": read("text_encoder/config.json"),
        "scheduler": read("scheduler/scheduler_config.json"),
    }
    return configs, CLIPTokenizer.from_pretrained(SD15_CONFIG_DIR / "tokenizer", local_files_only=True)


def _load_into(model, state_dict, path, what):
    """Strict load of a model built on the meta device; the tensors become its parameters."""
    # transformers < 5.6 kept a `text_model.` level in CLIPTextModel's names; follow the model.
    expected = model.state_dict()
    if what == "text encoder" and any(k.startswith("text_model.") for k in expected):
        state_dict = {"text_model." + k: v for k, v in state_dict.items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k}: {list(v.shape)} in the file, {list(expected[k].shape)} expected"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        problems = [
            f"{len(found)} {label}, e.g. {found[0]}"
            for label, found in (("missing", missing), ("unexpected", unexpected), ("with the wrong shape", wrong))
            if found
        ]
        raise ModelLoadError(
            f"{path}: the {what} weights do not fit an SD 1.5 {what} ({'; '.join(problems)}). "
            f"The file may be a different architecture or damaged. {PICK_SD15}"
        )
    model.load_state_dict(state_dict, strict=True, assign=True)
    left = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise ModelLoadError(f"{path}: the {what} weights {left[:3]} are missing from the file.")
    return model.eval()


def _pipeline_from_single_file(path, dtype, device):
    import diffusers
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    kind, shapes, metadata, tensors = read_header(path)
    arch = guess_architecture(shapes)
    if arch != "sd1":
        raise refusal(path, arch, shapes)
    configs, tokenizer = _component_configs(path, metadata)

    # Read only the three models' tensors (skips EMA copies and scheduler buffers), cast on the way
    # so an fp16 file costs no more than the result.
    wanted = (sd_layout.UNET_PREFIX, sd_layout.VAE_PREFIX, "cond_stage_model.transformer.")
    state_dict = {}
    if kind == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    if key.startswith(wanted):
                        state_dict[key] = _cast(f.get_tensor(key), dtype)
        except Exception as error:
            raise truncated(path, error) from error
    else:
        state_dict = {key: _cast(t, dtype) for key, t in tensors.items() if key.startswith(wanted)}
    try:
        unet_sd, vae_sd, te_sd = sd_layout.original_to_diffusers(state_dict)
    except ValueError as error:
        raise ModelLoadError(f"{path} is laid out like SD 1.x but does not convert: {error}. {PICK_SD15}") from error
    del state_dict

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"]))
    unet = _load_into(unet, unet_sd, path, "UNet")
    vae = _load_into(vae, vae_sd, path, "VAE")
    text_encoder = _load_into(text_encoder, te_sd, path, "text encoder")

    scheduler_class = getattr(diffusers, configs["scheduler"].get("_class_name", ""), None)
    if scheduler_class is None or not issubclass(scheduler_class, diffusers.SchedulerMixin):
        scheduler_class = diffusers.PNDMScheduler
    scheduler = scheduler_class.from_config(configs["scheduler"])
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _to_device(pipe, device)


def _to_device(pipe, device):
    # Everything is built on the CPU; moving to "cpu" again only makes diffusers warn about fp16.
    return pipe if torch.device(device).type == "cpu" else pipe.to(device)


def _cast(tensor, dtype):
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def _check_diffusers_folder(folder):
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise ModelLoadError(
            f"{folder}: model_index.json cannot be read ({error}). Save or download the folder again."
        ) from error
    class_name = index.get("_class_name", "")
    if "XL" in class_name:
        raise ModelLoadError(
            f"{folder} is an SDXL model ({class_name}); CharLoRA trains SD 1.5 LoRAs only. {PICK_SD15}"
        )
    unet_config = folder / "unet" / "config.json"
    if unet_config.is_file():
        cross = json.loads(unet_config.read_text(encoding="utf-8")).get("cross_attention_dim")
        if cross == 1024:
            raise ModelLoadError(
                f"{folder} is a Stable Diffusion 2.x model; CharLoRA trains SD 1.5 LoRAs only. {PICK_SD15}"
            )
    if class_name != "StableDiffusionPipeline":
        raise ModelLoadError(
            f"{folder} holds a {class_name or 'unknown'} model, not a StableDiffusionPipeline. {PICK_SD15}"
        )


def load_base_model(source, dtype=torch.float32, device="cpu"):
    """A StableDiffusionPipeline (no safety checker) from a file, a diffusers folder or a Hub id.

    Raises ModelLoadError, naming the file and what to do, for anything that is not an SD 1.5 model.
    """
    path = clean_path(source)
    if path is None:
        raise ModelLoadError(
            "No base model given: choose an SD 1.5 .safetensors file, a diffusers folder or a Hub id."
        )
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"{path} is a folder but not a diffusers model folder (it has no model_index.json). "
                "Choose the model's .safetensors file itself, or a folder saved by diffusers."
            )
        _check_diffusers_folder(path)
        return _from_pretrained(str(path), dtype, device, local=True)
    if path.is_file():
        return _pipeline_from_single_file(path, dtype, device)
    text = unquoted(source)
    if looks_like_hub_id(text):
        return _from_pretrained(text, dtype, device, local=False)
    raise ModelLoadError(f"{path} does not exist. Check the path of the base model (a .safetensors or .ckpt file).")


def _from_pretrained(name, dtype, device, local):
    from diffusers import StableDiffusionPipeline

    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            name,
            dtype=dtype,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            local_files_only=local,
        )
    except Exception as error:  # the Hub client raises many kinds; all mean "could not get it"
        if local:
            raise ModelLoadError(
                f"{name}: the diffusers folder could not be loaded ({error}). It may be incomplete: "
                "save or download it again."
            ) from error
        raise ModelLoadError(
            f"No file or folder '{name}' exists here, and it could not be fetched from the Hugging Face Hub as a "
            f"model id ({type(error).__name__}: {str(error)[:200]}). Downloading a Hub model needs an internet "
            "connection the first time (and the right id); or choose a local .safetensors/.ckpt file or "
            "diffusers folder instead."
        ) from error
    if pipe.unet.config.cross_attention_dim == 1024:
        raise ModelLoadError(f"{name} is a Stable Diffusion 2.x model; CharLoRA trains SD 1.5 LoRAs only. {PICK_SD15}")
    return _to_device(pipe, device)


