"""`params`: the parameter table, as text or as the Markdown of docs/parameters.md."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    params = subparsers.add_parser("params", help="list every parameter (name, type, default, help)")
    params.add_argument("--group", help="only this group, e.g. 'network'")
    params.add_argument("--markdown", action="store_true", help="print docs/parameters.md")
    params.set_defaults(handler=run_params)


def run_params(args) -> int:
    from ..errors import CharLoRAError
    from ..params import GROUPS
    from ..params.docs import markdown_table, text_table

    if args.group and args.group not in GROUPS:
        raise CharLoRAError(f"no group {args.group!r}; groups: {', '.join(GROUPS)}")
    sys.stdout.write(markdown_table() if args.markdown else text_table(args.group))
    return 0
