"""Seeded fields of view: many synthetic cells on one image, with the true nucleus labels.

The cells are those of :mod:`diffex.data.synthetic` (same factors, same two conditions), placed
at random without overlap, except for ``touching_pairs`` pairs per field whose nuclei touch: the
case a nuclear segmentation must split. Sensor background, gain and noise are drawn once per
field. Beside each field the true nucleus label image is written (``<out>_truth/``), and a CSV
lists every object (field, label, centroid, area, whether it touches another nucleus or the
border), so that a segmentation can be scored by recall and precision.

Example
-------
>>> import numpy as np
>>> from diffex.data.synthetic_fields import FieldSpec, render_field
>>> img, labels, objects = render_field(np.random.default_rng(0), "control", FieldSpec(size=128, cells=3, touching_pairs=1))
>>> img.shape, img.dtype, int(labels.max()) == len(objects)
((2, 128, 128), dtype('uint16'), True)
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from diffex.data.io import write_ome_tiff
from diffex.data.synthetic import (
    CHANNEL_NAMES,
    SyntheticSpec,
    cell_signal,
    draw_factors,
)
from diffex.errors import DiffexError
from diffex.fsutil import atomic_dir, atomic_file

log = logging.getLogger(__name__)

WINDOW = 64  # px: each cell is rendered on a window of the sample cells' size
OBJECT_COLUMNS = ("field", "condition", "label", "centroid_y", "centroid_x", "area", "touching", "at_border")


@dataclass(frozen=True)
class FieldSpec:
    """A field of view: its size, how many cells, how many pairs of touching nuclei, the cells' spec."""

    size: int = 256
    cells: int = 12  # single cells, apart from one another
    touching_pairs: int = 2  # further pairs of cells whose nuclei touch
    min_gap: float = 44.0  # px between the centres of cells that must not touch
    cell: SyntheticSpec = field(default_factory=SyntheticSpec)


def _place(rng: np.random.Generator, spec: FieldSpec) -> list[tuple[float, float, int]]:
    """Cell centres (y, x) in field pixels and a pair id (-1 for single cells)."""
    centres: list[tuple[float, float, int]] = []
    for i in range(spec.cells + spec.touching_pairs):
        margin = 6.0 if i < spec.cells else 26.0  # a pair's second cell lies up to about 24 px from the first
        for _ in range(2000):
            y, x = rng.uniform(margin, spec.size - margin, 2)
            if all(math.hypot(y - cy, x - cx) >= spec.min_gap for cy, cx, _ in centres):
                break
        else:
            raise DiffexError(f"cannot place {spec.cells + 2 * spec.touching_pairs} cells apart on a {spec.size} px field; "
                              "use a larger field or fewer cells")
        centres.append((y, x, -1 if i < spec.cells else i))
    return centres


def _factors(rng: np.random.Generator, condition: str, spec: FieldSpec, centres) -> list[dict]:
    """One factor set per cell, at its field position; the second cell of a touching pair is placed so the nuclei touch."""
    cells = []
    for y, x, pair in centres:
        f = draw_factors(rng, spec.cell.conditions[condition], spec.cell)
        f.update(cy=y, cx=x, nuc_off=0.0)
        cells.append(f)
        if pair >= 0:
            g = draw_factors(rng, spec.cell.conditions[condition], spec.cell)
            angle = rng.uniform(0.0, 2 * math.pi)
            # nuclei are ellipses with axes r*sqrt(e) and r/sqrt(e); place the centres at the sum of the
            # shorter half-axes, so that the nuclei always touch or slightly overlap
            d = f["nucleus_radius"] / math.sqrt(f["nuc_elong"]) + g["nucleus_radius"] / math.sqrt(g["nuc_elong"])
            g.update(cy=y + d * math.sin(angle), cx=x + d * math.cos(angle), nuc_off=0.0)
            cells.append(g)
    return cells


