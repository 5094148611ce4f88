"""``contrastive``: the DiffEx-style baseline. K directions trained with the LatentCLR loss, so that one
direction changes the UNet's output in the same way on every image and differently from the others."""

from __future__ import annotations

import torch

from diffex.errors import DiffexError
from diffex.explain.directions.registry import (
    DirectionContext,
    eps_with,
    register,
    unit,
)
from diffex.models.hooks import frozen


@register("contrastive")
def contrastive_directions(ctx: DirectionContext, k: int, temperature: float = 0.5) -> tuple[torch.Tensor, list[str]]:
    """LatentCLR-style directions (the DiffEx baseline), trained on ε differences at one timestep.

    For probe image i and direction d_j the feature is f_ij = ε(x_t,i; h + α d_j) − ε(x_t,i; h);
    the NT-Xent loss pulls f_ij together across images for the same j and apart across j.
    """
    if k < 2:
        raise DiffexError("the contrastive method needs k >= 2 directions")
    dm = ctx.pair.dm
    dev = dm.device
    t = int(ctx.timesteps[len(ctx.timesteps) // 2])
    x = ctx.noised(ctx.probe_batch(), t).to(dev)  # (B, C, H, W)
    b = x.shape[0]
    g = torch.Generator().manual_seed(ctx.seed)
    raw = torch.randn((k, *ctx.h_shape), generator=g).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([raw], lr=0.05)
    alpha = 1.0 * ctx.h_scale
    with frozen(dm.unet):
        with torch.no_grad():
            base = dm.eps(x, t)  # (B, C, H, W)
        xx = x.repeat(k, 1, 1, 1)  # (k*B, C, H, W), direction-major
        labels = torch.arange(k, device=dev).repeat_interleave(b)  # (k*B,)
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(k * b, dtype=torch.bool, device=dev)
        for _ in range(ctx.contrastive_iterations):
            d = unit(raw)
            delta = (alpha * d).repeat_interleave(b, dim=0)  # (k*B, *h)
            with torch.enable_grad():
                f = (eps_with(dm, xx, t, delta) - base.repeat(k, 1, 1, 1)).flatten(1)
                f = torch.nn.functional.normalize(f, dim=1)
                sim = (f @ f.T / temperature).masked_fill(eye, -1e9)  # (k*B, k*B)
                pos = torch.logsumexp(sim.masked_fill(~same | eye, -1e9), dim=1)
                loss = (torch.logsumexp(sim, dim=1) - pos).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return unit(raw.detach()).cpu(), [f"clr{i + 1}" for i in range(k)]
