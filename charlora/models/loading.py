"""Load a base model (SD 1.5 or SDXL) from whatever the user points at, with clear errors, no surprises.

Accepted sources: a single-file `.safetensors`; a legacy `.ckpt`/`.pt` (read with
`torch.load(weights_only=True)`, so pickled code is never run); a diffusers folder
(model_index.json); a Hugging Face Hub id such as `stable-diffusion-v1-5/stable-diffusion-v1-5`.

What the file is (and the refusal of anything that is not an SD 1.5 or SDXL base model) is decided first,
by `checkpoint_file.py`, and whether its tensors fit the family's configs by `fit_check.py`. diffusers'
own single-file code then builds it, `<Pipeline>.from_single_file(path, config=<folder>,
local_files_only=True)`, with the configs carried in the package (`sd15/`, `sdxl/`) or, for the tiny test
models, written from the file's metadata: no Hub and no cache are ever asked. The tokenizers are handed
in (SD 1.5's carried CLIP BPE files; SDXL's second one pads with "!").
"""

import contextlib
import json
import logging
import tempfile
from pathlib import Path

import torch

from charlora.errors import ModelLoadError
from charlora.models import FAMILIES, SD15, SD15_CONFIG_DIR, SDXL, Family  # SD15_CONFIG_DIR: imported from here too
from charlora.models.checkpoint_file import (PICK_SD15, PICK_SDXL, clean_path, guess_architecture, looks_like_hub_id, read_header,
                                             refusal, unquoted)
from charlora.models.fit_check import check_fits
from charlora.models.tiny import COMPONENTS_METADATA_KEY, load_tokenizer_from_files

# the config's file in each component folder of a diffusers model
_CONFIG_FILES = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
                 "text_encoder_2": "config.json", "scheduler": "scheduler_config.json"}


# --- what the file is built from --------------------------------------------------------------


def _own_components(path, metadata):
    """The configs and tokenizer files a tiny test model carries in its metadata, or None."""
    if COMPONENTS_METADATA_KEY not in metadata:
        return None
    try:
        components = json.loads(metadata[COMPONENTS_METADATA_KEY])
        if not isinstance(components, dict):
            raise TypeError("not a JSON object")
        return components
    except (ValueError, TypeError) as error:
        raise ModelLoadError(f"{path}: its '{COMPONENTS_METADATA_KEY}' metadata is damaged ({error}).") from error


@contextlib.contextmanager
def config_folder(path, components, family: Family):
    """A diffusers config folder for the file: the family's carried one, or a temporary one written from the
    file's own components (the tiny test models)."""
    if components is None:
        yield family.config_dir
        return
    names = ("unet", "vae", "scheduler") + family.text_encoders
    try:
        configs = {name: components[name] for name in names}
    except KeyError as error:
        raise ModelLoadError(f"{path}: its '{COMPONENTS_METADATA_KEY}' metadata lacks {error}.") from error
    with tempfile.TemporaryDirectory(prefix="charlora-configs-") as temporary:
        folder = Path(temporary)
        index = json.loads((family.config_dir / "model_index.json").read_text(encoding="utf-8"))
        index["scheduler"] = ["diffusers", configs["scheduler"].get("_class_name", index["scheduler"][1])]
        (folder / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
        for name, config in configs.items():
            (folder / name).mkdir()
            (folder / name / _CONFIG_FILES[name]).write_text(json.dumps(config), encoding="utf-8")
        yield folder


def tokenizers(path, components, family: Family) -> dict:
    """{"tokenizer": ..., ["tokenizer_2": ...]}: the file's own, else the carried CLIP BPE files."""
    from transformers import CLIPTokenizer

    names = ["tokenizer", "tokenizer_2"][:len(family.text_encoders)]
    if components is not None:
        try:
            return {name: load_tokenizer_from_files(components[name]) for name in names}
        except (KeyError, TypeError, ValueError, OSError) as error:
            raise ModelLoadError(f"{path}: its '{COMPONENTS_METADATA_KEY}' tokenizer is damaged ({error}).") from error
    carried = SD15_CONFIG_DIR / "tokenizer"
    found = {"tokenizer": CLIPTokenizer.from_pretrained(carried, local_files_only=True)}
    if "tokenizer_2" in names:  # SDXL's second tokenizer: the same files, padding with "!"
        found["tokenizer_2"] = CLIPTokenizer.from_pretrained(carried, local_files_only=True, pad_token="!")
    return found


# --- building the pipeline --------------------------------------------------------------------


def _pipeline_from_single_file(path, dtype, device):
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    kind, shapes, metadata, tensors = read_header(path)
    del tensors  # diffusers reads the file itself (a .ckpt was only opened to check it holds no code)
    arch = guess_architecture(shapes)
    if arch not in FAMILIES:
        raise refusal(path, arch, shapes)
    family = FAMILIES[arch]
    components = _own_components(path, metadata)
    pipeline = getattr(diffusers, family.pipeline)
    extra = _pipeline_extras(family)
    with config_folder(path, components, family) as folder:
        check_fits(path, shapes, folder, family)
        # diffusers warns about casting "modules kept in float32" (there are none here) and shows a
        # progress bar per component: noise in the user's log
        with _quiet(diffusers_logging):
            try:
                pipe = pipeline.from_single_file(str(path), config=str(folder), local_files_only=True,
                                                 torch_dtype=dtype, **tokenizers(path, components, family), **extra)
            except Exception as error:  # read and checked above: what is left is unexpected
                raise ModelLoadError(
                    f"{path}: diffusers could not build the model from it ({type(error).__name__}: {error}). "
                    f"The file may be damaged: download it again. {PICK_SD15 if family is SD15 else PICK_SDXL}"
                ) from error
    if "v_pred" in shapes:  # NoobAI-style v-prediction files mark themselves so (ComfyUI and Forge read it)
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type="v_prediction")
    return _to_device(pipe, device)


