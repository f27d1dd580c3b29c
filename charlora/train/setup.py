"""Building what a run needs from the normalised config: device and precision, base model, dataset,
latent cache, LoRA network, optimizer and scheduler. Each function does one thing and says what
it did in an event; the loop in trainer.py only runs them in order."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..dataset import BucketBatches, DatasetPlan, LatentCache, build_plan
from ..errors import CharLoRAError
from ..lora import LoRANetwork, LoRASettings, file_rank, load_lora_weights
from ..models import SDXL, family_of
from ..params.block_lr import block_lr_weights
from ..models.checkpoint_file import base_model_family, marks_v_prediction
from ..models.loading import load_base_model
from .events import Emitter


@dataclass
class Precision:
    device: torch.device
    weight_dtype: torch.dtype  # base model weights
    autocast_dtype: torch.dtype | None  # None = no autocast
    lora_dtype: torch.dtype
    use_grad_scaler: bool
    label: str


def choose_precision(values: dict, device: torch.device, emit: Emitter) -> Precision:
    mixed = values["mixed_precision"]
    cuda = device.type == "cuda"
    if mixed == "fp16" and not cuda:
        emit.warn("mixed_precision fp16 needs an NVIDIA GPU; training in fp32 on the CPU")
        mixed = "no"
    if mixed == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise CharLoRAError("mixed_precision bf16 is not supported by this GPU (needs RTX 30xx / A100 or newer); "
                            "use fp16")
    dtype = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed]
    lora_dtype = torch.float32
    if values["full_fp16"] and mixed == "fp16":
        lora_dtype = torch.float16
    if values["full_bf16"] and mixed == "bf16":
        lora_dtype = torch.bfloat16
    # The frozen base weights are stored in the compute dtype (half the memory), as Kohya does. On the CPU
    # only for bf16 (an opt-in there): fp16 is GPU-only, and autocast over fp32 weights would keep a bf16
    # copy of every weight beside them (measured: 7.8 against 4.4 GiB, slower steps).
    weight_dtype = dtype if (dtype is not None and (cuda or dtype == torch.bfloat16)) else torch.float32
    if mixed == "bf16" and not cuda:
        emit.info("mixed_precision bf16 on the CPU: base model and compute in bf16 (about 0.7x the time per step "
                  "and memory of fp32 on a CPU with bf16 instructions; results differ slightly from fp32)")
        if not _cpu_has_bf16():
            emit.warn("this CPU has no bf16 instructions (AVX512-BF16 or AMX): bf16 will be emulated and slower "
                      "than fp32; set mixed_precision to no (fp32) on this machine")
    use_scaler = cuda and mixed == "fp16" and lora_dtype == torch.float32
    if lora_dtype == torch.float16:
        emit.warn("full_fp16: LoRA weights and gradients in fp16, trained without loss scaling")
    label = f"{mixed if mixed != 'no' else 'fp32'}" + (" (LoRA in " + str(lora_dtype).split(".")[-1] + ")"
                                                       if lora_dtype != torch.float32 else "")
    return Precision(device, weight_dtype, dtype, lora_dtype, use_scaler, label)


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def resolve_seed(values: dict, state) -> int:
    """The config's seed, or a random one; the same on every process."""
    seed = values["seed"] if values["seed"] is not None else random.randint(0, 2**32 - 1)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        seed = broadcast_object_list([seed])[0]
    return int(seed)


def load_model(values: dict, precision: Precision, emit: Emitter):
    family = base_model_family(values["pretrained_model_name_or_path"])
    if family is not None:  # from the file's header: a mismatch named before a multi-GB load
        check_family(values, family)
    emit.info(f"loading base model {values['pretrained_model_name_or_path']}")
    pipe = load_base_model(values["pretrained_model_name_or_path"], dtype=precision.weight_dtype,
                           device=precision.device)
    check_family(values, family_of(pipe))
    if marks_v_prediction(values["pretrained_model_name_or_path"]) and not values["v_parameterization"]:
        emit.warn(f"{values['pretrained_model_name_or_path']} marks itself a v-prediction model (its v_pred "
                  "tensor), but v_parameterization is off: the LoRA would learn the wrong target; turn "
                  "v_parameterization on (Parameters, Source model)")
    if pipe.vae.dtype != torch.float32:
        pipe.vae.to(dtype=torch.float32)  # the VAE encodes once (latent cache) or per step; fp32 avoids NaN latents
    for model in _models(pipe):
        model.requires_grad_(False)
    return pipe


