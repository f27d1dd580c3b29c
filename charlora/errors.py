"""Errors the engine raises on purpose: each message names the file, key or value and what to do.

The CLI and the GUI show `str(error)` to the user as it is, never a traceback.
"""


class CharLoRAError(Exception):
    """Base class of every error meant for the user's eyes."""


class ConfigError(CharLoRAError):
    """One or more config keys are bad. `problems` holds one line per key."""

    def __init__(self, problems, source=None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s){where}:\n{lines}")


class ModelLoadError(CharLoRAError):
    """A base model could not be loaded (missing, not a checkpoint, wrong architecture, truncated)."""
