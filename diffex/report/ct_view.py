"""What the report shows differently for CT/MR: window and level, an HU colour bar, a mm scale bar.

The renders are displayed in grey in the models' window(s) (the fixed display range is the window),
difference maps are scaled in HU, and the scale bar's length follows the pixel spacing every
image was resampled to.

Example
-------
>>> nice_length(44.8 * 0.4)
10.0
>>> nice_length(3.0)
2.0
"""

from __future__ import annotations

import math

from diffex.report.ct_morphology import CT_LABELS, DESCRIBED, hu_channel
from diffex.report.results import Results

DISPLAY_PX = 112  # on-screen side of one traversal image (report.css img.px)


def nice_length(limit_mm: float) -> float:
    """The largest of 1, 2, 5 x 10^k mm not above ``limit_mm`` (0.1 mm for a limit that is not positive)."""
    if not limit_mm > 0:
        return 0.1
    k = math.floor(math.log10(limit_mm))
    for m in (5, 2, 1):
        if m * 10**k <= limit_mm:
            return float(m * 10**k)
    return float(10**k)


def ct_context(r: Results, diff_scale: float) -> dict | None:
    """Template data for a CT/MR report (None for microscopy)."""
    im = r.imaging
    if im is None:
        return None
    unit = "HU" if im.modality == "ct" else "units"
    size = r.diffusion_model.image_size
    field = size * im.spacing_mm
    bar = nice_length(0.4 * field)
    windows = [{"name": w["name"], "low": w["low"], "high": w["high"], "unit": unit,
                "text": f"{w['name']} window: width {w['high'] - w['low']:g} / level {(w['high'] + w['low']) / 2:g} {unit} "
                        f"(black {w['low']:g}, white {w['high']:g} {unit})",
                "diff": f"{w['name']} {diff_scale * (w['high'] - w['low']):g} {unit}"} for w in im.windows]
    return {"modality": im.modality.upper(), "unit": unit, "spacing_mm": im.spacing_mm, "field_mm": field, "windows": windows,
            "bar_mm": f"{bar:g}", "bar_px": round(DISPLAY_PX * bar / field, 1), "input": im.input,
            "lesion": lesion_readouts(r)}


def lesion_readouts(r: Results) -> bool:
    """Whether the renders were measured with the CT lesion readouts (CT with a window holding the lesion thresholds)."""
    im = r.imaging
    return im is not None and hu_channel(im.modality, [(w["low"], w["high"]) for w in im.windows]) is not None


def lesion_columns(trends: dict[str, dict[str, float]], min_r: float = 0.5) -> list[str]:
    """The described CT readouts that move consistently (else the three that move most consistently), for the plot."""
    cols = [k for k in DESCRIBED if k in trends and abs(trends[k]["spearman_r"]) >= min_r]
    return cols or sorted((k for k in DESCRIBED if k in trends), key=lambda k: -abs(trends[k]["spearman_r"]))[:3]


def lesion_scales(columns: list[str]) -> dict[str, float]:
    """Per column, the factor to its reported unit (solid share: fraction -> percentage points)."""
    return {c: CT_LABELS[c][2] for c in columns}
