"""``jacobian``: top right singular vectors of ∂ε/∂h (subspace iteration; J·v by central differences,
Jᵀ·u by autograd) at a few timesteps of the edit interval."""

from __future__ import annotations

import numpy as np
import torch

from diffex.explain.directions.registry import (
    DirectionContext,
    eps_with,
    register,
    unit,
)
from diffex.models.hooks import frozen


@register("jacobian")
def jacobian_directions(ctx: DirectionContext, k: int, iterations: int = 3) -> tuple[torch.Tensor, list[str]]:
    """Top-k right singular vectors of J = ∂ε/∂h, stacked over probe images and edit timesteps."""
    dm = ctx.pair.dm
    dev = dm.device
    x0 = ctx.probe_batch().to(dev)  # (B, C, H, W)
    ts = [int(t) for t in ctx.timesteps[np.linspace(0, len(ctx.timesteps) - 1, min(2, len(ctx.timesteps))).round().astype(int)]]
    xs = {t: ctx.noised(x0.cpu(), t).to(dev) for t in ts}
    g = torch.Generator().manual_seed(ctx.seed)
    v = unit(torch.randn((k, *ctx.h_shape), generator=g)).to(dev)  # (k, *h)
    fd = 0.05 * ctx.h_scale

    def jtj(vec: torch.Tensor) -> torch.Tensor:  # (*h) -> (*h)
        acc = torch.zeros_like(vec)
        for t, x in xs.items():
            with torch.no_grad():
                jv = (eps_with(dm, x, t, fd * vec) - eps_with(dm, x, t, -fd * vec)) / (2 * fd)  # (B, C, H, W)
            delta = torch.zeros((1, *ctx.h_shape), device=dev, requires_grad=True)
            with torch.enable_grad():
                y = eps_with(dm, x, t, delta)
                (gr,) = torch.autograd.grad((y * jv).sum(), delta)
            acc += gr[0]
        return acc

    with frozen(dm.unet):
        for _ in range(iterations):
            w = torch.stack([jtj(vec) for vec in v])  # (k, *h)
            q, _ = torch.linalg.qr(w.flatten(1).double().T)  # (D, k)
            v = q.T.float().view(k, *ctx.h_shape)
        sv = torch.stack([jtj(vec) for vec in v]).flatten(1).mul(v.flatten(1)).sum(1)  # Rayleigh quotients
    order = torch.argsort(-sv)
    return v[order].cpu(), [f"jac{i + 1}" for i in range(k)]
