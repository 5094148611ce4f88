"""Lesion readouts of a CT patch in HU and millimetres.

The lesion is segmented by an HU threshold (default -650 HU, above aerated lung and below ground
glass). Its scale R is the largest inscribed radius of the mask near the centre (or a given
point); a morphological opening with a disk of radius 0.6 R removes vessels narrower than the
lesion that touch it, the connected component nearest the point is the lesion, and its holes
(noise below the threshold) are filled. Measured: area (mm^2), equivalent and maximum diameter (mm), mean and percentile HU,
solidity, margin irregularity (the coefficient of variation of the boundary's distance from the
centroid: 0 for a disk, sqrt(sum a_k^2 / 2) for a radius R (1 + sum a_k cos(k theta))) and the share
of solid pixels (above ``solid_hu``, default -300 HU).

Example
-------
>>> import numpy as np
>>> yy, xx = np.mgrid[:64, :64]
>>> hu = np.where((yy - 32) ** 2 + (xx - 32) ** 2 <= 10 ** 2, 30.0, -850.0).astype(np.float32)
>>> m = measure_lesion(hu, spacing=(0.5, 0.5))
>>> round(m["Lesion_Diameter_mm"], 1), round(m["Lesion_MeanHU"]), m["Lesion_SolidShare"]
(9.9, 30, 1.0)
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import binary_fill_holes, distance_transform_edt
from skimage.measure import find_contours, label, regionprops
from skimage.morphology import disk, opening

CT_FEATURES = ("Area_mm2", "Diameter_mm", "MaxDiameter_mm", "MeanHU", "P10HU", "P50HU", "P90HU", "Solidity",
               "MarginIrregularity", "SolidShare", "Found", "CenterX_mm", "CenterY_mm", "ParenchymaHU")
LESION_HU = -650.0
SOLID_HU = -300.0


def _nearest_component(mask: np.ndarray, point: tuple[float, float]) -> np.ndarray | None:
    lab = label(mask, connectivity=1)
    if lab.max() == 0:
        return None
    yy, xx = np.nonzero(lab)
    d = (yy - point[0]) ** 2 + (xx - point[1]) ** 2
    return lab == lab[yy[np.argmin(d)], xx[np.argmin(d)]]


def lesion_mask(hu: np.ndarray, center: tuple[float, float], threshold: float, search_px: float) -> np.ndarray | None:
    """The lesion's pixels: thresholded, opened at 0.6 x its inscribed radius, nearest component, holes filled."""
    mask = hu > threshold
    if not mask.any():
        return None
    dist = distance_transform_edt(mask)  # px to the nearest pixel below the threshold
    yy, xx = np.mgrid[: hu.shape[0], : hu.shape[1]]
    near = ((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= search_px**2) & _nearest_component(mask, center)
    inscribed = float(dist[near].max()) if near.any() else 0.0  # the scale of the object nearest the centre
    opened = opening(mask, disk(max(1, int(round(0.6 * inscribed))))) if inscribed >= 2 else mask
    lesion = _nearest_component(opened if opened.any() else mask, center)
    return None if lesion is None else binary_fill_holes(lesion)


def margin_irregularity(lesion: np.ndarray, spacing: tuple[float, float]) -> float:
    """Coefficient of variation of the distance (mm) from the centroid to the lesion's boundary contour."""
    contours = find_contours(np.pad(lesion, 1).astype(np.float64), 0.5)
    if not contours:
        return math.nan
    c = max(contours, key=len) - 1  # (K, 2) boundary points, back in image coordinates
    yy, xx = np.nonzero(lesion)
    r = np.hypot((c[:, 0] - yy.mean()) * spacing[0], (c[:, 1] - xx.mean()) * spacing[1])
    return float(r.std() / r.mean())


def measure_lesion(hu: np.ndarray, spacing: tuple[float, float], center: tuple[float, float] | None = None,
                   threshold: float = LESION_HU, solid_hu: float = SOLID_HU, search_mm: float = 5.0) -> dict[str, float]:
    """Readouts (``Lesion_*`` keys, :data:`CT_FEATURES`) of the lesion in a (Y, X) HU patch at ``spacing`` (y, x) mm.

    ``Lesion_Found`` is 0 (and every other value NaN) when nothing exceeds the threshold. The lesion's
    scale is looked for within ``search_mm`` of the centre.
    """
    hu = np.asarray(hu, np.float64)
    center = center or ((hu.shape[0] - 1) / 2, (hu.shape[1] - 1) / 2)
    lesion = lesion_mask(hu, center, threshold, search_mm / min(spacing))
    if lesion is None:
        return {f"Lesion_{k}": (0.0 if k == "Found" else math.nan) for k in CT_FEATURES}
    px_area = spacing[0] * spacing[1]
    props = regionprops(lesion.astype(np.uint8))[0]
    values = hu[lesion]
    area = float(lesion.sum() * px_area)
    iso = math.sqrt(px_area)  # Feret diameter in mm (isotropic pixels assumed)
    return {
        "Lesion_Area_mm2": area,
        "Lesion_Diameter_mm": 2 * math.sqrt(area / math.pi),
        "Lesion_MaxDiameter_mm": float(props.feret_diameter_max) * iso,
        "Lesion_MeanHU": float(values.mean()),
        "Lesion_P10HU": float(np.percentile(values, 10)),
        "Lesion_P50HU": float(np.percentile(values, 50)),
        "Lesion_P90HU": float(np.percentile(values, 90)),
        "Lesion_Solidity": float(props.solidity),
        "Lesion_MarginIrregularity": margin_irregularity(lesion, spacing),
        "Lesion_SolidShare": float((values > solid_hu).mean()),
        "Lesion_Found": 1.0,
        # where the lesion lies (its centroid from the patch centre, mm) and the lung around it: nuisance readouts
        "Lesion_CenterX_mm": float((props.centroid[1] - (hu.shape[1] - 1) / 2) * spacing[1]),
        "Lesion_CenterY_mm": float((props.centroid[0] - (hu.shape[0] - 1) / 2) * spacing[0]),
        "Lesion_ParenchymaHU": float(hu[hu < threshold].mean()) if (hu < threshold).any() else math.nan,
    }


# column: (plain name, unit, scale to that unit) of the readouts a description and the report name
CT_LABELS = {"Lesion_Diameter_mm": ("nodule diameter", "mm", 1.0), "Lesion_MeanHU": ("mean density", "HU", 1.0),
             "Lesion_SolidShare": ("solid share", "points", 100.0), "Lesion_MarginIrregularity": ("margin irregularity", "", 1.0),
             "Lesion_Area_mm2": ("nodule area", "mm²", 1.0), "Lesion_MaxDiameter_mm": ("maximum diameter", "mm", 1.0),
             "Lesion_P10HU": ("10th percentile density", "HU", 1.0), "Lesion_P50HU": ("median density", "HU", 1.0),
             "Lesion_P90HU": ("90th percentile density", "HU", 1.0), "Lesion_Solidity": ("solidity", "", 1.0),
             "Lesion_Found": ("lesion found", "", 1.0), "Lesion_CenterX_mm": ("nodule x", "mm", 1.0),
             "Lesion_CenterY_mm": ("nodule y", "mm", 1.0), "Lesion_ParenchymaHU": ("parenchyma density", "HU", 1.0)}
DESCRIBED = ("Lesion_Diameter_mm", "Lesion_MeanHU", "Lesion_SolidShare", "Lesion_MarginIrregularity")


def hu_channel(modality: str, windows: list[tuple[float, float]]) -> int | None:
    """The channel lesions are measured on: for CT, a window holding both thresholds (-650 and -300 HU), the one
    reaching lowest; None for MR or when no window does (a mediastinum window alone clips lung to -125 HU), and
    then the renders get the generic per-channel measurements instead.

    Example
    -------
    >>> hu_channel("ct", [(-125.0, 225.0), (-1350.0, 150.0)]), hu_channel("ct", [(-125.0, 225.0)]), hu_channel("mr", [(0.0, 900.0)])
    (1, None, None)
    """
    ok = [i for i, (lo, hi) in enumerate(windows) if lo < LESION_HU and hi > SOLID_HU] if modality == "ct" else []
    return min(ok, key=lambda i: windows[i][0]) if ok else None


def measure_many_ct(images: np.ndarray, spacing_mm: float, channel: int = 0) -> dict[str, np.ndarray]:
    """Lesion readouts of (N, C, H, W) HU images (channel ``channel``) at ``spacing_mm``: one array of N values per column."""
    rows = [measure_lesion(im[channel], (spacing_mm, spacing_mm)) for im in images]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]} if rows else {}


