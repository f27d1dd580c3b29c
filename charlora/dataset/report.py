"""The dataset report: every problem with its file, before a GPU hour is spent.

Per concept folder: repeats, class tokens, images, captions found/missing/empty. Problems:
unreadable or truncated images, non-images, images that would be enlarged, captions without an
image, folders without a repeat count, near-duplicates, captions missing the trigger word, an empty
dataset. Then the bucket table and the step counts for the config given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .duplicates import near_duplicates
from .folders import LAYOUT_HINT, DatasetError, Problem, missing_folder
from .plan import DatasetPlan, build_plan


@dataclass
class DatasetReport:
    plan: DatasetPlan

    @property
    def problems(self) -> list[Problem]:
        return self.plan.problems

    def as_dict(self) -> dict:
        plan = self.plan
        return {
            "concepts": [c.summary() for c in plan.concepts],
            "reg_concepts": [c.summary() for c in plan.reg_concepts],
            "problems": [p.as_dict() for p in plan.problems],
            "buckets": {f"{w}x{h}": n for (w, h), n in plan.bucket_images.items()},
            "bucket_samples": {f"{w}x{h}": n for (w, h), n in plan.bucket_counts.items()},
            "train_images": sum(len(c.images) for c in plan.concepts),
            "train_samples_per_epoch": plan.num_train_samples,
            "reg_samples_per_epoch": plan.num_reg_samples,
            "batch_size": plan.batch_size,
            "steps_per_epoch": plan.steps_per_epoch,
            "epochs": plan.total_epochs,
            "total_steps": plan.total_steps,
        }

    def as_text(self) -> str:
        d = self.as_dict()
        lines = []
        for title, key in (("Concept folders", "concepts"), ("Regularisation folders", "reg_concepts")):
            if not d[key] and key == "reg_concepts":
                continue
            lines.append(f"{title}:")
            for c in d[key]:
                lines.append(f"  {c['folder']}: {c['images']} images x {c['repeats']} repeats, "
                             f"class tokens {c['class_tokens']!r}, captions {c['captions_found']} found, "
                             f"{c['captions_missing']} missing, {c['captions_empty']} empty")
        lines.append("Buckets (size: images, samples per epoch):")
        for size, images in d["buckets"].items():
            lines.append(f"  {size}: {images}, {d['bucket_samples'][size]}")
        lines.append(f"Samples per epoch: {d['train_samples_per_epoch']} training + {d['reg_samples_per_epoch']} reg; "
                     f"batch size {d['batch_size']}")
        lines.append(f"Steps: {d['steps_per_epoch']} per epoch x {d['epochs']} epochs = {d['total_steps']} total")
        if d["problems"]:
            lines.append(f"Problems ({len(d['problems'])}):")
            lines += [f"  {p['file']}: {p['problem']}" for p in d["problems"]]
        else:
            lines.append("No problems found.")
        return "\n".join(lines) + "\n"


def contains_word(text: str, word: str) -> bool:
    """`word` as a whole word of `text`, ignoring case (as the trigger-word check reads captions)."""
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags=re.IGNORECASE) is not None


def check_dataset(values: dict, num_processes: int | None = None) -> DatasetReport:
    """Build the plan for `values` (normalised config) and add the checks no trainer does.

    A missing or empty train_data_dir is a DatasetError; a missing reg_data_dir is a problem in the
    report (a config from another computer often names one), and the rest is checked without it.
    """
    if not values["train_data_dir"]:
        raise DatasetError("train_data_dir is empty: choose the folder that holds folders like 10_name")
    problems: list[Problem] = []
    reg = values["reg_data_dir"]
    if reg and not Path(reg).is_dir():
        problems.append(Problem(reg, missing_folder("reg_data_dir", reg)))
        values = dict(values, reg_data_dir="")
    plan = build_plan(values, num_processes, problems)

    planner_no_upscale = values["enable_bucket"] and values["bucket_no_upscale"]
    for sample in plan.samples:
        (w, h), resized = sample.item.size, sample.choice.resized
        if not planner_no_upscale and resized[0] > w:
            problems.append(Problem(str(sample.item.path),
                                    f"image is {w}x{h}, smaller than its {sample.choice.bucket[0]}x"
                                    f"{sample.choice.bucket[1]} bucket: it will be enlarged x{resized[0] / w:.2f} "
                                    "(blurrier training); use a larger image or bucket_no_upscale"))
    for concept in plan.concepts:
        if not concept.trigger:
            continue
        for item in concept.images:
            if item.caption_from_file and not contains_word(item.caption, concept.trigger):
                problems.append(Problem(str(item.path), f"caption does not contain the trigger word "
                                                        f"{concept.trigger!r} (from the folder name)"))
    train_paths = [item.path for c in plan.concepts for item in c.images]
    for a, b, bits in near_duplicates(train_paths):
        problems.append(Problem(str(a), f"near-duplicate of {b} ({bits}/64 hash bits differ): "
                                        "one of them adds little but overfitting"))
    if not any(c.images and c.repeats for c in plan.concepts):
        raise DatasetError(f"no usable training images in {values['train_data_dir']!r}: {LAYOUT_HINT}.\n"
                           + "\n".join(f"  {p.file}: {p.problem}" for p in problems[:20]))
    return DatasetReport(plan)
