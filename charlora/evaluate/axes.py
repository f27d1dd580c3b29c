"""X/Y/Z plot axis values, as AUTOMATIC1111's `scripts/xyz_grid.py` reads them (no torch).

`csv_string_to_list_strip`, the `re_range*` regexes, `apply_prompt` (Prompt S/R) and
`format_value_add_label`.
"""

from __future__ import annotations

import csv
import math
import re
from io import StringIO
from itertools import chain
from pathlib import Path

import numpy as np

from .lora_names import NO_LORA
from .prompts import EvaluationError

AXIS_KINDS = ("prompt_sr", "cfg", "checkpoint", "lora_weight", "seed", "steps", "sampler", "nothing")
AXIS_TITLES = {"prompt_sr": "Prompt S/R", "cfg": "CFG Scale", "checkpoint": "LoRA checkpoint",
               "lora_weight": "LoRA weight", "seed": "Seed", "steps": "Steps", "sampler": "Sampler",
               "nothing": "Nothing"}
MAX_AXIS_VALUES = 1000

# xyz_grid.py's regexes, verbatim (the unescaped "." in the float ones matches any character, as there)
RE_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
RE_RANGE_FLOAT = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*")
RE_RANGE_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*])?\s*")
RE_RANGE_COUNT_FLOAT = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\[(\d+(?:.\d*)?)\s*])?\s*")


def csv_values(text: str) -> list[str]:
    """A1111's csv_string_to_list_strip: CSV (quotes protect commas; newlines separate too), stripped."""
    return [v.strip() for v in chain.from_iterable(csv.reader(StringIO(text), skipinitialspace=True))]


def _number(text: str, kind: str):
    return kind(text.replace(" ", ""))  # the regexes allow "+ 5"; int()/float() do not


def _expand(kind: str, items: list[str], number) -> list:
    """Numeric values and ranges exactly as xyz_grid.process_axis, which means:
    `1-5` is 1..5; `10-1 (-3)` is range(10, 1+1, -3) = 10,7,4 (A1111 adds 1 to the end even when
    counting down, so `5-1 (-1)` stops at 2); float ranges use np.arange(start, end + step, step), so
    `0.5-1` is 0.5,1.5 and `0.1-0.3 (+0.1)` gives four values; `1-10 [5]` is np.linspace, truncated to
    int for int axes (1,3,5,7,10)."""
    title = AXIS_TITLES[kind]
    plain, count = (RE_RANGE, RE_RANGE_COUNT) if number is int else (RE_RANGE_FLOAT, RE_RANGE_COUNT_FLOAT)
    values = []
    for item in items:
        if not item:
            raise EvaluationError(f"{title} values: an empty value (a stray comma?); remove it")
        m, mc = plain.fullmatch(item), count.fullmatch(item)
        try:
            if m:
                start, end = _number(m.group(1), number), _number(m.group(2), number)
                step = _number(m.group(3), number) if m.group(3) else 1
                if step == 0:
                    raise EvaluationError(f"{title} range {item!r} has a step of 0; use e.g. (+1) or (-1)")
                size = math.ceil((end + (1 if number is int else step) - start) / step)
                _check_size(title, item, size)
                if number is int:
                    got = list(range(start, end + 1, step))
                else:
                    got = np.arange(start, end + step, step).tolist()
            elif mc:
                start, end = _number(mc.group(1), number), _number(mc.group(2), number)
                num = int(mc.group(3)) if mc.group(3) else 1
                _check_size(title, item, num)
                got = np.linspace(start, end, num=num).tolist()
                if number is int:
                    got = [int(x) for x in got]
            else:
                got = [number(item)]
        except ValueError:
            what = "a whole number" if number is int else "a number"
            raise EvaluationError(f"{title} value {item!r} is not {what} or a range "
                                  "(write e.g. 7, 1-5, 1-9 (+2) or 1-10 [5])") from None
        if not got:
            raise EvaluationError(f"{title} range {item!r} gives no values; counting down needs a negative "
                                  "step, e.g. 10-1 (-1)")
        if any(not math.isfinite(v) for v in got):
            raise EvaluationError(f"{title} value {item!r} is not a finite number")
        values += got
        _check_size(title, ",".join(items), len(values))
    return values


def _check_size(title: str, item: str, size: int) -> None:
    if size > MAX_AXIS_VALUES:  # checked before a range is built: `1-100000000` must not fill the memory
        raise EvaluationError(f"{title} values {item!r} give {size} cells, more than {MAX_AXIS_VALUES}; "
                              "use a larger step or fewer values")


