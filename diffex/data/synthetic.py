"""Seeded generator of two-condition fluorescence-like single-cell images with known factors.

Each image shows one cell in two channels: ``DNA`` (a nucleus with chromatin texture) and
``Actin`` (a cell body with oriented fibre texture). The conditions differ in exactly two
documented factors, drawn from overlapping normal distributions:

- ``nucleus_radius`` (px at 64 x 64): control 8.0, treated 9.6, sd 0.64  -> d' = 2.5
- ``actin_level`` (relative cytoplasm brightness): control 0.40, treated 0.52, sd 0.048 -> d' = 2.5

so that the Bayes-optimal accuracy from both factors together is Phi(sqrt(2.5^2 + 2.5^2) / 2) =
96.1 %, and a trained classifier can reach 90 % with margin, never 100 %. Nuisance factors vary independently of the
condition: cell position, orientation, elongation, boundary shape, nucleus offset and
elongation, a global brightness gain, background level and sensor noise. Every per-image factor
value is written to a ground-truth CSV.

Example
-------
>>> from diffex.data.synthetic import SyntheticSpec, render_cell
>>> import numpy as np
>>> spec = SyntheticSpec()
>>> img, factors = render_cell(np.random.default_rng(0), "treated", spec)
>>> img.shape, img.dtype
((2, 64, 64), dtype('uint16'))
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from scipy import ndimage

from diffex.data.io import write_ome_tiff
from diffex.errors import DiffexError
from diffex.fsutil import atomic_dir

log = logging.getLogger(__name__)

CHANNEL_NAMES = ("DNA", "Actin")

# Column order of the ground-truth CSV (after path and condition).
FACTOR_COLUMNS = (
    "nucleus_radius",
    "nucleus_area_px",
    "actin_level",
    "cell_radius",
    "cell_elongation",
    "orientation_deg",
    "center_x",
    "center_y",
    "nucleus_elongation",
    "brightness_gain",
    "background",
    "noise_sd",
)
DIFFERENTIATING_FACTORS = ("nucleus_radius", "actin_level")


@dataclass(frozen=True)
class ConditionFactors:
    """Mean and standard deviation of the two differentiating factors for one condition."""

    nucleus_radius_mean: float
    actin_level_mean: float


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the generator. The defaults define the shipped sample data.

    Unknown keys are rejected by :func:`spec_from_dict`.
    """

    size: int = 64
    conditions: dict[str, ConditionFactors] = field(
        default_factory=lambda: {
            "control": ConditionFactors(nucleus_radius_mean=8.0, actin_level_mean=0.40),
            "treated": ConditionFactors(nucleus_radius_mean=9.6, actin_level_mean=0.52),
        }
    )
    nucleus_radius_sd: float = 0.64
    actin_level_sd: float = 0.048
    cell_radius_mean: float = 19.0
    cell_radius_sd: float = 1.5
    position_jitter: float = 5.0  # px, uniform +-
    brightness_gain_sd: float = 0.12  # log-normal sd of the global gain
    noise_sd_range: tuple[float, float] = (150.0, 500.0)  # uint16 units
    background_range: tuple[float, float] = (300.0, 700.0)
    dna_peak: float = 30000.0
    actin_peak: float = 40000.0


