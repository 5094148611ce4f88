"""AttFind over a precomputed effect table, and the statistics reported per attribute.

The effect table is rendered once: for every image i, candidate k and sign σ, the probability of
the target condition after the edit minus that of the reconstruction (:mod:`diffex.explain.effects`).
:func:`attfind` greedily picks the direction and sign with the largest mean effect over the images
not yet explained (images already classified as the target are never counted as explained or
remaining: they cannot be flipped), marks the images it flips as explained, and repeats. It stops
when M attributes are chosen, no image is left, or the next pick's effect is not distinguishable
from zero: its one-sided bootstrap lower confidence bound is not above 0 (:data:`SELECTION_RULE`).
It always terminates: every round uses up one direction. Ties go to the lower index.

The statistics of the selected attributes (:func:`attribute_statistics`) are computed on other
images than the selection (the pipeline's evaluation images), so that the selection does not
inflate them. Bootstrap intervals resample whole groups (replicates, wells ...) when groups are
given; separation p-values are Holm-adjusted over every reported attribute (:func:`holm`).

Example
-------
>>> eff = np.zeros((20, 2, 2)); eff[:, 1, 0] = 0.6            # (N=20, K=2, 2 signs)
>>> flip = eff > 0.5
>>> [(s.direction, s.sign, s.newly_explained) for s in attfind(eff, flip, 3)]
[(1, -1, 20)]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import mannwhitneyu

SIGNS = (-1, +1)  # index 0 of the sign axis is the negative direction
SELECTION_CONFIDENCE = 0.95
SELECTION_RULE = ("AttFind stops when the one-sided {conf:.0%} bootstrap lower confidence bound of the next pick's mean Δp "
                  "over the images not yet explained is not above 0 ({n_boot} resamples; fewer than two such images: stop), "
                  "after {m} attributes, or when no image is left")


@dataclass(frozen=True)
class Selection:
    """One AttFind pick: candidate index, sign (+1/-1), its mean effect and lower bound, images it newly explained."""

    direction: int
    sign: int
    mean_effect_on_remaining: float
    lower_bound: float
    newly_explained: int


def _resample_means(values: np.ndarray, groups: np.ndarray | None, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap means (n_boot,) of ``values``, resampling whole groups when given (each image its own group otherwise)."""
    values = np.asarray(values, dtype=np.float64)
    codes = np.arange(len(values)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    n_groups = int(codes.max()) + 1
    sums = np.bincount(codes, weights=values, minlength=n_groups)  # (G,)
    counts = np.bincount(codes, minlength=n_groups).astype(np.float64)  # (G,)
    draw = np.random.default_rng(seed).integers(0, n_groups, size=(n_boot, n_groups))  # (B, G)
    return sums[draw].sum(1) / counts[draw].sum(1)


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 groups: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean; with ``groups``, a cluster bootstrap over them.

    Example
    -------
    >>> v = np.r_[np.zeros(50), np.ones(50)]
    >>> bootstrap_ci(v, groups=np.r_[np.zeros(50), np.ones(50)])   # two clusters: the mean is 0, 0.5 or 1
    (0.0, 1.0)
    """
    if len(values) == 0:
        return (float("nan"), float("nan"))
    means = _resample_means(values, groups, n_boot, seed)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def lower_bound(values: np.ndarray, n_boot: int = 1000, seed: int = 0, confidence: float = SELECTION_CONFIDENCE,
                groups: np.ndarray | None = None) -> float:
    """One-sided percentile bootstrap lower confidence bound of the mean (-inf for fewer than two units:
    one image, or the images of one replicate, say nothing about how variable the effect is).

    >>> lower_bound(np.array([0.2, 0.3, 0.25]), groups=np.array(["r1", "r1", "r1"]))
    -inf
    """
    n_units = len(values) if groups is None else len(np.unique(np.asarray(groups)))
    if len(values) < 2 or n_units < 2:
        return float("-inf")
    return float(np.quantile(_resample_means(values, groups, n_boot, seed), 1 - confidence))


def attfind(effect: np.ndarray, flipped: np.ndarray, max_attributes: int, *, eligible: np.ndarray | None = None,
            n_boot: int = 1000, seed: int = 0, confidence: float | None = SELECTION_CONFIDENCE,
            groups: np.ndarray | None = None) -> list[Selection]:
    """Greedy attribute selection over ``effect`` (N, K, 2) with ``flipped`` (N, K, 2) booleans.

    ``eligible`` (N,) marks the images that can be explained (not already at the target; default
    all); only they are counted in the means and the stopping rule (:data:`SELECTION_RULE`).
    ``confidence=None`` keeps only the reference procedure's rule (stop when the best mean effect is
    not positive), for comparisons with it.
    """
    effect = np.asarray(effect, dtype=np.float64)
    flipped = np.asarray(flipped, dtype=bool)
    if effect.shape != flipped.shape or effect.ndim != 3 or effect.shape[2] != 2:
        raise ValueError(f"effect and flipped must both be (N, K, 2); got {effect.shape} and {flipped.shape}")
    n, k, _ = effect.shape
    remaining = np.ones(n, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool).copy()
    available = np.ones(k, dtype=bool)
    out: list[Selection] = []
    while len(out) < max_attributes and remaining.any() and available.any():
        means = np.nan_to_num(effect[remaining].mean(0), nan=-np.inf)  # (K, 2)
        means[~available] = -np.inf
        best = int(np.argmax(means))  # first maximum: ties go to the lower index
        d, s = divmod(best, 2)
        vals = effect[remaining, d, s]
        bound = (float(vals.mean()) if confidence is None
                 else lower_bound(vals, n_boot, seed + len(out), confidence, None if groups is None else np.asarray(groups)[remaining]))
        if not (means[d, s] > 0 and bound > 0):
            break
        newly = remaining & flipped[:, d, s]
        out.append(Selection(d, SIGNS[s], float(means[d, s]), bound, int(newly.sum())))
        remaining &= ~flipped[:, d, s]
        available[d] = False
    return out


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


def separating_pairs(coords: np.ndarray, in_target: np.ndarray, min_auc: float) -> np.ndarray:
    """(K, 2) booleans: which directions (columns of ``coords`` (N, K), the images' coordinates) and signs
    (:data:`SIGNS`) separate the target images from the others with AUC >= ``min_auc`` (the target higher).

    Example
    -------
    >>> coords = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [3.0, 0.0]])   # 4 images x 2 directions
    >>> separating_pairs(coords, np.array([False, False, True, True]), 0.7).tolist()   # d0 rises towards the target, d1 falls
    [[False, True], [True, False]]
    """
    out = np.zeros((coords.shape[1], 2), dtype=bool)
    for k in range(coords.shape[1]):
        for s, sign in enumerate(SIGNS):
            out[k, s] = separation(sign * coords[:, k], in_target)["auc"] >= min_auc
    return out


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order.

    Example
    -------
    >>> holm([0.01, 0.04, 0.03, 0.005]).round(3).tolist()
    [0.03, 0.06, 0.06, 0.02]
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate(np.minimum(1.0, p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adjusted
    return out


def attribute_statistics(effects: np.ndarray, flips: np.ndarray, eligible: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                         groups: np.ndarray | None = None) -> list[dict]:
    """Per selected attribute (columns, in rank order), on evaluation images moved towards the target.

    Parameters
    ----------
    effects : (N, M) Δp of each image under each selected attribute
    flips : (N, M) bool, the image's class became the target (never true for images already there)
    eligible : (N,) bool, not already classified as the target before the edit
    groups : (N,), optional, the resampling unit of the bootstrap (replicate, well ...)

    Returns mean Δp with its bootstrap CI over all N, and flip rate, coverage (flipped by this and
    no higher-ranked attribute) and cumulative flip rate over the eligible images.
    """
    effects, flips, eligible = np.asarray(effects, float), np.asarray(flips, bool), np.asarray(eligible, bool)
    n_eligible = int(eligible.sum())
    union = np.zeros(len(eligible), dtype=bool)
    out = []
    for m in range(effects.shape[1]):
        newly = flips[:, m] & ~union
        union |= flips[:, m]
        lo, hi = bootstrap_ci(effects[:, m], n_boot, seed + m + 1, groups=groups)
        rate = (lambda mask: float(mask[eligible].mean()) if n_eligible else float("nan"))
        out.append({"n_images": int(len(eligible)), "n_eligible": n_eligible, "baseline_at_target": float(1 - eligible.mean()) if len(eligible) else float("nan"),
                    "mean_delta_p": float(effects[:, m].mean()) if len(eligible) else float("nan"),
                    "mean_abs_delta_p": float(np.abs(effects[:, m]).mean()) if len(eligible) else float("nan"),
                    "delta_p_ci95": [lo, hi], "flip_rate": rate(flips[:, m]), "coverage": rate(newly), "cumulative_flip_rate": rate(union)})
    return out
