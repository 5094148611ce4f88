"""Reading an experiment folder's data files: traversal hyperstacks and ``morphology.csv``.

(``results.json`` is read through :mod:`diffex.report.results`.)

Example
-------
>>> read_morphology(Path("no-such-folder") / "morphology.csv")
[]
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from diffex.errors import DiffexError


def read_hyperstack(path: Path, n_channels: int) -> np.ndarray:
    """(F, C, H, W) float32 from a traversal hyperstack written by :func:`diffex.report.traversal.write_hyperstack`."""
    import tifffile

    try:
        arr = np.asarray(tifffile.imread(path), dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the same problem for the user
        raise DiffexError(f"{path}: cannot read the traversal ({exc})") from exc
    if arr.ndim == 3 and n_channels == 1:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] != n_channels:
        raise DiffexError(f"{path}: expected frames x {n_channels} channels x height x width, found shape {arr.shape}")
    return arr


def read_morphology(path: Path) -> list[dict]:
    """Rows of ``morphology.csv`` (numbers as floats); [] when the file is absent."""
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            out = {}
            for k, v in r.items():
                try:
                    out[k] = float(v)
                except (TypeError, ValueError):
                    out[k] = v
            rows.append(out)
    return rows
