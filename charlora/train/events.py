"""What a training run tells the world: small event objects, sent to listeners.

The CLI turns them into a progress bar, the GUI into its job snapshot; neither reaches into the
trainer. A listener is any callable taking one event; it must not raise (errors are logged and
ignored so a broken display never stops a run).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("charlora.train")


@dataclass
class Event:
    time: float = field(default_factory=time.time, kw_only=True)


@dataclass
class RunStarted(Event):
    total_steps: int
    steps_per_epoch: int
    epochs: int
    images: int
    samples_per_epoch: int
    reg_samples_per_epoch: int
    buckets: dict  # "WxH" -> samples per epoch
    batch_size: int
    processes: int
    device: str
    precision: str
    attention: str
    optimizer: str
    seed: int
    start_step: int = 0  # > 0 when resumed
    model: str = "SD 1.5"  # the base model's family (models.Family.name)
    history: tuple = ()  # when resumed: the earlier steps' (step, loss, epoch average) points, from the state

    def summary_lines(self) -> list[str]:
        """What the run will do, as the CLI prints it before step 1 and the GUI shows it."""
        buckets = ", ".join(f"{size}: {n}" for size, n in self.buckets.items())
        reg = f", + {self.reg_samples_per_epoch} regularisation" if self.reg_samples_per_epoch else ""
        processes = f" x {self.processes} processes" if self.processes > 1 else ""
        lines = [f"images: {self.images} ({self.samples_per_epoch} samples per epoch with repeats{reg})",
                 f"buckets (samples per epoch): {buckets}",
                 f"steps: {self.steps_per_epoch} per epoch x {self.epochs} epochs = {self.total_steps} total"
                 f" (batch {self.batch_size}{processes})",
                 f"model: {self.model}, device: {self.device}, precision: {self.precision}, attention: {self.attention}, "
                 f"optimizer: {self.optimizer}, seed: {self.seed}"]
        if self.start_step:
            lines.append(f"resuming at step {self.start_step}")
        return lines


@dataclass
class Step(Event):
    step: int  # global optimizer step, 1-based
    epoch: int
    loss: float
    average_loss: float
    lr: dict  # optimizer group -> current lr: "unet" (or "unet_block<N>" with block-wise lrs), "text_encoder"
    it_per_s: float
    eta_s: float


@dataclass
class Saved(Event):
    path: str
    epoch: int
    step: int
    kind: str = "lora"  # "lora" or "state"


@dataclass
class SamplesSaved(Event):
    paths: list
    epoch: int
    step: int


@dataclass
class Message(Event):
    level: str  # "info", "warning", "error"
    text: str


@dataclass
class RunFinished(Event):
    status: str  # "completed", "stopped", "failed"
    message: str
    steps: int
    files: list
    last_good_file: str | None = None


Listener = Callable[[Event], None]


class Emitter:
    """Sends events to listeners, in order, on the training thread."""

    def __init__(self, listeners: list[Listener] | tuple = ()):
        self.listeners = list(listeners)

    def __call__(self, event: Event) -> None:
        if isinstance(event, Message):
            getattr(log, "error" if event.level == "error" else event.level, log.info)(event.text)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a broken display must never stop training
                log.exception("event listener failed")

    def info(self, text: str) -> None:
        self(Message("info", text))

    def warn(self, text: str) -> None:
        self(Message("warning", text))


class StopRequest:
    """Cooperative stop: the trainer finishes its step, saves if asked, and ends cleanly."""

    def __init__(self):
        self._event = threading.Event()
        self.save = True

    def request(self, save: bool = True) -> None:
        self.save = save
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()


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
