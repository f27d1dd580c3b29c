"""`train --config FILE`: one training run in the foreground, with a progress bar.

Also the entry for several GPUs: `accelerate launch --num_processes N -m charlora train --config FILE`.
Ctrl-C once stops cleanly after the current step and saves a resumable state; twice aborts.
"""

from __future__ import annotations

import signal
import sys


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train a LoRA from a Kohya JSON config",
        description="Train a LoRA. Prints the step count, images, buckets and precision before step 1. "
                    "Ctrl-C stops after the current step and saves a state you can resume from.")
    train.add_argument("--config", required=True, help="a Kohya JSON config or preset")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one key (repeatable)")
    train.add_argument("--print-command", action="store_true",
                       help="only print the command that runs this config (accelerate launch for several GPUs)")
    train.set_defaults(handler=run_train)


class ConsoleProgress:
    def __init__(self, main: bool):
        self.main = main
        self.bar = None

    def __call__(self, event) -> None:
        from ..train import Message, RunFinished, RunStarted, SamplesSaved, Saved, Step

        if not self.main:
            return
        if isinstance(event, RunStarted):
            print("\n".join(event.summary_lines()), flush=True)
            from tqdm import tqdm

            self.bar = tqdm(total=event.total_steps, initial=event.start_step, unit="step", dynamic_ncols=True)
        elif isinstance(event, Step) and self.bar is not None:
            self.bar.update(event.step - self.bar.n)
            self.bar.set_postfix(epoch=event.epoch, loss=f"{event.loss:.4f}", avg=f"{event.average_loss:.4f}")
        elif isinstance(event, Message) and event.level == "error":
            pass  # the run's final message says it, once (run_train prints it)
        elif isinstance(event, (Saved, SamplesSaved, Message)):
            text = {Saved: lambda e: f"saved {e.path}", SamplesSaved: lambda e: f"samples: {', '.join(e.paths)}",
                    Message: lambda e: f"{e.level}: {e.text}"}[type(event)](event)
            (self.bar.write if self.bar is not None else print)(text)
        elif isinstance(event, RunFinished) and self.bar is not None:
            self.bar.close()


def run_train(args) -> int:
    from ..params import load_config

    loaded = load_config(args.config, args.overrides)
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    from ..train import StopRequest, train, training_command

    if args.print_command:
        print(training_command(loaded.values, args.config))
        return 0
    from accelerate import PartialState

    import torch

    main = PartialState(cpu=not torch.cuda.is_available()).is_main_process
    if main:
        from ..vram_estimate import estimate_for_this_machine

        estimate, reading = estimate_for_this_machine(loaded.values)
        print(f"VRAM estimate: {estimate.total / 1024**3:.1f} GiB"
              + (f" ({estimate.verdict()})" if reading.available else f" ({reading.message})"), flush=True)
    stop = StopRequest()

    def on_interrupt(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt
        print("\nstopping after this step (Ctrl-C again to abort)...", file=sys.stderr, flush=True)
        stop.request(save=True)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        result = train(loaded.values, [ConsoleProgress(main)], stop)
    finally:
        signal.signal(signal.SIGINT, previous)
    if main:
        if result.traceback and getattr(args, "debug", False):
            print(result.traceback, file=sys.stderr, end="")
        print(("error: " if result.status == "failed" else "") + result.message,
              file=sys.stderr if result.status == "failed" else sys.stdout)
    if result.status == "failed":
        return 1 if result.message.startswith("internal error") else 2
    return 0
