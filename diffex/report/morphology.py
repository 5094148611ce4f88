"""Interpretable measurements on images, per channel, with CellProfiler-like column names.

Each channel is segmented by Otsu's threshold and its largest connected object is measured:
``{Channel}_AreaShape_Area``, ``_Perimeter``, ``_Eccentricity``, ``_Solidity``, ``_Center_X``,
``_Center_Y``, ``{Channel}_Intensity_MeanIntensity`` (inside the object),
``{Channel}_Texture_Contrast`` and ``_Homogeneity`` (GLCM inside the object),
``{Channel}_Count_Objects`` (Otsu components of >= 4 px) and ``{Channel}_Intensity_MeanIntensityImage``
(whole image). Along a traversal, :func:`trend` tells how each measurement changes with strength.

Example
-------
>>> import numpy as np
>>> img = np.zeros((1, 32, 32), np.float32); img[0, 8:24, 8:24] = 100
>>> m = measure(img, ["DNA"])
>>> m["DNA_AreaShape_Area"], m["DNA_Intensity_MeanIntensity"]
(256.0, 100.0)
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr
from skimage.filters import threshold_otsu
from skimage.measure import label, regionprops

FEATURES = ("AreaShape_Area", "AreaShape_Perimeter", "AreaShape_Eccentricity", "AreaShape_Solidity",
            "AreaShape_Center_X", "AreaShape_Center_Y", "Intensity_MeanIntensity", "Intensity_MeanIntensityImage",
            "Texture_Contrast", "Texture_Homogeneity", "Count_Objects")
MIN_OBJECT_AREA = 4  # px; smaller Otsu components are noise and are not counted


def texture(ch: np.ndarray, mask: np.ndarray, levels: int = 16) -> tuple[float, float]:
    """GLCM contrast and homogeneity (distance 1, four angles averaged) inside ``mask``.

    Intensities are quantized to ``levels`` grey levels between the object's 1st and 99th
    percentiles; pixel pairs touching the background are excluded.
    """
    from skimage.feature import graycomatrix, graycoprops

    vals = ch[mask]
    lo, hi = np.percentile(vals, [1, 99])
    if hi <= lo:
        return 0.0, 1.0
    q = (np.clip((ch - lo) / (hi - lo), 0, 1) * (levels - 1)).astype(np.uint8) + 1
    q[~mask] = 0  # level 0 = background, dropped below
    glcm = graycomatrix(q, [1], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=levels + 1, symmetric=True)
    glcm = glcm[1:, 1:].astype(np.float64)
    glcm /= np.maximum(glcm.sum(axis=(0, 1), keepdims=True), 1)
    return float(graycoprops(glcm, "contrast").mean()), float(graycoprops(glcm, "homogeneity").mean())


def measure(image: np.ndarray, channel_names: list[str]) -> dict[str, float]:
    """Measurements of one raw image (C, H, W)."""
    out: dict[str, float] = {}
    for c, name in enumerate(channel_names):
        ch = np.asarray(image[c], dtype=np.float64)
        vals = dict.fromkeys(FEATURES, float("nan"))
        vals["Intensity_MeanIntensityImage"] = float(ch.mean())
        if ch.max() > ch.min():
            lab = label(ch > threshold_otsu(ch), connectivity=2)
            props = regionprops(lab, intensity_image=ch)
            vals["Count_Objects"] = float(sum(r.area >= MIN_OBJECT_AREA for r in props))
            if props:
                p = max(props, key=lambda r: r.area)
                cy, cx = p.centroid
                contrast, homogeneity = texture(ch, lab == p.label)
                vals.update({
                    "AreaShape_Area": float(p.area), "AreaShape_Perimeter": float(p.perimeter),
                    "AreaShape_Eccentricity": float(p.eccentricity), "AreaShape_Solidity": float(p.solidity),
                    "AreaShape_Center_X": float(cx), "AreaShape_Center_Y": float(cy),
                    "Intensity_MeanIntensity": float(p.intensity_mean),
                    "Texture_Contrast": contrast, "Texture_Homogeneity": homogeneity,
                })
        out.update({f"{name}_{k}": v for k, v in vals.items()})
    return out


def measure_many(images: np.ndarray, channel_names: list[str]) -> dict[str, np.ndarray]:
    """Measurements of (N, C, H, W) images: one array of N values per column."""
    rows = [measure(im, channel_names) for im in images]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]} if rows else {}


def trend(strengths: np.ndarray, values: np.ndarray, reference: np.ndarray, image_size: int) -> dict[str, float]:
    """How one measurement moves along traversals.

    Parameters
    ----------
    strengths : (N, S) strength of each render; values : (N, S) the measurement; reference : (N,)
    the measurement on each image's reconstruction.

    Returns the median over images of the Spearman r between strength and the measurement along
    each image's own traversal (so that differences between images do not dilute it), and the
    median relative change at the largest and at the smallest strength (Center_X/Y changes are
    relative to ``image_size``, the others to the reference value).
    """
    s, v = np.atleast_2d(np.asarray(strengths, float)), np.atleast_2d(np.asarray(values, float))
    rs = []
    for si, vi in zip(s, v):
        ok = np.isfinite(vi)
        rs.append(float(spearmanr(si[ok], vi[ok])[0]) if ok.sum() > 2 and np.ptp(vi[ok]) > 0 else 0.0)
    r = float(np.median(rs))
    ref = np.asarray(reference, float)[:, None]
    denom = np.full_like(ref, float(image_size)) if image_size else np.abs(ref)
    rel = (v - ref) / np.where(denom == 0, np.nan, denom)
    return {
        "spearman_r": r,
        "change_at_max": float(np.nanmedian(rel[:, -1])),
        "change_at_min": float(np.nanmedian(rel[:, 0])),
    }


def consistency(values: np.ndarray, within: float = 2.0) -> float:
    """Share of images whose change along the traversal has the median's sign and a similar size.

    ``values`` (N, S): a measurement of each image's renders, strengths ascending. An image's change
    is its last render minus its first; it is consistent when its sign is that of the median change
    and its size within a factor ``within`` of the median's. NaN when no image has a finite change
    or the median change is 0. The automated stand-in for "a human sees the same change in every
    image" (issue 14).

    Example
    -------
    >>> consistency(np.array([[1.0, 2.0], [1.0, 2.5], [1.0, 1.8], [2.0, 1.0]]))   # changes +1, +1.5, +0.8, -1; median +0.9
    0.75
    """
    v = np.atleast_2d(np.asarray(values, float))
    d = v[:, -1] - v[:, 0]
    d = d[np.isfinite(d)]
    med = float(np.median(d)) if len(d) else 0.0
    if med == 0:
        return float("nan")
    ratio = d / med
    return float(np.mean((ratio >= 1 / within) & (ratio <= within)))


PRETTY = {"AreaShape_Area": "area", "Intensity_MeanIntensity": "object intensity",
          "Intensity_MeanIntensityImage": "image intensity", "AreaShape_Eccentricity": "eccentricity",
          "AreaShape_Solidity": "solidity", "AreaShape_Center_X": "x position", "AreaShape_Center_Y": "y position",
          "AreaShape_Perimeter": "perimeter", "Texture_Contrast": "texture contrast",
          "Texture_Homogeneity": "texture homogeneity", "Count_Objects": "object count"}


def measurement_label(column: str) -> str:
    """Plain name of a measurement column, e.g. 'DNA_AreaShape_Area' -> 'DNA area' (CT: 'Lesion_MeanHU' -> 'mean density (HU)')."""
    from diffex.report.ct_morphology import ct_label

    if ct_label(column):
        return ct_label(column)
    ch, _, feat = column.partition("_")
    for key, text in PRETTY.items():
        if column.endswith("_" + key):
            return f"{column[: -len(key) - 1]} {text}"
    return f"{ch} {feat}".strip()


def salient(trends: dict[str, dict[str, float]], top: int = 3, min_r: float = 0.5) -> list[str]:
    """Columns with the largest monotone change (|median Spearman r| >= min_r), largest first."""
    items = [(k, t) for k, t in trends.items() if abs(t["spearman_r"]) >= min_r and np.isfinite(t["change_at_max"])]
    items.sort(key=lambda kv: -abs(kv[1]["change_at_max"]))
    return [k for k, _ in items[:top]]


def describe(trends: dict[str, dict[str, float]], top: int = 3, min_r: float = 0.5) -> str:
    """Plain-language summary of the largest monotone changes, e.g. 'DNA area +18 %, Actin intensity +9 %'."""
    parts = [f"{measurement_label(k)} {trends[k]['change_at_max']:+.0%}" for k in salient(trends, top, min_r)]
    return ", ".join(parts) if parts else "no consistent morphological change measured"
