"""Training tab: Start/Stop, progress, loss curve, learning rate, speed, VRAM, samples, files, log.

The run lives in the process-wide job (charlora.train.job), not in the browser: Start returns at
once; a 1-second timer (and every page load) polls the job's snapshot, so a closed and reopened tab
shows the same run. Outputs that did not change are skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import CharLoRAError, ConfigError
from ..monitor import default_monitor, format_bytes, process_peak_bytes
from ..presets import charlora_home
from ..params import save_config
from ..train import current_job, training_command
from .parameters_tab import ParametersTab, current_config


@dataclass
class TrainingTab:
    start: object
    stop: object
    status: object
    progress: object
    plot: object
    vram: object
    samples: object
    files: object
    log: object
    command_button: object
    command: object
    estimate_button: object
    estimate: object
    message: object
    seen: object  # per-browser-tab state: what this page already shows


def build() -> TrainingTab:
    import gradio as gr

    with gr.Row():
        start = gr.Button("Start training", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop (save and keep a resumable state)", variant="stop", interactive=False,
                         elem_id="train-stop")
    message = gr.Markdown("", elem_id="train-message")
    with gr.Row():
        estimate_button = gr.Button("Estimate VRAM for these settings", size="sm", elem_id="train-estimate-button")
    estimate = gr.Markdown("", elem_id="train-estimate")
    progress = gr.HTML(_progress_html(0, 0), elem_id="train-progress")
    status = gr.Markdown("Not started.", elem_id="train-status")
    with gr.Row():
        plot = gr.LinePlot(_empty_frame(), x="step", y="loss", color="series", title="Loss", elem_id="train-loss",
                           height=280)
        with gr.Column():
            vram = gr.Markdown("", elem_id="train-vram")
            files = gr.Markdown("", elem_id="train-files")
    samples = gr.Gallery(label="Samples", columns=4, height=240, elem_id="train-samples")
    log = gr.Textbox(label="Log", lines=8, max_lines=16, autoscroll=True, interactive=False, elem_id="train-log")
    with gr.Row():
        command_button = gr.Button("Print training command", size="sm")
        command = gr.Textbox(label="Command line for this config", interactive=False, elem_id="train-command")
    seen = gr.State({"version": -1, "step": -1, "samples": -1, "files": -1})
    return TrainingTab(start, stop, status, progress, plot, vram, samples, files, log, command_button, command,
                       estimate_button, estimate, message, seen)


# --------------------------------------------------------------------------- rendering

def _empty_frame():
    import pandas as pd

    # explicit dtypes: an empty object-typed first frame makes the browser draw a categorical axis
    return pd.DataFrame({"step": pd.Series([], dtype="int64"), "loss": pd.Series([], dtype="float64"),
                         "series": pd.Series([], dtype="str")})


def loss_frame(points):
    import pandas as pd

    if not points:
        return _empty_frame()
    steps = [p[0] for p in points]
    return pd.DataFrame({
        "step": pd.Series(steps + steps, dtype="int64"),
        "loss": pd.Series([p[1] for p in points] + [p[2] for p in points], dtype="float64"),
        "series": pd.Series(["loss"] * len(points) + ["average (epoch)"] * len(points), dtype="str"),
    })


def _progress_html(step: int, total: int) -> str:
    percent = 100.0 * step / total if total else 0.0
    return (f'<div style="border:1px solid #999;border-radius:4px;height:18px;width:100%">'
            f'<div id="train-progress-bar" data-step="{step}" data-total="{total}" style="background:#f97316;'
            f'height:100%;width:{percent:.1f}%;border-radius:3px"></div></div>'
            f'<div style="font-size:0.9em">{step} / {total} steps ({percent:.0f}%)</div>')


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def status_text(snap) -> str:
    if snap.state == "idle":
        return "Not started."
    lines = [f"**{snap.state.capitalize()}**" + (f" — epoch {snap.epoch} of {snap.total_epochs}, step {snap.step} of "
                                                f"{snap.total_steps}" if snap.total_steps else "")]
    if snap.loss is not None:
        lrs = ", ".join(f"{name} {lr:.3g}" for name, lr in snap.lr.items())
        lines.append(f"loss {snap.loss:.4f} (epoch average {snap.average_loss:.4f}) · lr {lrs} · "
                     f"{snap.it_per_s:.2f} it/s · ETA {_duration(snap.eta_s)}")
    if snap.plan:
        lines.append(snap.plan)
    if snap.message and not snap.running:
        lines.append(("**Error:** " if snap.state == "failed" else "") + snap.message)
    return "\n\n".join(lines)


def estimate_text(values: dict) -> str:
    """The VRAM estimate for these settings beside this GPU's total (NVML), as Markdown."""
    from ..vram_estimate import estimate_vram, format_estimate

    reading = default_monitor().read()
    estimate = estimate_vram(values, reading.total_bytes if reading.available else None)
    text = "```\n" + format_estimate(estimate) + "\n```"
    if not reading.available:
        text += f"\n\n{reading.message}: compare {estimate.total / 1024**3:.1f} GiB with your GPU's memory."
    return text


