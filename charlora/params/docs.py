"""The parameter table rendered for people: docs/parameters.md and `python -m charlora params`."""

from __future__ import annotations

from .spec import GROUPS, Param
from .table import params_in_group


def describe_type(p: Param) -> str:
    if p.choices:
        return " / ".join(str(c) for c in p.choices)
    kind = {"int": "integer", "float": "number", "bool": "true/false", "str": "text", "text": "text (lines)",
            "path": "path", "resolution": "W,H", "choice": "choice"}[p.kind]
    if p.min is not None and p.max is not None:
        kind += f" {p.min:g}..{p.max:g}"
    if p.optional:
        kind += ", empty = not set"
    return kind


def describe_default(p: Param) -> str:
    return '""' if p.default in ("", None) else str(p.default)


def describe_effect(p: Param) -> str:
    if p.effect == "supported":
        return ""
    if p.effect == "ignored":
        return f"No effect: {p.reason}."
    allowed = " or ".join(repr(a) if isinstance(a, str) else str(a) for a in p.allowed)
    return f"Only {allowed}: {p.reason}."


def markdown_table() -> str:
    lines = [
        "# Parameters",
        "",
        "Generated from `charlora/params/table.py` by `python -m charlora params --markdown`; do not edit by hand.",
        "Keys are Kohya GUI's. A missing key takes the default below; an unknown key is reported and ignored.",
        "",
    ]
    for group in GROUPS:
        lines += [f"## {group}", "", "| key | type | default | what it does |", "| --- | --- | --- | --- |"]
        for p in params_in_group(group):
            text = " ".join(s for s in (p.help, describe_effect(p)) if s).replace("|", "\\|")
            lines.append(f"| `{p.key}` | {describe_type(p)} | {describe_default(p)} | {text} |")
        lines.append("")
    return "\n".join(lines)


def text_table(group: str | None = None) -> str:
    out = []
    for g in GROUPS:
        if group and g != group:
            continue
        out.append(f"[{g}]")
        for p in params_in_group(g):
            note = describe_effect(p)
            out.append(f"  {p.key} = {describe_default(p)}  ({describe_type(p)})\n      {p.help}"
                       + (f"\n      {note}" if note else ""))
        out.append("")
    return "\n".join(out) + "\n"
