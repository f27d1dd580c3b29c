"""`bench`: time real training steps (and generation) on a random-weight model; prints numbers."""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    bench = subparsers.add_parser(
        "bench", help="time training steps and generation on a random-weight tiny or SD 1.5-shaped model",
        description="Benchmark: a real training run of a config (default: presets/character-16gb.json, the "
                    "user's Kohya setup) on a random-weight model, no download. Prints median s/step, "
                    "samples/s, the phase split, peak memory and generation speed.")
    bench.add_argument("--shape", choices=("tiny", "sd15"), default="tiny")
    bench.add_argument("--resolution", type=int, help="square training resolution (default 64 tiny, 512 sd15)")
    bench.add_argument("--batch", type=int, default=1)
    bench.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    bench.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    bench.add_argument("--warmup", type=int, default=1)
    bench.add_argument("--config", help="a Kohya JSON config (default: presets/character-16gb.json)")
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    bench.add_argument("--no-generation", action="store_true", help="skip the generation timing")
    bench.add_argument("--generation-steps", type=int, default=20)
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(handler=run)
    register_gpu_check(subparsers)


def run(args) -> int:
    from ..bench import force_cpu, format_report, run_bench
    from ..errors import CharLoRAError

    if args.device == "cpu":
        force_cpu()
    else:
        import torch

        if not torch.cuda.is_available():
            raise CharLoRAError("--device cuda: no CUDA GPU is available here (torch sees none); use --device cpu")
    report = run_bench(args.shape, args.resolution, args.batch, args.device, args.steps, args.warmup, args.config,
                       tuple(args.overrides), not args.no_generation, args.generation_steps)
    report.pop("values", None)
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else format_report(report))
    return 0


def register_gpu_check(subparsers) -> None:
    check = subparsers.add_parser(
        "gpu-check", help="the prepared GPU check: training, memory vs estimate, generation; one JSON",
        description="Run the GPU check (docs/benchmarks.md): the user's config on the SD 1.5 shape at 512 px, "
                    "batch 1 and 4, with and without gradient checkpointing, the text-encoder cache, generation "
                    "speed, NVML beside torch's peak and the VRAM estimate. --quick: tiny shape on the CPU.")
    check.add_argument("--out", default="gpu-check.json", help="the JSON file to write")
    check.add_argument("--quick", action="store_true", help="tiny shape on the CPU, to try the script")
    check.add_argument("--steps", type=int, default=10, help="timed steps per run (after 2 warm-up steps)")
    check.set_defaults(handler=run_gpu_check_cmd)


def run_gpu_check_cmd(args) -> int:
    from ..errors import CharLoRAError
    from ..gpu_check import run_gpu_check

    if not args.quick:
        import torch

        if not torch.cuda.is_available():
            raise CharLoRAError("gpu-check needs an NVIDIA GPU (torch sees none); --quick tries it on the CPU")
    else:
        from ..bench import force_cpu

        force_cpu()
    results = run_gpu_check(args.out, quick=args.quick, steps=args.steps)
    failed = [r["label"] for r in results["runs"] if "error" in r]
    print(f"wrote {args.out}: {len(results['runs'])} runs" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
