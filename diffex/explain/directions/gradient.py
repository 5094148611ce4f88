"""``gradient``: the mean classifier gradient towards each target condition, then the top right
singular vectors of the stacked per-image gradients."""

from __future__ import annotations

import numpy as np
import torch

from diffex.explain.directions.registry import DirectionContext, register


@register("gradient")
def gradient_directions(ctx: DirectionContext, k: int) -> tuple[torch.Tensor, list[str]]:
    """Mean classifier gradient towards each target condition, then top singular vectors of all g_i."""
    g = ctx.grads.double().flatten(1)  # (M, D)
    vecs, names = [], []
    for t in np.unique(ctx.grad_targets):
        vecs.append(g[torch.as_tensor(ctx.grad_targets == t)].mean(0))
        names.append(f"mean towards {ctx.class_names[int(t)]}")
    if len(np.unique(ctx.grad_targets)) == 2 and len(vecs) == 2:
        # Two conditions: towards A is about minus towards B; keep one signed direction.
        vecs, names = [vecs[1] - vecs[0]], [f"mean towards {ctx.class_names[int(np.unique(ctx.grad_targets)[1])]}"]
    _, _, vh = torch.linalg.svd(g, full_matrices=False)
    n_sv = max(0, k - len(vecs))
    for i in range(min(n_sv, vh.shape[0])):
        v = vh[i]
        v = v if float((g @ v).mean()) >= 0 else -v
        vecs.append(v)
        names.append(f"sv{i + 1}")
    return torch.stack(vecs[:k]).float().view(-1, *ctx.h_shape), names[:k]
