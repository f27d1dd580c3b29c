"""`python -m charlora bench --app-overhead`: what the app costs a training run.

The same short training (a generated dataset in a temporary folder, the tiny model from
`make_tiny_model`, or the random-weight SD 1.5 shape) runs, in alternating rounds:
- `cli`: as `python -m charlora train` does, `train(values)` in the main thread;
- `app`: as the GUI does, `current_job().start(values)` in the job's thread, while a thread imitates
  an open page: `training_tab.poll(seen)` at once (page load), then once per `poll_interval`;
- `app+server` (with `server=True`): the same, with the real Gradio app also served from this
  process on 127.0.0.1 (no browser connected), to see what the idle server itself costs.

Per run: process CPU seconds per step (every thread: torch's, the poller's, the server's) and wall
seconds per step, from the end of warm-up step `warmup` to the last step; the poller's own CPU time
per poll. The summary gives the medians per mode and the ratios to `cli`.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from ..train import Step

DEFAULT_SEEN = {"version": -1, "step": -1, "samples": -1, "files": -1}


class _StepClock:
    """A listener noting (wall, process CPU) time at the end of the warm-up step and of the last step."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start = self.end = None
        self.steps = 0

    def __call__(self, event) -> None:
        if not isinstance(event, Step):
            return
        now = (time.perf_counter(), time.process_time())
        if event.step == self.warmup:
            self.start = now
        elif event.step > self.warmup:
            self.end, self.steps = now, event.step - self.warmup

    def per_step(self) -> dict:
        if self.start is None or self.end is None:
            raise RuntimeError("the benchmark run ended before its timed steps")
        return {"wall_s_per_step": (self.end[0] - self.start[0]) / self.steps,
                "cpu_s_per_step": (self.end[1] - self.start[1]) / self.steps, "steps_timed": self.steps}


class _Page(threading.Thread):
    """An open Training tab: polls as the page load and the 1-second timer do, timing its own CPU."""

    def __init__(self, interval: float):
        super().__init__(name="bench-page", daemon=True)
        self.interval = interval
        self.closed = threading.Event()
        self.poll_cpu: list[float] = []

    def run(self) -> None:
        from . import training_tab

        seen = dict(getattr(training_tab, "NOTHING_SEEN", DEFAULT_SEEN))
        while True:
            started = time.thread_time()
            seen = training_tab.poll(seen)[-1]  # the contract: the last output is the next `seen`
            self.poll_cpu.append(time.thread_time() - started)
            if self.closed.wait(self.interval):  # the timer's pace, and the way out
                return


def _serve_app():
    """The real app, served from this process on a free local port, with no browser connected."""
    import socket

    from .app import build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_app()
    demo.launch(server_name="127.0.0.1", server_port=port, share=False, prevent_thread_lock=True, quiet=True)
    return demo


def _run(mode: str, values: dict, warmup: int, pipe_factory, poll_interval: float) -> dict:
    from ..train import current_job, train

    clock = _StepClock(warmup)
    pipe = pipe_factory() if pipe_factory else None
    if mode == "cli":
        result = train(values, [clock], pipe=pipe)
        status, message, polls = result.status, result.message, []
    else:
        demo = _serve_app() if mode == "app+server" else None
        page = _Page(poll_interval)
        try:
            page.start()
            job = current_job()
            job.start(values, listeners=[clock], pipe=pipe)
            job.wait()
        finally:
            page.closed.set()
            page.join()
            if demo is not None:
                with contextlib.redirect_stdout(io.StringIO()):  # gradio prints "Closing server..." even when quiet
                    demo.close()
        snap = current_job().snapshot()
        status, message, polls = snap.state, snap.message, page.poll_cpu
    if status != "completed":
        raise RuntimeError(f"benchmark run ({mode}) did not complete: {message}")
    figures = clock.per_step()
    figures.update(mode=mode, polls=len(polls), poll_cpu_ms=1000 * statistics.mean(polls) if polls else None)
    return figures


