"""The toy scorer (`--scorer toy`): a small CNN trained on the toy world, whose scores mean something.

It is trained once per machine (~40 s of one core) and cached (charlora.toy.cache); every test here
uses pictures it never saw in training (other seeds; the characters are never trained on). The
numbers in the comments are what seed 0 measured on a 2-core CPU.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from charlora.evaluate import embedders as em
from charlora.evaluate import score as sc
from charlora.toy import embedder as te
from charlora.toy import world

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy():
    return te.toy_embedder()


def character_scenes(character=world.CHARACTER, count=12, seed=0):
    """The scenes behind world.character_pictures(character, count, seed), to re-render them moved."""
    rng = np.random.default_rng(seed)
    return [world.random_character_scene(character, rng) for _ in range(count)]


def pictures(character=world.CHARACTER, count=12, seed=0):
    return [image for image, _ in world.character_pictures(character, count, seed)]


def model_world(count, seed):
    rng = np.random.default_rng(seed)
    return [world.random_scene(rng) for _ in range(count)]


def part(toy, embs, name):
    """One part of the toy scorer's embeddings ("identity" or "copy"), as `score` reads them."""
    return embs[:, toy.parts[name]]


def identity(toy, a, b):
    """(N, M) identity cosines, as `score` computes them."""
    return sc.cosine_matrix(part(toy, a, "identity"), part(toy, b, "identity"))


def copies(toy, a, b):
    """(N, M) near-copy cosines, as `score` computes them."""
    return sc.cosine_matrix(part(toy, a, "copy"), part(toy, b, "copy"))


def mean_cos(toy, a, b):
    return float(identity(toy, a, b).mean())


# --- it is an Embedder ------------------------------------------------------------------------------

def test_duck_types_the_embedder(toy):
    images = pictures(count=3)
    embs = toy.embed_images(images)
    assert embs.shape == (3, toy.dim) and embs.dtype == torch.float32 and embs.device.type == "cpu"
    assert torch.allclose(embs.norm(dim=1), torch.ones(3), atol=1e-5)
    assert toy.has_text and toy.name.startswith("toy") and toy.device.type == "cpu"
    texts = toy.embed_texts(["a red circle on a white background", "wwaa figure"])
    assert texts.shape == (2, toy.dim)
    assert abs(float(texts[0].norm()) - 1) < 1e-5
    assert float(texts[1].norm()) == 0  # no word of the world: similarity 0 to every picture
    assert toy.embed_images([]).shape == (0, toy.dim)
    # any size is resized to the world's 64 px: an upscaled copy is the same picture
    big = [im.resize((512, 512), Image.Resampling.BICUBIC) for im in images]
    assert float((toy.embed_images(big) * embs).sum(1).min()) > 0.98
    # two unit parts, each scaled by 1/sqrt(2): the whole vector's cosine is the mean of the parts'
    assert set(toy.parts) == {"identity", "copy"}
    for name in toy.parts:
        assert torch.allclose(part(toy, embs, name).norm(dim=1), torch.full((3,), 0.5 ** 0.5), atol=1e-5)


def test_scorer_for_and_load_embedder_return_it(toy):
    assert em.scorer_for("toy") is toy and em.scorer_for(" Toy ", "some/base") is toy
    assert em.load_embedder("TOY") is toy


def test_importing_score_trains_nothing():
    code = "import sys, charlora.evaluate.embedders; print('charlora.toy.embedder' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_training_is_deterministic_and_cached(toy, tmp_path):
    a, info = te.train(seed=3, scenes=128, epochs=1)
    b, _ = te.train(seed=3, scenes=128, epochs=1)
    assert info["steps"] == 2
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    folder = Path(toy.info["folder"])
    assert folder.name.startswith("toy-scorer-") and (folder / "model.safetensors").is_file()
    assert (folder / "model.safetensors").stat().st_size < 1_000_000  # tiny weights
    assert json.loads((folder / "info.json").read_text())["seed"] == 0
    again = te.load(folder)
    images = pictures(count=2)
    assert torch.allclose(again.embed_images(images), toy.embed_images(images))


# --- it knows the world -----------------------------------------------------------------------------