def vram_text() -> str:
    reading = default_monitor().read()
    text = f"**VRAM:** {reading.message}"
    peak = process_peak_bytes()
    if peak:
        text += f"\n\nPeak tensors of this run: {format_bytes(peak)}"
    return text


def files_text(files) -> str:
    if not files:
        return "**Saved LoRA files:** none yet"
    lines = [f"- ... and {len(files) - 12} earlier"] if len(files) > 12 else []
    for f in files[-12:]:
        path = Path(f)
        try:
            size = f" ({format_bytes(path.stat().st_size)})"
        except OSError:  # pruned a moment ago
            size = " (removed)"
        lines.append(f"- `{path.name}`{size}")
    return f"**Saved LoRA files** ({len(files)}, in `{Path(files[-1]).parent}`):\n" + "\n".join(lines)


def _thumbnails(paths, limit: int = 16):
    from PIL import Image

    images = []
    for path in paths[-limit:]:
        try:
            with Image.open(path) as img:
                img.thumbnail((256, 256))
                images.append((img.copy(), Path(path).name))
        except OSError:
            continue
    return images


# --------------------------------------------------------------------------- events

def poll(seen: dict):
    """What changed since this page last looked (gr.skip() for the rest)."""
    import gradio as gr

    snap = current_job().snapshot()
    seen = dict(seen)
    changed = snap.version != seen["version"]
    out = [gr.update(interactive=not snap.running), gr.update(interactive=snap.running and snap.state != "stopping")]
    out += [gr.update(value=status_text(snap)) if changed else gr.skip(),
            gr.update(value=_progress_html(snap.step, snap.total_steps)) if changed else gr.skip()]
    if snap.step != seen["step"] or changed and not snap.losses:
        out.append(gr.update(value=loss_frame(snap.plot_points())))
    else:
        out.append(gr.skip())
    out.append(gr.update(value=vram_text()))
    out.append(gr.update(value=_thumbnails(snap.samples)) if len(snap.samples) != seen["samples"] else gr.skip())
    out.append(gr.update(value=files_text(snap.files)) if len(snap.files) != seen["files"] or changed else gr.skip())
    out.append(gr.update(value="\n".join(snap.log)) if changed else gr.skip())
    seen.update(version=snap.version, step=snap.step, samples=len(snap.samples), files=len(snap.files))
    out.append(seen)
    return out


def wire(tab: TrainingTab, params: ParametersTab, demo, timer) -> None:
    import gradio as gr

    poll_outputs = [tab.start, tab.stop, tab.status, tab.progress, tab.plot, tab.vram, tab.samples, tab.files,
                    tab.log, tab.seen]

    def start(data):
        try:
            values = current_config(params, data).values
            current_job().start(values)
        except (CharLoRAError, ConfigError) as exc:
            return gr.update(value="**Not started.** " + str(exc).replace("\n", "\n\n")), gr.skip()
        return (gr.update(value=f"Started at {time.strftime('%H:%M:%S')}. Closing this page does not stop training."),
                gr.update(value=estimate_text(values)))

    def estimate(data):
        try:
            return gr.update(value=estimate_text(current_config(params, data).values))
        except ConfigError as exc:
            return gr.update(value=str(exc))

    def stop():
        current_job().stop(save=True)
        return gr.update(value="Stopping after the current step; a LoRA file and a resumable state will be saved.")

    def command(data):
        try:
            values = current_config(params, data).values
        except ConfigError as exc:
            return gr.update(value=str(exc))
        path = save_config(values, charlora_home() / "commands" / f"{values['output_name'] or 'last'}.json")
        return gr.update(value=training_command(values, str(path)))

    tab.start.click(start, inputs=params.components(), outputs=[tab.message, tab.estimate], concurrency_limit=None)
    tab.estimate_button.click(estimate, inputs=params.components(), outputs=tab.estimate)
    tab.stop.click(stop, outputs=tab.message, concurrency_limit=None)
    tab.command_button.click(command, inputs=params.components(), outputs=tab.command)
    # the tick must never queue behind other events, nor show a spinner every second
    timer.tick(poll, inputs=tab.seen, outputs=poll_outputs, concurrency_limit=None, show_progress="hidden")
    demo.load(poll, inputs=tab.seen, outputs=poll_outputs, concurrency_limit=None, show_progress="hidden")
