"""The toy scorer: a small CNN that knows the toy world, giving embeddings whose scores mean something.

`--scorer toy` (the Evaluation tab's Scorer field: "toy"). The CLIP scorers need a download and the
"tiny" one is random; this one is trained in well under a minute of CPU, from a seed, on scenes of the
WIDER toy world (`world.ALL_SHAPES`, `world.ALL_COLOURS`: the model's world plus the characters'
shapes and colours) and never on the character pictures it measures. It is cached once per machine
(`charlora.toy.cache`).

The network (`ToyNet`): four 3x3 conv + batch-norm + ReLU + 2x2 max-pool stages (8, 16, 32, 64
channels; 64 -> 4 px), a dense layer of FEATURES units and one linear head per attribute: shape,
colour, background, size and coarse x/y position (4 bins each). About 36 s of one CPU core.

An embedding has two parts (`ToyEmbedder.parts`; `charlora.evaluate.score` reads identity, consistency
and prompt fidelity from the first, the nearest copy from the second). Each part concatenates
L2-normalised blocks, each scaled by the square root of its weight (the weights of a part sum to 1), so
that a cosine is the weighted mean of the blocks' cosines:

- the attribute probabilities (shape, colour, background, size): what the picture shows;
- the look: the last conv stage's 64 x 4 x 4 map, centred by its mean over world scenes, so that
  two pictures are alike in it only in what sets them apart from the average scene. It keeps where
  things are and how big: a 1 px shift changes it little, a few pixels a lot.

IDENTITY_WEIGHTS lean on shape and colour (what makes a figure the character, wherever it stands);
COPY_WEIGHTS lean on the look (what makes a picture a copy of one training picture). With one set of
weights for both, either the no-LoRA world scored half the character's identity (the look of a figure on
a plain background is much alike) or honest new pictures of the character set off the copy warning.

What the scores then mean (numbers in tests/test_toy_embedder.py): pictures of one character
(another background, place and size) are far more alike than pictures of two characters or than a
character and world scenes (identity); a re-render or a 1 px shift scores >= 0.95 but another scene
of the same character does not (the near-copy warning); and `embed_texts` puts the world's words of
a prompt (colour, shape, background, size) into the attribute blocks, so that a picture is closer to
its own prompt than to one naming another colour or shape (prompt fidelity). Other words (trigger
words, "figure", LoRA tags) are ignored.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import world

SEED = 0
FEATURES = 64
CHANNELS = (8, 16, 32, 64)
LOOK = CHANNELS[-1] * (world.SIZE // 16) ** 2  # the last conv stage's map, 64 x 4 x 4
POSITION_BINS = 4
SHAPES = tuple(world.ALL_SHAPES)
COLOURS = tuple(world.ALL_COLOURS)
BACKGROUNDS = tuple(world.BACKGROUNDS)
SIZES = tuple(world.SIZES)
HEADS = {"shape": SHAPES, "colour": COLOURS, "background": BACKGROUNDS, "size": SIZES,
         "x": tuple(range(POSITION_BINS)), "y": tuple(range(POSITION_BINS))}
# Squared weights of each part's blocks (their share of a cosine).
IDENTITY_WEIGHTS = {"shape": 0.3, "colour": 0.4, "background": 0.05, "size": 0.05, "look": 0.2}
COPY_WEIGHTS = {"shape": 0.15, "colour": 0.15, "background": 0.1, "size": 0.05, "look": 0.55}
ATTRIBUTES = ("shape", "colour", "background", "size")
SYNONYMS = {"grey": "gray", "big": "large", "tiny": "small", "orb": "circle", "box": "square"}

# Training: ~36 s of one CPU core; 100% held-out shape/colour/background/size, ~98% x/y bins.
TRAIN_SCENES = 6000
WORLD_MEAN_SCENES = 1000
EPOCHS = 6
BATCH = 64
LR = 3e-3
_BATCH = 64  # embedding batch


class ToyNet(nn.Module):
    def __init__(self):
        super().__init__()
        channels = (3, *CHANNELS)
        layers = []
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                       nn.MaxPool2d(2)]
        self.conv = nn.Sequential(*layers)
        side = world.SIZE // 16
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(channels[-1] * side * side, FEATURES), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURES, len(values)) for name, values in HEADS.items()})

    def forward(self, pixels):
        """(the look: the last conv stage's 4x4 map, flattened; {head: logits})."""
        maps = self.conv(pixels)
        feats = self.dense(maps)
        return maps.flatten(1), {name: head(feats) for name, head in self.heads.items()}


def _pixels(images) -> torch.Tensor:
    """(N, 3, 64, 64) float in [-0.5, 0.5] from PIL images of any size (resized to the world's 64 px)."""
    from PIL import Image

    arrays = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (world.SIZE, world.SIZE):
            image = image.resize((world.SIZE, world.SIZE), resample=Image.Resampling.BOX
                                 if image.size[0] > world.SIZE else Image.Resampling.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.uint8))
    if not arrays:
        return torch.empty(0, 3, world.SIZE, world.SIZE)
    return _to_float(torch.from_numpy(np.stack(arrays)))


