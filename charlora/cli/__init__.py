"""`python -m charlora ...`: the headless face of the engine.

Each subcommand lives in its own module with a `register(subparsers)` function. Heavy imports
(torch, diffusers) happen inside the handlers, so `--help` and `config check` stay fast.
Exit codes: 0 done, 2 bad input (the message says which file, key or value), 1 internal error.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..errors import CharLoRAError
from . import bench_cmd, config_cmd, dataset_cmd, demo_cmd, evaluate_cmd, lora_cmd, model_cmd, params_cmd, train_cmd

SUBCOMMANDS = (config_cmd, params_cmd, dataset_cmd, train_cmd, evaluate_cmd, lora_cmd, bench_cmd, model_cmd,
               demo_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m charlora",
        description="CharLoRA: train a Stable Diffusion 1.5 or SDXL character LoRA (Kohya-compatible), headless.",
        epilog="The GUI: python gui.py. Every subcommand has --help.",
    )
    parser.add_argument("--version", action="version", version=f"CharLoRA {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks of internal errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.handler(args) or 0
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        # `... | head` closed our output: not an error. Point stdout at devnull so the exit flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except CharLoRAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: say what it is, traceback only on request
        if args.debug:
            raise
        print(f"internal error: {type(exc).__name__}: {exc}\n(run with --debug for the full traceback)",
              file=sys.stderr)
        return 1
