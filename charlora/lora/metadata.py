"""The LoRA file's metadata, key for key as sd-scripts' train_network.py writes it (all values strings).

The reference is sd-scripts 48d368fa (`train_network.py` 1003-1223, `library/sai_model_spec.py`;
docs/dev/sd-scripts-metadata.md has every key with its source line) run with the flags a Kohya GUI
config stands for: a setting that is off is not passed, so sd-scripts' own default is written
("None" for most, 0.3 for multires_noise_discount; max_token_length 75 is sd-scripts' None); clip_skip
is passed as set (ss_clip_skip and modelspec.encoder_layer "1"), and lr_warmup as the GUI passes it
(percent / 100, a fraction: "0.1"; or the lr_warmup_steps override as an int). Settings sd-scripts has
and CharLoRA does not (validation, Huber loss, fp8, ...) get sd-scripts' value for "off".

AUTOMATIC1111 reads `ss_output_name` (alias), `ss_sd_model_name`, `ss_base_model_version`,
`ss_network_*`, `ss_clip_skip`, `ss_tag_frequency`, `ss_bucket_info`, `ss_dataset_dirs` and
`sshs_model_hash`; civitai's uploader and LoRA managers read more. Values use Python's str() as
sd-scripts' line 1223 does ("None", "True", "0.0001", "(512, 512)"). What CharLoRA adds is under its
own prefix: `charlora.version`, and the full config as `charlora.config` (Kohya JSON, written from the
parameter table, secrets left out and folder paths reduced to their names, which say nothing of your disk).
"""

from __future__ import annotations

import hashlib
import io
import os
import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import safetensors.torch

from .. import __version__
from ..params import PARAMS_BY_KEY, to_kohya
from ..params.config import MAX_METADATA_TEXT

# Config keys written under sd-scripts' own ss_ names as str() of the normalised value.
SS_KEYS = (
    "output_name", "learning_rate", "unet_lr", "text_encoder_lr", "gradient_accumulation_steps",
    "gradient_checkpointing", "lr_scheduler", "network_dim", "network_alpha", "mixed_precision",
    "full_fp16", "clip_skip", "cache_latents", "max_grad_norm", "caption_dropout_rate",
    "caption_dropout_every_n_epochs", "prior_loss_weight", "color_aug", "flip_aug", "random_crop",
    "shuffle_caption", "keep_tokens",
)
# Settings whose "off" value (0, or "") sd-scripts has no flag for: off is its default, None (str "None").
NONE_WHEN_OFF = ("network_dropout", "adaptive_noise_scale", "min_snr_gamma", "scale_weight_norms",
                 "training_comment")
MULTIRES_DISCOUNT_DEFAULT = 0.3  # sd-scripts' argparse default (train_util.py 4104-4106), written when not Multires
# sd-scripts' settings CharLoRA does not have, with the values sd-scripts writes when they are off
# (train_network.py 1011, 1032, 1037, 1044-1045, 1049-1064; defaults in train_util.py / train_network.py).
SD_SCRIPTS_ONLY = {
    "ss_num_validation_images": "0", "ss_lowram": "False", "ss_zero_terminal_snr": "False",
    "ss_caption_tag_dropout_rate": "0.0", "ss_face_crop_aug_range": "None", "ss_ip_noise_gamma": "None",
    "ss_debiased_estimation": "False", "ss_noise_offset_random_strength": "False",
    "ss_ip_noise_gamma_random_strength": "False", "ss_loss_type": "l2", "ss_huber_schedule": "snr",
    "ss_huber_scale": "1.0", "ss_huber_c": "0.1", "ss_fp8_base": "False", "ss_fp8_base_unet": "False",
    "ss_validation_seed": "None", "ss_validation_split": "0.0", "ss_max_validation_steps": "None",
    "ss_validate_every_n_epochs": "None", "ss_validate_every_n_steps": "None", "ss_resize_interpolation": "None",
}
SAI_MODEL_SPEC = "1.0.1"  # sai_model_spec.py line 115
IMPLEMENTATION = f"charlora/{__version__}"  # in place of sd-scripts' "sd-scripts/<commit>": what made the file
NOT_A_FILE = "IsADirectory"  # sd-scripts' model_hash / calculate_sha256 for a folder (train_util.py 3223-3256)


