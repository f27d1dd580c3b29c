"""Measure that a LoRA learns the toy character, and that deliberately broken training does not.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python tools/toy_learning.py OUT_DIR [--break KIND] [--svg FILE]

Trains the character (wwaa, an orange star with a hat) and another character (zzkk) on the toy model
with the character-16gb preset scaled to the toy, scores every checkpoint with the toy scorer against
the character's training pictures, checks that world prompts still draw the world, prints the
numbers and writes OUT_DIR/learning.json (and the identity chart as SVG with --svg).

--break simulates a bug, to show the measurement catches it (docs/toy-world.md has the numbers):
  alpha-ignored  the files record alpha = rank (alpha ignored: with the toy's alpha 1 / rank 16, 16x too strong)
  alpha-twice    the files record alpha x alpha / rank (the scale applied twice: 16x too weak)
  alpha-quarter  the files record a quarter of the alpha (4x too weak: a small error, not caught; see the docs)
  te-off         the text encoder's LoRA is left out of the files (trained, then dropped)
  te-frozen      the text encoder's LoRA is never trained (left out of the optimizer; files hold it at its init)
  target         the UNet learns to predict the clean latents instead of the noise (a wrong noise target)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


BREAKS = ("alpha-ignored", "alpha-twice", "alpha-quarter", "te-off", "te-frozen", "target")


def apply_break(kind: str) -> None:
    from charlora.lora import kohya_file
    from charlora.train import noise, setup

    if kind.startswith("alpha") or kind == "te-off":
        original = kohya_file.kohya_state_dict

        def broken(weights, dtype):
            if kind == "alpha-quarter":
                weights = {k: (d, u, a / 4) for k, (d, u, a) in weights.items()}
            elif kind == "alpha-twice":
                weights = {k: (d, u, a * a / d.shape[0]) for k, (d, u, a) in weights.items()}
            elif kind == "alpha-ignored":
                weights = {k: (d, u, float(d.shape[0])) for k, (d, u, a) in weights.items()}
            else:
                weights = {k: v for k, v in weights.items() if not k.startswith("lora_te")}
            return original(weights, dtype)

        kohya_file.kohya_state_dict = broken
    elif kind == "te-frozen":
        original_groups = setup.param_groups

        def unet_only(network):
            groups, names = original_groups(network)
            kept = [(g, n) for g, n in zip(groups, names) if n != "text_encoder"]
            return [g for g, _ in kept], [n for _, n in kept]

        setup.param_groups = unet_only
    elif kind == "target":
        noise.training_target = lambda scheduler, latents, noise_, timesteps, v_prediction=False: latents
    elif kind:
        raise SystemExit(f"unknown --break {kind!r}: {', '.join(BREAKS)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--break", dest="broken", default="", help=", ".join(BREAKS))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="change one of the toy's training settings (repeatable), e.g. network_alpha=4")
    parser.add_argument("--svg", default="", help="write the identity-per-epoch chart here")
    args = parser.parse_args()
    apply_break(args.broken)

    import torch

    from charlora.evaluate.render import Renderer
    from charlora.toy import experiment, world
    from charlora.toy.embedder import toy_embedder
    from charlora.toy.model import toy_model

    torch.set_num_threads(2)
    started = time.process_time()
    out = Path(args.out)
    base = next(toy_model().glob("*.safetensors"))
    embedder = toy_embedder()
    extra = {"epoch": args.epochs} if args.epochs else {}
    for item in args.settings:
        key, _, value = item.partition("=")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    ours = experiment.train_character(out / "wwaa", base, world.CHARACTER, extra=extra)
    other = experiment.train_character(out / "zzkk", base, world.OTHER_CHARACTER, extra=extra)
    renderer = Renderer(str(base))
    report = experiment.score_character(ours, base, ours, out / "score-wwaa", embedder, renderer)
    other_report = experiment.score_character(other, base, ours, out / "score-zzkk", embedder, renderer)
    curve = experiment.identity_by_epoch(report)
    other_curve = experiment.identity_by_epoch(other_report)
    te_prompts = [*experiment.character_prompts(world.CHARACTER), *experiment.WORLD_PROMPTS]
    te_change = experiment.text_encoder_change(base, ours.files[-1], te_prompts)
    kept_world = experiment.world_recognition(base, embedder, lora=ours.files[-1], renderer=renderer)
    base_world = experiment.world_recognition(base, embedder, renderer=renderer)
    result = {
        "break": args.broken or "none",
        "settings": extra,
        "identity_by_epoch": curve,
        "other_character_by_epoch": other_curve,
        "baseline": curve[0][1],
        "recommended": report["recommendation"]["name"],
        "text_encoder_change": dict(zip(te_prompts, (round(v, 4) for v in te_change))),
        "warnings": {row["name"]: row["warnings"] for row in report["rows"]},
        "world_with_lora": {k: v for k, v in kept_world.items() if k != "images"},
        "world_base": {k: v for k, v in base_world.items() if k != "images"},
        "cpu_seconds": round(time.process_time() - started, 1),
    }
    (out / "learning.json").write_text(json.dumps(result, indent=2))
    print(f"break: {result['break']}")
    print("epoch  identity(wwaa LoRA)  identity(zzkk LoRA)")
    for (epoch, value), (_, other_value) in zip(curve, other_curve):
        print(f"{epoch:>5}  {value:>19.3f}  {other_value:>19.3f}" + ("   (no LoRA)" if epoch == 0 else ""))
    print(f"recommended: {result['recommended']}")
    n = len(experiment.character_prompts(world.CHARACTER))
    print(f"text encoder output changed by the LoRA: trigger prompts {sum(te_change[:n]) / n:.3f}, "
          f"world prompts {sum(te_change[n:]) / (len(te_change) - n):.3f}")
    print(f"world prompts with the LoRA: shape+colour {kept_world['shape_colour']:.2f}, background "
          f"{kept_world['background']:.2f} (base model: {base_world['shape_colour']:.2f}, "
          f"{base_world['background']:.2f})")
    if args.svg:
        from charlora.ui.charts import line_chart

        epochs = [e for e, _ in curve]
        svg = line_chart({"wwaa LoRA (the character)": curve, "zzkk LoRA (another character)": other_curve,
                          "no LoRA": [(e, curve[0][1]) for e in epochs]},
                         title="Identity to the character's training pictures (toy scorer)", x_label="epoch",
                         y_label="identity", elem_id="toy-identity")
        Path(args.svg).parent.mkdir(parents=True, exist_ok=True)
        Path(args.svg).write_text(svg, encoding="utf-8")
        print(f"chart: {args.svg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
