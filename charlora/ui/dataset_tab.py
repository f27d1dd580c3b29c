"""Dataset tab: folders, preparation, the dataset report. (The report arrives with issue #3.)"""

from __future__ import annotations


def build() -> None:
    import gradio as gr

    gr.Markdown(
        "### Dataset\n"
        "Your images go in Kohya's layout: `img/10_<trigger> <class>/` (10 = repeats), one caption "
        "file per image.\n\n*The dataset report and preparation tool are being built (issue #3).*"
    )
