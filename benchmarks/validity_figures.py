"""The validity benchmark's descriptive figures beside its criteria: proximity of the renders to the reconstruction, realism
against the real images, and how well each readout follows its true factor on the real images (validity_score.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

def full_strength(rows: list[dict], att_id: str) -> list[dict]:
    """The attribute's rows at its largest |strength| (both ends of the traversal)."""
    mine = [r for r in rows if str(r["attribute"]) == att_id]
    if not mine:
        return []
    top = max(abs(r["Strength"]) for r in mine)
    return [r for r in mine if np.isclose(abs(r["Strength"]), top)]


def _proximity(exp: Path, att, ranges: dict) -> tuple[list[float], list[float]]:
    """L1 (units of the display range) and SSIM between the full-strength and the strength-0 frame of each shown example."""
    from skimage.metrics import structural_similarity

    from diffex.report.folder import read_hyperstack

    chans = list(ranges)
    span = np.array([ranges[c][1] - ranges[c][0] for c in chans], float)
    strengths = np.asarray(att.traversal.strengths)
    zero, full = int(np.argmin(np.abs(strengths))), len(strengths) - 1
    l1, ssim = [], []
    for ex in att.traversal.shown:
        st = read_hyperstack(exp / "traversals" / ex.file, len(chans))  # (F, C, H, W)
        a, b = st[full] / span[:, None, None], st[zero] / span[:, None, None]
        l1.append(float(np.abs(a - b).mean()))
        ssim.append(float(np.mean([structural_similarity(a[c], b[c], data_range=1.0) for c in range(len(chans))])))
    return l1, ssim


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def proximity(exp: Path, top: list, display_ranges: dict) -> dict:
    """Mean L1 and SSIM over the shown examples of the given attributes."""
    pairs = [_proximity(exp, a, display_ranges) for a in top if a.traversal is not None]
    return {"l1": _mean([v for p in pairs for v in p[0]]), "ssim": _mean([v for p in pairs for v in p[1]])}


def proxy_validity(paths: list[str], real: dict[str, np.ndarray], truth: list[dict], measure: dict) -> dict:
    """On the real images: Spearman r of each factor's measurement with the true factor (the proxy's validity), and
    ``proxy_other_r_*``, the largest |r| within one condition of that measurement with another true factor.

    The second says whether the ``specific`` bar can be met at all: within a condition the true factors vary
    independently, so a measurement that follows another factor there would tie the two in any render.

    >>> truth = [{"path": f"c{i}", "condition": "c", "a": a, "b": b} for i, (a, b) in enumerate(zip("1234", "2413"))]
    >>> out = proxy_validity([f"c{i}" for i in range(4)], {"A": np.r_[1.0, 2, 3, 4], "B": np.r_[1.0, 2, 3, 4]}, truth,
    ...                      {"a": "A", "b": "B"})
    >>> [round(out[k], 6) for k in ("proxy_r_a", "proxy_other_r_a", "proxy_r_b", "proxy_other_r_b")]
    [1.0, 0.0, 0.0, 1.0]
    """
    from scipy.stats import spearmanr

    by_path, out = {r["path"]: r for r in truth}, {}

    def r_of(f: str, col: str, condition: str | None = None) -> float | None:
        pairs = [(float(by_path[p][f]), v) for p, v in zip(paths, real.get(col, [])) if p in by_path and np.isfinite(v)
                 and np.isfinite(float(by_path[p][f])) and condition in (None, by_path[p]["condition"])]
        if len(pairs) < 3 or min(len(set(x)) for x in zip(*pairs)) < 2:
            return None  # too few images, or constant: no correlation defined
        return float(spearmanr(*zip(*pairs))[0])

    conditions = sorted({r["condition"] for r in truth})
    for f, col in measure.items():
        out[f"proxy_r_{f}"] = r_of(f, col)
        others = [abs(r) for g in measure if g != f for c in conditions if (r := r_of(g, col, c)) is not None]
        out[f"proxy_other_r_{f}"] = max(others) if others else None
    return out


def realism(rows: list[dict], top: list, real: dict[str, np.ndarray]) -> dict:
    """Median |z| of the full-strength renders' measurements against the real images, and the share with any |z| > 4."""
    cols = [c for c in real if np.isfinite(real[c]).sum() > 2 and np.nanstd(real[c]) > 0 and "Center" not in c]
    full = [r for a in top for r in full_strength(rows, a.id)]
    if not full or not cols:
        return {"realism_median_abs_z": None, "realism_share_any_z_over_4": None}
    z = np.array([[(r[c] - np.nanmean(real[c])) / np.nanstd(real[c]) if isinstance(r.get(c), float) else np.nan for c in cols]
                  for r in full])
    return {"realism_median_abs_z": float(np.nanmedian(np.abs(z))),
            "realism_share_any_z_over_4": float(np.mean(np.nanmax(np.abs(np.nan_to_num(z, nan=99.0)), axis=1) > 4))}


