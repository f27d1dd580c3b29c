"""Parameters tab: one control per parameter, built from the parameter table (never hand-listed).

Layout follows Kohya's LoRA tab: Source model and Folders first, then Basic, Advanced and Samples.
Keys that have no effect in CharLoRA sit in a closed panel of their own, so a loaded Kohya config
still shows every value it holds.
"""

from __future__ import annotations

from ..params import GROUPS, PARAMS, Param, defaults

_TOP_GROUPS = ("source model", "folders")
_TIER_TITLES = {"basic": "Basic", "advanced": "Advanced", "samples": "Samples"}


def control_for(param: Param, value):
    """The Gradio control for one parameter (elem_id = the Kohya key)."""
    import gradio as gr

    common = dict(label=param.key, info=param.help, value=value, elem_id=f"param-{param.key}",
                  interactive=param.effect != "ignored")
    if param.kind == "bool":
        return gr.Checkbox(**common)
    if param.choices:
        return gr.Dropdown(choices=list(param.choices), **common)
    if param.kind in ("int", "float"):
        if param.slider and param.min is not None:
            top = param.ui_max if param.ui_max is not None else param.max
            return gr.Slider(minimum=param.min, maximum=top, step=param.step or 1, **common)
        return gr.Number(precision=0 if param.kind == "int" else None, minimum=param.min, maximum=param.max,
                         **common)
    lines = 4 if param.kind == "text" else 1
    return gr.Textbox(lines=lines, max_lines=20 if lines > 1 else 1, **common)


def build() -> dict:
    """Build the tab; returns {key: component} for the other tabs to read."""
    import gradio as gr

    values = defaults()
    controls: dict = {}
    live = [p for p in PARAMS if p.effect != "ignored"]
    for group in _TOP_GROUPS:
        with gr.Accordion(group.capitalize(), open=True):
            for p in live:
                if p.group == group:
                    controls[p.key] = control_for(p, values[p.key])
    for tier, title in _TIER_TITLES.items():
        with gr.Accordion(title, open=tier == "basic"):
            for group in GROUPS:
                members = [p for p in live if p.tier == tier and p.group == group and group not in _TOP_GROUPS]
                if not members:
                    continue
                gr.Markdown(f"**{group.capitalize()}**")
                for p in members:
                    controls[p.key] = control_for(p, values[p.key])
    with gr.Accordion("Kohya keys with no effect in CharLoRA", open=False):
        for p in PARAMS:
            if p.effect == "ignored" and not p.secret:
                controls[p.key] = control_for(p, values[p.key])
    return controls
