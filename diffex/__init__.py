"""diffex: explain what an image classifier learned, with diffusion counterfactuals in h-space.

The Python API mirrors the command line::

    import diffex
    res = diffex.explain("sample_data/models/classifier", "sample_data/heldout",
                         out="exp", diffusion="sample_data/models/diffusion")
    res.attributes[0].description, res.report

Heavy modules (torch, diffusers) load on first use.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("diffex")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

_LAZY = {
    "explain": ("diffex.explain.pipeline", "explain"),
    "ExplainConfig": ("diffex.explain.config", "ExplainConfig"),
    "ExplainResult": ("diffex.explain.pipeline", "ExplainResult"),
    "read_results": ("diffex.report.results", "read_results"),
    "load_classifier": ("diffex.models.classifier", "load_classifier"),
    "DiffusionModel": ("diffex.models.diffusion", "DiffusionModel"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'diffex' has no attribute {name!r}")