def spec_from_dict(d: dict) -> SyntheticSpec:
    """Build a :class:`SyntheticSpec` from plain values; unknown keys are an error."""
    known = {f.name for f in fields(SyntheticSpec)}
    unknown = set(d) - known
    if unknown:
        raise DiffexError(f"synthetic spec: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    d = dict(d)
    if "conditions" in d:
        d["conditions"] = {k: ConditionFactors(**v) for k, v in d["conditions"].items()}
    for key in ("noise_sd_range", "background_range"):
        if key in d:
            d[key] = tuple(d[key])
    return SyntheticSpec(**d)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-sd Gaussian-filtered noise."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (n - n.mean()) / (n.std() + 1e-8)


def draw_factors(rng: np.random.Generator, cf: ConditionFactors, spec: SyntheticSpec) -> dict[str, float]:
    """Every random factor of one cell, drawn in a fixed order (positions in pixels of the output size)."""
    scale = spec.size / 64.0
    f = {"nucleus_radius": max(3.0, rng.normal(cf.nucleus_radius_mean, spec.nucleus_radius_sd)),
         "actin_level": float(np.clip(rng.normal(cf.actin_level_mean, spec.actin_level_sd), 0.05, 1.0))}
    f["cell_radius"] = max(f["nucleus_radius"] + 5.0, rng.normal(spec.cell_radius_mean, spec.cell_radius_sd))
    f["cell_elong"] = rng.uniform(1.0, 1.5)
    f["theta"] = rng.uniform(0.0, math.pi)
    f["cx"] = spec.size / 2 + rng.uniform(-spec.position_jitter, spec.position_jitter) * scale
    f["cy"] = spec.size / 2 + rng.uniform(-spec.position_jitter, spec.position_jitter) * scale
    f["nuc_elong"] = rng.uniform(1.0, 1.3)
    f["nuc_theta"] = f["theta"] + rng.normal(0.0, 0.3)
    f["nuc_off"] = rng.uniform(0.0, 0.25) * (f["cell_radius"] - f["nucleus_radius"])
    f["nuc_off_angle"] = rng.uniform(0.0, 2 * math.pi)
    f["gain"] = float(np.exp(rng.normal(0.0, spec.brightness_gain_sd)))
    f["background"] = rng.uniform(*spec.background_range)
    f["noise_sd"] = rng.uniform(*spec.noise_sd_range)
    return f


def _rotated(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (H, W) in a frame centred at (cx, cy) and rotated by ``angle``."""
    dx, dy = xx - cx, yy - cy
    return dx * math.cos(angle) + dy * math.sin(angle), -dx * math.sin(angle) + dy * math.cos(angle)


def _actin(rng: np.random.Generator, f: dict, xx: np.ndarray, yy: np.ndarray, scale: float) -> np.ndarray:
    """Cytoplasm (H, W): an ellipse whose boundary is perturbed by low harmonics, actin fibres along its long axis and a rim."""
    s = xx.shape[0]
    u, v = _rotated(xx, yy, f["cx"], f["cy"], f["theta"])
    r_cell = f["cell_radius"] * scale
    a_cell, b_cell = r_cell * math.sqrt(f["cell_elong"]), r_cell / math.sqrt(f["cell_elong"])
    phi = np.arctan2(v, u)
    wobble = 1.0
    for k in (2, 3, 5):
        wobble = wobble + rng.uniform(0.0, 0.06) * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
    rho_cell = np.sqrt((u / a_cell) ** 2 + (v / b_cell) ** 2) / wobble
    cell_mask = 1.0 / (1.0 + np.exp((rho_cell - 1.0) * 12.0))  # soft edge
    fib = ndimage.gaussian_filter(rng.standard_normal((s, s)), (0.7 * scale, 3.0 * scale))
    fib = ndimage.rotate(fib, -math.degrees(f["theta"]), reshape=False, mode="reflect")
    fib = (fib - fib.mean()) / (fib.std() + 1e-8)
    rim = np.exp(-((rho_cell - 0.92) ** 2) / 0.01)
    return f["actin_level"] * cell_mask * (1.0 + 0.35 * fib) + 0.25 * f["actin_level"] * rim * cell_mask


def _nucleus(rng: np.random.Generator, f: dict, xx: np.ndarray, yy: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Nucleus mask and DNA signal (H, W) with chromatin texture, and its area in pixels."""
    ncx = f["cx"] + f["nuc_off"] * scale * math.cos(f["nuc_off_angle"])
    ncy = f["cy"] + f["nuc_off"] * scale * math.sin(f["nuc_off_angle"])
    nu, nv = _rotated(xx, yy, ncx, ncy, f["nuc_theta"])
    r_nuc = f["nucleus_radius"] * scale
    a_nuc, b_nuc = r_nuc * math.sqrt(f["nuc_elong"]), r_nuc / math.sqrt(f["nuc_elong"])
    nuc_mask = 1.0 / (1.0 + np.exp((np.sqrt((nu / a_nuc) ** 2 + (nv / b_nuc) ** 2) - 1.0) * 14.0))
    chromatin = _smooth_noise(rng, xx.shape, 1.2 * scale)
    return nuc_mask, nuc_mask * (0.8 + 0.15 * chromatin), float(math.pi * a_nuc * b_nuc)


def cell_signal(rng: np.random.Generator, f: dict, xx: np.ndarray, yy: np.ndarray,
                scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Noise-free DNA and actin signal, nucleus mask (each (H, W), on the square grid ``xx, yy``) and nucleus area.

    ``f`` holds one cell's factors as drawn by :func:`draw_factors`; positions are in grid units.
    """
    actin = _actin(rng, f, xx, yy, scale)
    nuc_mask, dna, nucleus_area = _nucleus(rng, f, xx, yy, scale)
    actin = actin * (1.0 - 0.5 * nuc_mask)  # the nucleus displaces some cytoplasm: actin is dimmer over it
    return dna, actin, nuc_mask, nucleus_area


def render_cell(
    rng: np.random.Generator, condition: str, spec: SyntheticSpec, overrides: dict[str, float] | None = None
) -> tuple[np.ndarray, dict[str, float]]:
    """Render one cell of ``condition``.

    ``overrides`` (factor -> value, keys of :func:`draw_factors`, e.g. ``nucleus_radius``) replace
    drawn factors after the draw: every random number is still consumed in the same order, so the
    same generator state with and without an override gives the same cell with only that factor
    changed (the validity benchmark's single-factor traversals with a known answer). Factors drawn
    from the replaced one (the cell radius's floor, the nucleus's offset) keep their drawn values.

    Returns
    -------
    image : ndarray, shape (2, size, size), uint16
        Channels ``DNA`` and ``Actin``.
    factors : dict
        The value of every factor in :data:`FACTOR_COLUMNS` for this image.
    """
    if condition not in spec.conditions:
        raise DiffexError(f"unknown condition {condition!r}; spec has {sorted(spec.conditions)}")
    s, scale = spec.size, spec.size / 64.0
    f = draw_factors(rng, spec.conditions[condition], spec)
    unknown = set(overrides or {}) - set(f)
    if unknown:
        raise DiffexError(f"overrides: unknown factors {sorted(unknown)}; known: {sorted(f)}")
    f.update(overrides or {})
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64) + 0.5
    dna, actin, _, nucleus_area = cell_signal(rng, f, xx, yy, scale)
    psf = 0.8 * scale  # optics and sensor
    img = np.stack([ndimage.gaussian_filter(dna, psf) * spec.dna_peak, ndimage.gaussian_filter(actin, psf) * spec.actin_peak])
    img = img * f["gain"] + f["background"]
    img = img + rng.normal(0.0, f["noise_sd"], img.shape)
    img = np.clip(np.rint(img), 0, 65535).astype(np.uint16)
    factors = {
        "nucleus_radius": float(f["nucleus_radius"]), "nucleus_area_px": nucleus_area, "actin_level": f["actin_level"],
        "cell_radius": float(f["cell_radius"]), "cell_elongation": float(f["cell_elong"]), "orientation_deg": float(math.degrees(f["theta"])),
        "center_x": float(f["cx"]), "center_y": float(f["cy"]), "nucleus_elongation": float(f["nuc_elong"]),
        "brightness_gain": f["gain"], "background": float(f["background"]), "noise_sd": float(f["noise_sd"]),
    }
    return img, factors


def write_factors(path: Path, rows: list[dict], columns: tuple[str, ...] = ("path", "condition", *FACTOR_COLUMNS)) -> None:
    """The ground-truth CSV (path, condition, every factor), written under a temporary name and renamed."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    tmp.replace(path)


def generate_dataset(
    out: Path,
    n_per_condition: int,
    seed: int,
    spec: SyntheticSpec | None = None,
    ground_truth: Path | None = None,
    force: bool = False,
) -> Path:
    """Write a folder with one subfolder per condition of OME-TIFF cells, and a ground-truth CSV.

    Parameters
    ----------
    out : Path
        Folder to create: ``out/<condition>/<condition>_0000.ome.tif`` ...
    n_per_condition : int
        Images per condition.
    seed : int
        Seed of the whole set; the same seed gives byte-identical images.
    spec : SyntheticSpec, optional
        Generator parameters (default: the shipped sample data's).
    ground_truth : Path, optional
        Where to write the per-image factor CSV (default: ``out.parent / (out.name + "_factors.csv")``).
    force : bool
        Replace an existing ``out``.

    Returns
    -------
    Path
        The ground-truth CSV.

    Example
    -------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> gt = generate_dataset(d / "cells", n_per_condition=2, seed=1)
    >>> sorted(p.name for p in (d / "cells").iterdir())
    ['control', 'treated']
    """
    spec = spec or SyntheticSpec()
    out = Path(out)
    ground_truth = Path(ground_truth) if ground_truth else out.parent / f"{out.name}_factors.csv"
    if n_per_condition < 1:
        raise DiffexError(f"n_per_condition must be >= 1, got {n_per_condition}")
    rng = np.random.default_rng(seed)
    rows = []
    with atomic_dir(out, force=force) as tmp:
        for condition in spec.conditions:
            (tmp / condition).mkdir()
            for i in range(n_per_condition):
                img, factors = render_cell(rng, condition, spec)
                rel = f"{condition}/{condition}_{i:04d}.ome.tif"
                write_ome_tiff(tmp / rel, img, CHANNEL_NAMES)
                rows.append({"path": rel, "condition": condition, **factors})
    write_factors(ground_truth, rows)
    log.info("wrote %d images to %s and factors to %s", len(rows), out, ground_truth)
    return ground_truth
