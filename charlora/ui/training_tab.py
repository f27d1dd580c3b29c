"""Training tab: Start/Stop, progress, loss, VRAM. (Arrives with the engine, issues #5 and #6.)"""

from __future__ import annotations


def build() -> None:
    import gradio as gr

    gr.Markdown("### Training\n*Start/Stop, live progress, loss and VRAM arrive with the training engine (issue #5, #6).*")
