"""Training tab: Start/Stop, progress, loss curve, learning rate, speed, VRAM, samples, files, log.

The run lives in the process-wide job (charlora.train.job), not in the browser: Start returns at
once; a 1-second timer (and every page load) polls the job's snapshot, so a closed and reopened tab
shows the same run. Outputs that did not change are skipped.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import CharLoRAError, ConfigError
from ..monitor import default_monitor, format_bytes, process_peak_bytes
from .. import recent
from ..presets import charlora_home
from ..params import save_config
from ..train import current_job, training_command
from ..train.sampling import parse_prompts
from .charts import line_chart
from .parameters_tab import ParametersTab, current_config, estimate_markdown, show_estimate


@dataclass
class TrainingTab:
    start: object
    resume: object
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


NOTHING_SEEN = {"version": -1, "step": -1, "samples": -1, "files": -1, "state": "", "resumable": None}


def build() -> TrainingTab:
    import gradio as gr

    with gr.Row():
        start = gr.Button("Start training", variant="primary", elem_id="train-start")
        resume = gr.Button("Resume the stopped run", interactive=False, elem_id="train-resume")
        stop = gr.Button("Stop (save and keep a resumable state)", variant="stop", interactive=False,
                         elem_id="train-stop")
    message = gr.Markdown("", elem_id="train-message")
    with gr.Row():
        estimate_button = gr.Button("Estimate VRAM for these settings", size="sm", elem_id="train-estimate-button")
    estimate = gr.Markdown("", elem_id="train-estimate")
    progress = gr.HTML(_progress_html(0, 0), elem_id="train-progress")
    status = gr.Markdown("Not started.", elem_id="train-status")
    with gr.Row():
        with gr.Column(scale=3):
            plot = gr.HTML(loss_chart([]), elem_id="train-loss")
        with gr.Column(scale=2):
            vram = gr.Markdown("", elem_id="train-vram")
            files = gr.Markdown("", elem_id="train-files")
    samples = gr.Gallery(label="Samples (epoch or step, and prompt)", columns=4, height="auto", object_fit="contain",
                         elem_id="train-samples")
    log = gr.Textbox(label="Log", lines=8, max_lines=16, autoscroll=True, interactive=False, elem_id="train-log")
    with gr.Row():
        command_button = gr.Button("Print training command", size="sm")
        command = gr.Textbox(label="Command line for this config", interactive=False, elem_id="train-command")
    seen = gr.State(dict(NOTHING_SEEN))
    return TrainingTab(start, resume, stop, status, progress, plot, vram, samples, files, log, command_button,
                       command, estimate_button, estimate, message, seen)


# --------------------------------------------------------------------------- rendering

def loss_chart(points) -> str:
    """The loss curve: per-step loss and the epoch's running average, over the global step."""
    return line_chart({"loss": [(p[0], p[1]) for p in points], "average (epoch)": [(p[0], p[2]) for p in points]},
                      "Loss", "step", "loss", empty_text="The loss appears here after the first step.",
                      elem_id="train-loss-chart")


def _progress_html(step: int, total: int, state: str = "") -> str:
    percent = 100.0 * step / total if total else 0.0
    label = f"{step} / {total} steps ({percent:.0f}%)" if total else ("Preparing the run..." if state in (
        "starting", "running") else "")
    return (f'<div style="border:1px solid #999;border-radius:4px;height:18px;width:100%">'
            f'<div id="train-progress-bar" data-step="{step}" data-total="{total}" style="background:#f97316;'
            f'height:100%;width:{percent:.1f}%;border-radius:3px"></div></div>'
            f'<div style="font-size:0.9em">{label}</div>')


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def lr_summary(lrs: dict) -> str:
    """The current learning rates in a few words: block-wise UNet groups (unet_block<N>) as one range."""
    blocks = [lr for name, lr in lrs.items() if name.startswith("unet_block")]
    parts = [f"{name} {lr:.3g}" for name, lr in lrs.items() if not name.startswith("unet_block")]
    if blocks:
        low, high = min(blocks), max(blocks)
        span = f"{low:.3g}" if low == high else f"{low:.3g}-{high:.3g}"
        parts.insert(0, f"unet {span} ({len(blocks)} blocks)")
    return ", ".join(parts)


