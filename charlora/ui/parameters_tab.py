"""Parameters tab: one control per parameter, built from the parameter table (never hand-listed),
and presets (Kohya JSON): load, save, save as, import.

Layout follows Kohya's LoRA tab: Source model and Folders first, then Basic, Advanced and Samples.
Keys that have no effect in CharLoRA sit in a closed panel of their own, so a loaded Kohya config
still shows every value it holds. Handlers receive the controls as a dict keyed by component (a set
of inputs), so no positional list of 100+ values can drift out of order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import presets
from ..errors import CharLoRAError, ConfigError
from ..params import GROUPS, PARAMS, PARAMS_BY_KEY, LoadedConfig, Param, defaults, load_config, normalize

_TOP_GROUPS = ("source model", "folders")
_TIER_TITLES = {"basic": "Basic", "advanced": "Advanced", "samples": "Samples"}


@dataclass
class ParametersTab:
    controls: dict  # key -> component
    preset: object
    refresh: object
    load: object
    save: object
    save_as_name: object
    save_as: object
    import_file: object
    message: object
    estimate_button: object
    estimate: object

    def components(self) -> set:
        return set(self.controls.values())


def _display(param: Param, value):
    """A normalised value as its control shows it ("not set" is an empty text field, as in Kohya)."""
    if value is None:
        return ""
    return str(value) if param.optional else value


def control_for(param: Param, value):
    """The Gradio control for one parameter (elem_id = param-<Kohya key>)."""
    import gradio as gr

    common = dict(label=param.key, info=param.help, value=_display(param, value), elem_id=f"param-{param.key}",
                  interactive=param.effect != "ignored")
    if param.kind == "bool":
        return gr.Checkbox(**common)
    if param.choices:
        return gr.Dropdown(choices=list(param.choices), **common)
    if param.kind in ("int", "float") and not param.optional:  # optional numbers are text: "" = not set
        if param.slider and param.min is not None:
            top = param.ui_max if param.ui_max is not None else param.max
            return gr.Slider(minimum=param.min, maximum=top, step=param.step or 1, **common)
        # no minimum/maximum here: the parameter table validates, with messages that name the key
        # (Gradio's own check rejects an empty optional field as 0 < minimum)
        return gr.Number(precision=0 if param.kind == "int" else None, **common)
    lines = 4 if param.kind == "text" else 1
    return gr.Textbox(lines=lines, max_lines=20 if lines > 1 else 1, **common)


def build() -> ParametersTab:
    import gradio as gr

    values = defaults()
    controls: dict = {}
    with gr.Row():
        preset = gr.Dropdown(label="Preset", choices=_preset_choices(), value=None, elem_id="preset-choice",
                             scale=3, info="Built-in presets and yours (kept in " + str(presets.user_preset_dir()) + ")")
        refresh = gr.Button("Refresh list", scale=1, size="sm")
        load = gr.Button("Load", variant="primary", scale=1, elem_id="preset-load")
        save = gr.Button("Save", scale=1, elem_id="preset-save")
    with gr.Row():
        save_as_name = gr.Textbox(label="Save as", placeholder="my-character", elem_id="preset-name", scale=3)
        save_as = gr.Button("Save as", scale=1, elem_id="preset-save-as")
        import_file = gr.File(label="Import a Kohya JSON config", file_types=[".json"], type="filepath",
                              elem_id="preset-import", scale=2)
    message = gr.Markdown("", elem_id="preset-message")
    with gr.Row():
        estimate_button = gr.Button("Estimate VRAM", size="sm", elem_id="param-estimate-button")
    estimate = gr.Markdown("", elem_id="param-estimate")

    live = [p for p in PARAMS if p.effect != "ignored" and not p.secret]
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
    return ParametersTab(controls, preset, refresh, load, save, save_as_name, save_as, import_file, message,
                         estimate_button, estimate)


# --------------------------------------------------------------------------- values <-> controls

def current_config(tab: ParametersTab, data: dict) -> LoadedConfig:
    """The controls' values as a normalised config (raises ConfigError naming every bad key)."""
    raw = {key: data[component] for key, component in tab.controls.items() if component in data}
    return normalize(raw, "the Parameters tab")


