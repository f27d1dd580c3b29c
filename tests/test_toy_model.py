"""The toy model (charlora.toy.model): a tiny SD 1.5-family model trained on the toy world.

CharLoRA ships it (charlora/toy/toy-sd15.safetensors.xz, built by `make-toy-model` with seed 0: about
20 CPU minutes, too long for every test run); the tests unpack it once into the toy cache:
$CHARLORA_TOY_CACHE when set, else `.pytest_cache/toy` in the repository, so that running the tests
never writes into the user's home folder. A test below fails when the recipe changes without the
shipped file being rebuilt; `make-toy-model DIR --check` rebuilds it and compares (docs/toy-world.md).

The recognition test draws pictures for world captions and checks them with a pixel-based
checker written here, independent of the model and of the toy scorer.
"""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from charlora.toy import world

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def toy_folder():
    from charlora.toy.model import toy_model

    return toy_model(seed=0)  # unpacked into $CHARLORA_TOY_CACHE (conftest: .pytest_cache/toy)


@pytest.fixture(scope="session")
def toy_pipe(toy_folder):
    from charlora.models.loading import load_base_model

    return load_base_model(toy_folder / "toy-sd15.safetensors")


# --- an independent checker: what does a 64 px picture show? ------------------------------------


def _nearest(rgb, palette):
    names = list(palette)
    colours = np.array([palette[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((colours - np.asarray(rgb, dtype=np.float32)) ** 2).sum(axis=1)))]


