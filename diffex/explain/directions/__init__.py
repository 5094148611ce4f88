"""Candidate h-space directions: a registry (:mod:`.registry`) and one module per method.

Every module in this package registers its method on import; adding a method means adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil

from diffex.explain.directions.registry import (  # noqa: F401 - the package's public API
    Candidates,
    DirectionContext,
    generate,
    get_method,
    list_methods,
    method_versions,
    register,
)

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "registry":
        importlib.import_module(f"{__name__}.{_m.name}")
