"""Frozen configuration dataclasses built from plain dicts or YAML; unknown keys are errors.

Example
-------
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Opt:
...     steps: int = 10
...     sizes: tuple[int, ...] = (1, 2)
>>> from_dict(Opt, {"steps": 3, "sizes": [4, 5]})
Opt(steps=3, sizes=(4, 5))
>>> from_dict(Opt, {"stpes": 3})
Traceback (most recent call last):
...
diffex.errors.DiffexError: Opt: unknown key(s) ['stpes']; known keys: ['sizes', 'steps']
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

from diffex.errors import DiffexError

C = TypeVar("C")


def from_dict(cls: type[C], data: dict[str, Any] | None, where: str | None = None) -> C:
    """Build the frozen dataclass ``cls`` from ``data``, converting lists to tuples and nested dicts
    to nested dataclasses. Unknown keys raise :class:`DiffexError` naming ``where``."""
    where = where or cls.__name__
    data = dict(data or {})
    if not isinstance(data, dict):
        raise DiffexError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DiffexError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise DiffexError(f"{where}: {exc}") from exc


def _convert(hint, value, where: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value, where)
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        return tuple(_convert(a, v, where) for a, v in zip(args, value))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        non_none = [a for a in args if a is not type(None)]
        if value is None:
            return None
        if len(non_none) == 1:
            return _convert(non_none[0], value, where)
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise DiffexError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def to_dict(obj) -> dict[str, Any]:
    """Plain-value dict of a config dataclass (tuples become lists), for JSON/YAML."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(obj)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise DiffexError(f"{path}: cannot read config: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DiffexError(f"{path}: not valid YAML{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DiffexError(f"{path}: the config must be a mapping of keys to values")
    return data