def describe(image):
    """(background, colour, shape, extent) read off the pixels; None for what cannot be told."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                             pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    background = _nearest(np.median(border, axis=0), world.BACKGROUNDS)
    palette = {**{"bg": world.BACKGROUNDS[background]}, **world.COLOURS}
    names = list(palette)
    colours = np.array([palette[n] for n in names], dtype=np.float32)
    labels = ((pixels[:, :, None, :] - colours) ** 2).sum(axis=-1).argmin(axis=-1)  # nearest palette entry
    counts = np.bincount(labels.ravel(), minlength=len(names))
    counts[0] = 0
    if counts.max() < 20:  # nothing drawn
        return background, None, None, 0
    colour_index = int(counts.argmax())
    mask = labels == colour_index
    rows, cols = np.nonzero(mask)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    fill = mask.sum() / (height * width)
    shape = "square" if fill > 0.9 else "circle" if fill > 0.64 else "triangle"
    return background, names[colour_index], shape, int(max(height, width))


def test_checker_reads_rendered_scenes():
    rng = np.random.default_rng(5)
    scenes = [world.random_scene(rng) for _ in range(100)]
    right = sum(describe(world.render(s))[:3] == (s.background, s.colour, s.shape) for s in scenes)
    assert right >= 98, right


# --- tokenizer ------------------------------------------------------------------------------------


def test_every_world_word_is_one_token_and_triggers_are_unseen_tokens():
    from charlora.models.tiny import load_tokenizer_from_files
    from charlora.toy.model import toy_tokenizer_files, world_words

    tokenizer = load_tokenizer_from_files(toy_tokenizer_files())
    for word in world_words():
        assert len(tokenizer.tokenize(word)) == 1, (word, tokenizer.tokenize(word))
    caption_tokens = set()
    for shape, colour, background, size in itertools.product(world.SHAPES, world.COLOURS, world.BACKGROUNDS,
                                                             world.SIZES):
        caption = f"a {size} {colour} {shape} on a {background} background"
        tokens = tokenizer.tokenize(caption)
        assert len(tokens) == len(caption.split())
        caption_tokens.update(tokens)
    for character in (world.CHARACTER, world.OTHER_CHARACTER):
        pieces = tokenizer.tokenize(character.trigger)
        assert len(pieces) > 1, pieces  # falls apart into pieces ...
        assert not set(pieces) & caption_tokens, pieces  # ... none of which the world's captions use


# --- the model ----------------------------------------------------------------------------------


def test_single_file_and_folder_load_with_the_same_weights(toy_folder, toy_pipe):
    from charlora.models.loading import load_base_model

    folder_pipe = load_base_model(toy_folder / "toy-sd15")
    for name in ("unet", "vae", "text_encoder"):
        a = getattr(toy_pipe, name).state_dict()
        b = getattr(folder_pipe, name).state_dict()
        assert set(a) == set(b)
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    assert toy_pipe.vae.config.scaling_factor == folder_pipe.vae.config.scaling_factor
    assert toy_pipe.tokenizer.get_vocab() == folder_pipe.tokenizer.get_vocab()

def test_the_shipped_model_is_small_and_built_by_this_recipe(toy_folder):
    from safetensors import safe_open

    from charlora.toy.model import RECIPE_KEY, SHIPPED, recipe_key

    assert SHIPPED.stat().st_size <= 4_000_000  # 3.75 MB xz-compressed (4.29 MB of fp16 unpacked)
    with safe_open(str(toy_folder / "toy-sd15.safetensors"), "pt") as f:
        shipped_key = f.metadata()[RECIPE_KEY]
    # A different key: model.py, the world's scenes or the SD layout code changed since the shipped file was
    # built. Rebuild it (`python -m charlora make-toy-model DIR`, then xz it into charlora/toy/, docs/toy-world.md).
    assert shipped_key == recipe_key(0)


def recognition_captions():
    """24 different world captions: every size x background with four colours, shapes rotating."""
    captions = []
    for k in range(24):
        size, background = tuple(world.SIZES)[k // 12], tuple(world.BACKGROUNDS)[(k // 4) % 3]
        colour, shape = tuple(world.COLOURS)[k % 4], world.SHAPES[(k + k // 4) % 3]
        captions.append(f"a {size} {colour} {shape} on a {background} background")
    return captions


def generate(pipe, captions, seed=1000):
    from charlora.train.sampling import SamplePrompt, generate_samples

    prompts = [SamplePrompt(prompt=c, width=64, height=64, steps=20, cfg_scale=7.0, seed=seed + i)
               for i, c in enumerate(captions)]
    return generate_samples(pipe, prompts, "euler_a", "cpu")


def recognition_rates(images, captions):
    words = [c.split() for c in captions]  # a SIZE COLOUR SHAPE on a BACKGROUND background: 0..7
    seen = [describe(im) for im in images]
    both = np.mean([s[1] == w[2] and s[2] == w[3] for s, w in zip(seen, words)])
    colour = np.mean([s[1] == w[2] for s, w in zip(seen, words)])
    shape = np.mean([s[2] == w[3] for s, w in zip(seen, words)])
    background = np.mean([s[0] == w[6] for s, w in zip(seen, words)])
    return {"colour+shape": float(both), "colour": float(colour), "shape": float(shape),
            "background": float(background)}


def test_the_base_model_draws_the_captioned_scenes(toy_pipe):
    captions = recognition_captions()
    assert len(set(captions)) == 24
    rates = recognition_rates(generate(toy_pipe, captions), captions)
    print("toy model recognition rates:", rates)
    # Measured on the seed-0 model (2400 UNet steps): colour 1.0, background 1.0, shape 0.58,
    # colour and shape 0.58 (squares come out with rounded corners and read as circles). The
    # 0.75 aimed at for colour+shape is not reached; these bounds leave a margin under the measure.
    assert rates["colour"] >= 0.9, rates
    assert rates["background"] >= 0.85, rates
    assert rates["colour+shape"] >= 0.45, rates


def test_the_vae_reconstructs_the_character(toy_pipe):
    from charlora.toy.model import reconstruction_error

    pictures = [image for image, _ in world.character_pictures(world.CHARACTER, count=12)]
    error = reconstruction_error(toy_pipe.vae, pictures)
    print(f"VAE mean abs error on the character: {error:.2f}/255")
    assert error < 9.0  # 7.2/255 measured; the body and hat survive, the 2-3 px eyes mostly blur away


def test_a_lora_trains_on_the_toy_model_at_64_px(toy_folder, tmp_path):
    """The training engine and sampling run on the toy model (4x VAE: 16x16 latents for 64 px)."""
    from charlora.params import load_config, normalize
    from charlora.train import SamplesSaved, train

    data = world.write_character_dataset(tmp_path / "img", count=4, repeats=1)
    events = []
    values = dict(load_config(REPO / "presets" / "quick-tiny-demo.json").values,
                  pretrained_model_name_or_path=str(toy_folder / "toy-sd15.safetensors"), train_data_dir=str(data),
                  output_dir=str(tmp_path / "out"), seed=1, epoch=1, sample_every_n_epochs=1,
                  sample_prompts="wwaa figure, on a white background --w 64 --h 64 --s 4 --d 1\n")
    result = train(normalize(values).values, [events.append])
    assert result.status == "completed", result
    assert (tmp_path / "out" / "tiny-demo.safetensors").is_file()
    samples = [e for e in events if isinstance(e, SamplesSaved)]
    assert samples and all(Path(p).is_file() for s in samples for p in s.paths)


def test_same_seed_same_weights_in_a_short_build(tmp_path):
    """The build is a function of its seed (a few steps of each phase, so the test stays fast)."""
    from safetensors.torch import load_file

    from charlora.toy.model import make_toy_model

    short = {"vae_steps": 3, "vae_batch": 4, "scenes": 16, "unet_steps": 3, "unet_batch": 4, "warmup": 2,
             "open_steps": 3}
    files = [make_toy_model(tmp_path / name, seed=seed, recipe=short).single_file
             for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    a, b, c = (load_file(f) for f in files)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