def render_field(rng: np.random.Generator, condition: str, spec: FieldSpec) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One field of ``condition``: image (2, size, size) uint16, true nucleus labels (size, size) int32, objects.

    Each object: label, centroid (y, x), area in px, ``touching`` (its nucleus touches another),
    ``at_border`` (its nucleus touches the image border).
    """
    if condition not in spec.cell.conditions:
        raise DiffexError(f"unknown condition {condition!r}; spec has {sorted(spec.cell.conditions)}")
    pad, s = WINDOW // 2, spec.size
    signal = np.zeros((2, s + 2 * pad, s + 2 * pad))  # (C, Y, X) with a margin of half a window
    strength = np.zeros(signal.shape[1:])
    labels = np.zeros(signal.shape[1:], np.int32)
    cells = _factors(rng, condition, spec, _place(rng, spec))
    for label, f in enumerate(cells, start=1):
        y0, x0 = round(f["cy"]), round(f["cx"])  # window [y0, y0 + 64) in padded coordinates
        yy, xx = np.mgrid[0:WINDOW, 0:WINDOW].astype(np.float64) + 0.5
        local = dict(f, cy=f["cy"] + pad - y0, cx=f["cx"] + pad - x0)
        dna, actin, nuc, _ = cell_signal(rng, local, xx, yy, 1.0)
        win = (slice(y0, y0 + WINDOW), slice(x0, x0 + WINDOW))
        signal[0][win] = np.maximum(signal[0][win], dna)
        signal[1][win] += actin
        mine = (nuc > 0.5) & (nuc > strength[win])
        labels[win][mine] = label
        strength[win] = np.maximum(strength[win], nuc)
    signal, labels = signal[:, pad:-pad, pad:-pad], labels[pad:-pad, pad:-pad]
    img = _sensor(rng, signal, spec.cell)
    return img, labels, _objects(labels, cells)


def _sensor(rng: np.random.Generator, signal: np.ndarray, cell: SyntheticSpec) -> np.ndarray:
    """Optics blur, peaks, one gain, background and noise for the whole field, as uint16."""
    img = np.stack([ndimage.gaussian_filter(signal[0], 0.8) * cell.dna_peak,
                    ndimage.gaussian_filter(np.minimum(signal[1], 1.0), 0.8) * cell.actin_peak])
    img = img * float(np.exp(rng.normal(0.0, cell.brightness_gain_sd))) + rng.uniform(*cell.background_range)
    img = img + rng.normal(0.0, rng.uniform(*cell.noise_sd_range), img.shape)
    return np.clip(np.rint(img), 0, 65535).astype(np.uint16)


def _objects(labels: np.ndarray, cells: list[dict]) -> list[dict]:
    """The true objects: centroid, area, and whether each touches another nucleus or the border."""
    out = []
    edge = np.zeros_like(labels, bool)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    for label in range(1, len(cells) + 1):
        mask = labels == label
        if not mask.any():
            continue
        grown = ndimage.binary_dilation(mask, iterations=1)
        neighbours = set(np.unique(labels[grown])) - {0, label}
        cy, cx = ndimage.center_of_mass(mask)
        out.append({"label": label, "centroid_y": float(cy), "centroid_x": float(cx), "area": int(mask.sum()),
                    "touching": bool(neighbours), "at_border": bool((mask & edge).any())})
    return out


def generate_fields(out: Path, n_per_condition: int, seed: int, spec: FieldSpec | None = None, force: bool = False) -> Path:
    """Write fields of view per condition (``out/<condition>/*.ome.tif``), true labels and an object CSV.

    The true label images go to ``<out>_truth/<condition>/<name>.tif`` and the objects to
    ``<out>_objects.csv``; returns that CSV's path. The same seed gives the same bytes.
    """
    import tifffile

    spec, out = spec or FieldSpec(), Path(out)
    if n_per_condition < 1:
        raise DiffexError(f"n_per_condition must be >= 1, got {n_per_condition}")
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    truth = out.with_name(out.name + "_truth")
    with atomic_dir(out, force=force) as tmp, atomic_dir(truth, force=force) as tmp_truth:
        for condition in spec.cell.conditions:
            (tmp / condition).mkdir()
            (tmp_truth / condition).mkdir()
            for i in range(n_per_condition):
                img, labels, objects = render_field(rng, condition, spec)
                rel = f"{condition}/{condition}_field{i:03d}.ome.tif"
                write_ome_tiff(tmp / rel, img, CHANNEL_NAMES)
                tifffile.imwrite(tmp_truth / rel.replace(".ome.tif", ".tif"), labels, compression="zlib")
                rows += [{"field": rel, "condition": condition, **o} for o in objects]
    table = out.with_name(out.name + "_objects.csv")
    with atomic_file(table) as fh:
        w = csv.DictWriter(fh, fieldnames=list(OBJECT_COLUMNS))
        w.writeheader()
        w.writerows({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    log.info("wrote %d fields (%d objects) to %s, labels to %s", len(spec.cell.conditions) * n_per_condition, len(rows), out, truth)
    return table
