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

from .. import presets, recent
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
    pickers: dict  # key -> "Recent" dropdown beside a path field

    def components(self) -> set:
        return set(self.controls.values())


def _display(param: Param, value):
    """A normalised value as its control shows it ("not set" is an empty text field, as in Kohya)."""
    if value is None:
        return ""
    return str(value) if param.optional else value


def control_for(param: Param, value):
    """The Gradio control for one parameter (elem_id = param-<Kohya key>): a human label, with Kohya's key
    and the help below it, as Kohya's GUI shows them."""
    import gradio as gr

    common = dict(label=param.title, info=f"{param.key} · {param.help}", value=_display(param, value),
                  elem_id=f"param-{param.key}", interactive=param.effect != "ignored",
                  visible=not param.sdxl_only)  # SDXL-only settings appear when sdxl is on (wire)
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


def _path_control(param: Param, value, controls: dict, pickers: dict) -> None:
    """A path field with a dropdown beside it of the paths used before (and checkpoints found)."""
    import gradio as gr

    with gr.Row(equal_height=True):
        with gr.Column(scale=4, min_width=320):
            controls[param.key] = control_for(param, value)
        with gr.Column(scale=2, min_width=200):
            pickers[param.key] = gr.Dropdown(choices=recent.choices_for(param.key), value=None, label="Recent",
                                             info="pick one to fill the field", elem_id=f"recent-{param.key}")


def _controls(members: list, values: dict, controls: dict, pickers: dict, columns: int = 1) -> None:
    import gradio as gr

    simple = []
    for p in members:
        if p.key in recent.REMEMBERED:
            _path_control(p, values[p.key], controls, pickers)
        else:
            simple.append(p)
    for start in range(0, len(simple), columns):
        with gr.Row(equal_height=True):
            for p in simple[start:start + columns]:
                controls[p.key] = control_for(p, values[p.key])


def build() -> ParametersTab:
    import gradio as gr

    values = defaults()
    controls: dict = {}
    pickers: dict = {}
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
    with gr.Accordion("Main settings (what most runs change)", open=True, elem_id="params-main"):
        _controls([p for p in live if p.main], values, controls, pickers, columns=3)
    with gr.Accordion("Model and folders", open=True):
        _controls([p for p in live if p.group in _TOP_GROUPS and not p.main], values, controls, pickers, columns=2)
    for tier, title in _TIER_TITLES.items():
        with gr.Accordion(title, open=tier == "basic"):
            for group in GROUPS:
                members = [p for p in live if p.tier == tier and p.group == group and group not in _TOP_GROUPS
                           and not p.main]
                if not members:
                    continue
                gr.Markdown(f"**{group.capitalize()}**")
                _controls(members, values, controls, pickers, columns=2)
    with gr.Accordion("Kohya keys with no effect in CharLoRA", open=False):
        _controls([p for p in PARAMS if p.effect == "ignored" and not p.secret], values, controls, pickers, columns=2)
    return ParametersTab(controls, preset, refresh, load, save, save_as_name, save_as, import_file, message,
                         estimate_button, estimate, pickers)


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


def estimate_markdown(values: dict) -> str:
    """The engine's VRAM estimate for these settings on this machine, as the tabs show it."""
    from ..vram_estimate import estimate_text

    return "```\n" + estimate_text(values) + "\n```"


def show_estimate(tab: ParametersTab, data):
    """An "Estimate VRAM" button's answer (the Parameters and Training tabs have one each)."""
    import gradio as gr

    try:
        return gr.update(value=estimate_markdown(current_config(tab, data).values))
    except ConfigError as exc:
        return gr.update(value=_error(exc))


# --------------------------------------------------------------------------- events

def job_settings(tab: ParametersTab) -> dict:
    """On a new page: every control set from the run that is going or last ran (else nothing changes),
    so a reopened tab shows the settings it trains with, and Start/Resume reuse them."""
    from ..train import current_job

    import gradio as gr

    values = current_job().snapshot().values
    if not values:
        return {tab.message: gr.skip()}
    return {tab.message: "Showing the settings of the current (or last) training run.",
            **control_updates(tab, values)}


def refresh_lists(tab: ParametersTab) -> list:
    """Fresh preset and recent-path lists (a new page lists presets saved by another page)."""
    import gradio as gr

    return [gr.update(choices=_preset_choices())] + [gr.update(choices=recent.choices_for(key))
                                                     for key in tab.pickers]


def wire(tab: ParametersTab, demo) -> None:
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

    def save_named(name, data, overwrite=False):
        try:
            values = current_config(tab, data).values
            path = presets.save_user_preset(name or "", values, overwrite=overwrite)
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
        return save_named(name, data, overwrite=True)

    tab.load.click(load_preset, inputs=tab.preset, outputs=outputs)
    tab.import_file.upload(import_config, inputs=tab.import_file, outputs=outputs)
    tab.save_as.click(lambda data: save_named(data[tab.save_as_name], data),
                      inputs={tab.save_as_name, *tab.components()}, outputs=[tab.message, tab.preset])
    tab.save.click(save_selected, inputs={tab.preset, *tab.components()}, outputs=[tab.message, tab.preset])
    lists = [tab.preset, *tab.pickers.values()]
    tab.refresh.click(lambda: refresh_lists(tab), outputs=lists)
    demo.load(lambda: refresh_lists(tab), outputs=lists, show_progress="hidden")
    demo.load(lambda: job_settings(tab), outputs=outputs, show_progress="hidden")
    for key, picker in tab.pickers.items():
        # choosing a recent path fills the field; the dropdown then clears, ready for the next pick
        picker.input(lambda chosen: (chosen or gr.skip(), None), inputs=picker,
                     outputs=[tab.controls[key], picker], show_progress="hidden")

    tab.estimate_button.click(lambda data: show_estimate(tab, data), inputs=tab.components(), outputs=tab.estimate)
    wire_sdxl(tab)


def wire_sdxl(tab: ParametersTab) -> None:
    """The SDXL-only settings show only while sdxl is on; choosing a base model sets sdxl from the file."""
    import gradio as gr

    sdxl = tab.controls["sdxl"]
    only = [tab.controls[p.key] for p in PARAMS if p.sdxl_only and p.key in tab.controls]
    sdxl.change(lambda on: [gr.update(visible=bool(on))] * len(only), inputs=sdxl, outputs=only,
                show_progress="hidden")
    model = tab.controls["pretrained_model_name_or_path"]
    model.change(lambda source, on: model_family_update(tab, source, on), inputs=[model, sdxl],
                 outputs=[sdxl, tab.message], show_progress="hidden")


def model_family_update(tab: ParametersTab, source, sdxl_on) -> dict:
    """sdxl set to what the chosen base model is (when its file says so cheaply), with a note of what changed."""
    import gradio as gr

    from ..models import SDXL
    from ..models.checkpoint_file import base_model_family

    family = base_model_family(source)
    if family is None or (family is SDXL) == bool(sdxl_on):
        return {tab.controls["sdxl"]: gr.skip(), tab.message: gr.skip()}
    if family is SDXL:
        note = ("The base model is **SDXL**: sdxl is now on, and its settings are shown. SDXL trains at 1024 px: "
                "the presets **sdxl-character-16gb** and **sdxl-character-12gb-lowvram** set that and the rest "
                "(a preset empties the model and folder fields: fill them in again after loading it).")
    else:
        note = f"The base model is **{family.name}**: sdxl is now off."
    return {tab.controls["sdxl"]: family is SDXL, tab.message: note}
