"""What a checkpoint file is, read from its tensor names and shapes before anything is built.

`read_header` reads a single file's tensor shapes (a .safetensors header, or a legacy .ckpt/.pt with
`torch.load(weights_only=True)`, so pickled code never runs); `guess_architecture` tells SD 1.x from SD 2.x,
SDXL (and its refiner), a LoRA, an embedding or a VAE; `refusal` is the message for a file that is not an
SD 1.5 or SDXL base model; `describe_checkpoint` answers `lora`/`model` inspection. `loading.py` builds the
pipeline after these checks.
"""

import pickle
import re
from collections import Counter
from pathlib import Path

import torch

from charlora.errors import ModelLoadError
from charlora.models import sd_layout
from charlora.params.spec import strip_quotes

ARCHITECTURE_NAMES = {
    "sd1": "Stable Diffusion 1.x (SD 1.4/1.5 and their fine-tunes)",
    "sd1-variant": "Stable Diffusion 1.x variant (inpainting, instruct-pix2pix...)",
    "sd1-incomplete": "Stable Diffusion 1.x without all of its parts",
    "sd2": "Stable Diffusion 2.x",
    "sdxl": "Stable Diffusion XL (SDXL base 1.0 and its fine-tunes: Pony, Illustrious, NoobAI...)",
    "sdxl-refiner": "Stable Diffusion XL refiner",
    "sdxl-variant": "Stable Diffusion XL variant (inpainting...)",
    "sdxl-incomplete": "Stable Diffusion XL without all of its parts",
    "lora": "LoRA / LyCORIS network",
    "embedding": "textual-inversion embedding",
    "vae": "VAE on its own",
    "unknown": "not recognised",
}
PICK_SD15 = "Choose an SD 1.5 base model instead (e.g. v1-5-pruned-emaonly.safetensors or an SD 1.5 fine-tune)."
PICK_SDXL = "Choose an SDXL base model (e.g. sd_xl_base_1.0.safetensors or an SDXL fine-tune)."
PICK_ANY = ("Choose an SD 1.5 or SDXL base model instead (e.g. v1-5-pruned-emaonly.safetensors, "
            "sd_xl_base_1.0.safetensors or a fine-tune of either).")
_LORA_MARKERS = ("lora_down.", "lora_up.", "lora_A.", "lora_B.", "hada_w1", "lokr_w1")


def unquoted(source):
    return strip_quotes(str(source))


def clean_path(source):
    """Strip blanks and surrounding quotes (Kohya's configs hold `"\\"C:\\\\...\\""`), expand ~."""
    text = unquoted(source)
    return Path(text).expanduser() if text else None


def looks_like_hub_id(text) -> bool:
    """"owner/name" (a Hugging Face Hub model id), not a path to a weights file."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) is not None and not text.endswith(
        (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
    )


# --- reading a single file --------------------------------------------------------------------


def _file_format(path):
    """'safetensors', 'torch' or None, from the first bytes (the extension may lie)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"  # 8-byte little-endian header length, then the JSON header
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"  # zip archive (torch >= 1.6) or a raw pickle (older .ckpt)
    return None


def _not_a_model(path):
    return ModelLoadError(
        f"{path} is not a model file CharLoRA can read: it is neither a .safetensors file nor a PyTorch "
        ".ckpt (its first bytes match neither). If you downloaded it, the download may have failed "
        "(an HTML error page, an unfinished file): download it again."
    )


def truncated(path, error):
    return ModelLoadError(
        f"{path} is truncated or corrupt ({error}). Download it again, and check the disk is not full."
    )


