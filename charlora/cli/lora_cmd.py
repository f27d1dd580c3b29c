"""`lora inspect FILE`: what a LoRA file holds (Kohya's "Verify LoRA", and more)."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    lora = subparsers.add_parser("lora", help="inspect LoRA files")
    sub = lora.add_subparsers(dest="lora_command", metavar="ACTION", required=True)
    inspect = sub.add_parser(
        "inspect", help="base model, rank, alpha, modules, precision, metadata, weight norm per block",
        description="Describe a LoRA file. Exit 2 with a verdict when it is not a Standard LoRA or is damaged.")
    inspect.add_argument("file")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(handler=run_inspect)


def run_inspect(args) -> int:
    from ..lora.inspect import format_report, inspect_lora, to_json

    info = inspect_lora(args.file)
    sys.stdout.write(to_json(info) + "\n" if args.json else format_report(info))
    if info["problems"]:  # the report is printed, and the exit code says the file is not usable
        print(f"error: {info['file']} is {info['verdict']}", file=sys.stderr)
        return 2
    return 0
