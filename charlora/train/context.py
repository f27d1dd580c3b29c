"""What a training run is built from: made once, before the first step, then only read by the loop.

`place_run` says where the run happens (which process, which folder, which file name); `prepare_run`
builds everything else in Kohya's order (precision, seed, dataset plan, base model, attention, noise
schedule, latent cache, LoRA network, optimizer, lr schedule, loss scaler, noise generator, batches) and
returns it as one frozen `RunContext`. The objects inside change as they train (weights, optimizer state,
the generator), the context itself never does. `trainer.py` holds what moves: the step, the epoch, the
losses, the files written.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..lora import RunInfo, dataset_info
from ..models import family_of
from ..lora.metadata import source_model_hashes
from . import checkpoints as ckpt
from . import setup
from .events import Emitter
from .optim import build_optimizer
from .schedule import build_scheduler, warmup_steps
from .text import encode_captions

log = logging.getLogger("charlora.train")


class ModelHashes:
    """sd-scripts' two hashes of the base model file, computed in a thread beside the loading: the full
    sha256 of a 2-7 GB file took ~3 s that the first step need not wait for (only saved files carry it)."""

    def __init__(self, path: str):
        self._hashes: tuple[str | None, str | None] = (None, None)
        self._thread = threading.Thread(target=self._work, args=(path,), name="charlora-model-hash", daemon=True)
        self._thread.start()

    def _work(self, path: str) -> None:
        try:
            self._hashes = source_model_hashes(path)
        except OSError as exc:  # the load names an unreadable file; the metadata then carries no hash
            log.warning("could not hash the base model %s (%s): the LoRA files will carry no model hash", path, exc)

    def result(self) -> tuple[str | None, str | None]:
        self._thread.join()
        return self._hashes


@dataclass(frozen=True)
class Place:
    """Where the run happens: this process among the others, the output folder and the files' name."""

    accelerator: Any  # accelerate's Accelerator: this process, and when gradients are accumulated enough to step
    rank: int
    world: int
    main: bool  # only the main process writes files
    output_dir: Path
    name: str  # output_name: never empty, the table refuses an empty file name


def place_run(values: dict) -> Place:
    from accelerate import Accelerator

    # mixed_precision "no": the run's precision is the config's (setup.choose_precision), whatever
    # `accelerate launch --mixed_precision` says; the Accelerator only counts the accumulation
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no",
                              gradient_accumulation_steps=values["gradient_accumulation_steps"])
    return Place(accelerator, accelerator.process_index, accelerator.num_processes, accelerator.is_main_process,
                 ckpt.check_output_dir(values["output_dir"]), values["output_name"])


@dataclass(frozen=True)
class RunContext:
    values: dict
    place: Place
    precision: setup.Precision
    seed: int
    plan: Any  # dataset.DatasetPlan
    pipe: Any  # the base model (diffusers StableDiffusionPipeline)
    attention: str
    noise_scheduler: Any  # Kohya's DDPM training schedule
    cache: Any  # dataset.LatentCache, or None
    network: Any  # lora.LoRANetwork
    group_names: list
    optimizer: Any
    optimizer_label: str  # what runs (ss_optimizer): after optimizer_fallback, not the config's name
    warmup: int
    lr_scheduler: Any
    scaler: torch.amp.GradScaler
    noise_generator: torch.Generator
    dataset: Any  # dataset.BucketBatches
    model_hashes: ModelHashes | None  # main process only

    @property
    def device(self) -> torch.device:
        return self.precision.device

    @property
    def total_steps(self) -> int:
        return self.plan.total_steps

    @property
    def total_epochs(self) -> int:
        return self.plan.total_epochs


def prepare_run(values: dict, place: Place, emit: Emitter, given_pipe=None) -> RunContext:
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler

    v = values
    hashes = ModelHashes(v["pretrained_model_name_or_path"]) if place.main else None
    if place.accelerator.device.type == "cpu" and place.world > 1:
        # several CPU processes share the cores: more threads than cores each makes every step crawl
        cores = max(1, (os.cpu_count() or 1) // place.world)
        torch.set_num_threads(max(1, min(v["num_cpu_threads_per_process"], cores)))
    precision = setup.choose_precision(v, place.accelerator.device, emit)
    # a resumed run continues with the seed it was started with: data order, augmentation and noise
    seed = ckpt.saved_seed(v["resume"]) if v["resume"] else setup.resolve_seed(v, place.accelerator)
    set_seed(seed)

    plan = setup.plan_dataset(v, place.world, emit)
    if given_pipe is not None:
        setup.check_family(v, family_of(given_pipe))
        pipe = setup.prepare_model(given_pipe, precision)
    else:
        pipe = setup.load_model(v, precision, emit)
    attention = setup.set_attention(pipe, v, emit)
    # Kohya's training schedule, whatever scheduler the checkpoint came with
    noise_scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    num_train_timesteps=1000, clip_sample=False,
                                    prediction_type="v_prediction" if v["v_parameterization"] else "epsilon")
    cache = setup.cache_latents(pipe, plan, v, seed, place.accelerator, emit)
    if cache is not None and precision.device.type == "cuda" and not v["sample_every_n_epochs"] \
            and not v["sample_every_n_steps"]:
        pipe.vae.to("cpu")  # not needed on the GPU any more: frees ~330 MB of VRAM

    set_seed(seed)  # identical LoRA init on every process, whatever caching consumed
    network = setup.build_network(pipe, v, precision, emit)
    groups, group_names = setup.param_groups(network)
    optimizer, optimizer_label, warnings = build_optimizer(v["optimizer"], groups, v, precision.device)
    for warning in warnings:
        emit.warn(warning)
    return RunContext(
        values=v, place=place, precision=precision, seed=seed, plan=plan, pipe=pipe, attention=attention,
        noise_scheduler=noise_scheduler, cache=cache, network=network, group_names=group_names, optimizer=optimizer,
        optimizer_label=optimizer_label, warmup=warmup_steps(v, plan.total_steps),
        lr_scheduler=build_scheduler(optimizer, v, plan.total_steps),
        scaler=torch.amp.GradScaler("cuda", enabled=precision.use_grad_scaler),
        noise_generator=torch.Generator().manual_seed(seed), dataset=setup.make_dataset(plan, v, seed, cache),
        model_hashes=hashes)


