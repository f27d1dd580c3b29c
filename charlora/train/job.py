"""The process-wide training job: a run in a thread of this process, watched through snapshots.

The GUI never runs training inside a browser event (that dies with the tab and blocks the queue).
It calls `start`, returns at once, and polls `snapshot()`; any tab, new or reopened, sees the same
job, with the run's settings (`values`). Closing the browser never stops training; `stop` does,
cooperatively, and `resume` continues a stopped (or failed) run from the last state it saved.

Snapshots are immutable and shared: `snapshot()` builds one only when something changed since the
last call and hands every caller that same object, so a page polling each second costs a version
check, not a copy of the loss history.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from ..errors import CharLoRAError
from .checkpoints import thin_points
from .events import Message, RunFinished, RunStarted, SamplesSaved, Saved, Step, StopRequest
from .trainer import is_running, train

MAX_LOG_LINES = 400
MAX_PLOT_POINTS = 1000
_EMPTY: Mapping = MappingProxyType({})


@dataclass(frozen=True)
class JobSnapshot:
    version: int = 0  # changes whenever anything below changes
    state: str = "idle"  # idle, starting, running, stopping, completed, stopped, failed
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    total_epochs: int = 0
    loss: float | None = None
    average_loss: float | None = None  # the mean loss of this epoch's steps so far
    lr: Mapping = field(default_factory=lambda: _EMPTY)  # "unet" / "text_encoder" -> current lr
    it_per_s: float = 0.0
    eta_s: float = 0.0
    losses: tuple = ()  # (step, loss, epoch average) per step; a resumed run's starts with the earlier steps
    files: tuple = ()  # this run's LoRA files still on disk, oldest first
    samples: tuple = ()
    log: tuple = ()  # the last MAX_LOG_LINES lines
    plan: str = ""
    message: str = ""
    output_name: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    values: Mapping = field(default_factory=lambda: _EMPTY)  # the run's normalised settings, read-only; {} before any
    resumable_state: str | None = None  # the state folder `resume()` continues from; None while running or if none

    @property
    def running(self) -> bool:
        return self.state in ("starting", "running", "stopping")

    def plot_points(self) -> list:
        """At most MAX_PLOT_POINTS (step, loss, average) points, evenly thinned, first and last kept."""
        return thin_points(self.losses, MAX_PLOT_POINTS)


# A fresh run's scalar fields (everything but the tuples, which are built from the job's lists).
_FRESH = {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(JobSnapshot)
          if f.name not in ("version", "losses", "files", "samples", "log")}


class TrainingJob:
    def __init__(self):
        self._lock = threading.Lock()
        self._fields = dict(_FRESH)  # everything below is changed only under the lock, with _version += 1
        self._losses: list = []
        self._files: list = []
        self._samples: list = []
        self._log: deque = deque(maxlen=MAX_LOG_LINES)
        self._version = 0
        self._published = JobSnapshot()
        self._last_state: str | None = None  # the newest training state of the run (or the one it resumed from)
        self._thread: threading.Thread | None = None
        self._stop = StopRequest()

    # ------------------------------------------------------------------ control
    def start(self, values: dict, *, listeners=(), pipe=None, _carry=((), ())) -> None:
        """Start a run of the normalised `values` in a background thread and return at once. Refuses a
        second run. `listeners` get every event after the job (tests, the benchmark); `pipe`: an already
        loaded base model instead of the file (the benchmark's random-weight SD 1.5, as in `train`)."""
        with self._lock:
            if self._fields["state"] in ("starting", "running", "stopping") or is_running():
                raise CharLoRAError("a training run is already going; stop it before starting another")
            self._stop = StopRequest()
            self._fields = dict(_FRESH, state="starting", output_name=values["output_name"], started_at=time.time(),
                                values=MappingProxyType(dict(values)))
            # a resumed run lists the files and samples its stopped part already made
            self._losses, self._files, self._samples = [], [p for p in _carry[0] if Path(p).exists()], list(_carry[1])
            self._log.clear()
            self._last_state = values["resume"] or None
            self._add_log("starting" + (f" from {values['resume']}" if values["resume"] else ""))
        # not a daemon: Python waits for it at exit, and the GUI asks it to stop and save first
        self._thread = threading.Thread(target=self._run, args=(dict(values), [self._on_event, *listeners], pipe),
                                        name="charlora-training")
        self._thread.start()

    def resume(self, *, listeners=()) -> str:
        """Continue the stopped (or failed) run from the last training state it saved, with the same
        settings. Returns that state folder; raises CharLoRAError when there is nothing to resume."""
        from ..params import normalize

        with self._lock:
            state, values = self._fields["resumable_state"], self._fields["values"]
            running = self._fields["state"] in ("starting", "running", "stopping")
            carry = (tuple(self._files), tuple(self._samples))
        if running:
            raise CharLoRAError("a training run is going; stop it before resuming")
        if not state:
            raise CharLoRAError("nothing to resume: no stopped or failed run of this session left a training state. "
                                "Stop saves one; to continue an older run, set 'Resume from saved training state' in "
                                "the Parameters tab to its NAME-...-state folder and start")
        if not Path(state).is_dir():
            raise CharLoRAError(f"cannot resume: the training state {state} is gone (moved or deleted); set 'Resume "
                                "from saved training state' in the Parameters tab to another state folder and start")
        self.start(normalize(dict(values, resume=state)).values, listeners=listeners, _carry=carry)
        return state

    def stop(self, save: bool = True) -> None:
        with self._lock:
            if self._fields["state"] not in ("starting", "running", "stopping"):
                return
            self._fields["state"] = "stopping"
            self._add_log("stop requested: finishing the current step" + (" and saving" if save else ""))
        self._stop.request(save=save)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run's thread ends (for the CLI-like shutdown path and tests)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def snapshot(self) -> JobSnapshot:
        """The job as it is now: immutable, shared by every caller until the next change."""
        with self._lock:
            if self._published.version != self._version:
                self._published = JobSnapshot(version=self._version, losses=tuple(self._losses),
                                              files=tuple(self._files), samples=tuple(self._samples),
                                              log=tuple(self._log), **self._fields)
            return self._published

    # ------------------------------------------------------------------ the run
    def _run(self, values: dict, listeners: list, pipe) -> None:
        try:
            train(values, listeners, self._stop, pipe=pipe)
        except Exception as exc:  # train() reports failures itself; this is the last line of defence
            with self._lock:
                self._finish("failed", f"{type(exc).__name__}: {exc}")

    def _add_log(self, text: str) -> None:
        self._log.append(f"{time.strftime('%H:%M:%S')} {text}")
        self._version += 1

    def _finish(self, status: str, message: str) -> None:
        resumable = status in ("stopped", "failed") and self._last_state and Path(self._last_state).is_dir()
        self._fields.update(state=status, message=message, finished_at=time.time(),
                            resumable_state=self._last_state if resumable else None)
        self._add_log(f"{status}: {message}")

    def _on_event(self, event) -> None:
        with self._lock:
            f = self._fields
            if isinstance(event, RunStarted):
                f["state"] = "stopping" if f["state"] == "stopping" else "running"
                f.update(total_steps=event.total_steps, total_epochs=event.epochs, step=event.start_step,
                         plan="; ".join(event.summary_lines()))
                if event.history:  # a resumed run: the chart continues the stopped run's
                    self._losses = list(event.history)
                    f.update(loss=event.history[-1][1], average_loss=event.history[-1][2])
                self._add_log(f["plan"])
            elif isinstance(event, Step):
                f.update(step=event.step, epoch=event.epoch, loss=event.loss, average_loss=event.average_loss,
                         lr=MappingProxyType(dict(event.lr)), it_per_s=event.it_per_s, eta_s=event.eta_s)
                self._losses.append((event.step, event.loss, event.average_loss))
                self._version += 1
            elif isinstance(event, Saved):
                if event.kind == "lora":
                    self._files = [p for p in self._files if p != event.path] + [event.path]
                else:
                    self._last_state = event.path
                self._add_log(f"saved {event.path}")
            elif isinstance(event, SamplesSaved):
                self._samples.extend(event.paths)
                self._add_log(f"samples: {', '.join(event.paths)}")
            elif isinstance(event, Message):
                if event.level != "error":  # the error is the final message, shown once
                    self._add_log(f"{event.level}: {event.text}")
                if event.text.startswith("removed "):
                    name = event.text[len("removed "):].rsplit(" (", 1)[0]
                    self._files = [p for p in self._files if not p.endswith(name)]
            elif isinstance(event, RunFinished):
                self._finish(event.status, event.message)


_JOB = TrainingJob()


def current_job() -> TrainingJob:
    """The one job of this process (the GUI's every tab shares it)."""
    return _JOB