def _to_float(batch_uint8: torch.Tensor) -> torch.Tensor:
    return batch_uint8.permute(0, 3, 1, 2).float() / 255.0 - 0.5


def _labels(scene) -> dict:
    return {"shape": SHAPES.index(scene.shape), "colour": COLOURS.index(scene.colour),
            "background": BACKGROUNDS.index(scene.background), "size": SIZES.index(scene.size),
            "x": min(scene.x * POSITION_BINS // world.SIZE, POSITION_BINS - 1),
            "y": min(scene.y * POSITION_BINS // world.SIZE, POSITION_BINS - 1)}


def world_scenes(count: int, seed: int):
    """(uint8 (N, 64, 64, 3) pictures, {head: (N,) labels}) of the wider world's scenes."""
    rng = np.random.default_rng(seed)
    scenes = [world.random_scene(rng, shapes=SHAPES, colours=COLOURS) for _ in range(count)]
    pictures = np.stack([np.asarray(world.render(s), dtype=np.uint8) for s in scenes])
    labels = {name: torch.tensor([_labels(s)[name] for s in scenes]) for name in HEADS}
    return torch.from_numpy(pictures), labels


def _augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Light noise, blur and colour gain: generated pictures are rarely as clean as rendered ones."""
    n = len(pixels)
    gain = 1 + (torch.rand(n, 3, 1, 1, generator=generator) - 0.5) * 0.1
    pixels = (pixels + 0.5) * gain - 0.5
    blur = torch.rand(n, 1, 1, 1, generator=generator) < 0.3
    kernel = torch.full((3, 1, 3, 3), 1 / 9)
    blurred = nn.functional.conv2d(nn.functional.pad(pixels, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    pixels = torch.where(blur, blurred, pixels)
    noise = torch.rand(n, 1, 1, 1, generator=generator) * 0.05
    return pixels + torch.randn(pixels.shape, generator=generator) * noise


def train(seed: int = SEED, scenes: int = TRAIN_SCENES, epochs: int = EPOCHS, log=None) -> tuple[ToyNet, dict]:
    """A ToyNet trained from `seed` on the wider world's scenes, and its training facts."""
    started = time.process_time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ToyNet()
    pictures, labels = world_scenes(scenes, seed=seed * 1000 + 1)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(net.parameters(), lr=LR)
    steps = epochs * (scenes // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=LR, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(scenes, generator=generator)
        for start in range(0, scenes - BATCH + 1, BATCH):
            index = order[start:start + BATCH]
            pixels = _augment(_to_float(pictures[index]), generator)
            _, logits = net(pixels)
            loss = sum(loss_fn(logits[name], labels[name][index]) for name in HEADS)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            step += 1
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: loss {float(loss.detach()):.3f}")
    net.eval()
    mean_pictures, _ = world_scenes(WORLD_MEAN_SCENES, seed=seed * 1000 + 2)
    with torch.inference_mode():
        world_mean = torch.cat([net(_to_float(mean_pictures[i:i + 256]))[0]
                                for i in range(0, len(mean_pictures), 256)]).mean(0)
    net.register_buffer("world_mean", world_mean)
    return net, {"seed": seed, "scenes": scenes, "epochs": epochs, "steps": step,
                 "train_cpu_s": round(time.process_time() - started, 1), "final_loss": round(float(loss.detach()), 4)}


# ---------------------------------------------------------------------------------------------------
# The embedder


class ToyEmbedder:
    """Duck-typed like `charlora.evaluate.embedders.Embedder`: name, has_text, dim, device, embed_images, embed_texts."""

    has_text = True

    def __init__(self, net: ToyNet, world_mean: torch.Tensor, name: str = "toy", info: dict | None = None):
        self.net = net.float().eval()
        self.world_mean = world_mean.float()
        self.name = name
        self.info = info or {}
        self.device = torch.device("cpu")
        self._widths = {block: LOOK if block == "look" else len(HEADS[block]) for block in IDENTITY_WEIGHTS}
        part = sum(self._widths.values())
        self.parts = {"identity": slice(0, part), "copy": slice(part, 2 * part)}
        self.dim = 2 * part

    @torch.inference_mode()
    def _run(self, images):
        pixels = _pixels(images)
        feats, probs = [], {name: [] for name in HEADS}
        for i in range(0, len(pixels), _BATCH):
            f, logits = self.net(pixels[i:i + _BATCH])
            feats.append(f)
            for name in HEADS:
                probs[name].append(logits[name].softmax(-1))
        empty = {name: torch.empty(0, len(values)) for name, values in HEADS.items()}
        return (torch.cat(feats) if feats else torch.empty(0, LOOK),
                {name: torch.cat(p) if p else empty[name] for name, p in probs.items()})

    def _part(self, blocks: dict, weights: dict, n: int) -> torch.Tensor:
        out = [nn.functional.normalize(blocks[block], dim=-1) * weights[block] ** 0.5 if block in blocks
               else torch.zeros(n, width) for block, width in self._widths.items()]
        return nn.functional.normalize(torch.cat(out, dim=1), dim=-1)

    def _assemble(self, blocks: dict, n: int) -> torch.Tensor:
        """Both parts, each a unit vector, scaled so the whole is one too (its cosine: the parts' mean)."""
        both = torch.cat([self._part(blocks, IDENTITY_WEIGHTS, n), self._part(blocks, COPY_WEIGHTS, n)], dim=1)
        return both / 2 ** 0.5

    def embed_images(self, images) -> torch.Tensor:
        """(N, dim) float32 CPU unit vectors, one per PIL image."""
        images = list(images)
        feats, probs = self._run(images)
        return self._assemble({**probs, "look": feats - self.world_mean}, len(images))

    def embed_texts(self, texts) -> torch.Tensor:
        """(N, dim) vectors: the world's words of each text in the attribute blocks (others ignored).

        A text with none of the world's words gives a zero vector (similarity 0 to every picture)."""
        texts = list(texts)
        blocks = {name: torch.zeros(len(texts), len(HEADS[name])) for name in ATTRIBUTES}
        for i, text in enumerate(texts):
            for name, values in words_of(text).items():
                for value in values:
                    blocks[name][i, HEADS[name].index(value)] = 1.0
        return self._assemble(blocks, len(texts))

    def recognise(self, images) -> list[dict]:
        """What each picture shows: {"shape", "colour", "background", "size": the likeliest value,
        "x", "y": position bin (0-3), "probabilities": {head: {value: p}}}."""
        _, probs = self._run(list(images))
        out = []
        for i in range(len(probs["shape"])):
            row = {"probabilities": {}}
            for name, values in HEADS.items():
                p = probs[name][i]
                row[name] = values[int(p.argmax())]
                row["probabilities"][name] = {str(v): round(float(q), 4) for v, q in zip(values, p)}
            out.append(row)
        return out


def words_of(text: str) -> dict:
    """{head: [values]} of the world's words in a prompt ("a small red circle on a white background" ->
    shape circle, colour red, background white, size small). A colour followed by "background" is the
    background; LoRA tags (<lora:...>) and other words are ignored."""
    text = re.sub(r"<[^>]*>", " ", str(text).lower())
    tokens = [SYNONYMS.get(t, t) for t in re.findall(r"[a-z]+", text)]
    found = {"shape": [], "colour": [], "background": [], "size": []}
    for i, token in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token in BACKGROUNDS and (following in ("background", "backdrop") or token not in COLOURS):
            key = "background"
        elif token in COLOURS:
            key = "colour"
        elif token in SHAPES:
            key = "shape"
        elif token in SIZES:
            key = "size"
        else:
            continue
        if token not in found[key]:
            found[key].append(token)
    return {k: v for k, v in found.items() if v}


# ---------------------------------------------------------------------------------------------------
# Building once per machine

_LOADED: dict = {}


def build(folder: Path, seed: int = SEED) -> None:
    import sys

    from safetensors.torch import save_file

    print("training the toy scorer (once per machine, under a minute)...", file=sys.stderr, flush=True)
    net, info = train(seed)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(Path(folder) / "model.safetensors"))
    (Path(folder) / "info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")


def load(folder: Path) -> ToyEmbedder:
    from safetensors.torch import load_file

    folder = Path(folder)
    state = load_file(str(folder / "model.safetensors"))
    net = ToyNet()
    world_mean = state.pop("world_mean")
    net.load_state_dict(state)
    info = json.loads((folder / "info.json").read_text(encoding="utf-8"))
    info["folder"] = str(folder)
    return ToyEmbedder(net, world_mean, name=f"toy (a small CNN trained on the toy world, seed {info['seed']})",
                       info=info)


def toy_embedder(seed: int = SEED, root: Path | None = None) -> ToyEmbedder:
    """The toy scorer, trained once per machine (cached under charlora.toy.cache.cache_root()) and loaded."""
    import sys

    from .cache import cached_build, code_hash

    key = code_hash(world, sys.modules[__name__], extra=str(seed))
    cache_key = (key, str(root))
    if cache_key not in _LOADED:
        folder = cached_build("toy-scorer", key, lambda f: build(f, seed), root=root)
        _LOADED[cache_key] = load(folder)
    return _LOADED[cache_key]
