"""`make-tiny-model DIR`: the tiny random-weight SD 1.5-shaped model every test and the demo use."""

from __future__ import annotations


def register(subparsers) -> None:
    tiny = subparsers.add_parser(
        "make-tiny-model", help="write a tiny random-weight SD 1.5-shaped model (offline, seconds)",
        description="Write a tiny SD 1.5-shaped model with random weights: a diffusers folder and a "
                    "single-file .safetensors in the original SD layout. No download.")
    tiny.add_argument("dir", help="output folder")
    tiny.add_argument("--seed", type=int, default=0, help="weights are a function of this seed (default 0)")
    tiny.set_defaults(handler=run_make_tiny)


def run_make_tiny(args) -> int:
    from ..models.tiny import make_tiny_model

    model = make_tiny_model(args.dir, seed=args.seed)
    print(f"diffusers folder: {model.folder}")
    print(f"single file:      {model.single_file}")
    return 0
