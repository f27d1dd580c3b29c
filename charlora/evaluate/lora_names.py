"""LoRA names -> files, as AUTOMATIC1111 resolves `<lora:NAME>` (no torch).

A1111's `networks.py`: the file stem, else the `ss_output_name` alias when no other file shares it, over the
LoRA folder and its subfolders in A1111's order (`modules/util.py` walk_files: folders and files in natural
sort order; on a name clash the last file listed wins). CharLoRA adds Kohya epoch names: `NAME-2` finds
`NAME-000002.safetensors`, and the last epoch's `NAME-4` finds `NAME.safetensors` (Kohya saves the last
epoch under the plain name).
"""

from __future__ import annotations

import os
import re
from pathlib import Path


from ..errors import CharLoRAError
from .prompts import EvaluationError

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