def _pipeline_extras(family: Family) -> dict:
    """SD 1.5: no safety checker (a LoRA's samples and grids are the user's own images). SDXL: no invisible
    watermark (with invisible-watermark installed diffusers would stamp every sample and grid cell)."""
    if family is SDXL:
        return {"add_watermarker": False}
    return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


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


def _check_diffusers_folder(folder) -> Family:
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise ModelLoadError(
            f"{folder}: model_index.json cannot be read ({error}). Save or download the folder again."
        ) from error
    class_name = index.get("_class_name", "")
    unet_config = folder / "unet" / "config.json"
    if class_name == SD15.pipeline and unet_config.is_file():
        cross = json.loads(unet_config.read_text(encoding="utf-8")).get("cross_attention_dim")
        if cross == 1024:
            raise ModelLoadError(
                f"{folder} is a Stable Diffusion 2.x model; CharLoRA trains SD 1.5 and SDXL LoRAs. {PICK_SD15}"
            )
    for family in FAMILIES.values():
        if class_name == family.pipeline:
            return family
    raise ModelLoadError(
        f"{folder} holds a {class_name or 'unknown'} model, not a StableDiffusionPipeline or "
        f"StableDiffusionXLPipeline (SD 1.5 or SDXL). {PICK_SDXL if 'XL' in class_name else PICK_SD15}"
    )


def load_base_model(source, dtype=torch.float32, device="cpu"):
    """A StableDiffusionPipeline (no safety checker) or StableDiffusionXLPipeline from a file, a diffusers
    folder or a Hub id (`models.family_of(pipe)` says which).

    Raises ModelLoadError, naming the file and what to do, for anything that is not an SD 1.5 or SDXL model.
    """
    path = clean_path(source)
    if path is None:
        raise ModelLoadError(
            "No base model given: choose an SD 1.5 or SDXL .safetensors file, a diffusers folder or a Hub id."
        )
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"{path} is a folder but not a diffusers model folder (it has no model_index.json). "
                "Choose the model's .safetensors file itself, or a folder saved by diffusers."
            )
        family = _check_diffusers_folder(path)
        return _from_pretrained(str(path), dtype, device, local=True, family=family)
    if path.is_file():
        return _pipeline_from_single_file(path, dtype, device)
    text = unquoted(source)
    if looks_like_hub_id(text):
        return _from_pretrained(text, dtype, device, local=False)
    raise ModelLoadError(f"{path} does not exist. Check the path of the base model (a .safetensors or .ckpt file).")


def _from_pretrained(name, dtype, device, local, family: Family | None = None):
    import diffusers

    try:
        if family is None:  # a Hub id: its model_index.json says which pipeline it is
            class_name = diffusers.DiffusionPipeline.load_config(name).get("_class_name", "")
            family = next((f for f in FAMILIES.values() if f.pipeline == class_name), None)
            if family is None:
                pick = PICK_SDXL if "XL" in class_name else PICK_SD15
                raise ModelLoadError(f"{name} is a {class_name or 'unknown'} model, not SD 1.5 or SDXL. {pick}")
        extra = _pipeline_extras(family)
        pipe = getattr(diffusers, family.pipeline).from_pretrained(name, dtype=dtype, local_files_only=local,
                                                                   **extra)
    except ModelLoadError:
        raise
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
    if family is SD15 and pipe.unet.config.cross_attention_dim == 1024:
        raise ModelLoadError(f"{name} is a Stable Diffusion 2.x model; CharLoRA trains SD 1.5 and SDXL LoRAs. "
                             f"{PICK_SD15}")
    return _to_device(pipe, device)