@dataclass
class RunInfo:
    """What the trainer knows about the run beyond the config (filled as it goes)."""

    # One id per training run, never from the seeded RNGs: two runs with the same seed must not share it
    # (other tools group a run's files by it). sd-scripts draws it before seeding; a resume restores it.
    session_id: int = field(default_factory=lambda: secrets.randbelow(2**32))
    started_at: float = field(default_factory=time.time)
    seed: int | None = None
    num_train_images: int = 0  # samples per epoch, repeats included (Kohya's meaning)
    num_reg_images: int = 0
    num_batches_per_epoch: int = 0
    num_epochs: int = 0
    max_train_steps: int = 0
    total_batch_size: int = 1
    dataset_dirs: dict = field(default_factory=dict)
    reg_dataset_dirs: dict = field(default_factory=dict)
    tag_frequency: dict = field(default_factory=dict)
    bucket_info: dict | None = None
    sd_model_name: str | None = None
    sd_model_hash: str | None = None
    new_sd_model_hash: str | None = None
    # ss_optimizer: the text of the optimizer that runs (train.optim.build_optimizer's description), never the
    # config's name: optimizer_fallback may have swapped it, and train/optim.py alone knows optimizer classes
    optimizer: str = ""
    epoch: int = 0
    steps: int = 0


def _s(value: Any) -> str:
    return str(value)


def dataset_info(plan) -> dict:
    """ss_dataset_dirs, ss_reg_dataset_dirs, ss_tag_frequency and ss_bucket_info from a DatasetPlan."""
    def dirs(concepts):
        return {c.folder.name: {"n_repeats": c.repeats, "img_count": len(c.images)} for c in concepts}

    tags: dict[str, dict[str, int]] = {}
    for concept in plan.concepts + plan.reg_concepts:
        counter: Counter = tags.setdefault(concept.folder.name, Counter())
        for item in concept.images:
            counter.update(t.strip().lower() for t in item.caption.split(",") if t.strip())
    buckets = plan.bucket_counts
    errors = [abs(s.choice.bucket[0] / s.choice.bucket[1] - s.item.size[0] / s.item.size[1]) for s in plan.samples]
    info = {"buckets": {str(i): {"resolution": list(size), "count": n} for i, (size, n) in enumerate(buckets.items())},
            "mean_img_ar_error": sum(errors) / len(errors) if errors else 0.0}
    return {"dataset_dirs": dirs(plan.concepts), "reg_dataset_dirs": dirs(plan.reg_concepts),
            "tag_frequency": {k: dict(v) for k, v in tags.items()}, "bucket_info": info}


