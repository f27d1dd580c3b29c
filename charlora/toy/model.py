"""The toy model: a tiny model of Stable Diffusion 1.5's family that has learned the toy world.

The tiny model (`charlora.models.tiny`) has random weights: it proves the plumbing, never learning.
This one is trained, from scratch on the CPU in minutes, on the toy world (`charlora.toy.world`):
asked for "a small red circle on a white background" it draws one. A LoRA trained on top of it can
then be seen to teach a character it has never seen (`world.CHARACTER`), offline.

Same families of parts as SD 1.5: a UNet2DConditionModel with cross-attention, an AutoencoderKL
(4x downsampling here: 64 px -> 16x16x4 latents), a CLIPTextModel with 77 positions and a CLIP BPE
tokenizer in which every word of the world's captions is one token, SD 1.5's DDPM noise schedule
and epsilon prediction. Written like the tiny model: a diffusers folder and one single file in the
original SD layout that carries its configs and tokenizer in its metadata.

Training recipe (`RECIPE`), all seeded from `seed`:
1. the VAE as a general codec for flat-colour pictures: random shapes (circles, squares, triangles,
   stars, rectangles, dots) in random RGB colours on random plain backgrounds, 32 px crops (it is
   convolutional, so it serves 64 px pictures too); never the characters. Three latent channels
   are pulled towards the local mean colour, without which the GroupNorms hide flat colours. Its scaling factor is
   1 / std of the latents of world scenes, as SD's 0.18215 was measured.
2. the UNet and the text encoder together on world scenes and their captions (latents encoded
   once, 10% empty captions for classifier-free guidance), DDPM epsilon MSE with offset noise,
   AdamW, warmup then cosine decay.

About 16 CPU minutes on one thread of a shared 2-core box; numbers in docs/toy-world.md.

Same seed and same number of torch threads on the same machine => bit-identical weights.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from charlora.models.tiny import (
    _TINY_MERGES,
    COMPONENTS_METADATA_KEY,
    TinyModel,
    clip_tokenizer_files,
    components_metadata,
    load_tokenizer_from_files,
    sd15_family_components,
)
from charlora.toy import world

FOLDER_NAME = "toy-sd15"
SINGLE_FILE_NAME = "toy-sd15.safetensors"

RECIPE = {
    "vae_steps": 900,
    "vae_batch": 32,
    "vae_crop": 32,
    "vae_lr": 2e-3,
    "vae_kl_weight": 1e-6,
    "vae_colour_weight": 1.0,
    "scenes": 1536,
    "unet_steps": 2400,
    "unet_batch": 32,
    "unet_lr": 2e-3,
    "warmup": 60,
    "empty_caption_rate": 0.1,
    "noise_offset": 0.15,
    # stage 3: open vocabulary (see train_open_vocabulary)
    "open_steps": 600,
    "open_lr": 1e-3,
    "open_rate": 0.7,
}


# --- tokenizer ----------------------------------------------------------------------------------


def world_words():
    """Every word the world's captions use."""
    words = {"a", "on", "background", *world.SHAPES, *world.COLOURS, *world.BACKGROUNDS, *world.SIZES}
    return sorted(words)


def _symbols(word):
    return list(word[:-1]) + [word[-1] + "</w>"]


