"""The process-wide evaluation job: a grid, a seed batch or a scoring run in a thread, with progress
and Stop, watched through snapshots (like the training job: the browser only polls)."""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field

from ..errors import CharLoRAError


@dataclass
class EvalSnapshot:
    version: int = 0
    state: str = "idle"  # idle, running, completed, stopped, failed
    kind: str = ""  # "grid", "seeds" or "score"
    done: int = 0
    total: int = 0
    message: str = ""
    result: dict = field(default_factory=dict)  # grid paths / sheet path / score report

    @property
    def running(self) -> bool:
        return self.state == "running"


class EvaluationJob:
    def __init__(self):
        self._lock = threading.Lock()
        self._snap = EvalSnapshot()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, kind: str, work) -> None:
        """Run `work(progress, stop)` in a thread; it returns the result dict or raises CharLoRAError."""
        with self._lock:
            if self._snap.running:
                raise CharLoRAError("an evaluation is already running; stop it or wait for it")
            self._stop = threading.Event()
            self._snap = EvalSnapshot(version=self._snap.version + 1, state="running", kind=kind,
                                      message=f"{kind} started at {time.strftime('%H:%M:%S')}")
        self._thread = threading.Thread(target=self._run, args=(work,), name=f"charlora-{kind}", daemon=True)
        self._thread.start()

    def _progress(self, done: int, total: int, image=None) -> None:
        with self._lock:
            self._snap.done, self._snap.total = done, total
            self._snap.version += 1

    def _run(self, work) -> None:
        try:
            result = work(self._progress, self._stop.is_set)
            state = "stopped" if self._stop.is_set() else "completed"
            message = "stopped" if state == "stopped" else "done"
        except CharLoRAError as exc:
            result, state, message = {}, "failed", str(exc)
        except Exception as exc:  # internal error: a message, never a traceback in the page
            import logging

            logging.getLogger("charlora.evaluate").exception("evaluation failed")
            result, state, message = {}, "failed", f"internal error: {type(exc).__name__}: {exc}"
        with self._lock:
            self._snap.state, self._snap.message, self._snap.result = state, message, result or {}
            self._snap.version += 1

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    def snapshot(self) -> EvalSnapshot:
        with self._lock:
            return copy.deepcopy(self._snap)


_JOB = EvaluationJob()


def current_evaluation() -> EvaluationJob:
    return _JOB
