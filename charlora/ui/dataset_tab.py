"""Dataset tab: prepare Kohya's folder layout, and check the dataset before training.

The folders and the bucket / caption settings are the Parameters tab's controls: one place to set
them, read here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import recent
from ..dataset import DatasetError, check_dataset, prepare_dataset
from ..errors import CharLoRAError, ConfigError
from ..params.evaluation import PREPARE
from .parameters_tab import ParametersTab, current_config


@dataclass
class DatasetTab:
    check: object
    summary: object
    problems: object
    buckets: object
    thumbnails: object
    images: object
    dest: object
    trigger: object
    class_word: object
    repeats: object
    captions: object
    prepare: object
    prepare_message: object


def build() -> DatasetTab:
    import gradio as gr

    gr.Markdown("Kohya's layout: `train_data_dir` is the **parent** of folders like `10_wwaa girl` "
                "(10 = repeats, `wwaa girl` = class tokens), one caption file per image. Set the folders in the "
                "Parameters tab, or make them here from a plain folder of pictures.")
    with gr.Accordion("Prepare a dataset from a folder of pictures (copies, never moves)", open=False):
        with gr.Row():
            images = gr.Textbox(label="Your pictures (a folder)", elem_id="prep-images")
            dest = gr.Textbox(label="Project folder to create", elem_id="prep-dest")
        with gr.Row():
            trigger = gr.Textbox(label="Trigger word", info="a rare word your prompts will use, e.g. wwaa",
                                 elem_id="prep-trigger")
            class_word = gr.Textbox(label="Class word", info="what the character is, e.g. girl", elem_id="prep-class")
            spec = PREPARE["repeats"]
            repeats = gr.Number(label=spec.label, value=spec.default, precision=0, minimum=spec.min,
                                maximum=spec.max)
            captions = gr.Checkbox(label="Write a starter caption for pictures without one", value=True)
        prepare = gr.Button("Prepare", elem_id="prep-run")
        prepare_message = gr.Markdown("", elem_id="prep-message")
    check = gr.Button("Check dataset", variant="primary", elem_id="dataset-check")
    summary = gr.Markdown("", elem_id="dataset-summary")
    # full width, wrapped: a problem is a sentence and must be readable at 1280 px
    problems = gr.Dataframe(headers=["file", "problem"], label="Problems", wrap=True, interactive=False,
                            column_widths=["35%", "65%"], elem_id="dataset-problems", elem_classes="charlora-table")
    with gr.Row():
        buckets = gr.Dataframe(headers=["bucket", "images", "samples per epoch"], label="Buckets",
                               interactive=False, elem_id="dataset-buckets", scale=1)
        gr.Markdown("", scale=1)
    thumbnails = gr.Gallery(label="Images", columns=8, height=220, elem_id="dataset-images")
    return DatasetTab(check, summary, problems, buckets, thumbnails, images, dest, trigger, class_word, repeats,
                      captions, prepare, prepare_message)


def _thumbnails(report, limit: int = 32):
    from PIL import Image

    from ..dataset.images import load_rgb

    out = []
    for concept in report.plan.concepts:
        for item in concept.images:
            if len(out) >= limit:
                return out
            try:
                image = load_rgb(item.path)
            except OSError:
                continue
            image.thumbnail((160, 160), Image.Resampling.LANCZOS)
            out.append((image, f"{item.path.name}: {item.caption}"))
    return out


def wire(tab: DatasetTab, params: ParametersTab) -> None:
    import gradio as gr

    def check(data):
        try:
            values = current_config(params, data).values
            report = check_dataset(values)
        except (DatasetError, ConfigError, CharLoRAError) as exc:
            return ("**Cannot read the dataset.** " + str(exc).replace("\n", "\n\n"), [], [], [])
        d = report.as_dict()
        lines = [f"**{d['train_images']} images**, {d['train_samples_per_epoch']} training samples per epoch"
                 + (f" + {d['reg_samples_per_epoch']} regularisation" if d["reg_samples_per_epoch"] else "")
                 + f"; batch size {d['batch_size']}: **{d['steps_per_epoch']} steps per epoch x {d['epochs']} "
                 f"epochs = {d['total_steps']} steps**.", ""]
        for c in d["concepts"] + d["reg_concepts"]:
            lines.append(f"- `{c['folder']}`: {c['images']} images x {c['repeats']} repeats, class tokens "
                         f"'{c['class_tokens']}', captions {c['captions_found']} found / {c['captions_missing']} "
                         f"missing / {c['captions_empty']} empty")
        lines.append("")
        lines.append(f"{len(d['problems'])} problem(s)." if d["problems"] else "No problems found.")
        problems = [[p["file"], p["problem"]] for p in d["problems"]]
        buckets = [[size, n, d["bucket_samples"][size]] for size, n in d["buckets"].items()]
        return "\n".join(lines), problems, buckets, _thumbnails(report)

    def prepare(data):
        try:
            # captions are saved under the Parameters tab's caption extension, the one training will read
            extension = current_config(params, data).values["caption_extension"]
        except ConfigError:
            extension = None  # a bad value elsewhere in the form must not block preparing the folders
        try:
            result = prepare_dataset(data[tab.images], data[tab.dest], data[tab.trigger], data[tab.class_word],
                                     int(data[tab.repeats] or 0), write_captions=data[tab.captions],
                                     caption_extension=extension)
        except CharLoRAError as exc:
            return {tab.prepare_message: "**Not done.** " + str(exc)}
        lines = result.summary_lines()
        text = (lines[0][0].upper() + lines[0][1:] + "."
                + "".join(f"\n- {line}" for line in lines[1:])
                + f"\n\nThe Parameters tab now points at these folders (images `{result.img_dir}`, output "
                f"`{result.model_dir}`); put regularisation folders (like `1_girl`) in `{result.reg_dir}`."
                + ("\n\n" + "\n".join(f"- {s}" for s in result.skipped) if result.skipped else ""))
        trigger, class_word = data[tab.trigger].strip(), data[tab.class_word].strip()
        recent.remember({"train_data_dir": str(result.img_dir), "output_dir": str(result.model_dir),
                         "logging_dir": str(result.log_dir)})
        controls = params.controls
        return {tab.prepare_message: text, controls["train_data_dir"]: str(result.img_dir),
                controls["output_dir"]: str(result.model_dir), controls["logging_dir"]: str(result.log_dir),
                controls["output_name"]: f"{trigger}-{class_word}"}

    tab.check.click(check, inputs=params.components(),
                    outputs=[tab.summary, tab.problems, tab.buckets, tab.thumbnails])
    tab.prepare.click(prepare, inputs={tab.images, tab.dest, tab.trigger, tab.class_word, tab.repeats, tab.captions,
                                       *params.components()},
                      outputs=[tab.prepare_message, params.controls["train_data_dir"], params.controls["output_dir"],
                               params.controls["logging_dir"], params.controls["output_name"]])