def parse_axis_values(kind: str, text: str, choices=None) -> list:
    """The values of one axis from the text a user types in A1111's X/Y/Z plot.

    cfg, lora_weight: floats; seed, steps: ints (ranges allowed); sampler: names, checked against
    `choices` when given (case-insensitive, as A1111); checkpoint: file stems, None for the base model
    ("none", "no lora"), checked against `choices` (stems) when given; prompt_sr: strings, the first is the
    search text; nothing: [None]."""
    if kind not in AXIS_KINDS:
        raise EvaluationError(f"unknown axis type {kind!r}; choose one of {', '.join(AXIS_KINDS)}")
    if kind == "nothing":
        return [None]
    title = AXIS_TITLES[kind]
    items = csv_values(text or "")
    if not any(items):
        raise EvaluationError(f"{title} axis has no values; type them separated by commas, e.g. "
                              + {"prompt_sr": "chk,2,4,6", "checkpoint": "none,NAME-000002,NAME"}.get(kind, "7,8,9"))
    if kind == "prompt_sr":
        if not items[0]:
            raise EvaluationError("Prompt S/R: the first value is the text to search for and cannot be empty")
        return items  # later values may be empty: replacing with nothing is a legitimate A1111 use
    if kind in ("cfg", "lora_weight"):
        return _expand(kind, items, float)
    if kind in ("seed", "steps"):
        values = _expand(kind, items, int)
        if kind == "seed" and -1 in values:
            raise EvaluationError("Seed -1 means a random seed in AUTOMATIC1111; a grid compares cells with fixed "
                                  "seeds: write numbers such as 1234,1235")
        if kind == "steps" and min(values) < 1:
            raise EvaluationError(f"Steps value {min(values)}: use 1 or more steps")
        return values
    if any(not item for item in items):
        raise EvaluationError(f"{title} values: an empty value (a stray comma?); remove it")
    if kind == "sampler":
        if choices is None:
            return items
        known = {c.lower(): c for c in choices}
        unknown = [v for v in items if v.lower() not in known]
        if unknown:
            raise EvaluationError(f"Unknown sampler: {', '.join(unknown)}; choose from {', '.join(choices)}")
        return [known[v.lower()] for v in items]
    # checkpoint
    values = [None if v.lower() in NO_LORA else re.sub(r"\.safetensors$", "", v, flags=re.I) for v in items]
    if choices is not None:
        unknown = [v for v in values if v is not None and v not in set(choices)]
        if unknown:
            raise EvaluationError(f"Unknown checkpoint: {', '.join(unknown)}; choose from none, {', '.join(choices)}")
    return values


def apply_prompt_sr(prompt: str, negative: str, search: str, value: str) -> tuple[str, str]:
    """A1111's apply_prompt for one value: every occurrence of `search` in the prompt and the negative
    prompt replaced by `value`; an error (as in A1111) when neither contains it."""
    prompt, negative = prompt or "", negative or ""
    if search not in prompt and search not in negative:
        raise EvaluationError(f"Prompt S/R did not find {search} in prompt or negative prompt. Put it in the "
                              "prompt, or make the first value a text the prompt contains.")
    return prompt.replace(search, value), negative.replace(search, value)


def prompt_sr(prompt: str, negative: str, values: list[str]) -> list[tuple[str, str]]:
    """A1111's Prompt S/R on one prompt: each value replaces every occurrence of the first value in the
    prompt and the negative prompt, so the first pair is the unchanged prompts."""
    if not values or not values[0]:
        raise EvaluationError("Prompt S/R needs values: the text to search for first, then its replacements")
    return [apply_prompt_sr(prompt, negative, values[0], v) for v in values]


def axis_label(kind: str, value) -> str:
    """A1111's cell labels: "CFG Scale: 7.0" (format_value_add_label, floats rounded to 8 digits),
    "Seed: 5", "Steps: 20"; Prompt S/R and Sampler show the value alone (format_value); "Nothing" shows
    nothing. CharLoRA's axes: "LoRA weight: 0.8"; a checkpoint shows its file stem or "no LoRA"."""
    if kind == "nothing":
        return ""
    if kind in ("prompt_sr", "sampler"):
        return str(value)
    if kind == "checkpoint":
        if value is None or str(value).strip().lower() in NO_LORA:
            return "no LoRA"
        return value.stem if isinstance(value, Path) else re.sub(r"\.safetensors$", "", str(value), flags=re.I)
    if kind in ("cfg", "lora_weight"):
        value = round(float(value), 8)
    if kind not in AXIS_TITLES:
        raise EvaluationError(f"unknown axis type {kind!r}; choose one of {', '.join(AXIS_KINDS)}")
    return f"{AXIS_TITLES[kind]}: {value}"
