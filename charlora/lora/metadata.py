"""The LoRA file's metadata, as Kohya's train_network writes it (all values strings).

AUTOMATIC1111 reads `ss_output_name` (alias), `ss_sd_model_name`, `ss_base_model_version`,
`ss_network_*`, `ss_clip_skip`, `ss_tag_frequency`, `ss_bucket_info`, `ss_dataset_dirs` and
`sshs_model_hash`; values use Python's str() as Kohya's do ("None", "True", "0.0001", "(512, 512)").
The full CharLoRA config rides along as `charlora.config` (Kohya JSON, written from the parameter
table, secrets left out and folder paths reduced to their names, which say nothing of your disk).
"""

from __future__ import annotations

import hashlib
import io
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

# Config keys written under Kohya's own ss_ names (value: str() of the normalised value).
SS_KEYS = (
    "output_name", "learning_rate", "unet_lr", "text_encoder_lr", "gradient_accumulation_steps",
    "gradient_checkpointing", "lr_scheduler", "network_dim", "network_alpha", "network_dropout", "mixed_precision",
    "full_fp16", "clip_skip", "max_token_length", "cache_latents", "noise_offset", "multires_noise_iterations",
    "multires_noise_discount", "adaptive_noise_scale", "training_comment", "max_grad_norm", "caption_dropout_rate",
    "caption_dropout_every_n_epochs", "prior_loss_weight", "min_snr_gamma", "scale_weight_norms", "color_aug",
    "flip_aug", "random_crop", "shuffle_caption", "enable_bucket", "bucket_no_upscale", "min_bucket_reso",
    "max_bucket_reso", "keep_tokens",
)
KOHYA_OPTIMIZER_CLASSES = {
    "AdamW": "torch.optim.adamw.AdamW", "AdamW8bit": "bitsandbytes.optim.adamw.AdamW8bit",
    "Lion": "lion_pytorch.lion_pytorch.Lion", "Lion8bit": "bitsandbytes.optim.lion.Lion8bit",
    "SGDNesterov": "torch.optim.sgd.SGD", "Adafactor": "transformers.optimization.Adafactor",
    "Prodigy": "prodigyopt.prodigy.Prodigy",
}


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
    lr_warmup_steps: int = 0
    total_batch_size: int = 1
    dataset_dirs: dict = field(default_factory=dict)
    reg_dataset_dirs: dict = field(default_factory=dict)
    tag_frequency: dict = field(default_factory=dict)
    bucket_info: dict | None = None
    sd_model_name: str | None = None
    sd_model_hash: str | None = None
    new_sd_model_hash: str | None = None
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
    out["training_comment"] = cap_text(out.get("training_comment") or "")
    for key, value in out.items():
        if PARAMS_BY_KEY[key].kind == "path" and value:
            out[key] = Path(str(value).replace("\\", "/")).name
    return out


def build_metadata(values: dict, run: RunInfo) -> dict[str, str]:
    width, height = (int(v) for v in values["max_resolution"].split(","))
    v_pred = values["v_parameterization"]
    meta = {f"ss_{key}": _s(values[key]) for key in SS_KEYS}
    meta["ss_training_comment"] = cap_text(meta["ss_training_comment"])
    meta.update({
        "ss_session_id": _s(run.session_id),
        "ss_training_started_at": _s(run.started_at),
        "ss_num_train_images": _s(run.num_train_images),
        "ss_num_reg_images": _s(run.num_reg_images),
        "ss_num_batches_per_epoch": _s(run.num_batches_per_epoch),
        "ss_num_epochs": _s(run.num_epochs),
        "ss_max_train_steps": _s(run.max_train_steps),
        "ss_lr_warmup_steps": _s(run.lr_warmup_steps),
        "ss_network_module": "networks.lora",
        "ss_v2": "False",
        "ss_base_model_version": "sd_v1_v" if v_pred else "sd_v1",
        "ss_seed": _s(run.seed),
        "ss_optimizer": KOHYA_OPTIMIZER_CLASSES.get(values["optimizer"], values["optimizer"])
        + (f"({','.join(values['optimizer_args'].split())})" if values["optimizer_args"] else ""),
        "ss_batch_size_per_device": _s(values["train_batch_size"]),
        "ss_total_batch_size": _s(run.total_batch_size),
        "ss_resolution": _s((width, height)),
        "ss_dataset_dirs": json.dumps(run.dataset_dirs),
        "ss_reg_dataset_dirs": json.dumps(run.reg_dataset_dirs),
        "ss_tag_frequency": json.dumps(run.tag_frequency),
        "ss_bucket_info": json.dumps(run.bucket_info),
        "ss_sd_model_name": _s(run.sd_model_name or Path(values["pretrained_model_name_or_path"]
                                                           .replace("\\", "/")).name),
        "ss_training_finished_at": _s(time.time()),
        "ss_steps": _s(run.steps),
        "ss_epoch": _s(run.epoch),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": values["output_name"] or f"LoRA@{run.started_at}",
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": datetime.fromtimestamp(int(run.started_at)).isoformat(),
        "modelspec.prediction_type": "v" if v_pred else "epsilon",
        "charlora.version": __version__,
        "charlora.config": json.dumps(public_config(values), sort_keys=True),
    })
    if run.sd_model_hash:
        meta["ss_sd_model_hash"] = run.sd_model_hash
    if run.new_sd_model_hash:
        meta["ss_new_sd_model_hash"] = run.new_sd_model_hash
    if values["clip_skip"] > 1:
        meta["modelspec.encoder_layer"] = _s(values["clip_skip"])
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


def source_model_hashes(path: str | Path) -> tuple[str | None, str | None]:
    """(A1111's legacy 8-hex hash, full sha256) of a local base model file; None for Hub ids."""
    path = Path(path)
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
