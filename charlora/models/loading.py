"""Load an SD 1.5 base model from whatever the user points at, with clear errors and no surprises.

Accepted sources: a single-file `.safetensors`; a legacy `.ckpt`/`.pt` (read with
`torch.load(weights_only=True)`, so pickled code is never run); a diffusers folder
(model_index.json); a Hugging Face Hub id such as `stable-diffusion-v1-5/stable-diffusion-v1-5`.

What the file is (and the refusal of anything that is not an SD 1.5 base model) is decided first, by
`checkpoint_file.py`. A single file is then checked and built by diffusers' own single-file code, the
code A1111-to-diffusers conversions are maintained in:
- `check_fits`: diffusers' converters run on the file's tensor *shapes* only (meta tensors: nothing is
  read) and the result is compared with models built from the configs, so a missing or misshaped
  tensor is an error that names it, instead of diffusers' silently random or "meta tensor" weight;
- `StableDiffusionPipeline.from_single_file(path, config=<folder>, local_files_only=True)` builds it,
  with the configs carried in the package (`sd15/`) or, for the tiny test model, written from the
  file's metadata: no Hub and no cache are ever asked.
"""

import contextlib
import json
import logging
import tempfile
from pathlib import Path

import torch

from charlora.errors import ModelLoadError
from charlora.models import SD15_CONFIG_DIR  # bench, tests and tools import it here
from charlora.models.checkpoint_file import (PICK_SD15, clean_path, guess_architecture, looks_like_hub_id, read_header,
                                             refusal, unquoted)
from charlora.models.tiny import COMPONENTS_METADATA_KEY

# the configs' file in each component folder of a diffusers model
_CONFIG_FILES = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
                 "scheduler": "scheduler_config.json"}


# --- the configs the file is built from -------------------------------------------------------


@contextlib.contextmanager
def config_folder(path, metadata):
    """A diffusers config folder for the file: the one carried for SD 1.5, or (for a file that carries its
    own configs in `charlora.components`, the tiny test model) a temporary one written from its metadata."""
    if COMPONENTS_METADATA_KEY not in metadata:
        yield SD15_CONFIG_DIR
        return
    try:
        components = json.loads(metadata[COMPONENTS_METADATA_KEY])
        configs = {name: components[name] for name in _CONFIG_FILES}
        tokenizer_files = dict(components["tokenizer"])
    except (ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"{path}: its '{COMPONENTS_METADATA_KEY}' metadata is damaged ({error}).") from error
    with tempfile.TemporaryDirectory(prefix="charlora-configs-") as temporary:
        folder = Path(temporary)
        index = json.loads((SD15_CONFIG_DIR / "model_index.json").read_text(encoding="utf-8"))
        index["scheduler"] = ["diffusers", configs["scheduler"].get("_class_name", index["scheduler"][1])]
        (folder / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
        for name, config in configs.items():
            (folder / name).mkdir()
            (folder / name / _CONFIG_FILES[name]).write_text(json.dumps(config), encoding="utf-8")
        (folder / "tokenizer").mkdir()
        for name, text in tokenizer_files.items():
            (folder / "tokenizer" / Path(name).name).write_text(text, encoding="utf-8")
        yield folder


# --- does the file fit the configs? -----------------------------------------------------------


def check_fits(path, shapes, folder):
    """Raise ModelLoadError naming the first missing or misshaped tensor of each model, before anything is
    read: diffusers' converters applied to meta tensors of the file's shapes, against meta models built from
    the configs. (Tensors the models do not use, such as EMA copies, are left alone, as diffusers does.)"""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)
    from transformers import CLIPTextConfig, CLIPTextModel

    meta = {key: torch.empty(shape, dtype=torch.float16, device="meta") for key, (shape, _) in shapes.items()}
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))

    def text_encoder_names(checkpoint):
        converted = convert_ldm_clip_checkpoint(checkpoint)
        if not hasattr(text_encoder, "text_model"):  # transformers >= 5.6 dropped the `text_model.` level
            converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
        return converted

    for what, model, convert in (
        ("UNet", unet, lambda c: convert_ldm_unet_checkpoint(c, unet.config)),
        ("VAE", vae, lambda c: convert_ldm_vae_checkpoint(c, vae.config)),
        ("text encoder", text_encoder, text_encoder_names),
    ):
        try:
            converted = convert(meta)
        except (KeyError, IndexError, ValueError, RuntimeError) as error:  # a tensor the converter needs is absent
            raise _misfit(path, what, [f"missing, e.g. {error}"]) from error
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("position_ids")}
        missing = [k for k in expected if k not in converted]
        wrong = [f"{k}: {list(converted[k].shape)} in the file, {list(shape)} expected"
                 for k, shape in expected.items() if k in converted and tuple(converted[k].shape) != shape]
        if missing or wrong:
            raise _misfit(path, what, [f"{len(found)} {label}, e.g. {found[0]}"
                                       for label, found in (("missing", missing), ("with the wrong shape", wrong))
                                       if found])


def _misfit(path, what, problems):
    return ModelLoadError(f"{path}: the {what} weights do not fit an SD 1.5 {what} ({'; '.join(problems)}). "
                          f"The file may be a different architecture or damaged. {PICK_SD15}")


# --- building the pipeline --------------------------------------------------------------------


def _pipeline_from_single_file(path, dtype, device):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    kind, shapes, metadata, tensors = read_header(path)
    del tensors  # diffusers reads the file itself (a .ckpt was only opened to check it holds no code)
    arch = guess_architecture(shapes)
    if arch != "sd1":
        raise refusal(path, arch, shapes)
    with config_folder(path, metadata) as folder:
        check_fits(path, shapes, folder)
        # diffusers warns about casting "modules kept in float32" (there are none in SD 1.5) and shows a
        # progress bar per component: noise in the user's log
        with _quiet(diffusers_logging):
            try:
                pipe = StableDiffusionPipeline.from_single_file(
                    str(path), config=str(folder), local_files_only=True, torch_dtype=dtype,
                    safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            except Exception as error:  # read and checked above: what is left is unexpected
                raise ModelLoadError(
                    f"{path}: diffusers could not build the model from it ({type(error).__name__}: {error}). "
                    f"The file may be damaged: download it again. {PICK_SD15}") from error
    return _to_device(pipe, device)


@contextlib.contextmanager
def _quiet(diffusers_logging):
    level = diffusers_logging.get_verbosity()
    bars = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity(logging.ERROR)
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)
        if bars:
            diffusers_logging.enable_progress_bar()


def _to_device(pipe, device):
    # Everything is built on the CPU; moving to "cpu" again only makes diffusers warn about fp16.
    return pipe if torch.device(device).type == "cpu" else pipe.to(device)


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


