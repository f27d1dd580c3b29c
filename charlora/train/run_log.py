"""A training run's own records: its log file (every message, warning and error, an internal error's traceback)
and, for benchmarks, the time each phase of a step took."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from .events import Emitter


class RunLog:
    """The `charlora` logger's records of one run, into NAME-<time>.log in logging_dir (else beside the LoRA files)."""

    def __init__(self):
        self.file: Path | None = None
        self._handler: logging.Handler | None = None
        self._level = None

    def open(self, values: dict, output_dir: Path, name: str, emit: Emitter) -> None:
        folder = Path(values["logging_dir"]) if values["logging_dir"] else output_dir
        path = folder / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path, encoding="utf-8")
        except OSError as exc:
            emit.warn(f"cannot write the log file {path} ({exc.strerror or exc}); training goes on without it")
            return
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler.setLevel(logging.INFO)
        root = logging.getLogger("charlora")
        self._level = root.level
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        root.addHandler(handler)
        self._handler, self.file = handler, path
        emit.info(f"log file: {path}")

    def close(self) -> None:
        if self._handler is None:
            return
        root = logging.getLogger("charlora")
        root.removeHandler(self._handler)
        root.setLevel(self._level)
        self._handler.close()
        self._handler = None


class PhaseClock:
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
