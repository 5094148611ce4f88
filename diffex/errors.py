"""The exception every user-facing failure of diffex raises.

The CLI turns a :class:`DiffexError` into one line on stderr and a non-zero exit code; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class DiffexError(Exception):
    """A problem with the user's input, files or settings, explained in the message."""


class InputError(DiffexError):
    """A problem with one file: the message starts with the file's path.

    Example
    -------
    >>> str(InputError("a.tif", "contains NaN"))
    'a.tif: contains NaN'
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