def status_text(snap) -> str:
    if snap.state == "idle":
        return "Not started."
    if snap.state == "starting" and not snap.total_steps:
        return "**Starting** — loading the model and caching latents..."
    lines = [f"**{snap.state.capitalize()}**" + (f" — epoch {snap.epoch} of {snap.total_epochs}, step {snap.step} of "
                                                f"{snap.total_steps}" if snap.total_steps else "")]
    if snap.state == "stopping":
        lines.append("Stopping after the current step; a LoRA file and a resumable state will be saved.")
    if snap.loss is not None:
        lrs = lr_summary(snap.lr)
        line = f"loss {snap.loss:.4f} (epoch average {snap.average_loss:.4f}) · lr {lrs}"
        if snap.state == "running":  # speed and ETA mean nothing once the run has ended
            line += f" · {snap.it_per_s:.2f} it/s · ETA {_duration(snap.eta_s)}"
        lines.append(line)
    if snap.plan:
        lines.append(snap.plan)
    if snap.message and not snap.running:
        lines.append(("**Error:** " if snap.state == "failed" else "") + snap.message)
    if not snap.running and snap.resumable_state:
        lines.append(f"**Resume the stopped run** continues from `{snap.resumable_state}`.")
    return "\n\n".join(lines)



def vram_text() -> str:
    reading = default_monitor().read()
    text = f"**VRAM:** {reading.message}"
    peak = process_peak_bytes()
    if peak:
        text += f"\n\nPeak tensors of this run: {format_bytes(peak)}"
    return text


def files_text(files, values: dict | None = None) -> str:
    logs = values["logging_dir"] if values else ""
    tail = (f"\n\n**Logs (TensorBoard):** `{logs}` — view with `tensorboard --logdir \"{logs}\"`" if logs else
            "\n\n**Logs:** none (set *Logging folder* in the Parameters tab to write TensorBoard logs)")
    if not files:
        return "**Saved LoRA files:** none yet" + (tail if values else "")
    lines = [f"- ... and {len(files) - 12} earlier"] if len(files) > 12 else []
    for f in files[-12:]:
        path = Path(f)
        try:
            size = f" ({format_bytes(path.stat().st_size)})"
        except OSError:  # pruned a moment ago
            size = " (removed)"
        lines.append(f"- `{path.name}`{size}")
    return f"**Saved LoRA files** ({len(files)}, in `{Path(files[-1]).parent}`):\n" + "\n".join(lines) + tail


_SAMPLE_NAME = re.compile(r"_(e?)(\d{6})_(\d{2})_\d{14}(?:_\d+)?\.png$")


def sample_caption(path: str, values: dict | None) -> str:
    """"epoch 3 · prompt" (or "step 500 · prompt") from Kohya's sample file name and the run's prompts."""
    match = _SAMPLE_NAME.search(Path(path).name)
    if not match:
        return Path(path).name
    at = f"epoch {int(match[2])}" if match[1] else f"step {int(match[2])}"
    prompts = parse_prompts(values["sample_prompts"] if values else "")
    index = int(match[3])
    return f"{at} · {prompts[index].prompt}" if index < len(prompts) else at


def _thumbnails(paths, values: dict | None, limit: int = 16):
    """The newest samples, newest first, whole (never cropped or stretched)."""
    from PIL import Image

    images = []
    for path in reversed(paths[-limit:]):
        try:
            with Image.open(path) as img:
                img.thumbnail((384, 384))
                images.append((img.copy(), sample_caption(path, values)))
        except OSError:
            continue
    return images


# --------------------------------------------------------------------------- events

