"""AUTOMATIC1111's prompt and X/Y/Z plot rules, as pure functions (no torch).

- `<lora:NAME:W>` tags: A1111's `modules/extra_networks.py` (`re_extra_net`, `ExtraNetworkParams`) and
  `extensions-builtin/Lora/extra_networks_lora.py` (weights, `te=`/`unet=`).
- LoRA names: A1111's `networks.py` (file stem, else the `ss_output_name` alias when no other file
  shares it), over the LoRA folder and its subfolders in A1111's order (`modules/util.py` walk_files: folders
  and files in natural sort order; on a name clash the last file listed wins). CharLoRA adds Kohya epoch
  names: `NAME-2` finds `NAME-000002.safetensors`, and the last epoch's `NAME-4` finds `NAME.safetensors`
  (Kohya saves the last epoch under the plain name).
- Comments: A1111's `modules/processing_scripts/comments.py` (`strip_comments`, on by default since 1.8).
- Axis values: A1111's `scripts/xyz_grid.py` (`csv_string_to_list_strip`, `re_range*`, `apply_prompt`,
  `format_value_add_label`).
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from io import StringIO
from itertools import chain
from pathlib import Path
from typing import NamedTuple

import numpy as np

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


# --------------------------------------------------------------------------- LoRA names -> files

NO_LORA = ("none", "no lora", "no-lora", "base")  # LoRA names meaning the base model alone
RE_KOHYA_EPOCH = re.compile(r"(.+)-(\d{6})")  # Kohya's epoch files: NAME-000002.safetensors
RE_SHORT_EPOCH = re.compile(r"(.+)-(\d+)")


def natural_sort_key(text: str, regex=re.compile("([0-9]+)")) -> list:
    """A1111's modules/util.natural_sort_key: "v2" before "v10", case ignored."""
    return [int(part) if part.isdigit() else part.lower() for part in regex.split(text)]


def _lora_files(folder: Path) -> list[Path]:
    """The .safetensors files in `folder` and its subfolders, in A1111's walk_files order: folders sorted by
    their natural sort key, then the files of each (the extension compared in lower case, links followed;
    hidden folders included, A1111's default). A folder reached twice through links is listed once."""
    walked, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back to a folder already listed: A1111 would loop; list it once
            dirs[:] = []
            continue
        seen.add(real)
        walked.append((root, files))
    found = []
    for root, files in sorted(walked, key=lambda item: natural_sort_key(item[0])):
        for name in sorted(files, key=natural_sort_key):
            path = Path(root) / name
            if path.suffix.lower() == ".safetensors" and path.is_file():
                found.append(path)
    return found


def _by_stem(files) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """({stem: file}, {stem: [every file with that stem]}): as A1111's available_networks, the last file listed
    wins a name shared by files in different folders."""
    stems, all_files = {}, {}
    for path in files:
        stems[path.stem] = path
        all_files.setdefault(path.stem, []).append(path)
    return stems, {stem: paths for stem, paths in all_files.items() if len(paths) > 1}


def _epoch_aliases(files) -> dict[str, Path]:
    aliases = {}
    for path in files:
        m = RE_KOHYA_EPOCH.fullmatch(path.stem)
        if m:
            aliases[f"{m.group(1)}-{int(m.group(2))}"] = path
    return aliases


def kohya_epoch_aliases(folder: str | Path) -> dict[str, Path]:
    """CharLoRA's addition to A1111's names: {"NAME-2": .../NAME-000002.safetensors}, so a Prompt S/R over
    epoch numbers (`chk,2,4,6`) works on Kohya's file names without renaming them."""
    return _epoch_aliases(_by_stem(_lora_files(Path(folder)))[0].values())


def _not_found(name: str) -> str:
    return f"lora '{name}' not found: rendered without it (as AUTOMATIC1111 does)"