def control_updates(tab: ParametersTab, values: dict) -> dict:
    """Every control set from `values` (a slider widens when a file holds a larger value)."""
    import gradio as gr

    updates = {}
    for key, component in tab.controls.items():
        param = PARAMS_BY_KEY[key]
        value = _display(param, values[key])
        if param.slider and isinstance(value, (int, float)) and param.ui_max is not None and value > param.ui_max:
            updates[component] = gr.update(value=value, maximum=value)
        else:
            updates[component] = gr.update(value=value)
    return updates


def _preset_choices() -> list[str]:
    return [p.label for p in presets.list_presets()]


def _loaded_message(what: str, loaded: LoadedConfig) -> str:
    text = f"Loaded {what}."
    if loaded.warnings:
        text += "\n\n" + "\n".join(f"- warning: {w}" for w in loaded.warnings)
    return text


def _error(exc: Exception) -> str:
    return "**Not done.** " + str(exc).replace("\n", "\n\n")


# --------------------------------------------------------------------------- events

def wire(tab: ParametersTab) -> None:
    import gradio as gr

    outputs = [tab.message, *tab.controls.values()]

    def load_preset(name):
        if not name:
            return {tab.message: gr.update(value="Choose a preset first.")}
        try:
            loaded = presets.load_preset(name)
        except (CharLoRAError, ConfigError) as exc:
            return {tab.message: gr.update(value=_error(exc))}
        return {tab.message: gr.update(value=_loaded_message(f"preset **{name}**", loaded)),
                **control_updates(tab, loaded.values)}

    def import_config(path):
        if not path:
            return {tab.message: gr.update()}
        try:
            loaded = load_config(path)
        except (CharLoRAError, ConfigError) as exc:
            return {tab.message: gr.update(value=_error(exc))}
        return {tab.message: gr.update(value=_loaded_message(f"**{Path(path).name}** (save it as a preset to keep "
                                                             "it in the list)", loaded)),
                **control_updates(tab, loaded.values)}

    def save_named(name, data):
        try:
            values = current_config(tab, data).values
            path = presets.save_user_preset(name or "", values)
        except (CharLoRAError, ConfigError) as exc:
            return {tab.message: gr.update(value=_error(exc)), tab.preset: gr.update()}
        name = path.stem
        return {tab.message: gr.update(value=f"Saved preset **{name}** to `{path}` (Kohya's GUI opens it too)."),
                tab.preset: gr.update(choices=_preset_choices(), value=name)}

    def save_selected(data):
        name = data[tab.preset]
        if not name:
            return {tab.message: gr.update(value="Choose a preset to overwrite, or use Save as."), tab.preset: gr.update()}
        if name.endswith("(built-in)"):
            return {tab.message: gr.update(value="Built-in presets are not overwritten; use **Save as** with a "
                                                 "name of your own."), tab.preset: gr.update()}
        return save_named(name, data)

    tab.load.click(load_preset, inputs=tab.preset, outputs=outputs)
    tab.import_file.upload(import_config, inputs=tab.import_file, outputs=outputs)
    tab.save_as.click(lambda data: save_named(data[tab.save_as_name], data),
                      inputs={tab.save_as_name, *tab.components()}, outputs=[tab.message, tab.preset])
    tab.save.click(save_selected, inputs={tab.preset, *tab.components()}, outputs=[tab.message, tab.preset])
    tab.refresh.click(lambda: gr.update(choices=_preset_choices()), outputs=tab.preset)

    def estimate(data):
        from .training_tab import estimate_text

        try:
            return gr.update(value=estimate_text(current_config(tab, data).values))
        except ConfigError as exc:
            return gr.update(value=_error(exc))

    tab.estimate_button.click(estimate, inputs=tab.components(), outputs=tab.estimate)
