"""`demo [DIR]`: the whole story on the toy model, on a CPU, in minutes (charlora.toy.demo)."""

from __future__ import annotations


def register(subparsers) -> None:
    demo = subparsers.add_parser(
        "demo", help="the whole story offline on a CPU in minutes: a toy model learns a character",
        description="Builds (once) a tiny model trained on a toy world of coloured shapes, writes 12 pictures of a "
                    "character it has never seen, trains a LoRA with the character-16gb preset scaled to the toy, "
                    "then the checkpoint x CFG grid, the score, a seed batch and keep. No GPU, no download.")
    demo.add_argument("dir", nargs="?", default="charlora-demo", help="a new or empty folder (default: charlora-demo)")
    demo.add_argument("--epochs", type=int, default=None, help="epochs to train (default: the demo's 6)")
    demo.set_defaults(handler=run_demo_cmd)


def run_demo_cmd(args) -> int:
    from ..toy.demo import run_demo

    result = run_demo(args.dir, say=lambda text: print(text, flush=True), epochs=args.epochs)
    print(f"\nOpen {result.grid} (the grid) and {result.seed_sheet} (the seed batch).\n"
          f"The same files work in the app: python gui.py, base model {result.base_model}, "
          f"LoRA folder {result.lora_folder}, scorer 'toy'.")
    return 0
