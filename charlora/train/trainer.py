"""The training loop: SD 1.5 and SDXL LoRA training as Kohya's train_network / sdxl_train_network do it.

The run is built once by `context.prepare_run`; each step's loss is `step.step_loss`; this module runs the
steps: gradient accumulation (accelerate's `accumulate`), the optimizer step, losses read back and reported, files saved on Kohya's
schedule, samples, stop and resume.

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
from pathlib import Path

import torch

from ..errors import CharLoRAError
from ..lora import build_metadata, save_lora
from ..models import family_of
from ..params import dump_kohya
from . import checkpoints as ckpt
from . import setup
from .context import cache_text_states, open_tensorboard, place_run, prepare_run, restore_state, run_info
from .events import Emitter, Message, RunFinished, RunResult, RunStarted, SamplesSaved, Saved, Step, StopRequest
from .run_log import PhaseClock, RunLog
from .sampling import training_samples
from .step import step_loss

log = logging.getLogger("charlora.train")
_RUN_LOCK = threading.Lock()  # one run per process: two would fight over the GPU and the files
LOSS_SYNC_EVERY = 10  # on a GPU, steps between reading the loss back (CPU: every step, it costs nothing)


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
        self.max_norm_stats: tuple | None = None  # scale_weight_norms: (modules scaled, mean norm, max norm)
        self.log = RunLog()

    # ------------------------------------------------------------------ public
    def run(self) -> RunResult:
        trace = None
        try:
            self._setup()
            status, message = self._loop()
        except CharLoRAError as exc:
            status, message = "failed", str(exc)
        except torch.cuda.OutOfMemoryError:
            status, message = "failed", setup.oom_advice(self.values, self.global_step, self.files)
        except Exception as exc:  # an internal error: the message, with the traceback in the log
            import traceback

            trace = traceback.format_exc()
            log.error("training failed with an internal error:\n%s", trace)
            where = f"details in {self.log.file}" if self.log.file else "run with --debug for the traceback"
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
        self.log.close()
        return RunResult(status, message, self.global_step, list(self.files), last_good,
                         [loss for _, loss, _ in self.history], list(self.phase_times),
                         str(self.log.file) if self.log.file else None, trace)

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        v = self.values
        self.place = place_run(v)
        if self.place.main:
            self.log.open(v, self.place.output_dir, self.place.name, self.emit)
            removed, restored = ckpt.clean_leftovers(self.place.output_dir, self.place.name)
            for folder in restored:
                self.emit.info(f"put back {folder.name}: an interrupted save had left it only under a hidden name")
            if removed:
                self.emit.info(f"removed {len(removed)} leftover(s) of an interrupted save in "
                               f"{self.place.output_dir}: " + ", ".join(p.name for p in removed[:5])
                               + (" ..." if len(removed) > 5 else ""))
        self.ctx = prepare_run(v, self.place, self.emit, self.given_pipe)
        self.start_batch = 0
        if v["resume"]:
            self._resume(v["resume"])

        self.text_cache = cache_text_states(self.ctx, self.emit)
        self.run_info = run_info(self.ctx, self.session_id)
        self.writer = open_tensorboard(v, self.place.name) if self.place.main else None
        if self.place.main:
            ckpt.write_run_config(self.place.output_dir, self.place.name, dump_kohya(v))
        ctx, plan = self.ctx, self.ctx.plan
        self.emit(RunStarted(
            total_steps=ctx.total_steps, steps_per_epoch=plan.steps_per_epoch, epochs=ctx.total_epochs,
            images=sum(len(c.images) for c in plan.concepts), samples_per_epoch=plan.num_train_samples,
            reg_samples_per_epoch=plan.num_reg_samples,
            buckets={f"{w}x{h}": n for (w, h), n in plan.bucket_counts.items()},
            batch_size=v["train_batch_size"], processes=self.place.world, device=str(ctx.device),
            precision=ctx.precision.label, attention=ctx.attention, optimizer=ctx.optimizer_label, seed=ctx.seed,
            start_step=self.global_step, model=family_of(ctx.pipe).name, history=tuple(self.history)))

    def _resume(self, folder: str) -> None:
        position, history = restore_state(self.ctx, folder, self.emit)
        self.epoch, self.start_batch, self.global_step = position.epoch, position.batch, position.step
        self.history = list(history)
        self.epoch_loss_sum, self.epoch_loss_count = position.epoch_loss_sum, position.epoch_loss_count
        self.session_id = position.session_id

    # ------------------------------------------------------------------ loop
    def _loop(self) -> tuple[str, str]:
        accelerator = self.place.accelerator
        recent = deque(maxlen=20)
        self._pending: list[tuple[int, torch.Tensor]] = []
        self._stop_step, self._stop_decision = -1, False
        full_loader = self._loader(0)
        started = time.time()
        last_tick = started
        while self.global_step < self.ctx.total_steps and self.epoch <= self.ctx.total_epochs:
            loader = self._loader(self.start_batch) if self.start_batch else full_loader
            loader.set_epoch(self.epoch)  # also the dataset's epoch (accelerate's loader passes it on)
            batches_done = self.start_batch
            pending = 0
            clock = PhaseClock(self.profile, self.ctx.device)
            step_loss = None
            for batch in loader:
                clock.mark("data")
                # accelerate counts the micro-batches: sync_gradients is True every
                # gradient_accumulation_steps batches and at the epoch's last batch
                with accelerator.accumulate(self.ctx.network):
                    loss = self._forward(batch)
                    clock.mark("forward")
                    self.ctx.scaler.scale(loss / accelerator.gradient_accumulation_steps).backward()
                    clock.mark("backward")
                batches_done += 1
                pending += 1
                # every micro-batch's loss is checked, not only the last one of a step
                step_loss = loss.detach() if step_loss is None else step_loss + loss.detach()
                if not accelerator.sync_gradients:
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
                if self.global_step >= self.ctx.total_steps:
                    break
                if self._stop_agreed():
                    if batches_done >= len(self.ctx.dataset):
                        self._after_epoch()  # the epoch is complete: its file and samples first
                    return self._stopped(batches_done)
            self._after_epoch()
            self.start_batch = 0
            self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
            self.epoch += 1
        if self.place.main:
            self._save(ckpt.final_file(self.place.output_dir, self.place.name), self.ctx.total_epochs)
        elapsed = time.time() - started
        return "completed", f"finished {self.global_step} steps in {elapsed:.0f} s; saved {len(self.files)} file(s)"

    def _loader(self, start: int):
        """The epoch's batches from `start`, in accelerate's loader, which marks the epoch's last batch for
        `accumulate`. num_processes=1: every process reads the whole global batch and takes its own slice
        (step.step_loss), so all of them draw the same noise."""
        from accelerate.data_loader import prepare_data_loader

        from ..dataset import make_loader

        return prepare_data_loader(make_loader(self.ctx.dataset, self.values, start), num_processes=1,
                                   process_index=0)

    def _must_sync(self, batches_done: int) -> bool:
        """Read the losses back from the GPU only every LOSS_SYNC_EVERY steps (each read stalls the GPU's
        queue), and always before anything that must not act on a NaN: saving, sampling, stopping, the end."""
        if self.ctx.device.type != "cuda" or len(self._pending) >= LOSS_SYNC_EVERY:
            return True
        v, step = self.values, self.global_step
        due = [v["save_every_n_steps"], v["sample_every_n_steps"]]
        return (any(n and step % n == 0 for n in due) or step >= self.ctx.total_steps or self._stop_agreed()
                or batches_done >= len(self.ctx.dataset))

    def _stop_agreed(self) -> bool:
        """Stop requested? With several processes, on all of them at once (else one would wait forever for
        the others' gradients). Decided once per step and remembered."""
        if self._stop_step == self.global_step:
            return self._stop_decision
        requested = self.stop.requested
        if self.place.world > 1:
            flag = torch.tensor([1.0 if requested else 0.0], device=self.ctx.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            requested = bool(flag.item())
            if requested and not self.stop.requested:
                self.stop.request(save=True)
        self._stop_step, self._stop_decision = self.global_step, requested
        return requested

    def _flush_losses(self, recent: deque) -> None:
        stacked = torch.stack([loss for _, loss in self._pending]).float()
        if self.place.world > 1:  # every process sees the same losses, so a NaN stops all of them together
            torch.distributed.all_reduce(stacked)
            stacked /= self.place.world
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
        train_te = self.ctx.network.settings.train_text_encoder and not self._text_encoder_stopped()
        return step_loss(self.ctx, batch, self.text_cache, train_te)

    def _text_encoder_stopped(self) -> bool:
        percent = self.values["stop_text_encoder_training"]
        return percent > 0 and self.global_step >= math.ceil(self.ctx.total_steps * percent / 100)

    def _optimizer_step(self) -> torch.Tensor | None:
        """One optimizer step; returns the gradient norm when there is no loss scaler to catch inf/NaN."""
        params = [p for p in self.ctx.network.parameters() if p.grad is not None]
        if self.place.world > 1:
            # average the LoRA gradients of all processes (tiny next to the model: one flat all-reduce)
            flat = torch.cat([p.grad.flatten() for p in params])
            torch.distributed.all_reduce(flat)
            flat /= self.place.world
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset:offset + p.grad.numel()].view_as(p.grad))
                offset += p.grad.numel()
        if self._text_encoder_stopped():
            for p in self.ctx.network.parameters("te"):
                p.grad = None
        norm = None
        if self.values["max_grad_norm"] > 0:
            self.ctx.scaler.unscale_(self.ctx.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, self.values["max_grad_norm"])
        self.ctx.scaler.step(self.ctx.optimizer)
        self.ctx.scaler.update()
        self.ctx.optimizer.zero_grad(set_to_none=True)
        self.ctx.lr_scheduler.step()
        if self.values["scale_weight_norms"] > 0:
            self.max_norm_stats = self.ctx.network.apply_max_norm(self.values["scale_weight_norms"])
        # with a scaler, inf gradients are normal (the step is skipped and the scale lowered)
        return None if self.ctx.precision.use_grad_scaler or norm is None else norm.detach()

    def _report_step(self, step: int, loss: float, average: float, recent: deque) -> None:
        lrs = {name: group["lr"] for name, group in zip(self.ctx.group_names, self.ctx.optimizer.param_groups)}
        per_step = sum(recent) / len(recent)
        it_per_s = 1.0 / per_step if per_step > 0 else 0.0
        eta = (self.ctx.total_steps - step) * per_step
        self.emit(Step(step, self.epoch, loss, average, lrs, it_per_s, eta))
        if self.writer is not None:
            if self.max_norm_stats is not None:  # sd-scripts' "Keys Scaled" and "Average key norm"
                self.writer.add_scalar("max_norm/keys_scaled", self.max_norm_stats[0], step)
                self.writer.add_scalar("max_norm/average_key_norm", self.max_norm_stats[1], step)
                self.writer.add_scalar("max_norm/max_key_norm", self.max_norm_stats[2], step)
            self.writer.add_scalar("loss/current", loss, step)
            self.writer.add_scalar("loss/average", average, step)
            for name, lr in lrs.items():
                self.writer.add_scalar(f"lr/{name}", lr, step)

    def _after_step(self, batches_done: int) -> None:
        v = self.values
        if v["save_every_n_steps"] and self.global_step % v["save_every_n_steps"] == 0 \
                and self.global_step < self.ctx.total_steps and self.place.main:
            path = self._save(ckpt.step_file(self.place.output_dir, self.place.name, self.global_step), self.epoch)
            if v["save_state"]:
                self._save_state(ckpt.state_dir_for(path), batches_done)
            if v["save_last_n_steps"]:  # Kohya keeps the files of the last N steps and the one at the edge
                keep = v["save_last_n_steps"] // v["save_every_n_steps"] + 1
                step_files = ckpt.step_files(self.place.output_dir, self.place.name, self.global_step)
                self._forget(ckpt.prune(step_files, keep))
            if v["save_last_n_steps_state"]:
                keep = v["save_last_n_steps_state"] // v["save_every_n_steps"] + 1
                ckpt.prune_states(ckpt.step_files(self.place.output_dir, self.place.name, self.global_step), keep)
        if v["sample_every_n_steps"] and self.global_step % v["sample_every_n_steps"] == 0:
            self._samples()

    def _after_epoch(self) -> None:
        v = self.values
        every = v["save_every_n_epochs"]
        if every and self.epoch % every == 0 and self.epoch < self.ctx.total_epochs and self.place.main:
            path = self._save(ckpt.epoch_file(self.place.output_dir, self.place.name, self.epoch), self.epoch)
            if v["save_state"]:
                self._save_state(ckpt.state_dir_for(path), len(self.ctx.dataset))
            if v["save_last_n_epochs"]:
                self._forget(ckpt.prune(ckpt.epoch_files(self.place.output_dir, self.place.name, self.epoch),
                                        v["save_last_n_epochs"]))
        if v["sample_every_n_epochs"] and self.epoch % v["sample_every_n_epochs"] == 0:
            self._samples(at_epoch_end=True)

    def _stopped(self, batches_done: int) -> tuple[str, str]:
        if self._pending:  # every step is checked (and reported) before anything is saved
            self._flush_losses(deque(maxlen=1))
        message = f"stopped at step {self.global_step} of {self.ctx.total_steps} (epoch {self.epoch})"
        if self.stop.save and self.place.main:
            path = ckpt.step_file(self.place.output_dir, self.place.name, self.global_step)
            if str(path) not in self.files:  # the step may have been saved a moment ago
                self._save(path, self.epoch)
            state = self._save_state(ckpt.state_dir_for(path), batches_done)
            message += f"; saved {path.name} and {state.name} (set resume to it to continue)"
        return "stopped", message

    # ------------------------------------------------------------------ files
    def _save(self, path: Path, epoch: int) -> Path:
        self.run_info.epoch, self.run_info.steps = epoch, self.global_step
        self.run_info.sd_model_hash, self.run_info.new_sd_model_hash = self.ctx.model_hashes.result()
        metadata = build_metadata(self.values, self.run_info)
        save_lora(self.ctx.network.kohya_tensors(), path, self.values["save_precision"], metadata)
        self.files.append(str(path))
        log.info("saved %s", path)
        self.emit(Saved(str(path), epoch, self.global_step))
        return path

    def _save_state(self, folder: Path, batches_done: int) -> Path:
        if batches_done >= len(self.ctx.dataset):  # the epoch is complete: a resume starts the next one afresh
            epoch, batch, loss_sum, loss_count = self.epoch + 1, 0, 0.0, 0
        else:
            epoch, batch, loss_sum, loss_count = self.epoch, batches_done, self.epoch_loss_sum, self.epoch_loss_count
        position = ckpt.Position(epoch=epoch, batch=batch, step=self.global_step, seed=self.ctx.seed,
                                 total_steps=self.ctx.total_steps, session_id=self.run_info.session_id,
                                 epoch_loss_sum=loss_sum, epoch_loss_count=loss_count)
        ckpt.save_state(folder, self.ctx.network.kohya_tensors(), self.ctx.optimizer, self.ctx.lr_scheduler,
                        self.ctx.noise_generator, position, self.history, self.ctx.scaler)
        self.emit(Saved(str(folder), self.epoch, self.global_step, kind="state"))
        return folder

    def _forget(self, removed: list[Path]) -> None:
        for path in removed:
            if str(path) in self.files:
                self.files.remove(str(path))
            self.emit.info(f"removed {path.name} (save_last_n_*)")

    def _samples(self, at_epoch_end: bool = False) -> None:
        if not self.values["sample_prompts"].strip() or not self.place.main:
            return
        paths = training_samples(self.ctx, self.global_step, self.epoch, at_epoch_end, self.writer)
        self.emit(SamplesSaved(paths, self.epoch, self.global_step))