def _apply(symbols, pair):
    out, i = [], 0
    while i < len(symbols):
        if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def _learn_merges(words, start):
    """BPE merges (after `start`) that make every word of `words` one token, learned as BPE learns them."""
    reps = {w: _symbols(w) for w in words}
    for pair in start:
        reps = {w: _apply(s, pair) for w, s in reps.items()}
    merges = []
    while any(len(s) > 1 for s in reps.values()):
        counts = {}
        for s in reps.values():
            for pair in zip(s, s[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        best = min(counts, key=lambda p: (-counts[p], p))  # most frequent, ties by name: deterministic
        merges.append(best)
        reps = {w: _apply(s, best) for w, s in reps.items()}
    return merges


# Trigger words end in a letter that is also the word "a" ("wwaa" -> w w a a</w>): this merge makes
# the end of such words a token of its own, so that no token of a trigger occurs in a world caption.
_TRIGGER_MERGES = [("a", "a</w>")]


def toy_merges():
    return list(_TINY_MERGES) + _learn_merges(world_words(), _TINY_MERGES) + _TRIGGER_MERGES


def toy_tokenizer_files():
    """{file name: text} of the toy CLIP tokenizer: tiny.py's byte-level vocabulary plus merges that
    make every word of the world's captions one token."""
    return clip_tokenizer_files(toy_merges())


# --- components ---------------------------------------------------------------------------------


def unet_config():
    # No attention at 16x16 (it costs more than the rest of the UNet together on a CPU); cross-attention
    # at 8x8, 4x4 and in the middle block, where the caption decides what is drawn.
    return {
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": (32, 48, 64),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 4,  # like SD 1.5's config, this is the number of heads
        "norm_num_groups": 8,
    }


def vae_config(scaling_factor=1.0):
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "block_out_channels": (16, 32, 64),  # three blocks: two downsamplings, 4x
        "layers_per_block": 1,
        "latent_channels": 4,
        # Few, wide groups: a GroupNorm over few channels per group erases the colour of flat areas.
        "norm_num_groups": 2,
        "sample_size": 64,
        "scaling_factor": scaling_factor,
    }


def build_toy_components(seed=0):
    """Untrained toy components: {unet, vae, text_encoder, tokenizer, scheduler}."""
    tokenizer = load_tokenizer_from_files(toy_tokenizer_files())
    return sd15_family_components(tokenizer, unet_config(), vae_config(), 64, seed)


# --- pictures -----------------------------------------------------------------------------------


def codec_picture(rng: np.random.Generator, size=64) -> Image.Image:
    """A flat-colour picture for training the VAE: a few shapes in random colours on a random plain
    background (circles, squares, triangles, stars, rectangles, small dots); no characters."""
    def colour():
        if rng.random() < 0.3:  # saturated and extreme colours are common in the world
            return tuple(int(v) for v in rng.choice([0, 20, 40, 128, 220, 245, 255], size=3))
        return tuple(int(v) for v in rng.integers(0, 256, size=3))

    image = Image.new("RGB", (size, size), colour())
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 7))):
        kind = rng.choice(["circle", "square", "triangle", "star", "rectangle", "dot"])
        cx, cy = rng.uniform(0, size, size=2)
        rgb = colour()
        if kind == "dot":
            r = rng.uniform(0.8, 3.0)
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
        elif kind == "rectangle":
            w, h = rng.uniform(2, 40, size=2)
            draw.rectangle((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), fill=rgb)
        else:
            world._draw_shape(draw, str(kind), rgb, cx, cy, float(rng.uniform(4, 44)))
    return image


def to_tensor(images) -> torch.Tensor:
    """PIL images -> (N, 3, H, W) in [-1, 1]."""
    array = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def to_images(tensor: torch.Tensor):
    array = ((tensor.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in array]


# --- training -----------------------------------------------------------------------------------


def _lr_factor(step, steps, warmup):
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_vae(vae, seed, recipe, say, on_step=None):
    rng = np.random.default_rng([seed, 1])
    generator = torch.Generator().manual_seed(seed * 1000 + 11)
    pool = to_tensor([codec_picture(rng) for _ in range(1024)])
    with torch.no_grad():  # start with a small posterior std, so the decoder sees the code, not noise
        vae.quant_conv.bias[vae.config.latent_channels:] = -8.0
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe["vae_lr"], weight_decay=0.0)
    steps, crop, batch = recipe["vae_steps"], recipe["vae_crop"], recipe["vae_batch"]
    vae.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = recipe["vae_lr"] * _lr_factor(step, steps, 20)
        picks = torch.randint(0, len(pool), (batch,), generator=generator)
        offsets = torch.randint(0, 64 - crop + 1, (2,), generator=generator).tolist()
        x = pool[picks][:, :, offsets[0]:offsets[0] + crop, offsets[1]:offsets[1] + crop]
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator)
        out = vae.decode(z).sample
        kl = 0.5 * (dist.mean ** 2 + dist.var - 1.0 - dist.logvar).sum(dim=(1, 2, 3)).mean()
        loss = (out - x).abs().mean() + ((out - x) ** 2).mean() + recipe["vae_kl_weight"] * kl
        if recipe["vae_colour_weight"]:
            # Let three latent channels carry the local colour (as SD's latents roughly do): a direct
            # target for the encoder, whose GroupNorms otherwise hide the colour of flat areas from it.
            target = torch.nn.functional.avg_pool2d(x, 2 ** (len(vae.config.block_out_channels) - 1))
            loss = loss + recipe["vae_colour_weight"] * ((dist.mean[:, :3] - target) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step)
        if step % 100 == 0 or step == steps - 1:
            say(f"VAE step {step + 1}/{steps}: loss {loss.item():.4f}")
    vae.eval()