def _safetensors_header(path):
    """{key: (shape, dtype name)} and the metadata, without reading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            shapes = {}
            for key in f.keys():
                tensor_slice = f.get_slice(key)
                shapes[key] = (tuple(tensor_slice.get_shape()), tensor_slice.get_dtype())
    except Exception as error:  # SafetensorError is not exported under a stable name
        raise truncated(path, error) from error
    return shapes, metadata


def _torch_checkpoint(path):
    """(tensors, metadata) of a .ckpt/.pt, read without running any pickled code.

    Top-level string entries play the part of safetensors metadata.
    """
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # pre-zip format
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise ModelLoadError(
                f"{path} contains pickled Python objects besides the weights, and CharLoRA does not run code "
                "from model files. Use the .safetensors version of this model, or convert this file to "
                ".safetensors with a tool you trust."
            ) from error
        raise truncated(path, error) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise truncated(path, error) from error
    if not isinstance(checkpoint, dict):
        raise ModelLoadError(
            f"{path} holds a {type(checkpoint).__name__}, not the state dict of a Stable Diffusion model."
        )
    metadata = {key: value for key, value in checkpoint.items() if isinstance(key, str) and isinstance(value, str)}
    while isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    return {key: value for key, value in checkpoint.items() if isinstance(value, torch.Tensor)}, metadata


def read_header(path):
    """(format, {key: (shape, dtype)}, metadata, tensors or None) of a single-file checkpoint."""
    try:
        kind = _file_format(path)
    except OSError as error:
        raise ModelLoadError(f"{path} cannot be read ({error}). Check that the file is readable by you.") from error
    if kind == "safetensors":
        shapes, metadata = _safetensors_header(path)
        return kind, shapes, metadata, None
    if kind == "torch":
        tensors, metadata = _torch_checkpoint(path)
        shapes = {key: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for key, t in tensors.items()}
        return "ckpt", shapes, metadata, tensors
    raise _not_a_model(path)


# --- what is it? ------------------------------------------------------------------------------

SDXL_TE1_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TE2_PREFIX = "conditioner.embedders.1.model."


def _sdxl_kind(shapes, has_unet):
    keys = list(shapes)
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys) \
            and not any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl-refiner"  # OpenCLIP-G alone, as embedder 0
    conv_in = shapes.get(sd_layout.UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in and len(conv_in[0]) == 4 and conv_in[0][1] != 4:
        return "sdxl-variant"
    complete = has_unet and any(k.startswith(sd_layout.VAE_PREFIX) for k in keys) \
        and all(any(k.startswith(prefix) for k in keys) for prefix in (SDXL_TE1_PREFIX, SDXL_TE2_PREFIX))
    return "sdxl" if complete else "sdxl-incomplete"



def guess_architecture(shapes):
    """Architecture id (a key of ARCHITECTURE_NAMES) from {key: (shape, dtype)}."""
    keys = list(shapes)
    has_unet = any(k.startswith(sd_layout.UNET_PREFIX) for k in keys)
    lora_keys = any(k.startswith(("lora_unet_", "lora_te")) or any(m in k for m in _LORA_MARKERS) for k in keys)
    if lora_keys and not has_unet:
        return "lora"
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return _sdxl_kind(shapes, has_unet)
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"  # OpenCLIP ViT-H text encoder
    if has_unet:
        # Width of the text embeddings the UNet attends to: 768 SD 1.x, 1024 SD 2.x, 2048 SDXL.
        context = [
            shape for k, (shape, _dtype) in shapes.items()
            if k.startswith(sd_layout.UNET_PREFIX) and k.endswith("attn2.to_k.weight")
        ]
        if context and len(context[0]) == 2 and context[0][1] == 1024:
            return "sd2"
        if context and len(context[0]) == 2 and context[0][1] == 2048:
            return "sdxl-incomplete"  # an SDXL UNet without its text encoders
        if any(".joint_blocks." in k or ".double_blocks." in k for k in keys):
            return "unknown"  # SD3, Flux: their own layouts
        conv_in = shapes.get(sd_layout.UNET_PREFIX + "input_blocks.0.0.weight")
        if conv_in and len(conv_in[0]) == 4 and conv_in[0][1] != 4:
            return "sd1-variant"
        has_vae = any(k.startswith(sd_layout.VAE_PREFIX) for k in keys)
        has_te = any(k.startswith("cond_stage_model.transformer.") for k in keys)
        return "sd1" if has_vae and has_te else "sd1-incomplete"
    if any(k.startswith("string_to_param") or k == "emb_params" for k in keys) or (
        0 < len(keys) <= 2 and all(k in ("clip_l", "clip_g") for k in keys)
    ):
        return "embedding"
    if any(k.startswith("encoder.down.") for k in keys) and any(k.startswith("decoder.up.") for k in keys):
        return "vae"
    return "unknown"


def refusal(path, arch, shapes):
    keys = list(shapes)
    if arch == "lora":
        return ModelLoadError(
            f"{path} is a LoRA, not a base model (it has keys like '{keys[0]}'). A LoRA belongs in the LoRA "
            f"field; as the base model choose a full SD 1.5 or SDXL checkpoint (about 2 to 7 GB)."
        )
    if arch == "sdxl-refiner":
        return ModelLoadError(f"{path} is the SDXL refiner, which only polishes finished images; LoRAs are trained "
                              f"on the SDXL base model. {PICK_SDXL}")
    if arch == "sdxl-variant":
        channels = shapes[sd_layout.UNET_PREFIX + "input_blocks.0.0.weight"][0][1]
        return ModelLoadError(f"{path} is an SDXL variant whose UNet takes {channels} input channels (an inpainting "
                              f"model); CharLoRA needs a standard 4-channel model. {PICK_SDXL}")
    if arch == "sdxl-incomplete":
        return ModelLoadError(f"{path} has SDXL weights but lacks the UNet, the VAE or one of the two text encoders "
                              "(a UNet-only file?). Use a complete checkpoint that holds all four.")
    if arch == "sd2":
        return ModelLoadError(
            f"{path} is a Stable Diffusion 2.x checkpoint (OpenCLIP text encoder, 1024-wide cross-attention); "
            f"CharLoRA trains SD 1.5 and SDXL LoRAs. {PICK_SD15}"
        )
    if arch == "sd1-variant":
        channels = shapes[sd_layout.UNET_PREFIX + "input_blocks.0.0.weight"][0][1]
        return ModelLoadError(
            f"{path} is an SD 1.x variant whose UNet takes {channels} input channels (an inpainting or "
            f"instruct-pix2pix model); CharLoRA needs a standard 4-channel model. {PICK_SD15}"
        )
    if arch == "sd1-incomplete":
        return ModelLoadError(
            f"{path} has SD 1.x UNet weights but lacks the VAE or the text encoder (a pruned UNet-only file?). "
            "Use a complete checkpoint that holds all three."
        )
    if arch == "embedding":
        return ModelLoadError(f"{path} is a textual-inversion embedding, not a base model. {PICK_ANY}")
    if arch == "vae":
        return ModelLoadError(f"{path} is a VAE on its own, not a full base model. {PICK_ANY}")
    return ModelLoadError(
        f"{path} is not a Stable Diffusion 1.5 checkpoint (nor an SDXL one): none of its {len(keys)} tensors are "
        f"laid out like one (first keys: {keys[:3]}). {PICK_ANY}"
    )


def describe_checkpoint(path):
    """What a single-file checkpoint is, from its tensors' names and shapes (no model is built).

    Returns {path, format, architecture, architecture_name, parameters, components, dtype, dtypes,
    tensors, has_ema, file_size}. Raises ModelLoadError for unreadable files.
    """
    path = clean_path(path)
    if path is None or not path.exists():
        raise ModelLoadError(f"{path} does not exist.")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder; describe a single .safetensors or .ckpt file.")
    kind, shapes, _metadata, _tensors = read_header(path)
    components = Counter()
    dtypes = Counter()
    total = 0
    for key, (shape, dtype) in shapes.items():
        if _dtype_name(dtype) not in _FLOAT_DTYPES:
            continue  # integer buffers such as position_ids are not parameters
        count = 1
        for size in shape:
            count *= size
        total += count
        dtypes[_dtype_name(dtype)] += count
        for part, prefix in _COMPONENT_PREFIXES:
            if key.startswith(prefix):
                components[part] += count
    arch = guess_architecture(shapes)
    return {
        "path": str(path),
        "format": kind,
        "architecture": arch,
        "architecture_name": ARCHITECTURE_NAMES[arch],
        "parameters": total,
        "components": dict(components),
        "dtype": dtypes.most_common(1)[0][0] if dtypes else None,
        "dtypes": dict(dtypes),
        "tensors": len(shapes),
        "has_ema": sum(k.startswith("model_ema.") for k in shapes) > 100,
        "file_size": path.stat().st_size,
    }


_COMPONENT_PREFIXES = (
    ("unet", sd_layout.UNET_PREFIX),
    ("vae", sd_layout.VAE_PREFIX),
    ("text_encoder", "cond_stage_model."),
    ("text_encoder", SDXL_TE1_PREFIX),
    ("text_encoder_2", SDXL_TE2_PREFIX),
)
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
_SAFETENSORS_DTYPES = {
    "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I64": "int64", "I32": "int32",
}


def _dtype_name(dtype):
    return _SAFETENSORS_DTYPES.get(dtype, str(dtype).lower())


def base_model_family(source):
    """The family (models.SD15 / models.SDXL) of the base model at `source`, from what is cheap to read: a
    .safetensors header or a diffusers folder's model_index.json. None when that cannot tell (a .ckpt, which
    would have to be read whole; a Hub id; a path that is not there) or when it is neither family."""
    import json

    from charlora.models import FAMILIES

    path = clean_path(source)
    try:
        if path is None:
            return None
        if path.is_dir():
            index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
            return next((f for f in FAMILIES.values() if f.pipeline == index.get("_class_name")), None)
        if path.is_file() and _file_format(path) == "safetensors":
            shapes, _ = _safetensors_header(path)
            return FAMILIES.get(guess_architecture(shapes))
    except (OSError, ValueError, ModelLoadError):
        return None
    return None


def marks_v_prediction(source) -> bool:
    """Whether a .safetensors base model marks itself v-prediction (an empty `v_pred` tensor, as NoobAI-XL's
    v-pred files do; ComfyUI and Forge read it, diffusers does not). False when it cannot be read cheaply."""
    path = clean_path(source)
    try:
        if path is None or not path.is_file() or _file_format(path) != "safetensors":
            return False
        shapes, _ = _safetensors_header(path)
    except (OSError, ValueError, ModelLoadError):
        return False
    return "v_pred" in shapes
