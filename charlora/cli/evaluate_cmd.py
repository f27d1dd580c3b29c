"""`grid`, `seeds`, `score` and `keep`: the Evaluation tab, headless."""

from __future__ import annotations

import json
import sys

from ..params import PARAMS_BY_KEY
from ..params.evaluation import EVALUATION


def _size(text: str) -> tuple[int, int]:
    from ..errors import CharLoRAError

    parts = text.lower().replace("x", ",").split(",")
    try:
        width, height = (int(parts[0]), int(parts[-1]))
    except ValueError:
        raise CharLoRAError(f"--size {text!r}: use 512 or 512x768") from None
    return width, height


def _axis(text: str | None, name: str) -> tuple[str, str]:
    from ..errors import CharLoRAError

    if not text:
        return "nothing", ""
    kind, sep, values = text.partition("=")
    if not sep:
        raise CharLoRAError(f"--{name} {text!r}: use KIND=VALUES, e.g. --{name} cfg=7,8,9,10")
    return kind.strip(), values


def _option(parser, key: str, flag: str | None = None, **extra) -> None:
    """An option whose type, default and help come from the evaluation settings table (params/evaluation.py)."""
    param = EVALUATION[key]
    kind = {"int": int, "float": float}.get(param.kind, str)
    text = param.help.replace("%", "%%")  # argparse formats help with %
    parser.add_argument(flag or "--" + key.replace("_", "-"), type=kind, default=param.default,
                        help=f"{text} (default: {param.default!r})", **extra)


def _common(parser, lora: str = "folder") -> None:
    parser.add_argument("--base-model", required=True, help="SD 1.5 or SDXL model: file, diffusers folder or Hub id")
    for key in ("negative", "steps", "cfg", "sampler"):
        _option(parser, key)
    width, height = EVALUATION["width"].default, EVALUATION["height"].default
    parser.add_argument("--size", default=f"{width}" if width == height else f"{width}x{height}",
                        help="512 or WIDTHxHEIGHT")
    _option(parser, "clip_skip")
    parser.add_argument("--out", required=True, help="output folder (or file for seeds)")


def register(subparsers) -> None:
    grid = subparsers.add_parser("grid", help="A1111-style X/Y/Z grid of checkpoints, CFG, seeds, ...",
                                 description="Render an X/Y/Z plot as AUTOMATIC1111 does. Axes: prompt_sr, cfg, "
                                             "checkpoint, lora_weight, seed, steps, sampler. "
                                             "Example: --x prompt_sr=chk,2,4,6 --y cfg=7,8,9,10")
    _common(grid)
    grid.add_argument("--lora-folder", required=True, help="folder of the LoRA files (<lora:NAME:W> resolves here)")
    grid.add_argument("--prompt", required=True, help="prompt with <lora:NAME:W> tags")
    grid.add_argument("--x", help="KIND=VALUES for the columns")
    grid.add_argument("--y", help="KIND=VALUES for the rows")
    grid.add_argument("--z", help="KIND=VALUES: one grid per value")
    _option(grid, "seed")
    grid.set_defaults(handler=run_grid)

    seeds = subparsers.add_parser("seeds", help="one checkpoint over several seeds, as a sheet")
    _common(seeds)
    seeds.add_argument("--lora", help="the LoRA: a file, or a name as the grid lists it (NAME-000002, NAME-2, NAME) "
                                      "in --lora-folder; none = the base model")
    seeds.add_argument("--lora-folder", default=".", help="folder where --lora names are looked up")
    seeds.add_argument("--prompt", required=True)
    _option(seeds, "seeds")
    _option(seeds, "weight")
    seeds.set_defaults(handler=run_seeds)

    score = subparsers.add_parser("score", help="score every checkpoint of a run and recommend one",
                                  description="Generate with each checkpoint (and without LoRA), compare with the "
                                              "training images and each other, recommend a checkpoint.")
    _common(score)
    score.add_argument("--lora-folder", required=True)
    score.add_argument("--name", required=True, help="the run's output_name")
    score.add_argument("--train-data-dir", required=True, help="the run's train_data_dir")
    caption = PARAMS_BY_KEY["caption_extension"]
    score.add_argument("--caption-extension", default=caption.default,
                       help=f"the run's caption extension (default: {caption.default!r})")
    score.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    _option(score, "score_seeds", "--seeds")
    _option(score, "scorer")
    score.add_argument("--json", action="store_true", help="print the whole report as JSON")
    score.set_defaults(handler=run_score)

    keep = subparsers.add_parser("keep", help="copy the chosen LoRA into a folder and archive the rest of its run")
    keep.add_argument("file", help="the LoRA file to keep")
    keep.add_argument("--to", required=True, help="e.g. stable-diffusion-webui/models/Lora")
    keep.add_argument("--name", help="the run's output_name (default: from the file name)")
    keep.set_defaults(handler=run_keep)


