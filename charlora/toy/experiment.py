"""Does a LoRA learn the character? The measurement behind the learning tests and docs/toy-world.md.

On the toy model: train a LoRA on one character's pictures (the user's Kohya settings scaled to the
toy, `demo.TOY_SETTINGS`), then, with the toy scorer,
- identity per epoch: how alike the generated pictures are to the character's training pictures,
  against the base model without LoRA (the baseline) and a LoRA trained on another character;
- the world kept: prompts without the trigger word, with the LoRA loaded, still draw the prompted
  shape and colour (a LoRA that only ever draws its character has overwritten the model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import world
from .demo import PICTURES, REPEATS, TOY_SETTINGS, toy_settings

STEPS = 20
CFG = 7.0
SAMPLER = "euler_a"


@dataclass
class CharacterRun:
    character: world.Character
    data_dir: Path  # the parent of `10_<trigger> <class>/`
    lora_folder: Path
    output_name: str
    caption_extension: str
    files: list = field(default_factory=list)  # the run's files, epoch order, final file last


# World captions (no trigger) for measuring what the LoRA's text-encoder part changes besides the character.
WORLD_PROMPTS = ["a small red circle on a white background", "a large blue square on a black background",
                 "a small yellow triangle on a gray background"]


def character_prompts(character: world.Character) -> list[str]:
    return [f"{character.trigger} {character.class_word}, on a {bg} background" for bg in world.BACKGROUNDS]


def train_character(folder, base_model, character: world.Character = world.CHARACTER, config: str | None = None,
                    extra: dict | None = None, pictures: int = PICTURES, seed: int = 0, run_cli=None) -> CharacterRun:
    """Write the character's pictures into FOLDER/img and train a LoRA into FOLDER/model.

    `config`: a Kohya JSON (default: the character-16gb preset); TOY_SETTINGS and then `extra` override it.
    `run_cli(argv) -> exit code`: how `python -m charlora train` is run (default: in this process)."""
    from ..cli import main
    from ..evaluate import run_files
    from ..presets import find_preset
    from .demo import PRESET

    folder = Path(folder)
    extension = str((extra or {}).get("caption_extension", TOY_SETTINGS["caption_extension"]))
    data = world.write_character_dataset(folder / "img", character, pictures, seed=seed, repeats=REPEATS,
                                         caption_extension=extension)
    name = character.trigger
    overrides = {"pretrained_model_name_or_path": str(base_model), "train_data_dir": str(data),
                 "output_dir": str(folder / "model"), "output_name": name, **(extra or {})}
    argv = ["train", "--config", str(config or find_preset(PRESET).path)]
    for item in toy_settings(overrides):
        argv += ["--set", item]
    code = (run_cli or main)(argv)
    if code != 0:
        raise RuntimeError(f"charlora train exited with {code}: {' '.join(argv)}")
    return CharacterRun(character, data, folder / "model", name, extension, run_files(folder / "model", name).files)


def score_character(run: CharacterRun, base_model, reference: CharacterRun, out, embedder, renderer=None,
                    seeds=(1, 2, 3, 4)) -> dict:
    """score_run's report for `run`'s checkpoints, prompted with its own trigger, against `reference`'s
    training pictures (identity to the character the user wants)."""
    from ..evaluate import ScoreSpec, score_run

    spec = ScoreSpec(base_model=str(base_model), lora_folder=str(run.lora_folder), output_name=run.output_name,
                     train_data_dir=str(reference.data_dir), output_dir=str(out),
                     prompts=character_prompts(run.character), seeds=list(seeds), scorer="toy", steps=STEPS,
                     cfg=CFG, sampler=SAMPLER, width=world.SIZE, height=world.SIZE,
                     caption_extension=reference.caption_extension)
    return score_run(spec, renderer=renderer, embedder=embedder)


def identity_by_epoch(report: dict) -> list[tuple[int, float]]:
    """[(epoch, identity)] from a score report: epoch 0 is the base model without LoRA."""
    rows = report["rows"]
    return [(0 if row["baseline"] else int(row["epoch"]), float(row["identity"])) for row in rows]


def world_scenes(count: int, seed: int = 100) -> list[world.Scene]:
    rng = np.random.default_rng(seed)
    return [world.random_scene(rng) for _ in range(count)]


def world_recognition(base_model, embedder, lora=None, count: int = 24, seed: int = 100, renderer=None) -> dict:
    """Draw `count` world scenes from their captions (with `lora` at weight 1, or none) and ask the toy
    scorer what each shows. Returns {"shape_colour": rate, "background": rate, "images": [...]}."""
    from ..evaluate.render import Cell, Renderer

    renderer = renderer or Renderer(str(base_model))
    scenes = world_scenes(count, seed)
    loras = [(Path(lora), 1.0, 1.0)] if lora else []
    images = [renderer.render(Cell(s.caption(), "", CFG, 1000 + i, STEPS, SAMPLER, loras, ("", "", "")),
                              world.SIZE, world.SIZE) for i, s in enumerate(scenes)]
    seen = embedder.recognise(images)
    both = [r["shape"] == s.shape and r["colour"] == s.colour for r, s in zip(seen, scenes)]
    background = [r["background"] == s.background for r, s in zip(seen, scenes)]
    return {"shape_colour": sum(both) / count, "background": sum(background) / count, "images": images}


def report_images(report: dict, name: str) -> list:
    """The images score_run rendered for checkpoint `name` ("nolora" for the baseline)."""
    from PIL import Image

    marker = f"score-{name}-p"
    return [Image.open(path).convert("RGB") for path in report["images"] if Path(path).name.startswith(marker)]


def colour_share(images, embedder, colour: str) -> float:
    """Share of `images` whose main colour the toy scorer reads as `colour` (e.g. the character's orange)."""
    seen = embedder.recognise(images)
    return sum(r["colour"] == colour for r in seen) / max(1, len(seen))


def text_encoder_change(base_model, lora_file, prompts) -> list[float]:
    """How much the LoRA's text-encoder part changes the text encoder's output for each prompt: the norm of
    the change over the norm of the output, all 77 positions. Merged by hand from the file's lora_te_
    tensors (W + up @ down * alpha / rank), apart from the loaders, so a loader bug cannot hide here."""
    import torch
    from safetensors.torch import load_file

    from ..models.loading import load_base_model

    pipe = load_base_model(str(base_model))
    encoder, tokenizer = pipe.text_encoder.float().eval(), pipe.tokenizer
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    modules = {"lora_te_text_model_" + name.replace(".", "_"): module for name, module in encoder.named_modules()}
    tensors = load_file(str(lora_file))
    with torch.no_grad():
        before = encoder(ids)[0]
        for key, down in tensors.items():
            if key.startswith("lora_te_") and key.endswith(".lora_down.weight"):
                stem = key[:-len(".lora_down.weight")]
                up = tensors[stem + ".lora_up.weight"].float()
                alpha = float(tensors[stem + ".alpha"]) if stem + ".alpha" in tensors else down.shape[0]
                modules[stem].weight += up @ down.float() * (alpha / down.shape[0])
        after = encoder(ids)[0]
    return [float((a - b).norm() / b.norm()) for a, b in zip(after, before)]
