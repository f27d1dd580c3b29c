"""Evaluation tab: the checkpoint x CFG grid, seed batches, the consistency score, "keep this one".

Work runs in the process-wide evaluation job (a thread); the page polls it, so a long grid survives
a closed tab, and Stop ends it after the current image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CharLoRAError, ConfigError
from ..evaluate import (GridSpec, ScoreSpec, SeedBatchSpec, build_grid, current_evaluation,
                        keep_checkpoint, resolve_lora, run_files, score_run, seed_batch)
from ..evaluate.render import shared_renderer
from ..evaluate.axes import AXIS_KINDS, AXIS_TITLES, parse_axis_values
from ..params.evaluation import EVALUATION as E
from ..train.sampling import SAMPLER_CHOICES
from ..train import current_job
from .charts import line_chart
from .parameters_tab import ParametersTab, current_config

DEFAULT_PROMPT = "portrait of a girl <lora:NAME:1>, illustration"
AXIS_CHOICES = [(AXIS_TITLES[kind], kind) for kind in AXIS_KINDS]  # A1111's names, the engine's keys


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
        f["negative"] = gr.Textbox(label=E["negative"].label, value=E["negative"].default, elem_id="eval-negative")
        with gr.Row():
            f["x_kind"] = gr.Dropdown(AXIS_CHOICES, value=E["x_kind"].default, label=E["x_kind"].label,
                                      elem_id="eval-x-kind")
            f["x_values"] = gr.Textbox(label="X values", elem_id="eval-x-values", scale=3)
            list_checkpoints = gr.Button("List the run's checkpoints", size="sm")
        with gr.Row():
            f["y_kind"] = gr.Dropdown(AXIS_CHOICES, value=E["y_kind"].default, label=E["y_kind"].label,
                                      elem_id="eval-y-kind")
            f["y_values"] = gr.Textbox(label=E["y_values"].label, value=E["y_values"].default, elem_id="eval-y-values",
                                       scale=3)
        with gr.Row():
            f["z_kind"] = gr.Dropdown(AXIS_CHOICES, value=E["z_kind"].default, label=E["z_kind"].label)
            f["z_values"] = gr.Textbox(label="Z values", scale=3)
        with gr.Row():
            for key in ("seed", "steps", "cfg"):
                f[key] = gr.Number(label=E[key].label, value=E[key].default, elem_id=f"eval-{key}",
                                   precision=0 if E[key].kind == "int" else None)
            f["sampler"] = gr.Dropdown(list(SAMPLER_CHOICES), value=E["sampler"].default, label=E["sampler"].label,
                                       info="Kohya's or A1111's names")
            for key in ("width", "height"):
                f[key] = gr.Number(label=E[key].label, value=E[key].default, precision=0, elem_id=f"eval-{key}")
        grid = gr.Button("Generate grid", variant="primary", elem_id="eval-grid")
    with gr.Accordion("Seed batch", open=False):
        with gr.Row():
            f["seed_lora"] = gr.Textbox(label="Checkpoint (a name as the grid lists it, e.g. NAME-000002, or a "
                                              "file; empty = the run's final file)", scale=3, elem_id="eval-seed-lora")
            f["seed_list"] = gr.Textbox(label=E["seeds"].label, value=E["seeds"].default, elem_id="eval-seed-list")
        seeds = gr.Button("Generate seed batch", elem_id="eval-seeds")
    with gr.Accordion("Consistency score", open=True):
        with gr.Row():
            f["score_prompts"] = gr.Textbox(label=E["score_prompts"].label, lines=3, elem_id="eval-score-prompts",
                                            value=E["score_prompts"].default)
            f["score_seeds"] = gr.Textbox(label=E["score_seeds"].label, value=E["score_seeds"].default,
                                          elem_id="eval-score-seeds")
            f["train_data_dir"] = gr.Textbox(label="Training images (train_data_dir)", elem_id="eval-train-dir")
            f["scorer"] = gr.Textbox(label=E["scorer"].label, value=E["scorer"].default, elem_id="eval-scorer",
                                     info=E["scorer"].help)
        score = gr.Button("Score checkpoints", variant="primary", elem_id="eval-score")
    with gr.Row():
        stop = gr.Button("Stop", variant="stop", elem_id="eval-stop")
    progress = gr.HTML("", elem_id="eval-progress")
    message = gr.Markdown("", elem_id="eval-message")
    image = gr.Image(label="Result (the full-screen button shows it at full size)", type="filepath",
                     interactive=False, buttons=["download", "fullscreen"], elem_id="eval-image")
    recommendation = gr.Markdown("", elem_id="eval-recommendation")
    with gr.Column():
        scores = gr.Dataframe(headers=["checkpoint", "epoch / step", "identity", "consistency", "prompt", "warnings"],
                              label="Scores", interactive=False, wrap=True, elem_id="eval-scores", scale=3,
                              column_widths=["22%", "10%", "10%", "11%", "9%", "38%"], elem_classes="charlora-table",
                              max_height=600)
        plot = gr.HTML(score_chart({}), elem_id="eval-plot")
    with gr.Row():
        f["keep_file"] = gr.Textbox(label="Checkpoint to keep (default: the recommended one)", scale=3,
                                    elem_id="eval-keep-file")
        f["keep_to"] = gr.Textbox(label="Copy it to (e.g. stable-diffusion-webui/models/Lora)", scale=3,
                                  elem_id="eval-keep-to")
        keep = gr.Button("Keep this one (archive the others)", elem_id="eval-keep")
    keep_message = gr.Markdown("", elem_id="eval-keep-message")
    seen = gr.State({"version": -1})
    return EvaluationTab(f, from_run, list_checkpoints, grid, seeds, score, stop, keep, progress, message, image,
                         scores, plot, recommendation, keep_message, seen)


def _int(value, default):
    return int(value) if value not in (None, "") else default


def score_rows(report: dict) -> list:
    return [[r["name"], r.get("label") or (r["epoch"] if r["epoch"] is not None else ""), r["identity"], r["consistency"],
             "" if r["prompt_fidelity"] is None else r["prompt_fidelity"], "; ".join(r["warnings"])]
            for r in report.get("rows", [])]


def score_chart(report: dict) -> str:
    """Identity and consistency over the epochs of the run's checkpoints."""
    rows = sorted((r for r in report.get("rows", []) if r["epoch"] is not None), key=lambda r: r["epoch"])
    series = {metric: [(float(r["epoch"]), float(r[metric])) for r in rows] for metric in ("identity", "consistency")}
    return line_chart(series if rows else {}, "Scores over epochs", "epoch", "score",
                      empty_text="Score the run to see its checkpoints here.", elem_id="eval-score-chart")