def run_grid(args) -> int:
    from ..evaluate import GridSpec, build_grid

    x_kind, x_values = _axis(args.x, "x")
    y_kind, y_values = _axis(args.y, "y")
    z_kind, z_values = _axis(args.z, "z")
    width, height = _size(args.size)
    spec = GridSpec(base_model=args.base_model, lora_folder=args.lora_folder, prompt=args.prompt,
                    negative=args.negative, output_dir=args.out, x_kind=x_kind, x_values=x_values, y_kind=y_kind,
                    y_values=y_values, z_kind=z_kind, z_values=z_values, seed=args.seed, steps=args.steps,
                    cfg=args.cfg, sampler=args.sampler, width=width, height=height, clip_skip=args.clip_skip)
    result = build_grid(spec, progress=lambda done, total, image: print(f"cell {done}/{total}", file=sys.stderr))
    for warning in result.warnings:
        print(f"warning: {warning}")
    for line in result.files_used:
        print(f"lora: {line}")
    for path in result.grids:
        print(f"grid: {path}")
    print(f"cells: {result.output_dir} ({len(result.cells)} PNG files with their parameters)")
    return 0


def _seeds(text: str) -> list[int]:
    from ..evaluate.axes import parse_axis_values

    return [int(s) for s in parse_axis_values("seed", text)]


def run_seeds(args) -> int:
    from ..evaluate import SeedBatchSpec, seed_batch

    width, height = _size(args.size)
    out = args.out if args.out.lower().endswith(".png") else f"{args.out}/seeds.png"
    spec = SeedBatchSpec(base_model=args.base_model, lora=args.lora or "", lora_folder=args.lora_folder,
                         prompt=args.prompt, negative=args.negative, seeds=_seeds(args.seeds), output=out,
                         steps=args.steps, cfg=args.cfg, sampler=args.sampler, width=width, height=height,
                         clip_skip=args.clip_skip, weight=args.weight)
    result = seed_batch(spec, progress=lambda done, total, image: print(f"image {done}/{total}", file=sys.stderr))
    print(f"lora: {result.lora or 'none (base model)'}")
    print(f"sheet: {result.sheet}")
    return 0


def run_score(args) -> int:
    from ..evaluate import ScoreSpec, score_run

    width, height = _size(args.size)
    spec = ScoreSpec(base_model=args.base_model, lora_folder=args.lora_folder, output_name=args.name,
                     train_data_dir=args.train_data_dir, output_dir=args.out, prompts=args.prompt,
                     seeds=_seeds(args.seeds), negative=args.negative, scorer=args.scorer, steps=args.steps,
                     cfg=args.cfg, sampler=args.sampler, width=width, height=height, clip_skip=args.clip_skip,
                     caption_extension=args.caption_extension)
    report = score_run(spec, progress=lambda done, total, image: print(f"image {done}/{total}", file=sys.stderr))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'checkpoint':<32} {'is':<24} {'identity':>9} {'consistency':>12} {'prompt':>7}  warnings")
    for row in report["rows"]:
        fidelity = "-" if row["prompt_fidelity"] is None else f"{row['prompt_fidelity']:.3f}"
        what = "" if row["baseline"] else row["label"]
        print(f"{row['name']:<32} {what:<24} {row['identity']:>9.3f} {row['consistency']:>12.3f} "
              f"{fidelity:>7}  {'; '.join(row['warnings'])}")
    if report["other_runs_note"]:
        print(f"note: {report['other_runs_note']}")
    rec = report["recommendation"]
    print(f"recommended: {rec['name']} ({report['recommended_file']})")
    for reason in rec["reasons"]:
        print(f"  - {reason}")
    print(f"report: {report['report_file']}")
    return 0


def run_keep(args) -> int:
    import re
    from pathlib import Path

    from ..evaluate import keep_checkpoint, run_files

    chosen = Path(args.file)
    name = args.name or re.sub(r"-(\d{6}|step\d{8})$", "", chosen.stem)
    run = run_files(chosen.parent, name, member=chosen)  # the chosen file's run, not another with that name
    result = keep_checkpoint(chosen, Path(args.to), run.files)
    print(f"kept: {result.kept}")
    for path in result.archived:
        print(f"archived: {path}")
    if run.others:
        print(f"note: {run.note()}")
    return 0
