"""AUTOMATIC1111's prompt rules, as pure functions (no torch).

- `<lora:NAME:W>` tags: A1111's `modules/extra_networks.py` (`re_extra_net`, `ExtraNetworkParams`) and
  `extensions-builtin/Lora/extra_networks_lora.py` (weights, `te=`/`unet=`).
- Comments: A1111's `modules/processing_scripts/comments.py` (`strip_comments`, on by default since 1.8).

LoRA names -> files are in `lora_names.py`, the X/Y/Z axis values in `axes.py`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple


from ..errors import CharLoRAError


class EvaluationError(CharLoRAError):
    """A prompt, axis value or LoRA name the evaluation cannot use."""


# --------------------------------------------------------------------------- <lora:...> tags

RE_EXTRA_NET = re.compile(r"<(\w+):([^>]+)>")  # A1111's re_extra_net, verbatim
LORA_TYPES = ("lora", "lyco")  # A1111 registers "lyco" as an alias of its Lora network


@dataclass(frozen=True)
class LoraTag:
    name: str
    te_weight: float
    unet_weight: float
    text: str  # the tag as written, e.g. "<lora:wwaa:0.8>"


class ParsedPrompt(NamedTuple):
    prompt: str  # the prompt with every extra-network tag removed, as A1111 encodes it
    tags: list  # [LoraTag], one per LoRA name
    warnings: list  # [str]


def _weight(value: str, tag: str) -> float:
    try:
        weight = float(value)
    except ValueError:
        raise EvaluationError(f"{tag}: weight {value!r} is not a number; write e.g. <lora:NAME:0.8>") from None
    if not math.isfinite(weight):
        raise EvaluationError(f"{tag}: weight {value!r} is not a finite number; write e.g. <lora:NAME:0.8>")
    return weight


def _lora_tag(args: str, text: str, warnings: list) -> LoraTag:
    # ExtraNetworkParams: items split on ":"; an item with exactly one "=" is a named argument.
    positional, named = [], {}
    for item in args.split(":"):
        parts = item.split("=", 2)
        if len(parts) == 2:
            named[parts[0]] = parts[1]
        else:
            positional.append(item)
    if not positional or not positional[0].strip():
        raise EvaluationError(f"{text} names no LoRA; write <lora:NAME:WEIGHT>")
    # extra_networks_lora.activate: te from the 2nd item or te=, unet from the 3rd or unet= (default: te)
    te = _weight(positional[1], text) if len(positional) > 1 else 1.0
    te = _weight(named["te"], text) if "te" in named else te
    unet = _weight(positional[2], text) if len(positional) > 2 else te
    unet = _weight(named["unet"], text) if "unet" in named else unet
    ignored = positional[3:] + [f"{k}={v}" for k, v in named.items() if k not in ("te", "unet")]
    if ignored:  # A1111's 4th item / dyn= is LyCORIS' dynamic dim, meaningless for a Standard LoRA
        warnings.append(f"{text}: ignored {', '.join(ignored)} (CharLoRA uses the name, te and unet weights)")
    return LoraTag(positional[0], te, unet, text)


def strip_comments(text: str) -> str:
    """A1111's prompt comments (modules/processing_scripts/comments.py, "Enable comments", on by default): a
    `#` hides the text up to the end of its line. Applied, as there, after Prompt S/R and before the
    `<lora:...>` tags are read, to the prompt and the negative prompt: `portrait\n# old: <lora:b:1>\n<lora:a:1>`
    applies only `a`. The two substitutions are A1111's, verbatim."""
    text = re.sub('(^|\n)#[^\n]*(\n|$)', '\n', text or "")  # whole line comment
    text = re.sub('#[^\n]*(\n|$)', '\n', text)  # in the middle of the line comment
    return text


def negative_lora_note(negative: str) -> str | None:
    """A1111 reads extra-network tags from the prompt only: `<lora:...>` in the negative prompt stays there as
    text (the text encoder sees it) and applies no LoRA. CharLoRA does the same, and says so."""
    tags = [m.group(0) for m in RE_EXTRA_NET.finditer(negative or "")]
    if not tags:
        return None
    return (f"negative prompt: {', '.join(tags)} applies no LoRA and stays in the negative prompt as text, as in "
            "AUTOMATIC1111 (LoRAs are read from the prompt only); remove it if that is not what you want")


def lora_tag_of(text: str) -> LoraTag | None:
    """The LoraTag of one `<lora:...>`/`<lyco:...>` tag as written; None for another kind of tag."""
    match = RE_EXTRA_NET.fullmatch(text)
    if match is None or match.group(1) not in LORA_TYPES:
        return None
    return _lora_tag(match.group(2), text, [])


def _num(value: float) -> str:
    return f"{float(value):.8f}".rstrip("0").rstrip(".")


def format_lora_tag(name: str, te: float, unet: float) -> str:
    """`<lora:NAME:W>`, or `<lora:NAME:TE:UNET>` when the weights differ (A1111's syntax)."""
    return f"<lora:{name}:{_num(te)}>" if te == unet else f"<lora:{name}:{_num(te)}:{_num(unet)}>"


def rename_lora_tag(text: str, name: str) -> str:
    """The tag as written with its name replaced (weights and named arguments kept as typed)."""
    match = RE_EXTRA_NET.fullmatch(text)
    items = match.group(2).split(":")
    for i, item in enumerate(items):
        if len(item.split("=", 2)) != 2:  # the first positional item is the name
            items[i] = name
            break
    return f"<{match.group(1)}:{':'.join(items)}>"


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Remove every `<type:args>` tag as A1111 does (`re.sub` with ""), keeping the rest as is.

    Only lora/lyco tags are ours; other types (<hypernet:x:1>) are removed too, with a warning.
    The same name twice: A1111 (networks.load_networks) reuses one in-memory network for both mentions,
    so the last mention's weights overwrite the first's, and the network is applied once per mention.
    Its effect is therefore `count x the last weights`; the returned tag says exactly that."""
    found: dict[str, list[LoraTag]] = {}
    warnings: list[str] = []

    def remove(match: re.Match) -> str:
        kind, args = match.group(1), match.group(2)
        if kind in LORA_TYPES:
            tag = _lora_tag(args, match.group(0), warnings)
            found.setdefault(tag.name, []).append(tag)
        else:
            warnings.append(f"{match.group(0)} removed from the prompt: CharLoRA renders LoRAs only, "
                            f"not {kind} networks")
        return ""

    clean = RE_EXTRA_NET.sub(remove, prompt or "")
    tags = []
    for name, mentions in found.items():
        last = mentions[-1]
        if len(mentions) > 1:
            n = len(mentions)
            warnings.append(f"lora '{name}' appears {n} times; AUTOMATIC1111 applies it {n} times at the last "
                            f"tag's weights ({last.text}), so CharLoRA does too; write it once to avoid this")
            last = LoraTag(name, n * last.te_weight, n * last.unet_weight, last.text)
        tags.append(last)
    return ParsedPrompt(clean, tags, warnings)
