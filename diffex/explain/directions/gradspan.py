"""``gradspan``: per denoising step, the direction along which the conditions differ, within the span of the classifier's gradients.

``discriminative`` finds where the real conditions differ in h, whether or not the classifier
looks there; ``gradient`` finds where the classifier reacts, whether or not the conditions differ
there. This method asks for both: the span of the per-image classifier gradients (their top
right singular vectors, ordered by singular value) is the classifier-relevant subspace, and per
edit step the shrinkage-LDA direction between the conditions is solved within its leading r axes,
r chosen by cross-validated AUC (:func:`~diffex.explain.directions.discriminative.lda_direction`).
The candidates are the mean over the edit steps and the means over the early and late halves,
pointing towards the target condition.

Example
-------
>>> rng = np.random.default_rng(0)
>>> y = np.repeat([0, 1], 40)
>>> X = rng.normal(size=(80, 30)); X[:, 3] += 1.5 * y; X[:, 7] += 3.0 * y   # differ along axes 3 and 7
>>> axes = torch.eye(30, dtype=torch.float64)[:, [3, 5]]                      # the classifier looks at 3 and 5
>>> w = lda_direction(torch.as_tensor(X), y == 1, seed=0, axes=axes)
>>> int(w.abs().argmax()), round(float(w[7]), 6)
(3, 0.0)
"""

from __future__ import annotations

import numpy as np  # noqa: F401 - used in the example
import torch

from diffex.errors import DiffexError
from diffex.explain.directions.discriminative import RANKS, lda_direction, per_step_lda
from diffex.explain.directions.registry import DirectionContext, register


def gradient_axes(grads: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """Orthonormal axes (D, q) of the span of the gradients (M, *h_shape), by decreasing singular value.

    At most ``max(RANKS)`` axes; axes with singular value below ``tol`` x the largest are dropped.
    """
    g = grads.double().flatten(1)  # (M, D)
    _, s, vh = torch.linalg.svd(g, full_matrices=False)
    if not len(s) or float(s[0]) == 0.0:
        raise DiffexError("the gradspan method needs non-zero classifier gradients")
    q = int(min(max(RANKS), (s > tol * s[0]).sum()))
    return vh[:q].T


@register("gradspan", version=2)  # 2: the rank choice reaches every axis of the span
def gradspan_directions(ctx: DirectionContext, k: int) -> tuple[torch.Tensor, list[str]]:
    """Per target condition: per-step LDA within the gradient span, averaged over all, early and late edit steps."""
    axes = gradient_axes(ctx.grads)  # (D, q)
    return per_step_lda(ctx, k, "gradspan", axes, f" in the gradient span ({axes.shape[1]} axes)")
