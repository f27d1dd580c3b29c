"""Writing files so that nothing already saved is ever half-written.

Every file the user keeps (presets, LoRA files, reports) is written to a temporary name in the same
folder and renamed over the target: a crash, a full disk or Ctrl-C leaves the old file intact.
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

# safetensors writes 0600 whatever the umask; A1111/ComfyUI running as another user must read our files.
FILE_MODE = 0o644


@contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path beside `target`; on success rename it over `target`, else remove it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:  # flush to disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


# What a full disk looks like from each writer: OSError from Python, SafetensorError's text from
# safetensors' Rust writer, and torch.save's zip writer failing half-way ("unexpected pos").
_DISK_FULL_TEXT = ("no space left on device", "unexpected pos", "disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(text in str(exc).lower() for text in _DISK_FULL_TEXT)


def disk_full_message(path: str | os.PathLike) -> str:
    path = Path(path)
    return (f"the disk is full: {path} was not written. Files saved earlier are intact. Free some space on "
            f"the disk of {path.parent} (or choose another folder) and run again")
