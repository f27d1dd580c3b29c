"""`bench`: time real training steps (and generation) on a random-weight model; prints numbers.
`bench --app-overhead`: the same training through the app's job with a polling page, against the CLI's way."""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    bench = subparsers.add_parser(
        "bench", help="time training steps and generation on a random-weight tiny, SD 1.5- or SDXL-shaped model",
        description="Benchmark: a real training run of a config (default: presets/character-16gb.json, the "
                    "user's Kohya setup; presets/sdxl-character-16gb.json for --shape sdxl) on a random-weight "
                    "model, no download. Prints median s/step, samples/s, the phase split, peak memory and "
                    "generation speed.")
    bench.add_argument("--shape", choices=("tiny", "sd15", "tiny-sdxl", "sdxl"), default="tiny")
    bench.add_argument("--resolution", type=int,
                       help="square training resolution (default 64 tiny and tiny-sdxl, 512 sd15, 1024 sdxl)")
    bench.add_argument("--batch", type=int, default=1)
    bench.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    bench.add_argument("--steps", type=int, help="timed steps after the warm-up (default 3; 40 with --app-overhead)")
    bench.add_argument("--warmup", type=int, help="warm-up steps, not timed (default 1; 2 with --app-overhead)")
    bench.add_argument("--config", help="a Kohya JSON config (default: presets/character-16gb.json; "
                                        "presets/sdxl-character-16gb.json for --shape sdxl)")
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    bench.add_argument("--no-generation", action="store_true", help="skip the generation timing")
    bench.add_argument("--generation-steps", type=int, default=20)
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    overhead = bench.add_argument_group(
        "app overhead", "--app-overhead: the same short training run as the CLI runs it (train() in the main thread) "
                        "and as the app does (the job's thread, with a thread polling like an open Training tab), in "
                        "alternating rounds; prints CPU and wall seconds per step, the poller's CPU per poll and the "
                        "ratio app/CLI (default resolution 64 tiny, 256 sd15)")
    overhead.add_argument("--app-overhead", action="store_true", help="measure the app's overhead per training step")
    overhead.add_argument("--rounds", type=int, default=3, help="rounds of one run per mode (default 3)")
    overhead.add_argument("--with-server", action="store_true",
                          help="add a mode with the real Gradio app served from the same process (no browser)")
    overhead.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls (the app's: 1)")
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
    if args.app_overhead:
        return run_app_overhead(args)
    report = run_bench(args.shape, args.resolution, args.batch, args.device, args.steps or 3,
                       1 if args.warmup is None else args.warmup, args.config, tuple(args.overrides),
                       not args.no_generation, args.generation_steps)
    report.pop("values", None)
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else format_report(report))
    return 0


def run_app_overhead(args) -> int:
    from ..errors import CharLoRAError
    from ..ui.overhead_bench import format_report, run_overhead_bench

    steps, warmup = args.steps or 40, 2 if args.warmup is None else args.warmup
    if warmup < 1 or steps < 1 or args.rounds < 1 or args.poll_interval <= 0:
        raise CharLoRAError("--app-overhead needs --warmup >= 1 (timing starts after a warm-up step), --steps >= 1, "
                            "--rounds >= 1 and --poll-interval > 0")
    if args.batch != 1:
        raise CharLoRAError("--app-overhead runs at batch 1; set train_batch_size with --set instead of --batch")
    # each run as it ends, on stderr: a full benchmark takes minutes
    report = run_overhead_bench(args.shape, args.resolution, steps, warmup, args.rounds, args.config,
                                tuple(args.overrides), args.with_server, args.poll_interval,
                                lambda line: print(line, file=sys.stderr, flush=True))
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