def _models(pipe) -> list:
    """The UNet, the VAE and the text encoder(s)."""
    return [pipe.unet, pipe.vae] + _text_encoders(pipe)


def _text_encoders(pipe) -> list:
    return [getattr(pipe, name) for name in family_of(pipe).text_encoders]


def check_family(values: dict, family) -> None:
    """The `sdxl` setting must say what the base model is (Kohya's scripts fail obscurely when it does not)."""
    model = values["pretrained_model_name_or_path"]
    if family is SDXL and not values["sdxl"]:
        raise CharLoRAError(f"the base model {model} is an SDXL model, but sdxl is off: turn sdxl on to train an "
                            "SDXL LoRA (the app's SDXL model box, `--set sdxl=true`, or an SDXL preset such as "
                            "sdxl-character-16gb), or choose an SD 1.5 base model")
    if family is not SDXL and values["sdxl"]:
        raise CharLoRAError(f"sdxl is on, but the base model {model} is an {family.name} model: turn sdxl off (the "
                            "app's SDXL model box, or `--set sdxl=false`), or choose an SDXL base model")


def prepare_model(pipe, precision: Precision):
    """An already loaded pipeline (the benchmark's), placed and typed as load_model would."""
    placed = [(pipe.unet, precision.weight_dtype), (pipe.vae, torch.float32)]
    placed += [(model, precision.weight_dtype) for model in _text_encoders(pipe)]
    for model, dtype in placed:
        model.to(precision.device)
        if model.dtype != dtype:  # casting an fp32 model to fp32 makes diffusers warn
            model.to(dtype=dtype)
    for model in _models(pipe):
        model.requires_grad_(False)
    return pipe


def set_attention(pipe, values: dict, emit: Emitter) -> str:
    """PyTorch SDPA is diffusers' default; xformers only when asked for and installed."""
    if values["xformers"] == "xformers":
        try:
            import xformers  # noqa: F401

            pipe.unet.enable_xformers_memory_efficient_attention()
            return "xformers"
        except Exception:
            emit.warn("xformers is not installed (or does not work here); using PyTorch SDPA attention, which is "
                      "as fast on current PyTorch")
    if values["xformers"] == "none":
        from diffusers.models.attention_processor import AttnProcessor

        pipe.unet.set_attn_processor(AttnProcessor())
        return "plain (no memory-efficient attention)"
    return "sdpa"


def plan_dataset(values: dict, processes: int, emit: Emitter) -> DatasetPlan:
    if not values["train_data_dir"]:
        raise CharLoRAError("train_data_dir is empty: choose the folder that holds folders like 10_name")
    plan = build_plan(values, processes)
    if not plan.samples or not plan.num_train_samples:
        details = "; ".join(f"{p.file}: {p.problem}" for p in plan.problems[:5])
        raise CharLoRAError(f"no training images found in {values['train_data_dir']!r}. train_data_dir must be the "
                            f"parent of folders like 10_name. {details}")
    if plan.problems:
        emit.warn(f"{len(plan.problems)} dataset problem(s); run `python -m charlora dataset check` for all. "
                  f"First: {plan.problems[0].file}: {plan.problems[0].problem}")
    return plan


def cache_latents(pipe, plan: DatasetPlan, values: dict, seed: int, state, emit: Emitter) -> LatentCache | None:
    if not (values["cache_latents"] or values["cache_latents_to_disk"]):
        return None
    cache = LatentCache(pipe.vae, flip_aug=values["flip_aug"], to_disk=values["cache_latents_to_disk"],
                        batch_size=max(1, values["vae_batch_size"]), seed=seed)  # 0: one at a time
    with state.main_process_first():  # the main process writes the disk cache, the others read it
        cache.fill(plan)
    emit.info(f"latents cached: {cache.encoded} encoded, {cache.read_from_disk} read from disk")
    return cache


