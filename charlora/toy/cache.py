"""Build-once storage for the toy world's trained artefacts (the toy model, the toy scorer).

They take minutes to train on a CPU, so the tests and the demo build each once per machine and
reuse it: the folder's name carries a hash of the code that builds it and of the seed, so a change
to that code builds afresh instead of reusing a stale one. The build writes into a temporary folder
and renames it into place, so an interrupted build never leaves a half-written artefact behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

CACHE_ENV = "CHARLORA_TOY_CACHE"


def cache_root() -> Path:
    """$CHARLORA_TOY_CACHE, else ~/.cache/charlora/toy (XDG_CACHE_HOME respected)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "charlora" / "toy"


def code_hash(*modules, extra: str = "") -> str:
    """A short hash of the source files of `modules` (module objects) and `extra`."""
    digest = hashlib.sha256(extra.encode())
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:12]


def cached_build(name: str, key: str, build, root: Path | None = None) -> Path:
    """The folder ROOT/NAME-KEY, built by `build(folder)` the first time (atomically)."""
    root = Path(root) if root is not None else cache_root()
    final = root / f"{name}-{key}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        build(work)
        os.chmod(work, 0o755)  # mkdtemp makes it private; the cache is as readable as any other
        try:
            work.rename(final)
        except OSError:
            if not final.is_dir():  # another process did not win the race: a real error
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