def ct_label(column: str) -> str | None:
    """E.g. 'Lesion_MeanHU' -> 'mean density (HU)'; None for a column that is not a CT readout."""
    if column not in CT_LABELS:
        return None
    name, unit, _ = CT_LABELS[column]
    return f"{name} ({unit})" if unit else name


def _amount(column: str, change: float) -> str:
    name, unit, scale = CT_LABELS[column]
    v = change * scale
    text = f"{v:+.0f}" if unit == "HU" else f"{v:+.1f}" if unit in ("mm", "points") else f"{v:+.2f}"
    return f"{name} {text}{' ' + unit if unit else ''}"


def describe_ct(trends: dict[str, dict[str, float]], min_r: float = 0.5) -> str:
    """The CT readouts that move consistently (|median Spearman r| >= ``min_r``) with their absolute change at full strength.

    Example
    -------
    >>> describe_ct({"Lesion_Diameter_mm": {"spearman_r": 0.9, "change_at_max": 2.14},
    ...              "Lesion_MeanHU": {"spearman_r": 0.8, "change_at_max": 85.2},
    ...              "Lesion_SolidShare": {"spearman_r": 0.2, "change_at_max": 0.3}})
    'nodule diameter +2.1 mm, mean density +85 HU'
    """
    parts = [_amount(k, trends[k]["change_at_max"]) for k in DESCRIBED
             if k in trends and abs(trends[k]["spearman_r"]) >= min_r and np.isfinite(trends[k]["change_at_max"])]
    return ", ".join(parts) if parts else "no consistent change of the lesion measured"


def describe_change(before: dict[str, float], after: dict[str, float]) -> str:
    """E.g. ``nodule diameter +2.1 mm, mean density +85 HU, solid share -12.0 points`` (percentage points)."""
    keys = ("Lesion_Diameter_mm", "Lesion_MeanHU", "Lesion_SolidShare")
    return ", ".join(_amount(k, after[k] - before[k]) for k in keys if np.isfinite(after[k] - before[k]))
