"""`python -m charlora demo`: the whole story on a CPU in minutes, with the toy model.

The toy model (`charlora.toy.model`, shipped) knows a small world of coloured shapes; the demo teaches it a
character it has never seen (`world.CHARACTER`, an orange star-shaped figure with a purple hat) from
12 captioned pictures, with the `character-16gb` preset (the user's Kohya settings) scaled to the
toy: then the checkpoint x CFG grid, scoring with the toy scorer, a seed batch of the recommended
checkpoint, and keeping it. Every step is the engine's public function that the app and the CLI use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CharLoRAError
from . import world

PRESET = "character-16gb"
# The user's settings family, scaled to a 64 px toy model: what changes and why.
TOY_SETTINGS = {
    "max_resolution": "64,64",  # the toy world's picture size
    "min_bucket_reso": 64,
    "max_bucket_reso": 128,
    "network_dim": 16,  # the toy UNet's layers are 32-64 wide: rank 128 would exceed them
    "network_alpha": 1,  # as the user's config: alpha below the rank, so a wrong alpha scale shows
    "learning_rate": 1e-3,  # a model this small takes larger steps than SD 1.5's 1e-4
    "unet_lr": 1e-3,
    "text_encoder_lr": 5e-4,  # half the UNet's, as in the user's config
    "epoch": 6,
    "seed": 1,  # the user's config leaves it empty (a new one each run); the demo and its tests repeat
    "noise_offset": 0.15,  # as the toy model was trained: without it a LoRA turns every background gray
    "mixed_precision": "no",  # a CPU trains in fp32 (fp16 would be refused with a warning)
    "sample_every_n_epochs": 0,
    "logging_dir": "",
    "reg_data_dir": "",
    "caption_extension": ".txt",
}
PICTURES = 12
REPEATS = 10
PROMPTS = ["wwaa figure, on a white background", "wwaa figure, on a black background",
           "wwaa figure, on a gray background"]
SEEDS = [1, 2, 3, 4]


@dataclass
class DemoResult:
    folder: Path
    base_model: Path
    train_data_dir: Path
    lora_folder: Path
    output_name: str
    files: list = field(default_factory=list)
    grid: str = ""
    report: dict = field(default_factory=dict)
    seed_sheet: str = ""
    kept: Path | None = None


def toy_settings(extra: dict | None = None) -> list[str]:
    """TOY_SETTINGS (then `extra`) as `--set` strings (KEY=VALUE), for load_config or the CLI."""
    return [f"{key}={value}" for key, value in {**TOY_SETTINGS, **(extra or {})}.items()]


def run_demo(out_dir, say=print, epochs: int | None = None, seed: int = 0) -> DemoResult:
    """Run the story into `out_dir` (created; must be empty or new). `say(text)` reports each step."""
    from ..evaluate import GridSpec, ScoreSpec, SeedBatchSpec, build_grid, keep_checkpoint, score_run, seed_batch
    from ..evaluate.render import shared_renderer
    from ..params import load_config
    from ..presets import find_preset
    from ..train import train
    from .embedder import toy_embedder
    from .model import toy_model

    out = Path(out_dir).expanduser().absolute()
    if out.exists() and any(out.iterdir()):
        raise CharLoRAError(f"demo folder {str(out)!r} is not empty: choose a new folder (the demo writes a "
                            "dataset, a run and its evaluation there)")
    out.mkdir(parents=True, exist_ok=True)

    say("1/6 the toy model (unpacked once per machine)")
    model_folder = toy_model(seed=seed)
    base = next(model_folder.glob("*.safetensors"))
    say(f"    {base}")

    say(f"2/6 {PICTURES} pictures of the character, Kohya's layout")
    data = world.write_character_dataset(out / "img", world.CHARACTER, PICTURES, seed=seed, repeats=REPEATS)
    say(f"    {next(data.iterdir())}")

    name = f"{world.CHARACTER.trigger}-demo"
    overrides = {"pretrained_model_name_or_path": str(base), "train_data_dir": str(data),
                 "output_dir": str(out / "model"), "output_name": name}
    if epochs is not None:
        overrides["epoch"] = epochs
    loaded = load_config(str(find_preset(PRESET).path), toy_settings(overrides))
    say(f"3/6 training with the {PRESET} preset scaled to the toy ({loaded.values['epoch']} epochs, a file each)")
    result = train(loaded.values)
    if result.status != "completed":
        raise CharLoRAError(f"the demo's training did not finish: {result.message}")
    lora_folder = out / "model"
    files = sorted(p.name for p in lora_folder.glob(f"{name}*.safetensors"))
    say(f"    {len(files)} files in {lora_folder}")

    renderer = shared_renderer(str(base))
    size = {"width": 64, "height": 64}
    epoch_names = ",".join(Path(f).stem for f in files)
    say("4/6 the checkpoint x CFG grid (first column without LoRA)")
    grid = build_grid(GridSpec(base_model=str(base), lora_folder=str(lora_folder), output_dir=str(out / "grid"),
                               prompt=f"<lora:{name}:1> {PROMPTS[0]}", x_kind="checkpoint",
                               x_values="None," + epoch_names, y_kind="cfg", y_values="5,7,9", **size),
                      renderer=renderer)
    say(f"    {grid.grids[0]}")

    say("5/6 scoring every checkpoint with the toy scorer")
    report = score_run(ScoreSpec(base_model=str(base), lora_folder=str(lora_folder), output_name=name,
                                 train_data_dir=str(data), output_dir=str(out / "score"), prompts=PROMPTS,
                                 seeds=SEEDS, scorer="toy", **size), renderer=renderer, embedder=toy_embedder())
    chosen = Path(report["recommended_file"])
    say(f"    recommended: {chosen.name}")
    for reason in report["recommendation"]["reasons"]:
        say(f"      - {reason}")

    say("6/6 a seed batch of the recommended checkpoint, then keep it")
    sheet = seed_batch(SeedBatchSpec(base_model=str(base), prompt=PROMPTS[1], seeds=list(range(1, 9)),
                                     output=str(out / "seeds.png"), lora=str(chosen), **size), renderer=renderer)
    from ..evaluate import run_files

    kept = keep_checkpoint(chosen, out / "kept", run_files(lora_folder, name, member=chosen).files)
    say(f"    seeds: {sheet.sheet}")
    say(f"    kept: {kept.kept} (the other checkpoints are in {kept.archive_dir})")
    return DemoResult(folder=out, base_model=base, train_data_dir=data, lora_folder=lora_folder, output_name=name,
                      files=files, grid=grid.grids[0], report=report, seed_sheet=sheet.sheet or "", kept=kept.kept)
