"""AttFind over a precomputed effect table, and the statistics reported per attribute.

The effect table is rendered once: for every image i, candidate k and sign σ, the probability of
the target condition after the edit minus that of the reconstruction (not of the original image, so
that inversion error is not counted as an effect). :func:`attfind` then greedily picks the
direction and sign with the largest mean effect over the images not yet explained, marks the images
it flips as explained, and repeats. It always terminates: every round uses up one direction, and it
stops when M attributes are chosen, no image is left, or no positive mean effect remains. Ties go
to the lower index.

Example
-------
>>> eff = np.array([[[0.1, 0.5]], [[0.0, 0.4]]])                 # (N=2, K=1, 2 signs)
>>> flip = eff > 0.3
>>> [(s.direction, s.sign, s.newly_explained) for s in attfind(eff, flip, 3)]
[(0, 1, 2)]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import mannwhitneyu

SIGNS = (-1, +1)  # index 0 of the sign axis is the negative direction


@dataclass(frozen=True)
class Selection:
    """One AttFind pick: candidate index, sign (+1/-1), and how many images it newly explained."""

    direction: int
    sign: int
    mean_effect_on_remaining: float
    newly_explained: int


def attfind(effect: np.ndarray, flipped: np.ndarray, max_attributes: int) -> list[Selection]:
    """Greedy attribute selection over ``effect`` (N, K, 2) with ``flipped`` (N, K, 2) booleans."""
    effect = np.asarray(effect, dtype=np.float64)
    flipped = np.asarray(flipped, dtype=bool)
    if effect.shape != flipped.shape or effect.ndim != 3 or effect.shape[2] != 2:
        raise ValueError(f"effect and flipped must both be (N, K, 2); got {effect.shape} and {flipped.shape}")
    n, k, _ = effect.shape
    remaining = np.ones(n, dtype=bool)
    available = np.ones(k, dtype=bool)
    out: list[Selection] = []
    while len(out) < max_attributes and remaining.any() and available.any():
        means = np.nan_to_num(effect[remaining].mean(0), nan=-np.inf)  # (K, 2)
        means[~available] = -np.inf
        best = int(np.argmax(means))  # first maximum: ties go to the lower index
        d, s = divmod(best, 2)
        if not means[d, s] > 0:
            break
        newly = remaining & flipped[:, d, s]
        out.append(Selection(d, SIGNS[s], float(means[d, s]), int(newly.sum())))
        remaining &= ~flipped[:, d, s]
        available[d] = False
    return out


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def separation(projection: np.ndarray, in_target: np.ndarray) -> dict[str, float]:
    """How well a per-image coordinate separates the target condition from the others.

    Returns AUC (probability that a target image projects higher), Cohen's d and the two-sided
    Mann-Whitney p-value.
    """
    a = np.asarray(projection, dtype=np.float64)[in_target]
    b = np.asarray(projection, dtype=np.float64)[~in_target]
    if len(a) == 0 or len(b) == 0:
        return {"auc": float("nan"), "cohens_d": float("nan"), "p_value": float("nan")}
    res = mannwhitneyu(a, b, alternative="two-sided")
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / max(1, len(a) + len(b) - 2)) if len(a) > 1 and len(b) > 1 else float("nan")
    return {
        "auc": float(res.statistic / (len(a) * len(b))),
        "cohens_d": float((a.mean() - b.mean()) / pooled) if pooled and pooled > 0 else float("nan"),
        "p_value": float(res.pvalue),
    }


def attribute_statistics(
    selections: list[Selection],
    effect: np.ndarray,
    flipped: np.ndarray,
    projections: np.ndarray,
    in_target: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """Per selected attribute: mean Δp with bootstrap CI, flip rate, coverage, cumulative flip rate,
    and condition separation of the projection (all images, ``projections`` (N_all, K)).
    """
    n = effect.shape[0]
    union = np.zeros(n, dtype=bool)
    out = []
    for rank, sel in enumerate(selections, 1):
        s = SIGNS.index(sel.sign)
        eff = effect[:, sel.direction, s]
        flips = flipped[:, sel.direction, s]
        union |= flips
        lo, hi = bootstrap_ci(eff, n_boot, seed + rank)
        sep = separation(sel.sign * projections[:, sel.direction], in_target)
        out.append(
            {
                "rank": rank,
                "direction": sel.direction,
                "sign": sel.sign,
                "n_images": int(n),
                "mean_delta_p": float(eff.mean()),
                "mean_delta_p_when_selected": sel.mean_effect_on_remaining,  # over images not yet explained
                "delta_p_ci95": [lo, hi],
                "flip_rate": float(flips.mean()),
                "coverage": float(sel.newly_explained / n) if n else 0.0,
                "cumulative_flip_rate": float(union.mean()),
                **{f"separation_{k}": v for k, v in sep.items()},
            }
        )
    return out
