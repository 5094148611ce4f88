"""``readout``: per measured readout that differs between the conditions, the direction in h that moves it alone.

The selection images' reconstructions are measured with the experiment's own readouts (per-channel
objects for microscopy, the lesion in mm and HU for CT: :mod:`diffex.explain.readouts`). Readouts
missing in more than 10 % of the images, or constant, are dropped; the others are turned into normal
scores (ranks mapped through the normal quantile function, so that a few failed segmentations do
not dominate). They are ordered by how well they separate the conditions (|AUC − 0.5|), and a
readout whose |Spearman r| with a better-separating one exceeds 0.7 is taken as a copy of it and
dropped. The remaining p readouts Z (n, p) are the covariates.

Per edit step s the images' h_s is regressed on all p readouts at once, within the top r principal
components of h_s (ridge λ = 0.1 on the readouts' correlation matrix):
B_s = (ZᵀZ/n + λI)⁻¹ Zᵀ(H_s − H̄_s)/n. Row j of B_s is how h moves with readout j *while the other
readouts stay fixed*: the partial (forward-model) pattern of readout j. Each row is made unit norm
per step, the rows are averaged over the edit steps, and the result points towards the condition
the readout separates best (with two conditions, the second): +pattern when the readout is higher
there, −pattern when lower. The candidates are the k best-separating readouts' directions, named
after the readout, e.g. ``towards treated: DNA area higher (AUC 0.91)`` (AUC of the readout, that
condition against the rest, on the selection images).

What it can and cannot find: only attributes that a readout names. A change the readouts do not
measure (a texture no feature captures, an organelle with no channel) gives no candidate here; the
unsupervised methods are for those. It uses the readouts, never the ground truth of a benchmark.

Example
-------
>>> rng = np.random.default_rng(0)
>>> z = rng.normal(size=(200, 2))                                  # two readouts that vary independently
>>> u = np.linalg.qr(rng.normal(size=(30, 2)))[0].T                # the h pattern of each readout
>>> h = torch.as_tensor(z @ (3 * u) + 0.3 * rng.normal(size=(200, 30)))[:, None]   # (n, 1 step, D)
>>> b = partial_patterns(h, normal_scores(z), rank=8)
>>> [round(abs(float(b[j] @ torch.as_tensor(u[j]))), 2) for j in range(2)]
[1.0, 1.0]
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import norm, rankdata

from diffex.errors import DiffexError
from diffex.explain.directions.discriminative import _auc, _basis
from diffex.explain.directions.registry import DirectionContext, register
from diffex.report.morphology import measurement_label

RANK = 64  # principal components of h_s the regression is solved in (at most n - 1)
RIDGE = 0.1  # added to the diagonal of the readouts' correlation matrix
REDUNDANT = 0.7  # |Spearman r| above which a readout is a copy of a better-separating one
MAX_MISSING = 0.1  # readouts missing (NaN) in a larger share of the images are dropped


def normal_scores(values: np.ndarray) -> np.ndarray:
    """Columns of ``values`` (n, p) as normal scores Φ⁻¹((rank − 0.5) / n), ties averaged: centred, about unit variance."""
    ranks = np.apply_along_axis(rankdata, 0, np.asarray(values, np.float64))
    return norm.ppf((ranks - 0.5) / len(ranks))


def usable(readouts: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """The readouts a regression can use, (names, values (n, p)): missing in at most 10 % of the images (filled with
    the median), not constant."""
    names, cols = [], []
    for name, v in readouts.items():
        v = np.asarray(v, np.float64)
        ok = np.isfinite(v)
        if ok.mean() < 1 - MAX_MISSING:
            continue
        v = np.where(ok, v, np.median(v[ok]))
        if np.ptp(v) > 0:
            names.append(name)
            cols.append(v)
    return names, np.stack(cols, 1) if cols else np.zeros((0, 0))


def separation(values: np.ndarray, labels: np.ndarray, targets: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per readout (column of ``values`` (n, p)): the target condition it separates best, and that AUC (target vs rest)."""
    aucs = np.array([[_auc(values[:, j], labels == t) for j in range(values.shape[1])] for t in targets])  # (T, p)
    best = np.abs(aucs - 0.5).argmax(0)
    return np.asarray(targets)[best], aucs[best, np.arange(values.shape[1])]


def spearman(values: np.ndarray) -> np.ndarray:
    """Spearman r (p, p) between the columns of ``values`` (n, p)."""
    return np.atleast_2d(np.corrcoef(np.apply_along_axis(rankdata, 0, values), rowvar=False))


