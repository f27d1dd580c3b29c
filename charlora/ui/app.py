"""Build and launch the CharLoRA app: four tabs, local and offline by default."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Before gradio is imported: no analytics, no version check (offline, exit would wait ~27 s on DNS).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

TAB_NAMES = ("Dataset", "Parameters", "Training", "Evaluation")


def _quiet_gradio() -> None:
    """gradio 6.31's queue uses pandas options that pandas 3 deprecates: a warning per event, not ours."""
    import warnings

    warnings.filterwarnings("ignore", message=".*no_silent_downcasting.*")
    warnings.filterwarnings("ignore", message="The copy keyword is deprecated", module="gradio")


def theme():
    """Gradio's default theme with the system's sans-serif font."""
    import gradio as gr

    # the bundled Source Sans Pro drew some bold capitals in another face ("CharLoRᴀ", "VRᴀM") in
    # Chromium: the system's sans-serif has every glyph (and needs no download either)
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"])


# Tables wrap long cells instead of clipping them ("no caption ... caption").
CSS = """
.charlora-table td, .charlora-table th { white-space: normal !important; overflow-wrap: anywhere; }
.charlora-table td span, .charlora-table td div { white-space: normal !important; overflow: visible !important;
  text-overflow: clip !important; }
"""


def serve(demo, host: str = "127.0.0.1", port: int = 7860, auth=None, **kwargs):
    """Launch the app (the tests use this too, so they see the same theme and styles)."""
    # server_name and share are explicit: GRADIO_SERVER_NAME / GRADIO_SHARE would override defaults
    quiet_queue(demo)
    return demo.launch(server_name=host, server_port=port, share=False, auth=auth, theme=theme(), css=CSS, **kwargs)


def quiet_queue(demo) -> None:
    """gradio 6.31's queue loop wakes every 1 ms on Linux (4.3% of a core with no page open, competing with
    training on small machines); its Windows values (50 ms, 100 ms) cut that to 0.8% (docs/benchmarks.md).
    Private attributes: left alone where a Gradio version lacks them."""
    queue = getattr(demo, "_queue", None)
    for name, seconds in (("sleep_when_free", 0.05), ("progress_update_sleep_when_free", 0.1)):
        if queue is not None and hasattr(queue, name):
            setattr(queue, name, seconds)


def build_app():
    import gradio as gr

    _quiet_gradio()
    from . import dataset_tab, evaluation_tab, parameters_tab, training_tab

    with gr.Blocks(title="CharLoRA") as demo:
        gr.Markdown("# CharLoRA\nTurn a handful of pictures of a character into a Stable Diffusion 1.5 LoRA.")
        with gr.Tabs():
            with gr.Tab("Dataset", id="dataset"):
                dataset = dataset_tab.build()
            with gr.Tab("Parameters", id="parameters"):
                params = parameters_tab.build()
            with gr.Tab("Training", id="training"):
                training = training_tab.build()
            with gr.Tab("Evaluation", id="evaluation"):
                evaluation = evaluation_tab.build()
        timer = gr.Timer(1.0)
        # events are wired once every tab exists: the Dataset and Training tabs read the Parameters controls
        parameters_tab.wire(params, demo)
        dataset_tab.wire(dataset, params)
        training_tab.wire(training, params, demo, timer)
        evaluation_tab.wire(evaluation, params, demo, timer)
    return demo


def read_auth(args) -> list[tuple[str, str]] | None:
    pairs = []
    if args.auth:
        pairs.append(args.auth)
    if args.auth_file:
        path = Path(args.auth_file)
        if not path.is_file():
            raise SystemExit(f"--auth-file {path}: no such file")
        pairs += [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not pairs:
        return None
    bad = [p for p in pairs if ":" not in p or p.startswith(":") or p.endswith(":")]
    if bad:
        raise SystemExit("--auth / --auth-file entries must look like USER:PASS")
    return [tuple(p.split(":", 1)) for p in pairs]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python gui.py", description="Start the CharLoRA app in your browser.")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--listen", action="store_true",
                        help="serve on every network interface (needs --auth or --auth-file); default: this computer only")
    parser.add_argument("--auth", metavar="USER:PASS", help="require this login (needed with --listen)")
    parser.add_argument("--auth-file", metavar="FILE", help="a file of USER:PASS lines (alternative to --auth)")
    args = parser.parse_args(argv)
    if args.listen and not (args.auth or args.auth_file):
        parser.error("--listen makes the app reachable from other computers; give --auth USER:PASS or --auth-file")
    if args.auth and ":" not in args.auth:
        parser.error("--auth must look like USER:PASS")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    auth = read_auth(args)
    demo = build_app()
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    print(f"CharLoRA: starting on http://{host}:{args.port}", file=sys.stderr)
    try:
        serve(demo, host, args.port, auth)
    finally:
        from ..train import current_job

        job = current_job()
        if job.snapshot().running:
            print("CharLoRA: stopping the training run after its current step and saving...", file=sys.stderr)
            job.stop(save=True)
            job.wait()