def recommendation_text(report: dict) -> str:
    rec = report.get("recommendation")
    if not rec:
        return ""
    reasons = "\n".join(f"- {r}" for r in rec["reasons"])
    return f"### Recommended: `{rec['name']}`\n{reasons}\n\n*Rule:* {report['rule']}"


def result_text(snap) -> str:
    """What the finished (or failed, or stopped) job made and where it is saved."""
    if snap.state == "failed":
        return f"**{snap.kind.capitalize()} failed:** {snap.message}"
    if snap.running:
        return snap.message
    result = snap.result
    lines = [f"**{snap.kind.capitalize()} {snap.state}.**" + (f" {snap.message}" if snap.message not in (
        "done", "stopped") else "")]
    lines += [f"- Saved to `{path}`" for path in result.get("saved", [])]
    lines += [f"- {line}" for line in result.get("info", [])]
    lines += [f"- warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)


def poll(seen: dict):
    """Only the current job's results are shown: a grid's image is not left under a later score."""
    import gradio as gr

    snap = current_evaluation().snapshot()
    if snap.version == seen.get("version"):
        return [gr.skip()] * 7 + [seen]
    percent = 100.0 * snap.done / snap.total if snap.total else 0.0
    bar = (f'<div id="eval-progress-bar" data-done="{snap.done}" data-total="{snap.total}" data-state="{snap.state}">'
           f'{snap.kind} {snap.state}: {snap.done} / {snap.total} ({percent:.0f}%)</div>') if snap.kind else ""
    report = snap.result.get("report") or {}
    outs = [gr.update(value=bar), gr.update(value=result_text(snap) if snap.kind else ""),
            gr.update(value=snap.result.get("image")),
            gr.update(value=score_rows(report)), gr.update(value=score_chart(report)),
            gr.update(value=recommendation_text(report)), gr.update(interactive=snap.running)]
    return outs + [{"version": snap.version}]


def wire(tab: EvaluationTab, params: ParametersTab, demo, timer) -> None:
    import gradio as gr

    f = tab.fields
    inputs = set(f.values())

    def from_run(data):
        try:
            v = current_config(params, data).values
        except ConfigError as exc:
            return [gr.skip()] * 6 + [gr.update(value=str(exc))]
        # the run's training size: what its base model draws best (512 for SD 1.5, 1024 for SDXL)
        width, height = (int(side) for side in v["max_resolution"].split(","))
        return [v["pretrained_model_name_or_path"], v["output_dir"], v["output_name"], v["train_data_dir"], width,
                height, gr.update(value="Filled from the Parameters tab (size: the run's training resolution).")]

    def list_checkpoints(data):
        found = run_files(Path(data[f["lora_folder"]] or "."), data[f["name"]] or "")
        if not found.files:
            return gr.skip(), gr.update(value="No files of that run in the LoRA folder.")
        note = f"{len(found.files)} checkpoints listed." + (f" {found.note()}" if found.others else "")
        return ", ".join(["none"] + [p.stem for p in found.files]), gr.update(value=note)

    def start(kind, work):
        try:
            current_evaluation().start(kind, work)
        except CharLoRAError as exc:
            return gr.update(value=f"**Not started.** {exc}"), gr.skip()
        note = f"{kind} started."
        if current_job().snapshot().running:
            note += (" **Training is running in this app:** both share the GPU (or CPU) and each will be slower; "
                     "the checkpoints of the run so far are the ones used.")
        # the next poll redraws everything: a job that failed before this reply still shows its error
        return gr.update(value=note), {"version": -1}

    def settings(data) -> dict:
        """The generation settings shared by grids, seed batches and scores (empty field: the default)."""
        number = {key: (data[f[key]] if data[f[key]] not in (None, "") else E[key].default)
                  for key in ("steps", "cfg", "width", "height")}
        return dict(negative=data[f["negative"]], steps=int(number["steps"]), cfg=float(number["cfg"]),
                    sampler=data[f["sampler"]], width=int(number["width"]), height=int(number["height"]))

    def folder(data) -> Path:
        return Path(data[f["lora_folder"]] or ".")

    def grid(data):
        spec = GridSpec(base_model=data[f["base_model"]], lora_folder=data[f["lora_folder"]],
                        prompt=data[f["prompt"]], output_dir=str(folder(data) / "grids"),
                        x_kind=data[f["x_kind"]], x_values=data[f["x_values"]], y_kind=data[f["y_kind"]],
                        y_values=data[f["y_values"]], z_kind=data[f["z_kind"]], z_values=data[f["z_values"]],
                        seed=_int(data[f["seed"]], E["seed"].default), **settings(data))

        def work(progress, stop):
            result = build_grid(spec, shared_renderer(spec.base_model, spec.clip_skip), progress, stop)
            return {"image": result.grids[0] if result.grids else None, "saved": list(result.grids),
                    "info": [result.message] + list(result.files_used) if result.message else list(result.files_used),
                    "warnings": list(result.warnings)}
        return start("grid", work)

    def seeds(data):
        name = data[f["name"]] or ""
        chosen = (data[f["seed_lora"]] or "").strip() or name

        def work(progress, stop):
            seed_list = [int(s) for s in parse_axis_values("seed", data[f["seed_list"]])]
            lora = resolve_lora(chosen, folder(data))  # a name as the grid lists it, a file name or a path
            stem = lora.stem if lora else "no-lora"
            spec = SeedBatchSpec(base_model=data[f["base_model"]], prompt=data[f["prompt"]], seeds=seed_list,
                                 output=str(folder(data) / "grids" / f"{stem}-seeds.png"), lora=str(lora or ""),
                                 lora_folder=str(folder(data)), **settings(data))
            result = seed_batch(spec, shared_renderer(spec.base_model, 1), progress, stop)
            return {"image": result.sheet, "saved": [result.sheet] if result.sheet else [],
                    "info": [result.message, f"checkpoint: {Path(result.lora).name if result.lora else 'none'}"]}
        return start("seeds", work)

    def score(data):
        def work(progress, stop):
            spec = ScoreSpec(base_model=data[f["base_model"]], lora_folder=data[f["lora_folder"]],
                             output_name=data[f["name"]], train_data_dir=data[f["train_data_dir"]],
                             output_dir=str(folder(data) / "scores"),
                             prompts=[p for p in data[f["score_prompts"]].splitlines() if p.strip()],
                             seeds=[int(s) for s in parse_axis_values("seed", data[f["score_seeds"]])],
                             scorer=data[f["scorer"]].strip(), **settings(data))
            report = score_run(spec, shared_renderer(spec.base_model, 1), progress=progress, stop=stop)
            info = [report["other_runs_note"]] if report.get("other_runs_note") else []
            return {"report": report, "saved": [report["report_file"]] if report.get("report_file") else [],
                    "info": info + ([report["message"]] if report.get("message") else [])}
        return start("score", work)

    def keep(data):
        snap = current_evaluation().snapshot()
        chosen = data[f["keep_file"]] or (snap.result.get("report") or {}).get("recommended_file")
        if not chosen:
            return gr.update(value="Choose a checkpoint (or score the run first to get a recommendation).")
        if not data[f["keep_to"]]:
            return gr.update(value="Choose the folder to copy it to (e.g. your A1111 models/Lora).")
        try:
            chosen = resolve_lora(chosen, folder(data))
            if chosen is None:
                return gr.update(value="Choose a checkpoint to keep (not 'none').")
            files = run_files(chosen.parent, data[f["name"]] or "", member=chosen)
            result = keep_checkpoint(chosen, Path(data[f["keep_to"]]), files.files)
        except CharLoRAError as exc:
            return gr.update(value=f"**Not done.** {exc}")
        text = (f"Copied to `{result.kept}`; {len(result.archived)} other file(s) of this run moved to "
                f"`{result.archive_dir}` (nothing deleted).")
        if result.others:
            text += f" {len(result.others)} file(s) of other runs with this name were left where they are."
        return gr.update(value=text)

    tab.from_run.click(from_run, inputs=params.components(),
                       outputs=[f["base_model"], f["lora_folder"], f["name"], f["train_data_dir"], f["width"],
                                f["height"], tab.message])
    tab.list_checkpoints.click(list_checkpoints, inputs=inputs, outputs=[f["x_values"], tab.message])
    tab.grid.click(grid, inputs=inputs, outputs=[tab.message, tab.seen], concurrency_limit=None)
    tab.seeds.click(seeds, inputs=inputs, outputs=[tab.message, tab.seen], concurrency_limit=None)
    tab.score.click(score, inputs=inputs, outputs=[tab.message, tab.seen], concurrency_limit=None)
    tab.stop.click(lambda: current_evaluation().stop(), concurrency_limit=None)
    tab.keep.click(keep, inputs=inputs, outputs=tab.keep_message)
    outputs = [tab.progress, tab.message, tab.image, tab.scores, tab.plot, tab.recommendation, tab.stop, tab.seen]
    timer.tick(poll, inputs=tab.seen, outputs=outputs, concurrency_limit=None, show_progress="hidden")
    demo.load(poll, inputs=tab.seen, outputs=outputs, concurrency_limit=None, show_progress="hidden")
