"""Batches for the trainer: one bucket per batch, shuffled per epoch, deterministic under `seed`.

Every process reads the same global batch (batch size x processes); the trainer draws noise for the
whole batch and keeps its own slice, so N processes train exactly like one with N times the batch.

Each item of `BucketBatches` is a whole batch (as in Kohya), so a torch DataLoader runs with
`batch_size=None`. With latents cached, an epoch never opens an image file; without, each sample is
loaded, augmented and resized in the loader's workers, off the training thread.
"""

from __future__ import annotations

import random

import torch
from PIL import ImageOps
from torch.utils.data import DataLoader, Dataset

from .augment import color_augment, random_crop_offset
from .buckets import resize_and_crop, sdxl_size_conditioning
from .cache import LatentCache, image_to_tensor
from .captions import process_caption, sample_rng
from .images import load_rgb
from .plan import DatasetPlan


def epoch_batches(plan: DatasetPlan, epoch: int, seed: int) -> list[list[int]]:
    """Sample indices of every batch of `epoch` (1-based): each sample `repeats` times, batches of
    `plan.global_batch_size` inside one bucket, the order of samples and of batches shuffled
    reproducibly. With several processes each takes its slice of every batch (the trainer slices)."""
    rng = random.Random(f"{seed}:batches:{epoch}")
    buckets: dict[tuple[int, int], list[int]] = {}
    for index, sample in enumerate(plan.samples):
        buckets.setdefault(sample.choice.bucket, []).extend([index] * sample.repeats)
    batches = []
    for size in sorted(buckets):
        members = buckets[size]
        rng.shuffle(members)
        size = plan.global_batch_size
        batches += [members[i:i + size] for i in range(0, len(members), size)]
    rng.shuffle(batches)
    return batches


class BucketBatches(Dataset):
    def __init__(self, plan: DatasetPlan, values: dict, seed: int, cache: LatentCache | None = None):
        self.plan = plan
        self.values = values
        self.seed = seed
        self.cache = cache
        self.prior_loss_weight = values["prior_loss_weight"]
        # shared memory, so data-loader workers see the epoch the trainer sets
        self._epoch = torch.ones(1, dtype=torch.long).share_memory_()
        self._batches_epoch = 1
        self._batches = epoch_batches(plan, 1, seed)

    def set_epoch(self, epoch: int) -> None:
        """Set the 1-based epoch before iterating over it."""
        self._epoch[0] = epoch
        self._batches_for(epoch)

    def _batches_for(self, epoch: int) -> list[list[int]]:
        # a persistent worker holds its own copy of this object: it recomputes once per epoch
        if epoch != self._batches_epoch:
            self._batches = epoch_batches(self.plan, epoch, self.seed)
            self._batches_epoch = epoch
        return self._batches

    def __len__(self) -> int:
        return len(self._batches)

    def __getitem__(self, index: int) -> dict:
        epoch = int(self._epoch[0])
        batch = self._batches_for(epoch)[index]
        captions, weights, paths, tensors, sizes = [], [], [], [], []
        for position, sample_index in enumerate(batch):
            sample = self.plan.samples[sample_index]
            rng = sample_rng(self.seed, epoch, index, f"{position}")
            captions.append(process_caption(sample.item.caption, self.values, epoch, rng))
            weights.append(self.prior_loss_weight if sample.is_reg else 1.0)
            paths.append(str(sample.item.path))
            flip = self.values["flip_aug"] and rng.random() < 0.5
            if self.values["sdxl"]:
                sizes.append(sdxl_size_conditioning(sample.item.size, sample.choice, flip,
                                                    self.values["enable_bucket"]))
            if self.cache is not None:
                entry = self.cache.get(sample)
                tensors.append(entry.flipped if flip else entry.latent)
            else:
                image = load_rgb(sample.item.path)
                offset = random_crop_offset(sample.choice, rng) if self.values["random_crop"] else None
                image = resize_and_crop(image, sample.choice, offset)
                if self.values["color_aug"]:
                    image = color_augment(image, rng)
                if flip:
                    image = ImageOps.mirror(image)
                tensors.append(image_to_tensor(image))
        key = "latents" if self.cache is not None else "pixels"
        out = {key: torch.stack(tensors), "captions": captions, "loss_weights": torch.tensor(weights),
               "paths": paths, "bucket": self.plan.samples[batch[0]].choice.bucket}
        if sizes:  # SDXL: (original h, w, crop top, left, target h, w) per image
            out["time_ids"] = torch.tensor(sizes, dtype=torch.float32)
        return out


def make_loader(dataset: BucketBatches, values: dict, start: int = 0) -> DataLoader:
    """A loader over the dataset's batches in order, from batch `start` (a resumed epoch skips what was done).

    Each dataset item is already a whole batch: the batch sampler hands out one index at a time and
    `_the_batch` unwraps it (a batch sampler, not a sampler, so accelerate's `prepare_data_loader` keeps it)."""
    workers = values["max_data_loader_n_workers"]
    # Its own generator: a DataLoader otherwise draws a worker seed from the global RNG at every epoch,
    # which would shift dropout between a resumed run and an uninterrupted one. (Our batches do not
    # depend on it: each sample has its own seeded stream.)
    return DataLoader(dataset, batch_sampler=_From(dataset, start), collate_fn=_the_batch, num_workers=workers,
                      persistent_workers=workers > 0 and values["persistent_data_loader_workers"] and start == 0,
                      generator=torch.Generator().manual_seed(dataset.seed))


def _the_batch(items: list[dict]) -> dict:
    return items[0]


class _From:
    """Batches start..len(dataset)-1, one index each, evaluated at each iteration (the plan fixes the length)."""

    def __init__(self, dataset: Dataset, start: int):
        self.dataset, self.start = dataset, start

    def __iter__(self):
        return ([index] for index in range(self.start, len(self.dataset)))

    def __len__(self) -> int:
        return max(0, len(self.dataset) - self.start)
