"""Caption processing, batches, augmentations and the latent cache (with the tiny model's VAE)."""

import random

import pytest
import torch
from PIL import Image, ImageOps

from charlora.dataset import BucketBatches, LatentCache, build_plan, cache_refusal, epoch_batches, make_loader
from charlora.dataset.buckets import resize_and_crop
from charlora.dataset.cache import CACHE_DIR_NAME, image_to_tensor
from charlora.dataset.captions import process_caption, sample_rng
from charlora.models.tiny import build_tiny_components
from charlora.params import defaults, normalize

from dataset_helpers import pattern, save


def config(root, **overrides):
    values = dict(defaults(), train_data_dir=str(root / "img"), max_resolution="128,128", min_bucket_reso=64,
                  max_bucket_reso=256, bucket_reso_steps=64, bucket_no_upscale=False, caption_extension=".txt",
                  seed=7)
    values.update(overrides)
    return normalize(values).values


@pytest.fixture
def small(tmp_path):
    folder = tmp_path / "img" / "3_wwaa girl"
    save(folder / "a.png", pattern(64, 64, 1), "wwaa girl, red, smiling, park")
    save(folder / "b.png", pattern(192, 64, 2), "wwaa girl, blue")
    save(folder / "c.png", pattern(64, 128, 3), "wwaa girl, green")
    save(tmp_path / "img" / "1_wwaa girl" / "d.png", pattern(64, 64, 4), "wwaa girl, yellow")
    return tmp_path


@pytest.fixture(scope="module")
def vae():
    return build_tiny_components(seed=0)["vae"].eval()


def test_shuffle_keeps_leading_tokens():
    values = dict(defaults(), shuffle_caption=True, keep_tokens=1)
    caption = "wwaa girl, red, smiling, park, sunny, hat"
    outputs = {process_caption(caption, values, 1, random.Random(i)) for i in range(30)}
    assert len(outputs) > 5
    for out in outputs:
        tags = out.split(", ")
        assert tags[0] == "wwaa girl" and sorted(tags) == sorted(caption.split(", "))
    assert process_caption(caption, dict(values, shuffle_caption=False), 1, random.Random(0)) == caption


def test_caption_dropout_every_n_epochs_and_rate():
    values = dict(defaults(), caption_dropout_every_n_epochs=3)
    assert [process_caption("x", values, e, random.Random(0)) for e in (1, 2, 3, 4, 6)] == ["x", "x", "", "x", ""]
    rated = dict(defaults(), caption_dropout_rate=0.5)
    dropped = sum(process_caption("x", rated, 1, random.Random(i)) == "" for i in range(400))
    assert 150 < dropped < 250
    # deterministic under the seed
    assert [process_caption("a, b, c", dict(rated, shuffle_caption=True), 1, sample_rng(7, 1, i)) for i in range(20)] \
        == [process_caption("a, b, c", dict(rated, shuffle_caption=True), 1, sample_rng(7, 1, i)) for i in range(20)]


def test_epoch_batches(small):
    plan = build_plan(config(small, train_batch_size=2))
    batches = epoch_batches(plan, 1, seed=7)
    flat = [i for b in batches for i in b]
    for index, sample in enumerate(plan.samples):
        assert flat.count(index) == sample.repeats
    for batch in batches:
        assert len({plan.samples[i].choice.bucket for i in batch}) == 1
    assert plan.bucket_counts == {(64, 192): 3, (128, 128): 4, (192, 64): 3}
    assert len(batches) == plan.batches_per_epoch == 2 + 2 + 2
    assert epoch_batches(plan, 1, 7) == batches and epoch_batches(plan, 2, 7) != batches


def test_loader_without_cache_gives_pixels_and_is_reproducible(small):
    values = config(small, train_batch_size=2, flip_aug=True, shuffle_caption=True, cache_latents=False)
    plan = build_plan(values)
    dataset = BucketBatches(plan, values, seed=7)
    first = [batch for batch in make_loader(dataset, values)]
    again = [batch for batch in make_loader(BucketBatches(plan, values, seed=7), values)]
    assert len(first) == plan.steps_per_epoch
    for a, b in zip(first, again):
        assert torch.equal(a["pixels"], b["pixels"]) and a["captions"] == b["captions"]
        w, h = a["bucket"]
        assert a["pixels"].shape[1:] == (3, h, w) and a["pixels"].min() >= -1 and a["pixels"].max() <= 1


def test_reg_samples_carry_prior_loss_weight(small):
    save(small / "reg" / "1_girl" / "r.png", pattern(64, 64, 77))
    values = config(small, reg_data_dir=str(small / "reg"), prior_loss_weight=0.25, cache_latents=False)
    plan = build_plan(values)
    weights = {}
    for batch in BucketBatches(plan, values, seed=7):
        for path, weight in zip(batch["paths"], batch["loss_weights"].tolist()):
            weights[path.split("/")[-1]] = weight
    assert weights["r.png"] == 0.25 and weights["a.png"] == 1.0