def poll(seen: dict):
    """What changed since this page last looked (gr.skip() for the rest). Returns the outputs of
    `wire`'s poll list, the last one being the new `seen` (the overhead benchmark relies on that)."""
    import gradio as gr

    snap = current_job().snapshot()
    seen = dict(seen)
    changed = snap.version != seen["version"]
    ended = seen["state"] != snap.state and not snap.running
    can_resume = bool(snap.resumable_state) and not snap.running
    out = [gr.update(interactive=not snap.running), gr.update(interactive=can_resume),
           gr.update(interactive=snap.running and snap.state != "stopping"),
           # a Start / Stop note is about a run that has now ended, failed or been replaced
           gr.update(value="") if ended else gr.skip(),
           gr.update(value=status_text(snap)) if changed else gr.skip(),
           gr.update(value=_progress_html(snap.step, snap.total_steps, snap.state)) if changed else gr.skip()]
    redraw = snap.step != seen["step"] or (changed and not snap.losses)
    out.append(gr.update(value=loss_chart(snap.plot_points())) if redraw else gr.skip())
    out.append(gr.update(value=vram_text()) if snap.running or seen["version"] == -1 else gr.skip())
    out.append(gr.update(value=_thumbnails(snap.samples, snap.values)) if len(snap.samples) != seen["samples"]
               else gr.skip())
    out.append(gr.update(value=files_text(snap.files, snap.values)) if len(snap.files) != seen["files"] or changed
               else gr.skip())
    out.append(gr.update(value="\n".join(snap.log)) if changed else gr.skip())
    seen.update(version=snap.version, step=snap.step, samples=len(snap.samples), files=len(snap.files),
                state=snap.state)
    out.append(seen)
    return out


def wire(tab: TrainingTab, params: ParametersTab, demo, timer) -> None:
    import gradio as gr

    poll_outputs = [tab.start, tab.resume, tab.stop, tab.message, tab.status, tab.progress, tab.plot, tab.vram,
                    tab.samples, tab.files, tab.log, tab.seen]
    starting = [gr.update(interactive=False), gr.update(interactive=False), gr.update(interactive=True)]

    def launched(note: str, estimate):
        # show the new run at once (not the last run's "24 / 280 steps"), and make the next poll redraw all
        return (*starting, gr.update(value=note), gr.update(value=status_text(current_job().snapshot())),
                gr.update(value=_progress_html(0, 0, "starting")), gr.update(value=loss_chart([])), estimate,
                dict(NOTHING_SEEN, state="starting"))

    def refused(exc):
        return (gr.skip(), gr.skip(), gr.skip(), gr.update(value="**Not started.** " + str(exc).replace("\n", "\n\n")),
                gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip())

    def start(data):
        try:
            values = current_config(params, data).values
            current_job().start(values)
        except (CharLoRAError, ConfigError) as exc:
            return refused(exc)
        recent.remember(values)
        return launched(f"Started at {time.strftime('%H:%M:%S')}. Closing this page does not stop training.",
                        gr.update(value=estimate_markdown(values)))

    def resume():
        try:
            state = current_job().resume()
        except CharLoRAError as exc:
            return refused(exc)
        return launched(f"Resumed from `{state}` at {time.strftime('%H:%M:%S')}. Closing this page does not stop "
                        "training.", gr.skip())

    def stop():
        current_job().stop(save=True)
        return (gr.update(value="Stopping after the current step; a LoRA file and a resumable state will be "
                                "saved."), gr.update(interactive=False))

    def command(data):
        try:
            values = current_config(params, data).values
        except ConfigError as exc:
            return gr.update(value=str(exc))
        path = save_config(values, charlora_home() / "commands" / f"{values['output_name']}.json")
        return gr.update(value=training_command(values, str(path)))

    launch_outputs = [tab.start, tab.resume, tab.stop, tab.message, tab.status, tab.progress, tab.plot, tab.estimate,
                      tab.seen]
    tab.start.click(start, inputs=params.components(), outputs=launch_outputs, concurrency_limit=None)
    tab.resume.click(resume, outputs=launch_outputs, concurrency_limit=None)
    tab.estimate_button.click(lambda data: show_estimate(params, data), inputs=params.components(),
                              outputs=tab.estimate)
    tab.stop.click(stop, outputs=[tab.message, tab.stop], concurrency_limit=None)
    tab.command_button.click(command, inputs=params.components(), outputs=tab.command)
    # the tick must never queue behind other events, nor show a spinner every second
    timer.tick(poll, inputs=tab.seen, outputs=poll_outputs, concurrency_limit=None, show_progress="hidden")
    demo.load(poll, inputs=tab.seen, outputs=poll_outputs, concurrency_limit=None, show_progress="hidden")
