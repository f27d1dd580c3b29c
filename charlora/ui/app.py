"""Build and launch the CharLoRA app: four tabs, local and offline by default."""

from __future__ import annotations

import argparse
import os
import sys

# Before gradio is imported: no analytics, no version check (offline, exit would wait ~27 s on DNS).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

TAB_NAMES = ("Dataset", "Parameters", "Training", "Evaluation")


def build_app():
    import gradio as gr

    from . import dataset_tab, evaluation_tab, parameters_tab, training_tab

    with gr.Blocks(title="CharLoRA") as demo:
        gr.Markdown("# CharLoRA\nTurn a handful of pictures of a character into a Stable Diffusion 1.5 LoRA.")
        with gr.Tabs():
            with gr.Tab("Dataset", id="dataset"):
                dataset_tab.build()
            with gr.Tab("Parameters", id="parameters"):
                parameters_tab.build()
            with gr.Tab("Training", id="training"):
                training_tab.build()
            with gr.Tab("Evaluation", id="evaluation"):
                evaluation_tab.build()
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python gui.py", description="Start the CharLoRA app in your browser.")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--listen", action="store_true",
                        help="serve on every network interface (needs --auth); default is this computer only")
    parser.add_argument("--auth", metavar="USER:PASS", help="require this login (needed with --listen)")
    args = parser.parse_args(argv)
    if args.listen and not args.auth:
        parser.error("--listen makes the app reachable from other computers; give --auth USER:PASS too")
    if args.auth and ":" not in args.auth:
        parser.error("--auth must look like USER:PASS")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    demo = build_app()
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    print(f"CharLoRA: starting on http://{'0.0.0.0' if args.listen else '127.0.0.1'}:{args.port}", file=sys.stderr)
    # server_name and share are explicit: GRADIO_SERVER_NAME / GRADIO_SHARE would override defaults.
    demo.launch(server_name="0.0.0.0" if args.listen else "127.0.0.1", server_port=args.port, share=False,
                auth=auth)
