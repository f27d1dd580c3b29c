"""Evaluation tab: checkpoint x CFG grid, seed batches, consistency score. (Issue #7.)"""

from __future__ import annotations


def build() -> None:
    import gradio as gr

    gr.Markdown("### Evaluation\n*The checkpoint x CFG grid, seed batches and the consistency score that "
                "recommends a checkpoint arrive with issue #7.*")