def test_heads_are_accurate_on_held_out_scenes(toy):
    rng = np.random.default_rng(4242)  # the scorer trained on seeds 1 and 2
    scenes = [world.random_scene(rng, shapes=world.ALL_SHAPES, colours=tuple(world.ALL_COLOURS)) for _ in range(600)]
    found = toy.recognise([world.render(s) for s in scenes])
    accuracy = {head: np.mean([f[head] == getattr(s, head) for f, s in zip(found, scenes)])
                for head in ("shape", "colour", "background", "size")}
    bins = te.POSITION_BINS
    accuracy["x"] = np.mean([f["x"] == min(s.x * bins // world.SIZE, bins - 1) for f, s in zip(found, scenes)])
    accuracy["y"] = np.mean([f["y"] == min(s.y * bins // world.SIZE, bins - 1) for f, s in zip(found, scenes)])
    # measured: 1.0 for shape, colour, background and size; 0.98 for x and y (a bin's edge is a matter of 1 px)
    for head in ("shape", "colour", "background", "size"):
        assert accuracy[head] >= 0.97, accuracy
    assert accuracy["x"] >= 0.9 and accuracy["y"] >= 0.9, accuracy
    p = found[0]["probabilities"]
    assert set(p) == set(te.HEADS) and abs(sum(p["colour"].values()) - 1) < 1e-3
    assert p["shape"][found[0]["shape"]] == max(p["shape"].values())


def test_heads_survive_blur_and_noise(toy):
    # generated pictures are not as clean as rendered ones
    rng = np.random.default_rng(99)
    scenes = [world.random_scene(rng, shapes=world.ALL_SHAPES, colours=tuple(world.ALL_COLOURS)) for _ in range(300)]
    noisy = []
    for s in scenes:
        pixels = np.asarray(world.render(s).filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32)
        pixels = pixels + rng.normal(0, 8, pixels.shape)
        noisy.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    found = toy.recognise(noisy)
    for head in ("shape", "colour", "background"):
        accuracy = np.mean([f[head] == getattr(s, head) for f, s in zip(found, scenes)])
        assert accuracy >= 0.9, (head, accuracy)


def test_recognises_the_characters_body(toy):
    for character in (world.CHARACTER, world.OTHER_CHARACTER):
        found = toy.recognise(pictures(character, count=12, seed=5))
        assert np.mean([f["shape"] == character.body for f in found]) >= 0.9, (character, found)
        assert np.mean([f["colour"] == character.body_colour for f in found]) >= 0.9, (character, found)


# --- the metrics mean something ---------------------------------------------------------------------

def test_identity_separates_the_character_from_others(toy):
    train = toy.embed_images(pictures(seed=0))
    same = mean_cos(toy, toy.embed_images(pictures(seed=1)), train)  # other backgrounds, places, sizes
    other = mean_cos(toy, toy.embed_images(pictures(world.OTHER_CHARACTER, seed=1)), train)
    scenes = mean_cos(toy, toy.embed_images([world.render(s) for s in model_world(12, 5)]), train)
    # measured: same 0.80, other character 0.05, world scenes 0.04
    assert same >= 0.6, same
    assert other <= 0.15 and scenes <= 0.15, (other, scenes)
    assert same - max(other, scenes) >= 0.3


def test_near_copy_fires_on_copies_not_on_new_pictures(toy):
    scenes = character_scenes()
    train = toy.embed_images([world.render_character(s) for s in scenes])
    rerendered = toy.embed_images(pictures(seed=0))
    assert float(copies(toy, rerendered, train).diagonal().min()) > 0.999
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        moved = toy.embed_images([world.render_character(dataclasses.replace(s, x=s.x + dx, y=s.y + dy))
                                  for s in scenes])
        similarity = copies(toy, moved, train).diagonal()
        assert float(similarity.min()) >= sc.COPY_THRESHOLD, (dx, dy, similarity)  # measured >= 0.958
    # moved by 6 px it is another picture (measured 0.78-0.90)
    far = toy.embed_images([world.render_character(dataclasses.replace(s, x=s.x + (6 if s.x < 32 else -6)))
                            for s in scenes])
    assert float(copies(toy, far, train).diagonal().max()) < sc.COPY_THRESHOLD
    # new pictures of the character: their nearest training picture stays below the threshold (measured max 0.88)
    new = toy.embed_images(pictures(seed=1))
    assert float(copies(toy, new, train).max()) < sc.COPY_THRESHOLD
    # and over many: the warning fires on few honest pictures (measured 2%: same background, place and size)
    many = toy.embed_images(pictures(count=200, seed=3))
    fired = float((copies(toy, many, train).max(1).values >= sc.COPY_THRESHOLD).float().mean())
    assert fired <= 0.1, fired
    # through the metric: copies warn, new pictures do not
    moved = toy.embed_images([world.render_character(dataclasses.replace(s, x=s.x + 1)) for s in scenes])
    assert any(w.startswith("near-copy") for w in sc.score_checkpoint("copies", moved, train, parts=toy.parts).warnings)
    assert sc.score_checkpoint("new", new, train, parts=toy.parts).warnings == []


def test_prompt_fidelity_prefers_the_own_prompt(toy):
    scenes = model_world(120, 9)
    images = toy.embed_images([world.render(s) for s in scenes])

    def fidelity(change):
        texts = toy.embed_texts([change(s).caption() for s in scenes])
        return identity(toy, images, texts).diagonal()

    def another(values, value):
        return next(v for v in values if v != value)

    right = fidelity(lambda s: s)
    wrong = {"colour": fidelity(lambda s: dataclasses.replace(s, colour=another(tuple(world.COLOURS), s.colour))),
             "shape": fidelity(lambda s: dataclasses.replace(s, shape=another(world.SHAPES, s.shape))),
             "background": fidelity(lambda s: dataclasses.replace(
                 s, background=another(tuple(world.BACKGROUNDS), s.background)))}
    # measured: right 0.89, wrong colour 0.45, wrong shape 0.56, wrong background 0.84 (identity part: shape
    # and colour weigh most, the background 0.05, still more than the prompt warning's margin)
    for what, values in wrong.items():
        assert bool((right > values).all()), what
        assert float((right - values).mean()) > sc.PROMPT_MARGIN, what
    assert float(right.mean()) - float(wrong["colour"].mean()) > sc.PROMPT_MARGIN * 3
    # the words outside the world (trigger words, LoRA tags, filler) change nothing
    plain, tagged = toy.embed_texts(["a small red circle on a white background",
                                     "<lora:wwaa:0.8> wwaa, a SMALL red circle, on a white background, masterpiece"])
    assert torch.allclose(plain, tagged)
    # the characters' prompts name their background
    scenes = character_scenes(count=12, seed=2)
    images = toy.embed_images([world.render_character(s) for s in scenes])
    right = identity(toy, images, toy.embed_texts([s.caption() for s in scenes])).diagonal()
    swapped = [dataclasses.replace(s, background=another(tuple(world.BACKGROUNDS), s.background)) for s in scenes]
    assert bool((right > identity(toy, images, toy.embed_texts([s.caption() for s in swapped])).diagonal()).all())


def test_words_of_a_prompt():
    assert te.words_of("a small red circle on a white background") == {
        "size": ["small"], "colour": ["red"], "shape": ["circle"], "background": ["white"]}
    assert te.words_of("wwaa figure, on a grey backdrop") == {"background": ["gray"]}
    assert te.words_of("<lora:red:1> photo of a girl") == {}


# --- end to end -------------------------------------------------------------------------------------

def test_cli_score_with_the_toy_scorer(toy, tiny_model, tmp_path):
    from safetensors.torch import save_file

    module = "lora_unet_down_blocks_0_attentions_0_proj_in"
    (tmp_path / "loras").mkdir()
    for stem in ("wwaa-000001", "wwaa"):
        save_file({f"{module}.lora_down.weight": torch.full((4, 32, 1, 1), 0.1),  # the tiny model's 1x1 conv
                   f"{module}.lora_up.weight": torch.ones(32, 4, 1, 1), f"{module}.alpha": torch.tensor(4.0)},
                  str(tmp_path / "loras" / f"{stem}.safetensors"))
    world.write_character_dataset(tmp_path / "img", count=4)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE")
    result = subprocess.run([sys.executable, "-m", "charlora", "score", "--base-model", str(tiny_model.folder),
                             "--lora-folder", str(tmp_path / "loras"), "--name", "wwaa", "--train-data-dir",
                             str(tmp_path / "img"), "--prompt", "wwaa figure, on a white background", "--seeds", "1,2",
                             "--scorer", "toy", "--steps", "2", "--size", "64", "--out", str(tmp_path / "s")],
                            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "recommended:" in result.stdout
    report = json.loads((tmp_path / "s" / "wwaa-scores.json").read_text())
    assert report["scorer"] == toy.name
    assert [row["name"] for row in report["rows"]] == [sc.BASELINE_NAME, "wwaa-000001", "wwaa"]
    for row in report["rows"]:
        assert -1 <= row["identity"] <= 1 and row["prompt_fidelity"] is not None
