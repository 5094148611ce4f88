"""Differentiable stand-ins for the morphology readouts, for their gradients with respect to an edit.

The readouts of :mod:`diffex.explain.readouts` segment each image (Otsu's threshold, the largest
object; for CT the lesion by its HU threshold) and are piecewise constant in the pixels: their
gradient is zero almost everywhere. Here the segmentation of a *reference* image (the
reconstruction an edit starts from) is kept fixed, grown by :data:`GROW` pixels, and inside that
region the hard threshold becomes a logistic one, m = σ((x − τ) / w). Every readout is then a
smooth function of the pixels that equals the hard one up to the softness of the edge:

- microscopy, per channel: area Σm, perimeter Σ‖∇m‖, object intensity Σmx / Σm, whole-image
  intensity, centroid and eccentricity from the moments of m (as ``regionprops`` does from the
  mask), with w = :data:`SOFTNESS` × the reference channel's range;
- CT, on the lesion channel in HU: area (mm²) and diameter, mean HU and the 10/50/90th percentiles
  (of the reference lesion's pixels), solid share Σm·σ((hu − solid) / w) / Σm, centroid in mm from
  the patch centre, and the parenchyma's mean HU (soft complement of the lesion threshold over the
  patch), with w = :data:`HU_SOFTNESS`.

Readouts without a smooth form (solidity, object count, texture, Feret diameter, margin
irregularity) are not given. An image whose reference has no object gives NaN for that channel.

What the stand-ins leave out, so that their gradients are those of the readouts only near the
reference: the hard readouts re-compute Otsu's threshold on every render, here it is fixed (a
uniform brightening grows the soft area, not the hard one); the grown region also takes in halo
pixels and any neighbouring object within :data:`GROW` px; and the CT percentiles are taken over
the reference lesion's pixels, so a lesion that grows moves them only through the values of those
pixels. tests/test_directions_hold.py measures how far they stand from the hard readouts.

Example
-------
>>> import numpy as np, torch
>>> from diffex.report.morphology import measure
>>> yy, xx = np.mgrid[:32, :32]
>>> ref = 100 * np.exp(-((yy - 15.5) ** 2 / 40 + (xx - 13) ** 2 / 20))[None, None]   # (1, 1, 32, 32) an elliptic blob
>>> soft = microscopy_soft(torch.as_tensor(ref), ref, ["DNA"])
>>> round(float(soft["DNA_AreaShape_Area"][0])), measure(ref[0], ["DNA"])["DNA_AreaShape_Area"]   # soft edge, hard mask
(110, 102.0)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import binary_dilation
from skimage.filters import threshold_otsu
from skimage.measure import label

from diffex.report.ct_morphology import LESION_HU, SOLID_HU, lesion_mask

GROW = 2  # px the reference object is grown by: how far its edge may move and still be seen
SOFTNESS = 0.05  # logistic edge width, as a share of the reference channel's intensity range
HU_SOFTNESS = 30.0  # HU: logistic edge width of the CT lesion and solid thresholds
MICROSCOPY = ("AreaShape_Area", "AreaShape_Perimeter", "AreaShape_Eccentricity", "AreaShape_Center_X", "AreaShape_Center_Y",
              "Intensity_MeanIntensity", "Intensity_MeanIntensityImage")
CT = ("Area_mm2", "Diameter_mm", "MeanHU", "P10HU", "P50HU", "P90HU", "SolidShare", "CenterX_mm", "CenterY_mm", "ParenchymaHU")


def _largest_object(ref: np.ndarray) -> tuple[float, np.ndarray] | None:
    """Otsu threshold of a reference channel (H, W) and its largest object grown by :data:`GROW` px (None: no object)."""
    if ref.max() <= ref.min():
        return None
    thr = float(threshold_otsu(ref))
    lab = label(ref > thr, connectivity=2)
    if lab.max() == 0:
        return None
    big = lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
    return thr, binary_dilation(big, iterations=GROW)


def _moments(m: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Area, centroid (y, x) and eccentricity of a soft mask (H, W)."""
    yy, xx = torch.meshgrid(torch.arange(m.shape[0], dtype=m.dtype), torch.arange(m.shape[1], dtype=m.dtype), indexing="ij")
    area = m.sum()
    cy, cx = (m * yy).sum() / area, (m * xx).sum() / area
    a, c = (m * (yy - cy) ** 2).sum() / area, (m * (xx - cx) ** 2).sum() / area
    b = (m * (yy - cy) * (xx - cx)).sum() / area
    root = torch.sqrt(((a - c) / 2) ** 2 + b**2 + 1e-12)
    l1, l2 = (a + c) / 2 + root, (a + c) / 2 - root
    return area, cy, cx, torch.sqrt((1 - l2 / l1).clamp_min(1e-12))