class LoraIndex:
    """The LoRA files of one folder and its subfolders, looked up as A1111 does; each header is read at most
    once. `files`: every file in A1111's order; `stems`: the file each name finds (the last one listed, as
    A1111); `clashes`: {name: [files]} for names that several files share."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise EvaluationError(f"LoRA folder {self.folder} does not exist or is not a folder; "
                                  "choose the folder that holds your .safetensors files")
        self.files = _lora_files(self.folder)
        self.stems, self.clashes = _by_stem(self.files)
        self.epochs = _epoch_aliases(self.stems.values())
        self._aliases: dict[str, list[Path]] | None = None
        self._metadata: dict[Path, dict] = {}
        self.unreadable: list[str] = []  # files whose header could not be read (no alias from them)

    def metadata(self, path: Path) -> dict:
        """The file's safetensors metadata, read once; {} when unreadable (the reason goes to `unreadable`)."""
        if path not in self._metadata:
            from ..lora.kohya_file import read_header  # imports torch: only when a header is needed

            try:
                self._metadata[path] = read_header(path).metadata
            except CharLoRAError as exc:
                self.unreadable.append(str(exc))
                self._metadata[path] = {}
        return self._metadata[path]

    def aliases(self) -> dict[str, list[Path]]:
        """{ss_output_name: [files]}, read on first use (only names that are not stems need it)."""
        if self._aliases is None:
            self._aliases = {}
            for path in self.files:
                alias = self.metadata(path).get("ss_output_name")
                if alias:
                    self._aliases.setdefault(alias, []).append(path)
        return self._aliases

    def relative(self, path: Path) -> str:
        """The file as the user sees it in the folder: `chars/x.safetensors`."""
        try:
            return Path(path).relative_to(self.folder).as_posix()
        except ValueError:
            return str(path)

    def _clash_note(self, stem: str) -> str | None:
        paths = self.clashes.get(stem)
        if not paths:
            return None
        used = self.relative(self.stems[stem])
        return (f"{len(paths)} LoRA files are named '{stem}' ({', '.join(self.relative(p) for p in paths)}): "
                f"{used} is used, as AUTOMATIC1111 uses the last one it lists; rename the others to choose")

    def resolve(self, name: str) -> tuple[Path | None, str | None]:
        """(path, None), (None, warning), or (path, note) when several files share the name. Order: exact file
        stem, in the folder or a subfolder (A1111), Kohya epoch name `NAME-<n>` -> `NAME-<n:06d>` (CharLoRA),
        or `NAME.safetensors` when its ss_epoch is n (Kohya writes the last epoch there, never as
        `NAME-<n:06d>`), then an `ss_output_name` no other file shares (A1111: a shared alias is "forbidden"
        and only file names work)."""
        if name in self.stems:
            return self.stems[name], self._clash_note(name)
        m = RE_SHORT_EPOCH.fullmatch(name)
        if m and f"{m.group(1)}-{int(m.group(2))}" in self.epochs:
            path = self.epochs[f"{m.group(1)}-{int(m.group(2))}"]
            return path, self._clash_note(path.stem)
        if m and m.group(1) in self.stems:
            final = self.stems[m.group(1)]
            if self.metadata(final).get("ss_epoch", "").strip() == str(int(m.group(2))):
                return final, self._clash_note(final.stem)
        paths = self.aliases().get(name, [])
        if len(paths) == 1:
            return paths[0], None
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            return None, (f"{_not_found(name)}; '{name}' is the ss_output_name of {len(paths)} files ({names}), "
                          "so it names none of them: write the file name instead")
        return None, _not_found(name)

    def a1111_name(self, name: str, path: Path) -> str:
        """The name AUTOMATIC1111 finds `path` by: `name` itself when A1111 resolves it to that file (its stem,
        or an ss_output_name no other file shares), else the file stem (a CharLoRA epoch name such as `NAME-2`
        means nothing to A1111). Written into infotexts, so that pasting them into A1111 uses the same file."""
        if self.stems.get(name) == path:
            return name
        if name not in self.stems and self.aliases().get(name) == [path]:
            return name
        return Path(path).stem

    def names(self) -> list[str]:
        """The names to offer a user: every file stem, in A1111's order, each once."""
        return list(dict.fromkeys(p.stem for p in self.files))


def resolve_lora(name, folder) -> Path | None:
    """One LoRA as a user names it (a seed batch, a UI field), resolved exactly as the grid resolves a
    `<lora:NAME>` tag: None for "" or "none" (the base model); an existing file's path (absolute, or
    relative to `folder`, then to the working folder); else a name in `folder`: `NAME-000002`, `NAME-2`,
    `NAME` or an ss_output_name, with or without `.safetensors`. An unknown name raises EvaluationError
    naming it and the names available."""
    text = str(name or "").strip()
    if not text or text.lower() in NO_LORA:
        return None
    folder, given = Path(folder or "."), Path(text).expanduser()
    for candidate in ([given] if given.is_absolute() else [folder / given, given]):
        if candidate.is_file():
            return candidate
    if not folder.is_dir():
        raise EvaluationError(f"LoRA {text!r}: no such file, and the LoRA folder {folder} does not exist; give the "
                              "file's path, or the folder that holds it")
    index = LoraIndex(folder)
    path, warning = index.resolve(re.sub(r"\.safetensors$", "", text, flags=re.I))
    if path is not None:
        return path
    names = index.names()
    if not names:
        raise EvaluationError(f"LoRA {text!r} not found: {folder} holds no .safetensors files (nor do its "
                              "subfolders); choose the folder "
                              "your training wrote to")
    shown = ", ".join(names[:30]) + (f", ... ({len(names) - 30} more)" if len(names) > 30 else "")
    detail = warning.split("; ", 1)[1] if "; " in (warning or "") else ""  # an ambiguous ss_output_name
    raise EvaluationError(f"LoRA {text!r} not found in {folder}" + (f" ({detail})" if detail else "")
                          + f"; available: {shown} (an epoch file also as NAME-<epoch>, e.g. NAME-2)")


# --------------------------------------------------------------------------- X/Y/Z axes

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
