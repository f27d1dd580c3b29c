"""Evaluation tab: the checkpoint x CFG grid, seed batches, the consistency score, "keep this one".

Work runs in the process-wide evaluation job (a thread); the page polls it, so a long grid survives
a closed tab, and Stop ends it after the current image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CharLoRAError, ConfigError
from ..evaluate import (GridSpec, ScoreSpec, build_grid, current_evaluation, keep_checkpoint, run_files_of,
                        score_run, seed_batch)
from ..evaluate.grid import shared_renderer
from ..evaluate.prompts import AXIS_KINDS, parse_axis_values
from ..train.sampling import SAMPLERS
from .parameters_tab import ParametersTab, current_config

DEFAULT_PROMPT = "portrait of a girl <lora:NAME:1>, illustration"


@dataclass
class EvaluationTab:
    fields: dict  # name -> component
    from_run: object
    list_checkpoints: object
    grid: object
    seeds: object
    score: object
    stop: object
    keep: object
    progress: object
    message: object
    image: object
    scores: object
    plot: object
    recommendation: object
    keep_message: object
    seen: object


def build() -> EvaluationTab:
    import gradio as gr

    f = {}
    gr.Markdown("Compare the run's checkpoints as in AUTOMATIC1111's X/Y/Z plot, check that the character holds "
                "over many seeds, and let the consistency score recommend the checkpoint to keep.")
    with gr.Row():
        f["base_model"] = gr.Textbox(label="Base model", elem_id="eval-base-model", scale=3)
        f["lora_folder"] = gr.Textbox(label="LoRA folder (the run's output_dir)", elem_id="eval-lora-folder", scale=3)
        f["name"] = gr.Textbox(label="Run name (output_name)", elem_id="eval-name", scale=2)
        from_run = gr.Button("Use the Parameters tab's run", size="sm", scale=1)
    with gr.Accordion("Grid", open=True):
        f["prompt"] = gr.Textbox(label="Prompt (A1111 syntax, <lora:NAME:W>)", value=DEFAULT_PROMPT, lines=2,
                                 elem_id="eval-prompt")
        f["negative"] = gr.Textbox(label="Negative prompt", elem_id="eval-negative")
        with gr.Row():
            f["x_kind"] = gr.Dropdown(list(AXIS_KINDS), value="checkpoint", label="X axis", elem_id="eval-x-kind")
            f["x_values"] = gr.Textbox(label="X values", elem_id="eval-x-values", scale=3)
            list_checkpoints = gr.Button("List the run's checkpoints", size="sm")
        with gr.Row():
            f["y_kind"] = gr.Dropdown(list(AXIS_KINDS), value="cfg", label="Y axis", elem_id="eval-y-kind")
            f["y_values"] = gr.Textbox(label="Y values", value="7,8,9,10", elem_id="eval-y-values", scale=3)
        with gr.Row():
            f["z_kind"] = gr.Dropdown(list(AXIS_KINDS), value="nothing", label="Z axis (one grid per value)")
            f["z_values"] = gr.Textbox(label="Z values", scale=3)
        with gr.Row():
            f["seed"] = gr.Number(label="Seed", value=1234, precision=0, elem_id="eval-seed")
            f["steps"] = gr.Number(label="Steps", value=20, precision=0, elem_id="eval-steps")
            f["cfg"] = gr.Number(label="CFG", value=7.0, elem_id="eval-cfg")
            f["sampler"] = gr.Dropdown(list(SAMPLERS), value="euler_a", label="Sampler")
            f["width"] = gr.Number(label="Width", value=512, precision=0, elem_id="eval-width")
            f["height"] = gr.Number(label="Height", value=512, precision=0, elem_id="eval-height")
        grid = gr.Button("Generate grid", variant="primary", elem_id="eval-grid")
    with gr.Accordion("Seed batch", open=False):
        with gr.Row():
            f["seed_lora"] = gr.Textbox(label="LoRA file (empty = the run's final file)", scale=3)
            f["seed_list"] = gr.Textbox(label="Seeds", value="1-8")
        seeds = gr.Button("Generate seed batch")
    with gr.Accordion("Consistency score", open=True):
        with gr.Row():
            f["score_prompts"] = gr.Textbox(label="Prompts (one per line)", lines=3, elem_id="eval-score-prompts",
                                            value="portrait of a girl\na girl reading a book in a park")
            f["score_seeds"] = gr.Textbox(label="Seeds", value="1-4", elem_id="eval-score-seeds")
            f["train_data_dir"] = gr.Textbox(label="Training images (train_data_dir)", elem_id="eval-train-dir")
            f["scorer"] = gr.Textbox(label="Scorer (CLIP folder or Hub id; empty = the base model's safety checker "
                                           "or openai/clip-vit-large-patch14)", elem_id="eval-scorer")
        score = gr.Button("Score checkpoints", variant="primary", elem_id="eval-score")
    with gr.Row():
        stop = gr.Button("Stop", variant="stop", elem_id="eval-stop")
    progress = gr.HTML("", elem_id="eval-progress")
    message = gr.Markdown("", elem_id="eval-message")
    image = gr.Image(label="Result", type="filepath", interactive=False, elem_id="eval-image")
    recommendation = gr.Markdown("", elem_id="eval-recommendation")
    with gr.Row():
        scores = gr.Dataframe(headers=["checkpoint", "epoch", "identity", "consistency", "prompt", "warnings"],
                              label="Scores", interactive=False, elem_id="eval-scores")
        plot = gr.LinePlot(x="epoch", y="score", color="metric", title="Scores over epochs", elem_id="eval-plot",
                           height=260)
    with gr.Row():
        f["keep_file"] = gr.Textbox(label="Checkpoint to keep (default: the recommended one)", scale=3)
        f["keep_to"] = gr.Textbox(label="Copy it to (e.g. stable-diffusion-webui/models/Lora)", scale=3)
        keep = gr.Button("Keep this one (archive the others)")
    keep_message = gr.Markdown("")
    seen = gr.State({"version": -1})
    return EvaluationTab(f, from_run, list_checkpoints, grid, seeds, score, stop, keep, progress, message, image,
                         scores, plot, recommendation, keep_message, seen)


def _int(value, default):
    return int(value) if value not in (None, "") else default


def score_rows(report: dict) -> list:
    return [[r["name"], r["epoch"] if r["epoch"] is not None else "", r["identity"], r["consistency"],
             "" if r["prompt_fidelity"] is None else r["prompt_fidelity"], "; ".join(r["warnings"])]
            for r in report.get("rows", [])]


def score_frame(report: dict):
    import pandas as pd

    rows = [r for r in report.get("rows", []) if r["epoch"] is not None]
    data = {"epoch": [], "score": [], "metric": []}
    for r in rows:
        for metric in ("identity", "consistency"):
            data["epoch"].append(int(r["epoch"]))
            data["score"].append(float(r[metric]))
            data["metric"].append(metric)
    return pd.DataFrame({"epoch": pd.Series(data["epoch"], dtype="int64"),
                         "score": pd.Series(data["score"], dtype="float64"),
                         "metric": pd.Series(data["metric"], dtype="str")})


def recommendation_text(report: dict) -> str:
    rec = report.get("recommendation")
    if not rec:
        return ""
    reasons = "\n".join(f"- {r}" for r in rec["reasons"])
    return f"### Recommended: `{rec['name']}`\n{reasons}\n\n*Rule:* {report['rule']}"


def poll(seen: dict):
    import gradio as gr

    snap = current_evaluation().snapshot()
    if snap.version == seen.get("version"):
        return [gr.skip()] * 7 + [seen]
    percent = 100.0 * snap.done / snap.total if snap.total else 0.0
    bar = (f'<div id="eval-progress-bar" data-done="{snap.done}" data-total="{snap.total}" data-state="{snap.state}">'
           f'{snap.kind} {snap.state}: {snap.done} / {snap.total} ({percent:.0f}%)</div>') if snap.kind else ""
    message = snap.message if snap.state != "failed" else f"**Error:** {snap.message}"
    result = snap.result
    image = result.get("image")
    warnings = result.get("warnings") or []
    if warnings:
        message += "\n\n" + "\n".join(f"- warning: {w}" for w in warnings)
    report = result.get("report") or {}
    outs = [gr.update(value=bar), gr.update(value=message),
            gr.update(value=image) if image else gr.skip(),
            gr.update(value=score_rows(report)) if report else gr.skip(),
            gr.update(value=score_frame(report)) if report else gr.skip(),
            gr.update(value=recommendation_text(report)) if report else gr.skip(),
            gr.update(interactive=snap.running)]
    return outs + [{"version": snap.version}]


def wire(tab: EvaluationTab, params: ParametersTab, demo, timer) -> None:
    import gradio as gr

    f = tab.fields
    inputs = set(f.values())

    def from_run(data):
        try:
            v = current_config(params, data).values
        except ConfigError as exc:
            return [gr.skip()] * 4 + [gr.update(value=str(exc))]
        return [v["pretrained_model_name_or_path"], v["output_dir"], v["output_name"], v["train_data_dir"],
                gr.update(value="Filled from the Parameters tab.")]

    def list_checkpoints(data):
        files = run_files_of(Path(data[f["lora_folder"]] or "."), data[f["name"]] or "")
        if not files:
            return gr.skip(), gr.update(value="No files of that run in the LoRA folder.")
        return ", ".join(["none"] + [p.stem for p in files]), gr.update(value=f"{len(files)} checkpoints listed.")

    def start(kind, work):
        try:
            current_evaluation().start(kind, work)
        except CharLoRAError as exc:
            return gr.update(value=f"**Not started.** {exc}")
        return gr.update(value=f"{kind} started.")

    def grid(data):
        spec = GridSpec(base_model=data[f["base_model"]], lora_folder=data[f["lora_folder"]],
                        prompt=data[f["prompt"]], negative=data[f["negative"]],
                        output_dir=str(Path(data[f["lora_folder"]] or ".") / "grids"),
                        x_kind=data[f["x_kind"]], x_values=data[f["x_values"]], y_kind=data[f["y_kind"]],
                        y_values=data[f["y_values"]], z_kind=data[f["z_kind"]], z_values=data[f["z_values"]],
                        seed=_int(data[f["seed"]], 1234), steps=_int(data[f["steps"]], 20),
                        cfg=float(data[f["cfg"]] or 7.0), sampler=data[f["sampler"]],
                        width=_int(data[f["width"]], 512), height=_int(data[f["height"]], 512))

        def work(progress, stop):
            result = build_grid(spec, shared_renderer(spec.base_model, spec.clip_skip), progress, stop)
            return {"image": result.grids[0] if result.grids else None, "grids": result.grids,
                    "warnings": result.warnings}
        return start("grid", work)

    def seeds(data):
        folder, name = Path(data[f["lora_folder"]] or "."), data[f["name"]]
        lora = Path(data[f["seed_lora"]]) if data[f["seed_lora"]] else folder / f"{name}.safetensors"

        def work(progress, stop):
            renderer = shared_renderer(data[f["base_model"]], 1)
            seed_list = [int(s) for s in parse_axis_values("seed", data[f["seed_list"]])]
            out = folder / "grids" / f"{lora.stem}-seeds.png"
            path, _ = seed_batch(renderer, lora, data[f["prompt"]], data[f["negative"]], seed_list, out,
                                 steps=_int(data[f["steps"]], 20), cfg=float(data[f["cfg"]] or 7.0),
                                 sampler=data[f["sampler"]], width=_int(data[f["width"]], 512),
                                 height=_int(data[f["height"]], 512))
            return {"image": str(path)}
        return start("seeds", work)

    def score(data):
        def work(progress, stop):
            spec = ScoreSpec(base_model=data[f["base_model"]], lora_folder=data[f["lora_folder"]],
                             output_name=data[f["name"]], train_data_dir=data[f["train_data_dir"]],
                             output_dir=str(Path(data[f["lora_folder"]] or ".") / "scores"),
                             prompts=[p for p in data[f["score_prompts"]].splitlines() if p.strip()],
                             seeds=[int(s) for s in parse_axis_values("seed", data[f["score_seeds"]])],
                             negative=data[f["negative"]], scorer=data[f["scorer"]].strip(),
                             steps=_int(data[f["steps"]], 20), cfg=float(data[f["cfg"]] or 7.0),
                             sampler=data[f["sampler"]], width=_int(data[f["width"]], 512),
                             height=_int(data[f["height"]], 512))
            report = score_run(spec, shared_renderer(spec.base_model, 1), progress=progress, stop=stop)
            return {"report": report}
        return start("score", work)

    def keep(data):
        snap = current_evaluation().snapshot()
        chosen = data[f["keep_file"]] or (snap.result.get("report") or {}).get("recommended_file")
        if not chosen:
            return gr.update(value="Choose a checkpoint (or score the run first to get a recommendation).")
        if not data[f["keep_to"]]:
            return gr.update(value="Choose the folder to copy it to (e.g. your A1111 models/Lora).")
        try:
            chosen = Path(chosen)
            result = keep_checkpoint(chosen, Path(data[f["keep_to"]]), run_files_of(chosen.parent, data[f["name"]]))
        except CharLoRAError as exc:
            return gr.update(value=f"**Not done.** {exc}")
        return gr.update(value=f"Copied to `{result.kept}`; {len(result.archived)} other file(s) moved to "
                               f"`{result.archive_dir}` (nothing deleted).")

    tab.from_run.click(from_run, inputs=params.components(),
                       outputs=[f["base_model"], f["lora_folder"], f["name"], f["train_data_dir"], tab.message])
    tab.list_checkpoints.click(list_checkpoints, inputs=inputs, outputs=[f["x_values"], tab.message])
    tab.grid.click(grid, inputs=inputs, outputs=tab.message, concurrency_limit=None)
    tab.seeds.click(seeds, inputs=inputs, outputs=tab.message, concurrency_limit=None)
    tab.score.click(score, inputs=inputs, outputs=tab.message, concurrency_limit=None)
    tab.stop.click(lambda: current_evaluation().stop(), concurrency_limit=None)
    tab.keep.click(keep, inputs=inputs, outputs=tab.keep_message)
    outputs = [tab.progress, tab.message, tab.image, tab.scores, tab.plot, tab.recommendation, tab.stop, tab.seen]
    timer.tick(poll, inputs=tab.seen, outputs=outputs, concurrency_limit=None, show_progress="hidden")
    demo.load(poll, inputs=tab.seen, outputs=outputs, concurrency_limit=None, show_progress="hidden")
