"""Finding, ranking and describing the h-space attributes behind a classifier's decisions.

The stages live in one module each (see :mod:`diffex.explain.pipeline`); :func:`explain` orders them.
"""

from __future__ import annotations

_LAZY = {
    "explain": "diffex.explain.pipeline",
    "ExplainResult": "diffex.explain.pipeline",
    "ExplainConfig": "diffex.explain.config",
    "config_from_dict": "diffex.explain.config",
    "sample_data_dir": "diffex.explain.inputs",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diffex.explain' has no attribute {name!r}")
