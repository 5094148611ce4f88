"""``pca``: principal components of h over the images' denoising trajectories (per-step centred)."""

from __future__ import annotations

import torch

from diffex.explain.directions.registry import DirectionContext, register


@register("pca")
def pca_directions(ctx: DirectionContext, k: int) -> tuple[torch.Tensor, list[str]]:
    """Top-k principal axes of h, centred per denoising step, over all images and steps."""
    h = ctx.h.double()  # (N, S, *h)
    centred = (h - h.mean(0, keepdim=True)).flatten(2).flatten(0, 1)  # (N*S, D)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(k, vh.shape[0])
    explained = (s[:k] ** 2 / (s**2).sum()).tolist()
    return vh[:k].float().view(k, *ctx.h_shape), [f"pc{i + 1} ({e:.0%} var)" for i, e in enumerate(explained)]