def build_network(pipe, values: dict, precision: Precision, emit: Emitter) -> LoRANetwork:
    rank = None
    warm_start = None
    if values["lora_network_weights"]:
        _, warm_start = load_lora_weights(values["lora_network_weights"], family_of(pipe).arch)
        if values["dim_from_weights"]:
            rank = file_rank(warm_start)
    settings = LoRASettings.from_config(values, rank=rank)
    if settings.block_lr_weights is not None:
        notes: list = []
        block_lr_weights(values, notes)  # what sd-scripts would log about the lists' lengths
        for note in notes:
            emit.warn(note)
        skipped = sum(1 for w in settings.block_lr_weights if w == 0)
        emit.info("block-wise UNet learning rates: weights " + ", ".join(f"{w:g}" for w in settings.block_lr_weights)
                  + (f" ({skipped} block(s) of weight 0 get no LoRA modules)" if skipped else ""))
    network = LoRANetwork.attach(pipe.unet, pipe.text_encoder, settings, getattr(pipe, "text_encoder_2", None))
    if warm_start is not None:
        network.load_kohya_tensors(warm_start, values["lora_network_weights"])
        emit.info(f"starting from {values['lora_network_weights']}")
    network.to_dtype(precision.lora_dtype)
    for _, layer in network.layers.values():  # LoRA layers live on the base model's device
        layer.lora_A.to(precision.device)
        layer.lora_B.to(precision.device)
    if values["gradient_checkpointing"]:
        pipe.unet.enable_gradient_checkpointing()
        if settings.train_text_encoder:
            for te in _text_encoders(pipe):  # transformers 5 renamed the method; keep working on both names
                (getattr(te, "activation_checkpointing_enable", None) or te.gradient_checkpointing_enable)()
    pipe.unet.train()
    for te in _text_encoders(pipe):
        te.train(settings.train_text_encoder)
    if precision.device.type == "cuda":
        # convolution kernels on NVIDIA GPUs run faster on NHWC tensors (the UNet is mostly convolutions). On the
        # CPU it was measured and not kept: ~8% off a step of a model built in memory, but with a model loaded
        # from its file the conv weights are copied beside the memory-mapped file (peak RSS 5.9 -> 8.1 GiB) and
        # side by side with Kohya the step was no clearer a win (docs/benchmarks.md).
        pipe.unet.to(memory_format=torch.channels_last)
    if values["dynamo_backend"] != "no":
        pipe.unet.forward = torch.compile(pipe.unet.forward, backend=values["dynamo_backend"])
        emit.info(f"UNet compiled with torch.compile (backend {values['dynamo_backend']}); the first steps are "
                  "slow while it compiles")
    return network


def param_groups(network: LoRANetwork) -> tuple[list[dict], list[str]]:
    """The optimizer's groups: the UNet's (one per block with block-wise lrs, as sd-scripts' unet_block<N>),
    then the text encoders'."""
    groups, names = [], []
    settings = network.settings
    if settings.block_lr_weights is not None:
        for index, params in network.unet_blocks().items():
            weight = 1.0 if index < 0 else settings.block_lr_weights[index]
            groups.append({"params": params, "lr": settings.unet_lr * weight})
            names.append(f"unet_block{index}")
        te = network.parameters("te")
        if te:
            groups.append({"params": te, "lr": settings.text_encoder_lr})
            names.append("text_encoder")
        return groups, names
    for part, lr, name in (("unet", settings.unet_lr, "unet"), ("te", settings.text_encoder_lr, "text_encoder")):
        params = network.parameters(part)
        if params:
            groups.append({"params": params, "lr": lr})
            names.append(name)
    return groups, names


def make_dataset(plan: DatasetPlan, values: dict, seed: int, cache: LatentCache | None) -> BucketBatches:
    return BucketBatches(plan, values, seed=seed, cache=cache)


def oom_advice(values: dict, step: int, files: list) -> str:
    """What to change after CUDA ran out of memory at `step`, for these settings."""
    v = values
    tips = []
    if v["train_batch_size"] > 1:
        tips.append(f"lower train_batch_size (now {v['train_batch_size']})")
    if not v["gradient_checkpointing"]:
        tips.append("turn on gradient_checkpointing (much less memory, ~30% slower)")
    if v["sdxl"]:  # SDXL is made for 1024 px: let the text encoders and the rank go first
        if not v["sdxl_cache_text_encoder_outputs"]:
            tips.append("train the UNet only (text_encoder_lr 0) with sdxl_cache_text_encoder_outputs on (the "
                        "text encoders leave the GPU)")
        if v["network_dim"] > 8:
            tips.append(f"lower network_dim to 8-16 (now {v['network_dim']})")
    elif v["max_resolution"] != "512,512":
        tips.append(f"train at 512,512 (now {v['max_resolution']})")
    if v["network_dim"] > 32 and not v["sdxl"]:
        tips.append(f"lower network_dim (now {v['network_dim']})")
    if v["optimizer"] not in ("AdamW8bit", "Lion8bit"):
        tips.append("use optimizer AdamW8bit")
    tips.append("close other programs using the GPU")
    return (f"CUDA out of memory at step {step + 1}. Try: " + "; ".join(tips) + "."
            + (f" The last good file is {files[-1]}." if files else ""))