def cap_text(text: str, limit: int = MAX_METADATA_TEXT) -> str:
    """`text`, cut to at most `limit` bytes of UTF-8 with a note saying so: a huge training_comment
    would otherwise be copied (twice) into every file of the run."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    note = f"\n[cut by CharLoRA: {len(data):,} bytes, only the first {limit // 1024} KiB are stored]"
    return data[:limit - len(note.encode("utf-8"))].decode("utf-8", "ignore") + note


def public_config(values: dict) -> dict:
    """The config as Kohya JSON for the file: no secrets, folder paths reduced to their last name."""
    out = to_kohya(values)
    out["training_comment"] = cap_text(out["training_comment"])
    for key, value in out.items():
        if PARAMS_BY_KEY[key].kind == "path" and value:
            out[key] = Path(str(value).replace("\\", "/")).name
    return out


def _none_when_off(value) -> str:
    return "None" if value in (0, 0.0, "", None) else _s(value)


def lr_warmup_text(values: dict) -> str:
    """ss_lr_warmup_steps as the Kohya GUI passes warm-up to sd-scripts (resolve_lr_warmup_steps): the
    lr_warmup_steps override as an int, else lr_warmup percent / 100 as a fraction; sd-scripts stores it as given."""
    if values["lr_warmup_steps"]:
        return _s(int(values["lr_warmup_steps"]))
    return _s(values["lr_warmup"] / 100)


def noise_metadata(values: dict) -> dict[str, str]:
    """The noise keys: only the noise type in use is passed to sd-scripts; the rest keep its defaults."""
    multires = values["noise_offset_type"] == "Multires"
    return {
        "ss_noise_offset": "None" if multires else _none_when_off(values["noise_offset"]),
        "ss_multires_noise_iterations": _none_when_off(values["multires_noise_iterations"]) if multires else "None",
        "ss_multires_noise_discount": _s(values["multires_noise_discount"] if multires and values[
            "multires_noise_discount"] else MULTIRES_DISCOUNT_DEFAULT),
        "ss_adaptive_noise_scale": _none_when_off(values["adaptive_noise_scale"]),
    }


def bucket_metadata(values: dict, run: RunInfo) -> dict[str, str]:
    """The bucket keys are the dataset's (train_util.py 1931-1944): with buckets off, None/False and null info."""
    if not values["enable_bucket"]:
        return {"ss_enable_bucket": "False", "ss_bucket_no_upscale": "False", "ss_min_bucket_reso": "None",
                "ss_max_bucket_reso": "None", "ss_bucket_info": "null"}
    return {"ss_enable_bucket": "True", "ss_bucket_no_upscale": _s(values["bucket_no_upscale"]),
            "ss_min_bucket_reso": _s(values["min_bucket_reso"]), "ss_max_bucket_reso": _s(values["max_bucket_reso"]),
            "ss_bucket_info": json.dumps(run.bucket_info)}