def world_scenes(seed, count):
    rng = np.random.default_rng([seed, 2])
    return [world.random_scene(rng) for _ in range(count)]


@torch.no_grad()
def encode_latents(vae, images, batch=64):
    """Posterior means and stds of `images` (unscaled)."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        dist = vae.encode(to_tensor(images[i:i + batch])).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def unknown_words_caption(caption: str, rng: np.random.Generator) -> str:
    """`caption` with one or two made-up words put in at a random word boundary (sometimes with a
    comma), as trigger words and class words sit in a LoRA's captions ("wwaa figure, on a ...")."""
    words = caption.split()
    made_up = []
    for _ in range(int(rng.integers(1, 3))):
        while True:
            word = "".join(rng.choice(list(_LETTERS), size=int(rng.integers(2, 7))))
            if word not in world_words():
                break
        made_up.append(word)
    text = " ".join(made_up) + ("," if rng.random() < 0.5 else "")
    at = int(rng.integers(0, len(words) + 1))
    return " ".join(words[:at] + [text] + words[at:])


def train_unet(components, latents, captions, seed, recipe, say, open_vocabulary=False):
    """Stage 2 (and, with open_vocabulary, stage 3): the UNet and the text encoder together.

    Stage 3 continues from stage 2 on captions that also hold made-up words at random places, so
    that the text encoder reads the world's words wherever they stand and whatever stands beside
    them: a tiny text encoder trained only on one caption template has never seen a word at
    another position and would lose the background words behind a trigger word."""
    unet, text_encoder, tokenizer, scheduler = (components[k] for k in
                                                ("unet", "text_encoder", "tokenizer", "scheduler"))
    generator = torch.Generator().manual_seed(seed * 1000 + (33 if open_vocabulary else 22))
    rng = np.random.default_rng(seed * 1000 + 34)
    texts = sorted(set(captions)) + [""]
    index = {t: i for i, t in enumerate(texts)}
    ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    caption_index = torch.tensor([index[c] for c in captions])
    empty = index[""]
    alphas_cumprod = scheduler.alphas_cumprod
    params = list(unet.parameters()) + list(text_encoder.parameters())
    lr, steps = ((recipe["open_lr"], recipe["open_steps"]) if open_vocabulary
                 else (recipe["unet_lr"], recipe["unet_steps"]))
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    batch = recipe["unet_batch"]
    unet.train()
    text_encoder.train()
    average = None
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * _lr_factor(step, steps, recipe["warmup"])
        picks = torch.randint(0, len(latents), (batch,), generator=generator)
        x0 = latents[picks]
        which = caption_index[picks].clone()
        which[torch.rand(batch, generator=generator) < recipe["empty_caption_rate"]] = empty
        if open_vocabulary:
            batch_texts = [texts[i] for i in which.tolist()]
            batch_texts = [unknown_words_caption(t, rng) if t and rng.random() < recipe["open_rate"] else t
                           for t in batch_texts]
            batch_ids = tokenizer(batch_texts, padding="max_length", max_length=77, truncation=True,
                                  return_tensors="pt").input_ids
        else:
            batch_ids = ids[which]
        states = text_encoder(batch_ids)[0]
        noise = torch.randn(x0.shape, generator=generator)
        if recipe["noise_offset"]:
            # Offset noise (Kohya's noise_offset): with SD's schedule the last step still leaks the
            # picture's mean, so without it the model never learns to choose the background itself
            # and draws every background gray.
            noise = noise + recipe["noise_offset"] * torch.randn(x0.shape[:2] + (1, 1), generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(noisy, t, states).sample
        loss = ((pred - noise) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        average = loss.item() if average is None else 0.98 * average + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            say(f"{'open-vocabulary' if open_vocabulary else 'UNet'} step {step + 1}/{steps}: loss {average:.4f}")
    unet.eval()
    text_encoder.eval()


def train_open_vocabulary(components, latents, scenes, seed, recipe, say):
    """Stage 3 (see train_unet), seeded on its own so that it can also continue a stage-2 model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1000 + 35)
        train_unet(components, latents, [s.caption() for s in scenes], seed, recipe, say, open_vocabulary=True)
    _round_to_fp16(components["unet"])
    _round_to_fp16(components["text_encoder"])


def _round_to_fp16(model):
    """Weights rounded to fp16's precision (the single file stores fp16), so both copies agree."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())


def train_toy_components(seed=0, recipe=None, progress=None):
    """Trained toy components and a report {name: number} of what was measured on the way."""
    recipe = {**RECIPE, **(recipe or {})}
    say = progress or (lambda text: None)
    report = {}
    start_cpu, start_wall = time.process_time(), time.time()
    with torch.random.fork_rng(devices=[]):
        components = build_toy_components(seed)
        vae = components["vae"]
        say(f"training the VAE on flat-colour pictures ({recipe['vae_steps']} steps)")
        train_vae(vae, seed, recipe, say)
        _round_to_fp16(vae)

        scenes = world_scenes(seed, recipe["scenes"])
        images = [world.render(s) for s in scenes]
        means, stds = encode_latents(vae, images)
        scaling = float(1.0 / means.std())
        vae.register_to_config(scaling_factor=scaling)
        report["vae_scaling_factor"] = scaling
        report["vae_posterior_std"] = float(stds.mean())
        with torch.no_grad():
            decoded = vae.decode(means[:256]).sample
        report["vae_error_world"] = float((decoded - to_tensor(images[:256])).abs().mean() * 127.5)
        characters = [im for im, _ in world.character_pictures(world.CHARACTER, count=12)]
        report["vae_error_character"] = reconstruction_error(vae, characters)
        say(f"VAE: scaling factor {scaling:.4f}; mean abs error {report['vae_error_world']:.2f}/255 on world "
            f"scenes, {report['vae_error_character']:.2f}/255 on the character")

        say(f"training the UNet and text encoder on {len(scenes)} world scenes ({recipe['unet_steps']} steps)")
        latents = means * scaling  # the posterior std is negligible next to the mean
        train_unet(components, latents, [s.caption() for s in scenes], seed, recipe, say)
        _round_to_fp16(components["unet"])
        _round_to_fp16(components["text_encoder"])
        say(f"open vocabulary: made-up words in the captions ({recipe['open_steps']} steps)")
        train_open_vocabulary(components, latents, scenes, seed, recipe, say)
    report["cpu_seconds"] = time.process_time() - start_cpu
    report["wall_seconds"] = time.time() - start_wall
    say(f"trained in {report['wall_seconds']:.0f} s ({report['cpu_seconds']:.0f} CPU s)")
    return components, report


@torch.no_grad()
def reconstruction_error(vae, images):
    """Mean absolute error (0-255 scale) of encoding and decoding `images` with the posterior mean."""
    x = to_tensor(images)
    out = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    return float((out - x).abs().mean() * 127.5)


def write_model(components, out_dir, report=None, key=None):
    """Write `components` as OUT/toy-sd15/ (diffusers) and OUT/toy-sd15.safetensors (original layout, fp16)."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from charlora.models.sd_layout import diffusers_to_original

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    folder = out_dir / FOLDER_NAME
    pipe.save_pretrained(folder, safe_serialization=True)
    state_dict = diffusers_to_original(
        components["unet"].state_dict(), components["vae"].state_dict(), components["text_encoder"].state_dict()
    )
    state_dict = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state_dict.items()}
    metadata = {"format": "pt", COMPONENTS_METADATA_KEY: components_metadata(components, toy_tokenizer_files())}
    if key:
        metadata[RECIPE_KEY] = key
    if report:
        metadata["charlora.toy_report"] = json.dumps(report)
    single_file = out_dir / SINGLE_FILE_NAME
    save_file(state_dict, str(single_file), metadata=metadata)
    os.chmod(single_file, 0o644)
    if report:
        (out_dir / "toy-report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return TinyModel(folder=folder, single_file=single_file)


def make_toy_model(out_dir, seed=0, progress=None, recipe=None):
    """Train the toy model (minutes on a CPU) and write it to `out_dir`: a diffusers folder
    `toy-sd15/` and a single file `toy-sd15.safetensors`. Returns (folder, single_file)."""
    components, report = train_toy_components(seed, recipe, progress)
    return write_model(components, out_dir, report, key=recipe_key(seed) if recipe is None else None)


# The toy model as built by `make-toy-model` with seed 0, xz-compressed (3.8 MB): building it takes
# about 20 CPU minutes, so the tests and the demo unpack this instead. `recipe_key()` is written into
# it; a test fails when the recipe changes without this file being rebuilt (docs/toy-world.md).
SHIPPED = Path(__file__).with_name(SINGLE_FILE_NAME + ".xz")
SHIPPED_SEED = 0
RECIPE_KEY = "charlora.toy_recipe"


def _code(source: str) -> str:
    """`source` as its syntax tree without docstrings: comments, formatting and docs do not count."""
    import ast

    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def recipe_key(seed=0) -> str:
    """A hash of the code that decides the toy model's weights (this module, the tiny model's
    tokenizer and layout code, the world's scenes but not its characters) and the seed."""
    import hashlib
    import inspect
    import textwrap

    import charlora.models.sd_layout as layout
    import charlora.models.tiny as tiny
    import charlora.toy.model as this

    parts = [_code(Path(module.__file__).read_text(encoding="utf-8")) for module in (this, tiny, layout)]
    parts += [_code(textwrap.dedent(inspect.getsource(f))) for f in (world.Scene, world.random_scene, world._star,
                                                                     world._draw_shape, world.render)]
    parts.append(repr((world.SIZE, world.SHAPES, world.COLOURS, world.BACKGROUNDS, world.SIZES, seed)))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def _unpack_shipped(folder: Path) -> None:
    """SHIPPED -> FOLDER/toy-sd15.safetensors and the diffusers folder FOLDER/toy-sd15/ (seconds)."""
    import lzma
    import shutil

    from charlora.models.loading import load_base_model

    single_file = folder / SINGLE_FILE_NAME
    with lzma.open(SHIPPED) as source, open(single_file, "wb") as target:
        shutil.copyfileobj(source, target)
    os.chmod(single_file, 0o644)
    pipe = load_base_model(str(single_file))
    pipe.save_pretrained(folder / FOLDER_NAME, safe_serialization=True)


def toy_model(seed=0, progress=None) -> Path:
    """The toy model's folder (holding toy-sd15/ and toy-sd15.safetensors), cached: for seed 0 the
    shipped file unpacked (seconds), for another seed built (about 20 CPU minutes) the first time."""
    import hashlib

    from charlora.toy.cache import cached_build

    if seed == SHIPPED_SEED and SHIPPED.is_file():
        digest = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()[:12]
        return cached_build("toy-model-shipped", digest, _unpack_shipped)
    return cached_build("toy-model", recipe_key(seed),
                        lambda folder: make_toy_model(folder, seed=seed, progress=progress))


def compare_with_shipped(single_file) -> float:
    """The largest absolute difference between the tensors of `single_file` and the shipped model."""
    import lzma
    import tempfile

    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory(prefix="charlora-toy-") as tmp:
        unpacked = Path(tmp) / SINGLE_FILE_NAME
        unpacked.write_bytes(lzma.decompress(SHIPPED.read_bytes()))
        shipped, built = load_file(str(unpacked)), load_file(str(single_file))
    if shipped.keys() != built.keys():
        return float("inf")
    return max(float((shipped[k].float() - built[k].float()).abs().max()) for k in shipped)
