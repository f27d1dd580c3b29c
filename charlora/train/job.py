"""The process-wide training job: a run in a thread of this process, watched through snapshots.

The GUI never runs training inside a browser event (that dies with the tab and blocks the queue).
It calls `start`, returns at once, and polls `snapshot()`; any tab, new or reopened, sees the same
job. Closing the browser never stops training; `stop` does, cooperatively.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field

from ..errors import CharLoRAError
from .events import Message, RunFinished, RunStarted, SamplesSaved, Saved, Step, StopRequest
from .trainer import is_running, train

MAX_LOG_LINES = 400
MAX_PLOT_POINTS = 1000


@dataclass
class JobSnapshot:
    version: int = 0  # changes whenever anything below changes
    state: str = "idle"  # idle, starting, running, stopping, completed, stopped, failed
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    total_epochs: int = 0
    loss: float | None = None
    average_loss: float | None = None
    lr: dict = field(default_factory=dict)
    it_per_s: float = 0.0
    eta_s: float = 0.0
    losses: list = field(default_factory=list)  # (step, loss, average)
    files: list = field(default_factory=list)
    samples: list = field(default_factory=list)
    log: list = field(default_factory=list)
    plan: str = ""
    message: str = ""
    output_name: str = ""
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def running(self) -> bool:
        return self.state in ("starting", "running", "stopping")

    def plot_points(self) -> list:
        """At most MAX_PLOT_POINTS (step, loss, average) points, evenly thinned, last point kept."""
        points = self.losses
        if len(points) <= MAX_PLOT_POINTS:
            return list(points)
        stride = len(points) / MAX_PLOT_POINTS
        thinned = [points[int(i * stride)] for i in range(MAX_PLOT_POINTS - 1)]
        return thinned + [points[-1]]


class TrainingJob:
    def __init__(self):
        self._lock = threading.Lock()
        self._snapshot = JobSnapshot()
        self._thread: threading.Thread | None = None
        self._stop = StopRequest()

    # ------------------------------------------------------------------ control
    def start(self, values: dict) -> None:
        """Start a run in a background thread and return at once. Refuses a second run."""
        with self._lock:
            if self._snapshot.running or is_running():
                raise CharLoRAError("a training run is already going; stop it before starting another")
            self._stop = StopRequest()
            self._snapshot = JobSnapshot(version=self._snapshot.version + 1, state="starting",
                                         output_name=values["output_name"], started_at=time.time(),
                                         log=[f"{time.strftime('%H:%M:%S')} starting"])
        # not a daemon: Python waits for it at exit, and the GUI asks it to stop and save first
        self._thread = threading.Thread(target=self._run, args=(dict(values),), name="charlora-training")
        self._thread.start()

    def stop(self, save: bool = True) -> None:
        with self._lock:
            if not self._snapshot.running:
                return
            self._snapshot.state = "stopping"
            self._add_log("stop requested: finishing the current step" + (" and saving" if save else ""))
        self._stop.request(save=save)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run's thread ends (for the CLI-like shutdown path and tests)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return copy.deepcopy(self._snapshot)

    # ------------------------------------------------------------------ the run
    def _run(self, values: dict) -> None:
        try:
            train(values, [self._on_event], self._stop)
        except Exception as exc:  # train() reports failures itself; this is the last line of defence
            with self._lock:
                self._snapshot.state, self._snapshot.message = "failed", f"{type(exc).__name__}: {exc}"
                self._snapshot.version += 1

    def _add_log(self, text: str) -> None:
        self._snapshot.log.append(f"{time.strftime('%H:%M:%S')} {text}")
        del self._snapshot.log[:-MAX_LOG_LINES]
        self._snapshot.version += 1

    def _on_event(self, event) -> None:
        with self._lock:
            s = self._snapshot
            if isinstance(event, RunStarted):
                s.state = "stopping" if s.state == "stopping" else "running"
                s.total_steps, s.total_epochs, s.step = event.total_steps, event.epochs, event.start_step
                s.plan = "; ".join(event.summary_lines())
                self._add_log(s.plan)
            elif isinstance(event, Step):
                s.step, s.epoch, s.loss, s.average_loss = event.step, event.epoch, event.loss, event.average_loss
                s.lr, s.it_per_s, s.eta_s = dict(event.lr), event.it_per_s, event.eta_s
                s.losses.append((event.step, event.loss, event.average_loss))
                s.version += 1
            elif isinstance(event, Saved):
                if event.kind == "lora":
                    s.files.append(event.path)
                self._add_log(f"saved {event.path}")
            elif isinstance(event, SamplesSaved):
                s.samples.extend(event.paths)
                self._add_log(f"samples: {', '.join(event.paths)}")
            elif isinstance(event, Message):
                if event.level != "error":  # the error is the final message, shown once
                    self._add_log(f"{event.level}: {event.text}")
                if event.text.startswith("removed "):
                    name = event.text[len("removed "):].rsplit(" (", 1)[0]
                    s.files = [f for f in s.files if not f.endswith(name)]
            elif isinstance(event, RunFinished):
                s.state, s.message, s.finished_at = event.status, event.message, time.time()
                self._add_log(f"{event.status}: {event.message}")


_JOB = TrainingJob()


def current_job() -> TrainingJob:
    """The one job of this process (the GUI's every tab shares it)."""
    return _JOB