def run_overhead_bench(shape: str = "tiny", resolution: int | None = None, steps: int = 40, warmup: int = 2,
                       rounds: int = 3, config: str | None = None, overrides: tuple = (), server: bool = False,
                       poll_interval: float = 1.0, progress=None) -> dict:
    import torch

    from ..bench import DEFAULT_CONFIG, _dataset, random_sd15_pipeline
    from ..params import load_config, normalize
    from . import training_tab

    resolution = resolution or (64 if shape == "tiny" else 256)
    modes = ["cli", "app"] + (["app+server"] if server else [])
    loaded = load_config(config or DEFAULT_CONFIG, overrides)
    training_tab.poll(dict(getattr(training_tab, "NOTHING_SEEN", DEFAULT_SEEN)))  # gradio's import, not timed
    runs = []
    with tempfile.TemporaryDirectory(prefix="charlora-overhead-") as tmp:
        tmp = Path(tmp)
        data = _dataset(tmp, 4, resolution)
        if shape == "tiny":
            from ..models.tiny import make_tiny_model

            model, pipe_factory = str(make_tiny_model(tmp / "tiny").single_file), None
        else:
            model, pipe_factory = "(random weights)", random_sd15_pipeline
        base = dict(loaded.values, train_data_dir=str(data), reg_data_dir="", logging_dir="",
                    pretrained_model_name_or_path=model, max_resolution=f"{resolution},{resolution}",
                    min_bucket_reso=min(256, resolution), max_train_steps=warmup + steps, save_every_n_epochs=0,
                    save_every_n_steps=0, sample_every_n_epochs=0, sample_every_n_steps=0, seed=1234,
                    caption_extension=".txt", max_data_loader_n_workers=0, lr_warmup=0)
        for number in range(1, rounds + 1):
            for mode in modes if number % 2 else modes[::-1]:  # alternate the order: no mode always goes first
                values = normalize(dict(base, output_dir=str(tmp / f"out-{number}-{mode}"))).values
                figures = _run(mode, values, warmup, pipe_factory, poll_interval)
                figures["round"] = number
                runs.append(figures)
                if progress:
                    progress(format_run(figures))
    median = {}
    for mode in modes:
        mine = [r for r in runs if r["mode"] == mode]
        polls = [r["poll_cpu_ms"] for r in mine if r["poll_cpu_ms"] is not None]
        median[mode] = {"cpu_s_per_step": statistics.median(r["cpu_s_per_step"] for r in mine),
                        "wall_s_per_step": statistics.median(r["wall_s_per_step"] for r in mine),
                        "poll_cpu_ms": statistics.median(polls) if polls else None}
    # this machine has slow phases lasting minutes: the ratio within each round is the steadier figure
    by_round = {(r["round"], r["mode"]): r for r in runs}
    ratios = {}
    for mode in modes[1:]:
        paired = [by_round[n, mode]["cpu_s_per_step"] / by_round[n, "cli"]["cpu_s_per_step"]
                  for n in range(1, rounds + 1)]
        ratios[mode] = {"cpu": median[mode]["cpu_s_per_step"] / median["cli"]["cpu_s_per_step"],
                        "wall": median[mode]["wall_s_per_step"] / median["cli"]["wall_s_per_step"],
                        "cpu_per_round_median": statistics.median(paired)}
    return {"shape": shape, "resolution": resolution, "steps": steps, "warmup": warmup, "rounds": rounds,
            "config": str(config or DEFAULT_CONFIG), "poll_interval_s": poll_interval,
            "device": "cuda" if torch.cuda.is_available() else "cpu", "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"), "runs": runs, "median": median,
            "ratio_to_cli": ratios}


def format_run(r: dict) -> str:
    line = (f"round {r['round']}  {r['mode']:<10}  CPU {r['cpu_s_per_step']:.4f} s/step  "
            f"wall {r['wall_s_per_step']:.4f} s/step")
    if r["poll_cpu_ms"] is not None:
        line += f"  poller: {r['polls']} polls, {r['poll_cpu_ms']:.2f} ms CPU per poll"
    return line


def format_report(report: dict) -> str:
    lines = [f"app overhead: {report['shape']} at {report['resolution']} px, {report['steps']} timed steps after "
             f"{report['warmup']} warm-up, {report['rounds']} round(s) in alternating order; {report['device']}, "
             f"torch threads {report['torch_threads']} of {report['cpu_count']} CPUs, "
             f"OMP_WAIT_POLICY={report['omp_wait_policy']}, "
             f"a poll every {report['poll_interval_s']:g} s"]
    lines += [format_run(r) for r in report["runs"]]
    for mode, m in report["median"].items():
        line = f"median {mode:<10}  CPU {m['cpu_s_per_step']:.4f} s/step  wall {m['wall_s_per_step']:.4f} s/step"
        if m["poll_cpu_ms"] is not None:
            line += f"  poller {m['poll_cpu_ms']:.2f} ms CPU per poll"
        lines.append(line)
    for mode, ratio in report["ratio_to_cli"].items():
        lines.append(f"{mode}/CLI: CPU per step {ratio['cpu']:.3f}x, wall per step {ratio['wall']:.3f}x "
                     f"(medians); CPU per step within a round {ratio['cpu_per_round_median']:.3f}x (median)")
    return "\n".join(lines) + "\n"
