"""The training loop: SD 1.5 LoRA training as Kohya's train_network does it.

One step: latents (cached, or encoded now) x the VAE's scaling factor; noise (with offset / multires
noise); timesteps uniform in [min_timestep, max_timestep); noisy latents from the DDPM schedule;
text conditioning (clip_skip, 75-token chunks); UNet prediction; MSE against the noise (or the
velocity with v_parameterization) per sample, x prior_loss_weight for reg samples, x min-SNR weights.

Runs in the foreground (CLI), in a thread (GUI) or as one of several processes under
`accelerate launch`: every process reads the same global batch, draws the same noise, trains on its
slice and averages gradients; only the main process writes files.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CharLoRAError
from ..lora import RunInfo, build_metadata, dataset_info, save_lora
from ..lora.metadata import source_model_hashes
from ..params import dump_kohya
from . import checkpoints as ckpt
from . import noise as noise_fn
from . import setup
from .events import Emitter, Message, RunFinished, RunStarted, SamplesSaved, Saved, Step, StopRequest
from .optim import build_optimizer
from .schedule import build_scheduler, warmup_steps
from .text import encode, tokenize

log = logging.getLogger("charlora.train")
_RUN_LOCK = threading.Lock()  # one run per process: two would fight over the GPU and the files
LOSS_SYNC_EVERY = 10  # on a GPU, steps between reading the loss back (CPU: every step, it costs nothing)


class _ModelHashes:
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


class _PhaseClock:
    """Seconds spent in each phase of a step (only when profiling: it synchronises the device)."""

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.cuda = device.type == "cuda"
        self.times: dict[str, float] = {}
        self.last = time.perf_counter()

    def mark(self, phase: str) -> None:
        if not self.enabled:
            return
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times[phase] = self.times.get(phase, 0.0) + now - self.last
        self.last = now

    def take(self) -> dict:
        times, self.times = self.times, {}
        return times


@dataclass
class RunResult:
    status: str  # "completed", "stopped" or "failed"
    message: str
    steps: int = 0
    files: list = field(default_factory=list)
    last_good_file: str | None = None
    losses: list = field(default_factory=list)  # each step's loss; a resumed run's starts with the saved history
    phase_times: list = field(default_factory=list)  # per step {"data", "forward", "backward", "optimizer"} (profile)
    log_file: str | None = None  # this run's log (main process), also when it failed
    traceback: str | None = None  # an internal error's traceback (the CLI shows it with --debug)


def train(values: dict, listeners=(), stop: StopRequest | None = None, pipe=None, profile: bool = False) -> RunResult:
    """Run one training to the end (or until stopped). Never raises for the user's mistakes:
    the result says what happened, and the events said it as it happened.

    `pipe`: an already loaded base model (the benchmark's random-weight SD 1.5) instead of
    `pretrained_model_name_or_path`. `profile`: time the phases of each step (with a device
    synchronisation between them, so only for benchmarks)."""
    if not _RUN_LOCK.acquire(blocking=False):
        raise CharLoRAError("a training run is already going in this process; stop it before starting another")
    try:
        return Trainer(values, Emitter(listeners), stop or StopRequest(), pipe=pipe, profile=profile).run()
    finally:
        _RUN_LOCK.release()


def is_running() -> bool:
    return _RUN_LOCK.locked()


class Trainer:
    def __init__(self, values: dict, emit: Emitter, stop: StopRequest, pipe=None, profile: bool = False):
        self.values = values
        self.given_pipe = pipe
        self.profile = profile
        self.phase_times: list[dict] = []
        self.emit = emit
        self.stop = stop
        self.files: list[str] = []
        self.history: list[tuple[int, float, float]] = []  # (step, loss, epoch average), restored on resume
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0  # the epoch average, summed in step order
        self.session_id: int | None = None  # the stopped run's ss_session_id, on resume (RunInfo draws a new run's)
        self.global_step = 0
        self.epoch = 1
        self.log_file: Path | None = None
        self._log_handler: logging.Handler | None = None
        self._log_level = None

    # ------------------------------------------------------------------ public
    def run(self) -> RunResult:
        trace = None
        try:
            self._setup()
            status, message = self._loop()
        except CharLoRAError as exc:
            status, message = "failed", str(exc)
        except torch.cuda.OutOfMemoryError:
            status, message = "failed", self._oom_advice()
        except Exception as exc:  # an internal error: the message, with the traceback in the log
            import traceback

            trace = traceback.format_exc()
            log.error("training failed with an internal error:\n%s", trace)
            where = f"details in {self.log_file}" if self.log_file else "run with --debug for the traceback"
            status, message = "failed", f"internal error: {type(exc).__name__}: {exc} ({where})"
        finally:
            writer = getattr(self, "writer", None)
            if writer is not None:
                writer.close()
        last_good = self.files[-1] if self.files else None
        if status == "failed":
            self.emit(Message("error", message))
        else:
            log.info("%s: %s", status, message)
        self.emit(RunFinished(status, message, self.global_step, list(self.files), last_good))
        self._close_log()
        return RunResult(status, message, self.global_step, list(self.files), last_good,
                         [loss for _, loss, _ in self.history], list(self.phase_times),
                         str(self.log_file) if self.log_file else None, trace)

    def _open_log(self) -> None:
        """This run's log file: every message, warning and error, and an internal error's traceback.
        In logging_dir when set, else beside the LoRA files."""
        folder = Path(self.values["logging_dir"]) if self.values["logging_dir"] else self.output_dir
        path = folder / f"{self.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path, encoding="utf-8")
        except OSError as exc:
            self.emit.warn(f"cannot write the log file {path} ({exc.strerror or exc}); training goes on without it")
            return
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler.setLevel(logging.INFO)
        root = logging.getLogger("charlora")
        self._log_level = root.level
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        root.addHandler(handler)
        self._log_handler, self.log_file = handler, path
        self.emit.info(f"log file: {path}")

    def _close_log(self) -> None:
        if self._log_handler is None:
            return
        root = logging.getLogger("charlora")
        root.removeHandler(self._log_handler)
        root.setLevel(self._log_level)
        self._log_handler.close()
        self._log_handler = None

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        from accelerate import PartialState
        from accelerate.utils import set_seed
        from diffusers import DDPMScheduler

        v = self.values
        self.state = PartialState(cpu=not torch.cuda.is_available())
        self.rank, self.world, self.main = self.state.process_index, self.state.num_processes, \
            self.state.is_main_process
        self.output_dir = ckpt.check_output_dir(v["output_dir"])
        self.model_hashes = _ModelHashes(v["pretrained_model_name_or_path"]) if self.main else None
        self.name = v["output_name"]  # never empty: the table refuses an empty file name
        if self.main:
            self._open_log()
            removed, restored = ckpt.clean_leftovers(self.output_dir, self.name)
            for folder in restored:
                self.emit.info(f"put back {folder.name}: an interrupted save had left it only under a hidden name")
            if removed:
                self.emit.info(f"removed {len(removed)} leftover(s) of an interrupted save in {self.output_dir}: "
                               + ", ".join(p.name for p in removed[:5]) + (" ..." if len(removed) > 5 else ""))
        if self.state.device.type == "cpu" and self.world > 1:
            # several CPU processes share the cores: more threads than cores each makes every step crawl
            import os

            cores = max(1, (os.cpu_count() or 1) // self.world)
            torch.set_num_threads(max(1, min(v["num_cpu_threads_per_process"], cores)))
        self.precision = setup.choose_precision(v, self.state.device, self.emit)
        self.device = self.precision.device
        # a resumed run continues with the seed it was started with: data order, augmentation and noise
        self.seed = ckpt.saved_seed(v["resume"]) if v["resume"] else setup.resolve_seed(v, self.state)
        set_seed(self.seed)

        self.plan = setup.plan_dataset(v, self.world, self.emit)
        self.total_steps = self.plan.total_steps
        self.total_epochs = self.plan.total_epochs
        self.pipe = setup.prepare_model(self.given_pipe, self.precision) if self.given_pipe is not None \
            else setup.load_model(v, self.precision, self.emit)
        self.attention = setup.set_attention(self.pipe, v, self.emit)
        # Kohya's training schedule, whatever scheduler the checkpoint came with
        self.noise_scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                             num_train_timesteps=1000, clip_sample=False,
                                             prediction_type="v_prediction" if v["v_parameterization"] else "epsilon")
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod
        self.cache = setup.cache_latents(self.pipe, self.plan, v, self.seed, self.state, self.emit)
        if self.cache is not None and self.device.type == "cuda" and not v["sample_every_n_epochs"] \
                and not v["sample_every_n_steps"]:
            self.pipe.vae.to("cpu")  # not needed on the GPU any more: frees ~330 MB of VRAM

        set_seed(self.seed)  # identical LoRA init on every process, whatever caching consumed
        self.network = setup.build_network(self.pipe, v, self.precision, self.emit)
        groups, self.group_names = setup.param_groups(self.network)
        self.optimizer, self.optimizer_label, warnings = build_optimizer(v["optimizer"], groups, v, self.device)
        for warning in warnings:
            self.emit.warn(warning)
        self.warmup = warmup_steps(v, self.total_steps)
        self.lr_scheduler = build_scheduler(self.optimizer, v, self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.use_grad_scaler)
        self.noise_generator = torch.Generator().manual_seed(self.seed)
        self.dataset = setup.make_dataset(self.plan, v, self.seed, self.cache)
        self.start_batch = 0
        if v["resume"]:
            self._resume(v["resume"])

        self.text_cache = self._cache_text_states()
        self.run_info = self._run_info()
        self.writer = self._tensorboard() if self.main else None
        if self.main:
            ckpt.write_run_config(self.output_dir, self.name, dump_kohya(v))
        self.emit(RunStarted(
            total_steps=self.total_steps, steps_per_epoch=self.plan.steps_per_epoch, epochs=self.total_epochs,
            images=sum(len(c.images) for c in self.plan.concepts), samples_per_epoch=self.plan.num_train_samples,
            reg_samples_per_epoch=self.plan.num_reg_samples,
            buckets={f"{w}x{h}": n for (w, h), n in self.plan.bucket_counts.items()},
            batch_size=v["train_batch_size"], processes=self.world, device=str(self.device),
            precision=self.precision.label, attention=self.attention, optimizer=self.optimizer_label, seed=self.seed,
            start_step=self.global_step, history=tuple(self.history)))

    @torch.no_grad()
    def _cache_text_states(self) -> dict | None:
        """Fast path: when the text encoder is not trained and captions never change (no shuffling, no
        dropout), encode each caption once instead of every step; on a GPU the text encoder then leaves
        it (~250 MB in fp16)."""
        v = self.values
        if self.network.settings.train_text_encoder or v["shuffle_caption"] or v["caption_dropout_rate"] \
                or v["caption_dropout_every_n_epochs"]:
            return None
        captions = sorted({sample.item.caption for sample in self.plan.samples})
        cache = {}
        for start in range(0, len(captions), 16):
            chunk = captions[start:start + 16]
            ids = tokenize(self.pipe.tokenizer, chunk, v["max_token_length"]).to(self.device)
            hidden = encode(self.pipe.text_encoder, ids, v["clip_skip"], v["max_token_length"])
            cache.update({c: hidden[i:i + 1].to(self.precision.weight_dtype) for i, c in enumerate(chunk)})
        if self.device.type == "cuda" and not v["sample_every_n_epochs"] and not v["sample_every_n_steps"]:
            self.pipe.text_encoder.to("cpu")
        self.emit.info(f"text encoder outputs cached for {len(cache)} caption(s) (the text encoder is not trained)")
        return cache

    def _run_info(self) -> RunInfo:
        v = self.values
        info = dataset_info(self.plan)
        # a resumed run keeps its run's ss_session_id, so its files group with the stopped run's
        restored = {"session_id": self.session_id} if self.session_id is not None else {}
        # sd-scripts' ss_num_reg_images: the reg folders' images x repeats as found, before balancing
        raw_reg = sum(c.repeats * len(c.images) for c in self.plan.reg_concepts)
        return RunInfo(**restored, seed=self.seed, num_train_images=self.plan.num_train_samples,
                       num_reg_images=raw_reg, optimizer=self.optimizer_label,
                       num_batches_per_epoch=self.plan.batches_per_epoch, num_epochs=self.total_epochs,
                       max_train_steps=self.total_steps,
                       total_batch_size=self.plan.global_batch_size * v["gradient_accumulation_steps"], **info)

    def _tensorboard(self):
        if not self.values["logging_dir"]:
            return None
        from tensorboardX import SummaryWriter

        folder = Path(self.values["logging_dir"]) / f"{self.name}_{time.strftime('%Y%m%d%H%M%S')}"
        return SummaryWriter(logdir=str(folder))

    def _resume(self, folder: str) -> None:
        state = ckpt.load_state(folder)
        self.network.load_kohya_tensors(state.lora_weights, folder)
        self.optimizer.load_state_dict(state.optimizer)
        self.lr_scheduler.load_state_dict(state.scheduler)
        ckpt.restore_rng(state.rng, self.noise_generator)
        if state.scaler is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(state.scaler)
        position = state.position
        self.epoch, self.start_batch, self.global_step = position.epoch, position.batch, position.step
        self.history = list(state.history)
        self.epoch_loss_sum, self.epoch_loss_count = position.epoch_loss_sum, position.epoch_loss_count
        self.session_id = position.session_id
        if position.session_id is None:
            self.emit.info(f"resume: {folder} is from an older CharLoRA (state format 1): the loss chart starts at "
                           f"step {self.global_step} and the files get a new ss_session_id")
        if state.position.total_steps != self.total_steps:
            self.emit.warn(f"resume: the saved run had {state.position.total_steps} steps in total, this config "
                           f"gives {self.total_steps}; continuing to {self.total_steps}")
        self.emit.info(f"resumed from {folder} at step {self.global_step} (epoch {self.epoch})")

    # ------------------------------------------------------------------ loop
    def _loop(self) -> tuple[str, str]:
        from ..dataset import make_loader

        v = self.values
        accumulate = v["gradient_accumulation_steps"]
        recent = deque(maxlen=20)
        self._pending: list[tuple[int, torch.Tensor]] = []
        self._stop_step, self._stop_decision = -1, False
        full_loader = make_loader(self.dataset, v)
        started = time.time()
        last_tick = started
        while self.global_step < self.total_steps and self.epoch <= self.total_epochs:
            self.dataset.set_epoch(self.epoch)
            loader = make_loader(self.dataset, v, self.start_batch) if self.start_batch else full_loader
            batches_done = self.start_batch
            pending = 0
            clock = _PhaseClock(self.profile, self.device)
            step_loss = None
            for batch in loader:
                clock.mark("data")
                loss = self._forward(batch)
                clock.mark("forward")
                self.scaler.scale(loss / accumulate).backward()
                clock.mark("backward")
                batches_done += 1
                pending += 1
                # every micro-batch's loss is checked, not only the last one of a step
                step_loss = loss.detach() if step_loss is None else step_loss + loss.detach()
                if pending < accumulate and batches_done < len(self.dataset):
                    continue
                step_loss = step_loss / pending
                pending = 0
                grad_norm = self._optimizer_step()
                if grad_norm is not None:  # without a loss scaler, inf/NaN gradients must stop the run too
                    step_loss = step_loss + 0.0 * grad_norm
                clock.mark("optimizer")
                if self.profile:
                    self.phase_times.append(clock.take())
                self.global_step += 1
                self._pending.append((self.global_step, step_loss))
                step_loss = None
                if self._must_sync(batches_done):
                    now = time.time()
                    steps = len(self._pending)
                    recent.extend([(now - last_tick) / steps] * steps)
                    last_tick = now
                    self._flush_losses(recent)
                self._after_step(batches_done)
                if self.global_step >= self.total_steps:
                    break
                if self._stop_agreed():
                    if batches_done >= len(self.dataset):
                        self._after_epoch()  # the epoch is complete: its file and samples first
                    return self._stopped(batches_done)
            self._after_epoch()
            self.start_batch = 0
            self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
            self.epoch += 1
        if self.main:
            self._save(ckpt.final_file(self.output_dir, self.name), self.total_epochs)
        elapsed = time.time() - started
        return "completed", f"finished {self.global_step} steps in {elapsed:.0f} s; saved {len(self.files)} file(s)"

    def _must_sync(self, batches_done: int) -> bool:
        """Read the losses back from the GPU only every LOSS_SYNC_EVERY steps (each read stalls the GPU's
        queue), and always before anything that must not act on a NaN: saving, sampling, stopping, the end."""
        if self.device.type != "cuda" or len(self._pending) >= LOSS_SYNC_EVERY:
            return True
        v, step = self.values, self.global_step
        due = [v["save_every_n_steps"], v["sample_every_n_steps"]]
        return (any(n and step % n == 0 for n in due) or step >= self.total_steps or self._stop_agreed()
                or batches_done >= len(self.dataset))

    def _stop_agreed(self) -> bool:
        """Stop requested? With several processes, on all of them at once (else one would wait forever for
        the others' gradients). Decided once per step and remembered."""
        if self._stop_step == self.global_step:
            return self._stop_decision
        requested = self.stop.requested
        if self.world > 1:
            flag = torch.tensor([1.0 if requested else 0.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            requested = bool(flag.item())
            if requested and not self.stop.requested:
                self.stop.request(save=True)
        self._stop_step, self._stop_decision = self.global_step, requested
        return requested

    def _flush_losses(self, recent: deque) -> None:
        stacked = torch.stack([loss for _, loss in self._pending]).float()
        if self.world > 1:  # every process sees the same losses, so a NaN stops all of them together
            torch.distributed.all_reduce(stacked)
            stacked /= self.world
        values = stacked.cpu().tolist()  # one synchronisation
        steps = [step for step, _ in self._pending]
        self._pending = []
        for step, value in zip(steps, values):
            if not math.isfinite(value):
                raise CharLoRAError(
                    f"the loss became {value} at step {step} (epoch {self.epoch}); training stopped. "
                    + (f"The last good file is {self.files[-1]}. " if self.files else "")
                    + "Try a lower learning rate, mixed_precision bf16, or turning off full_fp16.")
            self.epoch_loss_sum += value
            self.epoch_loss_count += 1
            average = self.epoch_loss_sum / self.epoch_loss_count
            self.history.append((step, value, average))
            self._report_step(step, value, average, recent)

    def _forward(self, batch: dict) -> torch.Tensor:
        v = self.values
        vae = self.pipe.vae
        if "latents" in batch:
            latents = batch["latents"].float()
        else:
            with torch.no_grad():
                pixels = batch["pixels"].to(self.device, torch.float32)
                dist = vae.encode(pixels).latent_dist
                sample = torch.randn(dist.mean.shape, generator=self.noise_generator)
                latents = (dist.mean + dist.std * sample.to(dist.mean.device)).float().cpu()
        latents = latents * vae.config.scaling_factor
        # noise and timesteps for the whole global batch (the same on every process), then our slice
        noise = noise_fn.make_noise(latents, v, self.noise_generator)
        timesteps = noise_fn.sample_timesteps(latents.shape[0], v["min_timestep"], v["max_timestep"],
                                              self.noise_generator)
        weights = batch["loss_weights"].float()
        captions = list(batch["captions"])
        real_samples = latents.shape[0]
        size = v["train_batch_size"]
        lo = self.rank * size
        if lo >= latents.shape[0]:  # last, partial global batch: this process repeats a sample at weight 0
            lo, weights = latents.shape[0] - 1, torch.zeros_like(weights)
        hi = min(lo + size, latents.shape[0])
        latents, noise, timesteps = latents[lo:hi].to(self.device), noise[lo:hi].to(self.device), \
            timesteps[lo:hi].to(self.device)
        weights, captions = weights[lo:hi].to(self.device), captions[lo:hi]

        train_te = self.network.settings.train_text_encoder and not self._text_encoder_stopped()
        autocast = torch.autocast(self.device.type, dtype=self.precision.autocast_dtype,
                                  enabled=self.precision.autocast_dtype is not None)
        with autocast:
            if self.text_cache is not None:
                hidden = torch.cat([self.text_cache[c] for c in captions])
            else:
                input_ids = tokenize(self.pipe.tokenizer, captions, v["max_token_length"]).to(self.device)
                with torch.set_grad_enabled(train_te):
                    hidden = encode(self.pipe.text_encoder, input_ids, v["clip_skip"], v["max_token_length"])
            noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
            prediction = self.pipe.unet(noisy.to(self.precision.weight_dtype), timesteps,
                                        hidden.to(self.precision.weight_dtype)).sample
        target = noise_fn.training_target(self.noise_scheduler, latents, noise, timesteps, v["v_parameterization"])
        per_sample = noise_fn.per_sample_loss(prediction.float(), target.float(), weights, timesteps, v,
                                              self.alphas_cumprod.to(self.device))
        # this process's share of the mean over the whole global batch: averaged over the processes it is
        # exactly the one-process loss, also when the last batch of a bucket is partial
        return per_sample.sum() * self.world / real_samples

    def _text_encoder_stopped(self) -> bool:
        percent = self.values["stop_text_encoder_training"]
        return percent > 0 and self.global_step >= math.ceil(self.total_steps * percent / 100)

    def _optimizer_step(self) -> torch.Tensor | None:
        """One optimizer step; returns the gradient norm when there is no loss scaler to catch inf/NaN."""
        params = [p for p in self.network.parameters() if p.grad is not None]
        if self.world > 1:
            # average the LoRA gradients of all processes (tiny next to the model: one flat all-reduce)
            flat = torch.cat([p.grad.flatten() for p in params])
            torch.distributed.all_reduce(flat)
            flat /= self.world
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset:offset + p.grad.numel()].view_as(p.grad))
                offset += p.grad.numel()
        if self._text_encoder_stopped():
            for p in self.network.parameters("te"):
                p.grad = None
        norm = None
        if self.values["max_grad_norm"] > 0:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, self.values["max_grad_norm"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_scheduler.step()
        # with a scaler, inf gradients are normal (the step is skipped and the scale lowered)
        return None if self.precision.use_grad_scaler or norm is None else norm.detach()

    def _report_step(self, step: int, loss: float, average: float, recent: deque) -> None:
        lrs = {name: group["lr"] for name, group in zip(self.group_names, self.optimizer.param_groups)}
        per_step = sum(recent) / len(recent)
        it_per_s = 1.0 / per_step if per_step > 0 else 0.0
        eta = (self.total_steps - step) * per_step
        self.emit(Step(step, self.epoch, loss, average, lrs, it_per_s, eta))
        if self.writer is not None:
            self.writer.add_scalar("loss/current", loss, step)
            self.writer.add_scalar("loss/average", average, step)
            for name, lr in lrs.items():
                self.writer.add_scalar(f"lr/{name}", lr, step)

    def _after_step(self, batches_done: int) -> None:
        v = self.values
        if v["save_every_n_steps"] and self.global_step % v["save_every_n_steps"] == 0 \
                and self.global_step < self.total_steps and self.main:
            path = self._save(ckpt.step_file(self.output_dir, self.name, self.global_step), self.epoch)
            if v["save_state"]:
                self._save_state(ckpt.state_dir_for(path), batches_done)
            if v["save_last_n_steps"]:  # Kohya keeps the files of the last N steps and the one at the edge
                keep = v["save_last_n_steps"] // v["save_every_n_steps"] + 1
                self._forget(ckpt.prune(ckpt.step_files(self.output_dir, self.name, self.global_step), keep))
            if v["save_last_n_steps_state"]:
                keep = v["save_last_n_steps_state"] // v["save_every_n_steps"] + 1
                ckpt.prune_states(ckpt.step_files(self.output_dir, self.name, self.global_step), keep)
        if v["sample_every_n_steps"] and self.global_step % v["sample_every_n_steps"] == 0:
            self._samples()

    def _after_epoch(self) -> None:
        v = self.values
        every = v["save_every_n_epochs"]
        if every and self.epoch % every == 0 and self.epoch < self.total_epochs and self.main:
            path = self._save(ckpt.epoch_file(self.output_dir, self.name, self.epoch), self.epoch)
            if v["save_state"]:
                self._save_state(ckpt.state_dir_for(path), len(self.dataset))
            if v["save_last_n_epochs"]:
                self._forget(ckpt.prune(ckpt.epoch_files(self.output_dir, self.name, self.epoch),
                                        v["save_last_n_epochs"]))
        if v["sample_every_n_epochs"] and self.epoch % v["sample_every_n_epochs"] == 0:
            self._samples(at_epoch_end=True)

    def _stopped(self, batches_done: int) -> tuple[str, str]:
        if self._pending:  # every step is checked (and reported) before anything is saved
            self._flush_losses(deque(maxlen=1))
        message = f"stopped at step {self.global_step} of {self.total_steps} (epoch {self.epoch})"
        if self.stop.save and self.main:
            path = ckpt.step_file(self.output_dir, self.name, self.global_step)
            if str(path) not in self.files:  # the step may have been saved a moment ago
                self._save(path, self.epoch)
            state = self._save_state(ckpt.state_dir_for(path), batches_done)
            message += f"; saved {path.name} and {state.name} (set resume to it to continue)"
        return "stopped", message

    # ------------------------------------------------------------------ files
    def _save(self, path: Path, epoch: int) -> Path:
        self.run_info.epoch, self.run_info.steps = epoch, self.global_step
        self.run_info.sd_model_hash, self.run_info.new_sd_model_hash = self.model_hashes.result()
        metadata = build_metadata(self.values, self.run_info)
        save_lora(self.network.kohya_tensors(), path, self.values["save_precision"], metadata)
        self.files.append(str(path))
        log.info("saved %s", path)
        self.emit(Saved(str(path), epoch, self.global_step))
        return path

    def _save_state(self, folder: Path, batches_done: int) -> Path:
        if batches_done >= len(self.dataset):  # the epoch is complete: a resume starts the next one afresh
            epoch, batch, loss_sum, loss_count = self.epoch + 1, 0, 0.0, 0
        else:
            epoch, batch, loss_sum, loss_count = self.epoch, batches_done, self.epoch_loss_sum, self.epoch_loss_count
        position = ckpt.Position(epoch=epoch, batch=batch, step=self.global_step, seed=self.seed,
                                 total_steps=self.total_steps, session_id=self.run_info.session_id,
                                 epoch_loss_sum=loss_sum, epoch_loss_count=loss_count)
        ckpt.save_state(folder, self.network.kohya_tensors(), self.optimizer, self.lr_scheduler,
                        self.noise_generator, position, self.history, self.scaler)
        self.emit(Saved(str(folder), self.epoch, self.global_step, kind="state"))
        return folder

    def _forget(self, removed: list[Path]) -> None:
        for path in removed:
            if str(path) in self.files:
                self.files.remove(str(path))
            self.emit.info(f"removed {path.name} (save_last_n_*)")

    def _samples(self, at_epoch_end: bool = False) -> None:
        from .sampling import generate_samples, parse_prompts, sample_filename

        v = self.values
        if not v["sample_prompts"].strip() or not self.main:
            return
        width, height = (int(x) for x in v["max_resolution"].split(","))
        # Kohya's default sample size is 512x512; the training resolution suits any base model better
        prompts = parse_prompts(v["sample_prompts"], {"width": width, "height": height})
        folder = self.output_dir / "sample"
        folder.mkdir(exist_ok=True)
        vae_device = next(self.pipe.vae.parameters()).device
        self.pipe.vae.to(self.device)
        rng_state = torch.get_rng_state()  # sampling must not change the training's random stream
        try:
            self.pipe.unet.eval()
            self.pipe.text_encoder.eval()
            images = generate_samples(self.pipe, prompts, v["sample_sampler"], self.device,
                                      clip_skip=v["clip_skip"], max_token_length=v["max_token_length"])
        finally:
            torch.set_rng_state(rng_state)
            self.pipe.unet.train()
            self.pipe.text_encoder.train(self.network.settings.train_text_encoder)
            self.pipe.vae.to(vae_device)
        paths = []
        for index, (prompt, image) in enumerate(zip(prompts, images)):
            path = folder / sample_filename(self.name, self.global_step, index, prompt.seed,
                                            epoch=self.epoch if at_epoch_end else None)
            image.save(path)
            paths.append(str(path))
            if self.writer is not None:
                import numpy as np

                self.writer.add_image(f"sample/{index}", np.asarray(image), self.global_step, dataformats="HWC")
        self.emit(SamplesSaved(paths, self.epoch, self.global_step))

    def _oom_advice(self) -> str:
        v = self.values
        tips = []
        if v["train_batch_size"] > 1:
            tips.append(f"lower train_batch_size (now {v['train_batch_size']})")
        if not v["gradient_checkpointing"]:
            tips.append("turn on gradient_checkpointing (much less memory, ~30% slower)")
        if v["max_resolution"] != "512,512":
            tips.append(f"train at 512,512 (now {v['max_resolution']})")
        if v["network_dim"] > 32:
            tips.append(f"lower network_dim (now {v['network_dim']})")
        if v["optimizer"] not in ("AdamW8bit", "Lion8bit"):
            tips.append("use optimizer AdamW8bit")
        tips.append("close other programs using the GPU")
        return (f"CUDA out of memory at step {self.global_step + 1}. Try: " + "; ".join(tips) + "."
                + (f" The last good file is {self.files[-1]}." if self.files else ""))
