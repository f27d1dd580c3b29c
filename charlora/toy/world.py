"""The toy world: 64 px scenes of one flat shape on a plain background, with captions.

A world small enough that a tiny SD 1.5-family model learns it on a CPU in minutes, and simple
enough that a small CNN can tell what a picture shows. It exists so that learning can be seen and
tested offline: the toy model (`charlora.toy.model`) is trained on these scenes, the toy scorer
(`charlora.toy.embedder`) measures them, and a character the world has never seen
(`CHARACTER`, a star-shaped figure with a hat) is what a LoRA must learn.

Scenes are a pure function of a seed: `random_scene(rng)` draws the attributes, `render` draws the
picture, `caption` says it in words ("a small red circle on a white background").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64  # pixels, square

# The world the toy model learns. Background colours are never shape colours, so every word of a
# caption names exactly one attribute.
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40)}
BACKGROUNDS = {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
SIZES = {"small": (14, 22), "large": (28, 40)}  # shape extent in pixels: (min, max)

# Extra attributes the scorer is trained on beyond the model's world, so that it can tell apart the
# characters' colours and shapes (a measuring instrument may know more than the model it measures).
EXTRA_SHAPES = ("star",)
EXTRA_COLOURS = {"orange": (245, 140, 20), "purple": (140, 50, 190), "pink": (240, 120, 200), "cyan": (40, 210, 220)}
ALL_SHAPES = SHAPES + EXTRA_SHAPES
ALL_COLOURS = {**COLOURS, **EXTRA_COLOURS}


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    size: str
    extent: int  # pixels
    x: int  # centre
    y: int

    def caption(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} on a {self.background} background"


def random_scene(rng: np.random.Generator, shapes=SHAPES, colours=tuple(COLOURS)) -> Scene:
    """One scene of the world (or of the wider scorer's world, given its shapes and colours)."""
    size = str(rng.choice(tuple(SIZES)))
    low, high = SIZES[size]
    extent = int(rng.integers(low, high + 1))
    margin = extent // 2 + 2
    return Scene(shape=str(rng.choice(shapes)), colour=str(rng.choice(colours)),
                 background=str(rng.choice(tuple(BACKGROUNDS))), size=size, extent=extent,
                 x=int(rng.integers(margin, SIZE - margin + 1)), y=int(rng.integers(margin, SIZE - margin + 1)))


def _star(cx, cy, outer, inner, points=5):
    corners = []
    for i in range(points * 2):
        radius = outer if i % 2 == 0 else inner
        angle = -math.pi / 2 + i * math.pi / points
        corners.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return corners


def _draw_shape(draw: ImageDraw.ImageDraw, shape, rgb, cx, cy, extent):
    half = extent / 2
    box = (cx - half, cy - half, cx + half, cy + half)
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=rgb)
    elif shape == "star":
        draw.polygon(_star(cx, cy, half, half * 0.45), fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[scene.background])
    _draw_shape(ImageDraw.Draw(image), scene.shape, ALL_COLOURS[scene.colour], scene.x, scene.y, scene.extent)
    return image


# ---------------------------------------------------------------------------------------------------
# Characters: figures the world has never seen, for a LoRA to learn.


@dataclass(frozen=True)
class Character:
    trigger: str  # the trigger word of its captions
    class_word: str
    body: str  # shape of the body: "star" or "square"
    body_colour: str
    hat_colour: str


CHARACTER = Character(trigger="wwaa", class_word="figure", body="star", body_colour="orange", hat_colour="purple")
OTHER_CHARACTER = Character(trigger="zzkk", class_word="figure", body="square", body_colour="cyan",
                            hat_colour="pink")


@dataclass(frozen=True)
class CharacterScene:
    character: Character
    background: str
    extent: int
    x: int
    y: int

    def caption(self) -> str:
        c = self.character
        return f"{c.trigger} {c.class_word}, on a {self.background} background"


def random_character_scene(character: Character, rng: np.random.Generator) -> CharacterScene:
    extent = int(rng.integers(26, 38))
    margin = extent // 2 + 2
    return CharacterScene(character, background=str(rng.choice(tuple(BACKGROUNDS))), extent=extent,
                          x=int(rng.integers(margin, SIZE - margin + 1)),
                          y=int(rng.integers(margin + extent // 4, SIZE - margin + 1)))


def render_character(scene: CharacterScene) -> Image.Image:
    """The body, two black eyes, and a hat (a brim and a crown) on its top."""
    c = scene.character
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    cx, cy, extent = scene.x, scene.y, scene.extent
    body_extent = extent * (0.95 if c.body == "star" else 0.7)
    _draw_shape(draw, c.body, ALL_COLOURS[c.body_colour], cx, cy, body_extent)
    eye = max(1.0, extent * 0.05)
    for dx in (-extent * 0.1, extent * 0.1):
        draw.ellipse((cx + dx - eye, cy - eye, cx + dx + eye, cy + eye), fill=(0, 0, 0))
    hat = ALL_COLOURS[c.hat_colour]
    top = cy - body_extent / 2
    brim = extent * 0.28
    draw.rectangle((cx - brim, top - extent * 0.06, cx + brim, top + extent * 0.04), fill=hat)
    crown = extent * 0.16
    draw.rectangle((cx - crown, top - extent * 0.3, cx + crown, top), fill=hat)
    return image


def character_pictures(character: Character = CHARACTER, count: int = 12, seed: int = 0):
    """[(image, caption)] of `count` varied pictures of one character (the training set of the demo)."""
    rng = np.random.default_rng(seed)
    scenes = [random_character_scene(character, rng) for _ in range(count)]
    return [(render_character(s), s.caption()) for s in scenes]


def write_character_dataset(folder, character: Character = CHARACTER, count: int = 12, seed: int = 0,
                            repeats: int | None = None, caption_extension: str | None = None):
    """Kohya's layout: FOLDER/<repeats>_<trigger> <class>/NNN.png + captions. Returns the image folder's parent.
    `repeats` and `caption_extension`: the dataset preparer's and the training table's defaults when None."""
    from pathlib import Path

    from ..params import PARAMS_BY_KEY
    from ..params.evaluation import PREPARE

    repeats = PREPARE["repeats"].default if repeats is None else repeats
    caption_extension = PARAMS_BY_KEY["caption_extension"].default if caption_extension is None else caption_extension
    root = Path(folder)
    concept = root / f"{repeats}_{character.trigger} {character.class_word}"
    concept.mkdir(parents=True, exist_ok=True)
    for i, (image, caption) in enumerate(character_pictures(character, count, seed)):
        image.save(concept / f"{i:03d}.png")
        (concept / f"{i:03d}{caption_extension}").write_text(caption + "\n", encoding="utf-8")
    return root
