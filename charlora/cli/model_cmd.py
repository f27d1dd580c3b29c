"""`make-tiny-model DIR [--sdxl]`: the tiny random-weight SD 1.5- (or SDXL-) shaped model the tests and the
demo use.
`make-toy-model DIR`: a tiny SD 1.5-family model trained on the toy world (minutes on a CPU)."""

from __future__ import annotations


def register(subparsers) -> None:
    tiny = subparsers.add_parser(
        "make-tiny-model", help="write a tiny random-weight SD 1.5- or SDXL-shaped model (offline, seconds)",
        description="Write a tiny SD 1.5-shaped (or, with --sdxl, SDXL-shaped) model with random weights: a "
                    "diffusers folder and a single-file .safetensors in the original layout. No download.")
    tiny.add_argument("dir", help="output folder")
    tiny.add_argument("--sdxl", action="store_true", help="SDXL's structure (two text encoders, size conditioning)")
    tiny.add_argument("--seed", type=int, default=0, help="weights are a function of this seed (default 0)")
    tiny.set_defaults(handler=run_make_tiny)

    toy = subparsers.add_parser(
        "make-toy-model", help="train a tiny SD 1.5-family model on the toy world (offline, about 20 minutes on a CPU)",
        description="Train, from scratch on the CPU, a tiny SD 1.5-family model (UNet, VAE, CLIP text "
                    "encoder, SD 1.5's noise schedule) that has learned the toy world: 64 px pictures of one "
                    "flat shape on a plain background, such as 'a small red circle on a white background'. "
                    "About 20 CPU minutes; no download (the tests and the demo use the copy CharLoRA ships). "
                    "Writes a diffusers folder and a single-file "
                    ".safetensors in the original SD layout, deterministic from the seed. See docs/toy-world.md.")
    toy.add_argument("dir", help="output folder")
    toy.add_argument("--seed", type=int, default=0, help="training is a function of this seed (default 0)")
    toy.add_argument("--check", action="store_true",
                     help="then compare the weights with the model CharLoRA ships (seed 0); exit 1 if they differ")
    toy.set_defaults(handler=run_make_toy)


def run_make_tiny(args) -> int:
    from ..models.tiny import make_tiny_model
    from ..models.tiny_sdxl import make_tiny_sdxl_model

    model = (make_tiny_sdxl_model if args.sdxl else make_tiny_model)(args.dir, seed=args.seed)
    print(f"diffusers folder: {model.folder}")
    print(f"single file:      {model.single_file}")
    return 0


def run_make_toy(args) -> int:
    from ..toy.model import make_toy_model

    model = make_toy_model(args.dir, seed=args.seed, progress=lambda line: print(line, flush=True))
    print(f"diffusers folder: {model.folder}")
    print(f"single file:      {model.single_file}")
    if args.check:
        from ..toy.model import SHIPPED_SEED, compare_with_shipped

        if args.seed != SHIPPED_SEED:
            print(f"--check: the shipped model is seed {SHIPPED_SEED}, not {args.seed}")
            return 1
        difference = compare_with_shipped(model.single_file)
        print(f"largest weight difference from the shipped model: {difference:g}")
        return 0 if difference == 0 else 1
    return 0