@torch.no_grad()
def cache_text_states(ctx: RunContext, emit: Emitter) -> dict | None:
    """Fast path: when the text encoders are not trained and captions never change (no shuffling, no
    dropout), encode each caption once instead of every step; on a GPU the text encoders then leave it
    (~250 MB in fp16 for SD 1.5, ~1.6 GB for SDXL's two). Entries: caption -> (hidden states, pooled or None)."""
    v, pipe = ctx.values, ctx.pipe
    if ctx.network.settings.train_text_encoder or v["shuffle_caption"] or v["caption_dropout_rate"] \
            or v["caption_dropout_every_n_epochs"]:
        return None
    captions = sorted({sample.item.caption for sample in ctx.plan.samples})
    cache = {}
    dtype = ctx.precision.weight_dtype
    with torch.no_grad():
        for start in range(0, len(captions), 16):
            chunk = captions[start:start + 16]
            hidden, pooled = encode_captions(pipe, chunk, v, ctx.device)
            cache.update({c: (hidden[i:i + 1].to(dtype), None if pooled is None else pooled[i:i + 1].to(dtype))
                          for i, c in enumerate(chunk)})
    sampling = v["sample_every_n_epochs"] or v["sample_every_n_steps"]
    # sdxl_cache_text_encoder_outputs: off the GPU even with samples (they come back for each sampling)
    if ctx.device.type == "cuda" and (v["sdxl_cache_text_encoder_outputs"] or not sampling):
        for name in family_of(pipe).text_encoders:
            getattr(pipe, name).to("cpu")
    emit.info(f"text encoder outputs cached for {len(cache)} caption(s) (the text encoder is not trained)")
    return cache


def run_info(ctx: RunContext, session_id: int | None) -> RunInfo:
    """What the LoRA files' metadata says about the run beyond the config."""
    plan = ctx.plan
    # a resumed run keeps its run's ss_session_id, so its files group with the stopped run's
    restored = {"session_id": session_id} if session_id is not None else {}
    # sd-scripts' ss_num_reg_images: the reg folders' images x repeats as found, before balancing
    raw_reg = sum(c.repeats * len(c.images) for c in plan.reg_concepts)
    return RunInfo(**restored, seed=ctx.seed, num_train_images=plan.num_train_samples, num_reg_images=raw_reg,
                   optimizer=ctx.optimizer_label, num_batches_per_epoch=plan.batches_per_epoch,
                   num_epochs=plan.total_epochs, max_train_steps=plan.total_steps,
                   total_batch_size=plan.global_batch_size * ctx.values["gradient_accumulation_steps"],
                   **dataset_info(plan))


def open_tensorboard(values: dict, name: str):
    """TensorBoard's writer in logging_dir/NAME_<time>, as Kohya names the folder; None without logging_dir."""
    if not values["logging_dir"]:
        return None
    from tensorboardX import SummaryWriter

    folder = Path(values["logging_dir"]) / f"{name}_{time.strftime('%Y%m%d%H%M%S')}"
    return SummaryWriter(logdir=str(folder))


def restore_state(ctx: RunContext, folder: str, emit: Emitter):
    """Load a saved training state into the run's network, optimizer, schedule, generator and scaler; returns
    (position, loss history) for the loop to continue from."""
    state = ckpt.load_state(folder)
    ctx.network.load_kohya_tensors(state.lora_weights, folder)
    ctx.optimizer.load_state_dict(state.optimizer)
    ctx.lr_scheduler.load_state_dict(state.scheduler)
    ckpt.restore_rng(state.rng, ctx.noise_generator)
    if state.scaler is not None and ctx.scaler.is_enabled():
        ctx.scaler.load_state_dict(state.scaler)
    position = state.position
    if position.session_id is None:
        emit.info(f"resume: {folder} is from an older CharLoRA (state format 1): the loss chart starts at step "
                  f"{position.step} and the files get a new ss_session_id")
    if position.total_steps != ctx.total_steps:
        emit.warn(f"resume: the saved run had {position.total_steps} steps in total, this config gives "
                  f"{ctx.total_steps}; continuing to {ctx.total_steps}")
    emit.info(f"resumed from {folder} at step {position.step} (epoch {position.epoch})")
    return position, state.history