def build_metadata(values: dict, run: RunInfo) -> dict[str, str]:
    if not run.optimizer:
        raise ValueError("RunInfo.optimizer is empty: pass build_optimizer's description of the optimizer that runs")
    width, height = (int(v) for v in values["max_resolution"].split(","))
    v_pred, sdxl = values["v_parameterization"], values["sdxl"]
    saved_at = time.time()  # per save, as sd-scripts' save_model (ss_training_finished_at, modelspec.date)
    meta = {f"ss_{key}": _s(values[key]) for key in SS_KEYS}
    meta.update({f"ss_{key}": _none_when_off(values[key]) for key in NONE_WHEN_OFF})
    if meta["ss_training_comment"] != "None":
        meta["ss_training_comment"] = cap_text(meta["ss_training_comment"])
    meta.update(noise_metadata(values))
    meta.update(bucket_metadata(values, run))
    meta.update(SD_SCRIPTS_ONLY)
    meta.update({
        "ss_session_id": _s(run.session_id),
        "ss_training_started_at": _s(run.started_at),
        "ss_num_train_images": _s(run.num_train_images),
        "ss_num_reg_images": _s(run.num_reg_images),
        "ss_num_batches_per_epoch": _s(run.num_batches_per_epoch),
        "ss_num_epochs": _s(run.num_epochs),
        "ss_max_train_steps": _s(run.max_train_steps),
        "ss_lr_warmup_steps": lr_warmup_text(values),
        "ss_max_token_length": "None" if values["max_token_length"] == 75 else _s(values["max_token_length"]),
        "ss_network_module": "networks.lora",
        "ss_v2": "False",
        "ss_base_model_version": "sdxl_base_v1-0" if sdxl else "sd_v1_v" if v_pred else "sd_v1",
        "ss_seed": _s(run.seed),
        "ss_sd_scripts_commit_hash": IMPLEMENTATION,
        "ss_optimizer": run.optimizer,
        "ss_batch_size_per_device": _s(values["train_batch_size"]),
        "ss_total_batch_size": _s(run.total_batch_size),
        "ss_resolution": _s((width, height)),
        "ss_dataset_dirs": json.dumps(run.dataset_dirs),
        "ss_reg_dataset_dirs": json.dumps(run.reg_dataset_dirs),
        "ss_tag_frequency": json.dumps(run.tag_frequency),
        "ss_sd_model_name": run.sd_model_name or sd_model_name(values["pretrained_model_name_or_path"]),
        "ss_training_finished_at": _s(saved_at),
        "ss_steps": _s(run.steps),
        "ss_epoch": _s(run.epoch),
        "modelspec.sai_model_spec": SAI_MODEL_SPEC,
        # sd-scripts' sai_model_spec.py: SDXL LoRAs name Stability's implementation, SD 1.5 ones diffusers
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora" if sdxl else "stable-diffusion-v1/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models" if sdxl else "diffusers",
        "modelspec.implementation_version": IMPLEMENTATION,
        "modelspec.title": values["output_name"] or f"LoRA@{saved_at}",
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": datetime.fromtimestamp(int(saved_at)).isoformat(),
        "modelspec.prediction_type": "v" if v_pred else "epsilon",
        "modelspec.encoder_layer": _s(values["clip_skip"]),
        "charlora.version": __version__,
        "charlora.config": json.dumps(public_config(values), sort_keys=True),
    })
    if run.sd_model_hash:
        meta["ss_sd_model_hash"] = run.sd_model_hash
    if run.new_sd_model_hash:
        meta["ss_new_sd_model_hash"] = run.new_sd_model_hash
    # sd-scripts writes the network's extra arguments (Kohya's GUI passes block lrs as network_args) as JSON
    network_args = {key: str(values[key]).strip() for key in ("down_lr_weight", "mid_lr_weight", "up_lr_weight",
                                                                "block_lr_zero_threshold") if str(values[key]).strip()}
    if network_args:
        meta["ss_network_args"] = json.dumps(network_args)
    if (values["min_timestep"], values["max_timestep"]) != (0, 1000):
        meta["modelspec.timestep_range"] = f"{values['min_timestep']},{values['max_timestep']}"
    return meta


def addnet_hashes(tensors: dict, metadata: dict[str, str]) -> dict[str, str]:
    """Kohya's sshs_model_hash (sha256 of the tensor data) and sshs_legacy_hash, as A1111 reads them.
    Only ss_ metadata is serialised for hashing, as Kohya does."""
    data = safetensors.torch.save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header_length = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + header_length:]).hexdigest()
    legacy = hashlib.sha256(io.BytesIO(data).getbuffer()[0x100000:0x110000]).hexdigest()[:8]
    return {"sshs_model_hash": model_hash, "sshs_legacy_hash": legacy}


def sd_model_name(source: str) -> str:
    """ss_sd_model_name as sd-scripts writes it (train_network.py 1207-1213): the file or folder name of a
    local model, the whole id of a Hub model ("runwayml/stable-diffusion-v1-5"). A path that is not on this
    disk (a config from another machine) gives its last name too: paths say nothing of the user's disk."""
    from ..models.checkpoint_file import looks_like_hub_id

    text = str(source)
    if looks_like_hub_id(text) and not os.path.exists(text):
        return text
    return Path(text.replace("\\", "/").rstrip("/")).name


def source_model_hashes(path: str | Path) -> tuple[str | None, str | None]:
    """(A1111's legacy 8-hex hash, full sha256) of a local base model file, as sd-scripts writes them:
    "IsADirectory" for both when it is a (diffusers) folder, None for both when it is not on disk (a Hub id)."""
    path = Path(path)
    if path.is_dir():
        return NOT_A_FILE, NOT_A_FILE
    if not path.is_file():
        return None, None
    with open(path, "rb") as fh:
        fh.seek(0x100000)
        legacy = hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return legacy, digest.hexdigest()
