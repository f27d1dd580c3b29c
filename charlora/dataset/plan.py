"""The dataset as the trainer sees it: samples, buckets and step counts, exactly as Kohya counts them.

- Each training image appears `repeats` times per epoch.
- Regularisation images are cycled until their samples equal the training samples (Kohya's loop:
  first pass registers each reg image with its folder's repeats, then one more repeat per image in
  turn); surplus reg images go unused.
- Batches are formed inside one bucket: batches = sum over buckets of ceil(samples / batch size).
- Update steps per epoch = ceil(batches / gradient accumulation).
- With several processes (GPUs), a step's batch is `batch size x processes` samples of one bucket,
  split between the processes, so N GPUs at batch b train exactly like one at batch N*b. (Kohya
  deals whole batches to the GPUs in turn; the counts differ only where a bucket's last batch is
  partial.)
- Total: max_train_steps when set; else (max_train_epochs or epoch) x steps per epoch.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .buckets import BucketChoice, BucketPlanner
from .folders import (Concept, DatasetError, ImageItem, Problem, missing_folder, refuse_absurd_repeats,
                      scan_parent)

# Samples per epoch past this are a typo in a repeat count, not a LoRA dataset (the step list alone would
# not fit in memory long before that).
MAX_SAMPLES_PER_EPOCH = 1_000_000


@dataclass
class Sample:
    """One image of the dataset with how often it is seen per epoch and where it goes."""

    item: ImageItem
    concept: Concept
    repeats: int
    choice: BucketChoice

    @property
    def is_reg(self) -> bool:
        return self.concept.is_reg


@dataclass
class DatasetPlan:
    concepts: list[Concept]
    reg_concepts: list[Concept]
    samples: list[Sample]
    batch_size: int
    gradient_accumulation_steps: int
    num_processes: int
    epochs: int
    max_train_steps: int | None
    problems: list[Problem] = field(default_factory=list)

    @property
    def num_train_samples(self) -> int:
        return sum(s.repeats for s in self.samples if not s.is_reg)

    @property
    def num_reg_samples(self) -> int:
        return sum(s.repeats for s in self.samples if s.is_reg)

    @property
    def bucket_counts(self) -> dict[tuple[int, int], int]:
        """Samples per epoch in each bucket (repeats counted), sorted by size."""
        counts: Counter = Counter()
        for sample in self.samples:
            counts[sample.choice.bucket] += sample.repeats
        return dict(sorted(counts.items()))

    @property
    def bucket_images(self) -> dict[tuple[int, int], int]:
        """Distinct images in each bucket."""
        return dict(sorted(Counter(s.choice.bucket for s in self.samples).items()))

    @property
    def global_batch_size(self) -> int:
        """Samples in one step across all processes."""
        return self.batch_size * self.num_processes

    @property
    def batches_per_epoch(self) -> int:
        """Batches of `global_batch_size`, formed inside one bucket each."""
        return sum(math.ceil(n / self.global_batch_size) for n in self.bucket_counts.values())

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.batches_per_epoch / self.gradient_accumulation_steps)

    @property
    def total_steps(self) -> int:
        if self.max_train_steps:
            return self.max_train_steps
        return self.epochs * self.steps_per_epoch

    @property
    def total_epochs(self) -> int:
        if self.max_train_steps and self.steps_per_epoch:
            return math.ceil(self.max_train_steps / self.steps_per_epoch)
        return self.epochs


def balance_reg_repeats(reg_items: list[tuple[ImageItem, Concept]], num_train_samples: int) -> list[int]:
    """Kohya's balancing: repeats for each reg image so reg samples == training samples."""
    repeats = [0] * len(reg_items)
    if not reg_items:
        return repeats
    total = 0
    first_loop = True
    while total < num_train_samples:
        for i, (_, concept) in enumerate(reg_items):
            if first_loop:
                repeats[i] = concept.repeats
                total += concept.repeats
            else:
                repeats[i] += 1
                total += 1
            if total >= num_train_samples:
                break
        if first_loop and all(c.repeats == 0 for _, c in reg_items):
            break  # nothing can ever be added; avoid looping forever on a 0_ folder
        first_loop = False
    return repeats


def build_plan(values: dict, num_processes: int | None = None, problems: list[Problem] | None = None) -> DatasetPlan:
    """Scan `train_data_dir` (and `reg_data_dir`) and plan buckets and steps for the normalised config, split over
    `num_processes` (the processes running; None: the config's num_processes, as `accelerate launch` will run)."""
    num_processes = values["num_processes"] if num_processes is None else num_processes
    problems = [] if problems is None else problems
    for key in ("train_data_dir", "reg_data_dir"):
        if values[key] and not Path(values[key]).is_dir():
            raise DatasetError(missing_folder(key, values[key]))
    planner = BucketPlanner.from_config(values)
    # both folders' repeat counts are checked before any image is read
    for key in ("train_data_dir", "reg_data_dir"):
        if values[key]:
            refuse_absurd_repeats(Path(values[key]), key == "reg_data_dir")
    concepts = scan_parent(Path(values["train_data_dir"]), values["caption_extension"], False, problems)
    reg_concepts = []
    if values["reg_data_dir"]:
        reg_concepts = scan_parent(Path(values["reg_data_dir"]), values["caption_extension"], True, problems)

    samples = [Sample(item, c, c.repeats, planner.select(*item.size))
               for c in concepts for item in c.images if c.repeats > 0]
    num_train = sum(s.repeats for s in samples)
    if num_train > MAX_SAMPLES_PER_EPOCH:
        biggest = max(concepts, key=lambda c: c.repeats * len(c.images))
        raise DatasetError(f"train_data_dir {values['train_data_dir']!r}: {num_train:,} samples per epoch, over "
                           f"{MAX_SAMPLES_PER_EPOCH:,}; folder {biggest.folder.name!r} alone gives "
                           f"{len(biggest.images)} images x {biggest.repeats} repeats: lower its repeat count")
    reg_items = [(item, c) for c in reg_concepts for item in c.images]
    for (item, concept), repeats in zip(reg_items, balance_reg_repeats(reg_items, num_train)):
        if repeats > 0:
            samples.append(Sample(item, concept, repeats, planner.select(*item.size)))

    return DatasetPlan(
        concepts=concepts, reg_concepts=reg_concepts, samples=samples, problems=problems,
        batch_size=values["train_batch_size"], gradient_accumulation_steps=values["gradient_accumulation_steps"],
        num_processes=num_processes, epochs=values["max_train_epochs"] or values["epoch"],
        max_train_steps=values["max_train_steps"],
    )
