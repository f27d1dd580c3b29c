"""`config check FILE`: normalise a Kohya JSON config and show every problem at once."""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    config = subparsers.add_parser("config", help="check Kohya JSON configs")
    sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check", help="print the normalised config as JSON, or every problem (exit 2)",
        description="Load a Kohya GUI config (JSON) as CharLoRA would, print the normalised values "
                    "as JSON on stdout, warnings on stderr. Exit 2 with every problem when it is bad.")
    check.add_argument("file", help="a Kohya JSON config or preset")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one key (repeatable), e.g. --set network_dim=64")
    check.set_defaults(handler=run_check)


def run_check(args) -> int:
    from ..params import load_config

    loaded = load_config(args.file, args.overrides)
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    json.dump(loaded.values, sys.stdout, indent=2, sort_keys=True, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0
