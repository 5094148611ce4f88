"""Deterministic DDIM (eta = 0): inversion of real images and rendering from x_T.

Inversion and rendering share one timestep grid (trailing spacing, ``steps`` steps ending at
t = T - 1), so that rendering an inverted x_T reproduces the image up to the discretization error
of the ODE. Nothing is clipped.

Example
-------
>>> import torch
>>> from diffex.diffusion import DiffusionModel, build_unet, UNetSpec, default_scheduler_config, DiffusionInfo
>>> unet = build_unet(UNetSpec(block_out_channels=(16, 32), norm_num_groups=8), 1, 8)
>>> dm = DiffusionModel(unet, default_scheduler_config(), DiffusionInfo(in_channels=1, image_size=8))
>>> x0 = torch.rand(2, 1, 8, 8) * 2 - 1
>>> xt = ddim_invert(dm, x0, steps=5)
>>> ddim_render(dm, xt, steps=5).shape
torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

import math

import numpy as np
import torch

DEFAULT_STEPS = 20


def ddim_timesteps(num_train_timesteps: int, steps: int) -> np.ndarray:
    """Ascending DDIM timesteps with trailing spacing, e.g. T=1000, steps=4 -> [249, 499, 749, 999]."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be between 1 and {num_train_timesteps}, got {steps}")
    return np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / steps))[::-1].astype(np.int64) - 1


def _alpha(dm, t: int) -> float:
    """Cumulative alpha at t; t = -1 means the clean image (alpha = 1)."""
    return 1.0 if t < 0 else float(dm.alphas_cumprod[t])


def _ddim_step(x: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float) -> torch.Tensor:
    """Move x (B, C, H, W) from noise level a_from to a_to along the DDIM ODE given eps."""
    x0 = (x - math.sqrt(1 - a_from) * eps) / math.sqrt(a_from)
    return math.sqrt(a_to) * x0 + math.sqrt(1 - a_to) * eps


def _eps_batched(dm, x: torch.Tensor, t: int, batch_size: int | None) -> torch.Tensor:
    if batch_size is None or x.shape[0] <= batch_size:
        return dm.eps(x, t)
    return torch.cat([dm.eps(chunk, t) for chunk in x.split(batch_size)])


@torch.no_grad()
def ddim_invert(dm, x0: torch.Tensor, steps: int = DEFAULT_STEPS, batch_size: int | None = None) -> torch.Tensor:
    """Map clean images x0 (B, C, H, W) in model space to x_T by deterministic DDIM inversion."""
    ts = ddim_timesteps(dm.num_train_timesteps, steps)
    x = x0.to(dm.device, torch.float32)
    prev = -1
    for t in ts:
        eps = _eps_batched(dm, x, int(t), batch_size)
        x = _ddim_step(x, eps, _alpha(dm, prev), _alpha(dm, int(t)))
        prev = int(t)
    return x


@torch.no_grad()
def ddim_render(dm, xt: torch.Tensor, steps: int = DEFAULT_STEPS, batch_size: int | None = None) -> torch.Tensor:
    """Denoise x_T (B, C, H, W) to clean images in model space by deterministic DDIM."""
    ts = ddim_timesteps(dm.num_train_timesteps, steps)
    x = xt.to(dm.device, torch.float32)
    for i in range(len(ts) - 1, -1, -1):
        t, prev = int(ts[i]), int(ts[i - 1]) if i > 0 else -1
        eps = _eps_batched(dm, x, t, batch_size)
        x = _ddim_step(x, eps, _alpha(dm, t), _alpha(dm, prev))
    return x


@torch.no_grad()
def sample(dm, n: int, steps: int = 50, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """Draw n unconditional samples (n, C, H, W) in model space by DDIM from Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, dm.info.in_channels, dm.info.image_size, dm.info.image_size)
    noise = torch.randn(shape, generator=g)
    return torch.cat([ddim_render(dm, chunk, steps) for chunk in noise.split(batch_size)])


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB between (B, ...) tensors; ``data_range`` 2 for model space [-1, 1]."""
    mse = (a - b).float().pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(data_range**2 / mse)