def _perimeter(m: torch.Tensor) -> torch.Tensor:
    """Σ‖∇m‖ over a soft mask (H, W): the edge length for a sharp mask."""
    p = torch.nn.functional.pad(m[None, None], (1, 1, 1, 1))[0, 0]
    gy, gx = p[1:, 1:] - p[:-1, 1:], p[1:, 1:] - p[1:, :-1]  # (H+1-1, W+1-1) forward differences
    return torch.sqrt(gy**2 + gx**2 + 1e-12).sum()


def _channel(x: torch.Tensor, ref: np.ndarray) -> dict[str, torch.Tensor] | None:
    """Soft readouts of one channel (H, W) against its reference (None: no object in the reference)."""
    obj = _largest_object(ref)
    if obj is None:
        return None
    thr, region = obj
    w = SOFTNESS * float(ref.max() - ref.min())
    m = torch.sigmoid((x - thr) / w) * torch.as_tensor(region, dtype=x.dtype)  # (H, W)
    area, cy, cx, ecc = _moments(m)
    return {"AreaShape_Area": area, "AreaShape_Perimeter": _perimeter(m), "AreaShape_Eccentricity": ecc,
            "AreaShape_Center_X": cx, "AreaShape_Center_Y": cy, "Intensity_MeanIntensity": (m * x).sum() / area,
            "Intensity_MeanIntensityImage": x.mean()}


def microscopy_soft(raw: torch.Tensor, reference: np.ndarray, channel_names: list[str]) -> dict[str, torch.Tensor]:
    """Soft per-channel object readouts of raw renders (B, C, H, W) against reference images (B, C, H, W): name -> (B,)."""
    out = {f"{n}_{k}": [] for n in channel_names for k in MICROSCOPY}
    nan = raw.new_tensor(math.nan)
    for b in range(raw.shape[0]):
        for c, name in enumerate(channel_names):
            vals = _channel(raw[b, c], np.asarray(reference[b, c], np.float64))
            for k in MICROSCOPY:
                out[f"{name}_{k}"].append(nan if vals is None else vals[k])
    return {k: torch.stack(v) for k, v in out.items()}


def _lesion(hu: torch.Tensor, ref: np.ndarray, spacing: float) -> dict[str, torch.Tensor] | None:
    """Soft lesion readouts of one HU patch (H, W) against its reference (None: no lesion in the reference)."""
    centre = ((ref.shape[0] - 1) / 2, (ref.shape[1] - 1) / 2)
    lesion = lesion_mask(ref, centre, LESION_HU, 5.0 / spacing)  # as measure_lesion finds it
    if lesion is None:
        return None
    region = torch.as_tensor(binary_dilation(lesion, iterations=GROW), dtype=hu.dtype)
    m = torch.sigmoid((hu - LESION_HU) / HU_SOFTNESS) * region  # (H, W)
    area, cy, cx, _ = _moments(m)
    inside = hu[torch.as_tensor(lesion)]
    p10, p50, p90 = torch.quantile(inside, inside.new_tensor([0.1, 0.5, 0.9]))
    lung = 1 - torch.sigmoid((hu - LESION_HU) / HU_SOFTNESS)  # soft "below the lesion threshold", whole patch
    area_mm2 = area * spacing**2
    return {"Area_mm2": area_mm2, "Diameter_mm": 2 * torch.sqrt(area_mm2 / math.pi), "MeanHU": (m * hu).sum() / area,
            "P10HU": p10, "P50HU": p50, "P90HU": p90, "SolidShare": (m * torch.sigmoid((hu - SOLID_HU) / HU_SOFTNESS)).sum() / area,
            "CenterX_mm": (cx - centre[1]) * spacing, "CenterY_mm": (cy - centre[0]) * spacing,
            "ParenchymaHU": (lung * hu).sum() / lung.sum()}


def ct_soft(raw: torch.Tensor, reference: np.ndarray, spacing_mm: float, channel: int = 0) -> dict[str, torch.Tensor]:
    """Soft lesion readouts (``Lesion_*``) of HU renders (B, C, H, W) against reference images (B, C, H, W): name -> (B,)."""
    out = {f"Lesion_{k}": [] for k in CT}
    nan = raw.new_tensor(math.nan)
    for b in range(raw.shape[0]):
        vals = _lesion(raw[b, channel], np.asarray(reference[b, channel], np.float64), spacing_mm)
        for k in CT:
            out[f"Lesion_{k}"].append(nan if vals is None else vals[k])
    return {k: torch.stack(v) for k, v in out.items()}


def soft_measurements(exp, raw: torch.Tensor, reference: np.ndarray) -> dict[str, torch.Tensor]:
    """The experiment's soft readouts (CT: the lesion's; else per channel), the counterpart of
    :func:`diffex.explain.readouts.measurements`."""
    from diffex.explain.readouts import lesion_channel

    ch = lesion_channel(exp)
    if ch is None:
        return microscopy_soft(raw, reference, exp.channel_names)
    return ct_soft(raw, reference, exp.geometry.spacing_mm, ch)