def spread(values: np.ndarray) -> np.ndarray:
    """Per column of ``values`` (n, p): the robust SD (IQR / 1.349), or the SD where that is larger (a share or a count
    whose values mostly tie)."""
    q75, q25 = np.percentile(values, [75, 25], axis=0)
    return np.maximum((q75 - q25) / 1.349, values.std(0))


def distinct(values: np.ndarray, order: np.ndarray) -> list[int]:
    """Columns in ``order``, skipping any whose |Spearman r| with an already kept one exceeds :data:`REDUNDANT`."""
    rho = spearman(values)  # (p, p)
    keep: list[int] = []
    for j in order:
        if all(abs(rho[j, i]) <= REDUNDANT for i in keep):
            keep.append(int(j))
    return keep


def partial_patterns(h: torch.Tensor, z: np.ndarray, rank: int = RANK) -> torch.Tensor:
    """Unit-norm partial patterns (p, D): per step the ridge regression of h on the readouts z (n, p), averaged.

    ``h`` is (n, S, *h_shape) (the steps to average over); per step it is solved within its top ``rank``
    principal components, each readout's row made unit norm before the average.
    """
    h = h.flatten(2)  # (n, S, D)
    zt = torch.as_tensor(z, dtype=torch.float64)  # (n, p)
    n, p = zt.shape
    gram = zt.T @ zt / n + RIDGE * torch.eye(p, dtype=torch.float64)  # (p, p)
    out = torch.zeros(p, h.shape[-1], dtype=torch.float64)
    for s in range(h.shape[1]):
        x = h[:, s].double()  # (n, D)
        mu, v = _basis(x, rank)  # (D,), (D, r)
        coef = torch.linalg.solve(gram, zt.T @ ((x - mu) @ v) / n)  # (p, r)
        b = coef @ v.T  # (p, D)
        out += b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)


def measured_selection(ctx: DirectionContext, method: str) -> tuple[np.ndarray, list[int], list[str], np.ndarray]:
    """The selection images' conditions (n,), the conditions present, and their usable readouts (names, (n, p)),
    with a clear error for what ``method`` cannot use."""
    if ctx.labels is None or ctx.readouts is None:
        raise DiffexError(f"the {method} method needs the conditions of the images and their readouts")
    labels = np.asarray(ctx.labels)
    present = [int(c) for c in np.unique(labels)]
    if len(present) < 2 or min((labels == c).sum() for c in present) < 2:
        raise DiffexError(f"the {method} method needs at least two images of each of two conditions")
    names, values = usable(ctx.readouts(ctx.pair.raw(ctx.x0.float()).cpu().numpy()))
    if not names:
        raise DiffexError(f"the {method} method found no readout that varies between the images")
    return labels, present, names, values


@register("readout", version=2)  # 2: each candidate's row in the diagnostics names its output and the way it moves the readout
def readout_directions(ctx: DirectionContext, k: int) -> tuple[torch.Tensor, list[str]]:
    """The partial h patterns of the k measured readouts that best separate the conditions, each towards the condition where it is higher."""
    labels, present, names, values = measured_selection(ctx, "readout")
    targets = present[1:] if len(present) == 2 else present  # two conditions: one direction serves both (its negative)
    tgt, auc = separation(values, labels, targets)
    keep = distinct(values, np.argsort(-np.abs(auc - 0.5), kind="stable"))
    steps = max(1, min(ctx.edit_steps, ctx.h.shape[1]))
    patterns = partial_patterns(ctx.h[:, :steps], normal_scores(values[:, keep]))  # (p, D), towards higher readouts
    vecs, out_names, rows = [], [], []
    for i, j in enumerate(keep[:k]):
        higher = auc[j] >= 0.5  # the readout is higher in the target condition than in the rest
        vecs.append((1.0 if higher else -1.0) * patterns[i])  # towards the target condition
        out_names.append(f"towards {ctx.class_names[int(tgt[j])]}: {measurement_label(names[j])} {'higher' if higher else 'lower'} "
                         f"(AUC {auc[j]:.2f})")
        rows.append({"readout": names[j], "auc": round(float(auc[j]), 4), "condition": ctx.class_names[int(tgt[j])],
                     "name": out_names[-1], "higher": bool(higher)})
    ctx.diagnostics["readout"] = {"covariates": [names[j] for j in keep], "candidates": rows, "images": int(len(labels))}
    out = torch.stack(vecs)
    return out.float().view(len(out), *ctx.h_shape), out_names