def test_cache_refused_with_colour_aug_or_random_crop():
    assert cache_refusal(dict(defaults(), color_aug=True)).startswith("color_aug")
    assert "random_crop" in cache_refusal(dict(defaults(), random_crop=True))
    assert cache_refusal(defaults()) is None


def test_latent_cache_reused_and_invalidated(small, vae, monkeypatch):
    values = config(small, cache_latents_to_disk=True)
    plan = build_plan(values)
    first = LatentCache(vae, flip_aug=False, to_disk=True, seed=7)
    first.fill(plan)
    assert first.encoded == 4 and first.read_from_disk == 0
    assert len(list((small / "img" / "3_wwaa girl" / CACHE_DIR_NAME).glob("*.safetensors"))) == 3

    again = LatentCache(vae, flip_aug=False, to_disk=True, seed=7)
    again.fill(build_plan(values))
    assert again.encoded == 0 and again.read_from_disk == 4
    for sample in plan.samples:
        assert torch.equal(again.get(sample).latent, first.get(sample).latent)

    # a changed image is encoded again, the others are reused; the stale entry is replaced
    save(small / "img" / "3_wwaa girl" / "a.png", pattern(64, 64, 99))
    changed = LatentCache(vae, flip_aug=False, to_disk=True, seed=7)
    changed.fill(build_plan(values))
    assert changed.encoded == 1 and changed.read_from_disk == 3
    assert len(list((small / "img" / "3_wwaa girl" / CACHE_DIR_NAME).glob("a.png-*.safetensors"))) == 1

    # a changed resolution (other buckets) or another VAE reuses nothing
    bigger = config(small, cache_latents_to_disk=True, max_resolution="256,256", max_bucket_reso=512)
    resized = LatentCache(vae, flip_aug=False, to_disk=True, seed=7)
    resized.fill(build_plan(bigger))
    assert resized.encoded == 4
    other_vae = LatentCache(build_tiny_components(seed=1)["vae"], flip_aug=False, to_disk=True, seed=7)
    other_vae.fill(build_plan(values))
    assert other_vae.encoded == 4


def test_flip_twin_is_the_mirrored_image_latent(small, vae):
    values = config(small, flip_aug=True)
    plan = build_plan(values)
    cache = LatentCache(vae, flip_aug=True, to_disk=False, seed=7)
    cache.fill(plan)
    sample = next(s for s in plan.samples if s.item.path.name == "b.png")
    entry = cache.get(sample)
    image = resize_and_crop(Image.open(sample.item.path).convert("RGB"), sample.choice)
    with torch.no_grad():
        mirrored = vae.encode(image_to_tensor(ImageOps.mirror(image))[None]).latent_dist.mean[0]
        plain = vae.encode(image_to_tensor(image)[None]).latent_dist.mean[0]
    assert entry.latent.shape == (4, 8, 24)
    # latents are samples of the distribution: compare against its mean with a tolerance of its std
    assert (entry.flipped - mirrored).abs().mean() < (entry.flipped - plain).abs().mean()


def test_cached_epoch_never_opens_an_image(small, vae, monkeypatch):
    values = config(small, train_batch_size=2, flip_aug=True)
    plan = build_plan(values)
    opened = []
    import charlora.dataset.cache as cache_module
    real = cache_module.load_rgb
    monkeypatch.setattr(cache_module, "load_rgb", lambda p: opened.append(p) or real(p))
    cache = LatentCache(vae, flip_aug=True, to_disk=False, seed=7)
    cache.fill(plan)
    assert sorted(opened) == sorted(s.item.path for s in plan.samples)  # each image once, flip twin included

    def refuse(path):
        raise AssertionError(f"opened {path} during a cached epoch")

    monkeypatch.setattr("charlora.dataset.loader.load_rgb", refuse)
    dataset = BucketBatches(plan, values, seed=7, cache=cache)
    for epoch in (1, 2):
        dataset.set_epoch(epoch)
        batches = list(make_loader(dataset, values))
        assert len(batches) == plan.steps_per_epoch
        assert all(b["latents"].shape[0] <= 2 and b["latents"].shape[1] == 4 for b in batches)


def test_colour_aug_and_random_crop_are_deterministic_under_seed(small):
    values = config(small, cache_latents=False, color_aug=True, random_crop=True, flip_aug=True)
    plan = build_plan(values)
    runs = []
    for _ in range(2):
        dataset = BucketBatches(plan, values, seed=11)
        runs.append(torch.cat([b["pixels"].flatten() for b in dataset]))
    assert torch.equal(runs[0], runs[1])
    other = torch.cat([b["pixels"].flatten() for b in BucketBatches(plan, values, seed=12)])
    assert not torch.equal(runs[0], other)
    plain = config(small, cache_latents=False)
    unaugmented = torch.cat([b["pixels"].flatten() for b in BucketBatches(plan, plain, seed=11)])
    assert not torch.equal(runs[0], unaugmented)
