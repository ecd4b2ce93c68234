"""What the user gave cannot be used: the errors the ``prmagic`` command reports in one line.

By the package's convention a ``ValueError`` is raised for a value the caller gave that is refused,
so ``prmagic`` prints every ``ValueError`` (``UserError`` included) and every ``OSError`` as one line
and exits 2; any other exception is a bug and keeps its traceback. ``InputError`` names the file or
folder at fault; ``InputWarning`` is for input that is used, but maybe not as its author meant.
"""
from __future__ import annotations


class UserError(ValueError):
    """Something the user gave (an argument, a file, a folder) cannot be used; the message says which."""


class InputError(UserError):
    """A file or folder that cannot be used: ``path`` and ``problem``, shown as ``"<path>: <problem>"``."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


class InputWarning(UserWarning):
    """Input that is used but looks unintended (a mask with grey levels, a support that is all foreground)."""
