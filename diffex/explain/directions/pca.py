"""``pca``: principal components of h over the images' denoising trajectories (per-step centred)."""

from __future__ import annotations

import torch

from diffex.explain.directions.registry import DirectionContext, register


def principal_axes(h: torch.Tensor, k: int) -> tuple[torch.Tensor, list[float]]:
    """Top-k principal axes (k', D) of h (N, S, *h_shape), centred per step, over all images and steps (float64),
    and the share of the variance each explains."""
    hd = h.double()
    centred = (hd - hd.mean(0, keepdim=True)).flatten(2).flatten(0, 1)  # (N*S, D)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(k, vh.shape[0])
    return vh[:k], (s[:k] ** 2 / (s**2).sum()).tolist()


@register("pca")
def pca_directions(ctx: DirectionContext, k: int) -> tuple[torch.Tensor, list[str]]:
    """Top-k principal axes of h, centred per denoising step, over all images and steps."""
    axes, explained = principal_axes(ctx.h, k)
    return axes.float().view(len(axes), *ctx.h_shape), [f"pc{i + 1} ({e:.0%} var)" for i, e in enumerate(explained)]
