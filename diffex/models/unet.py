"""The UNet diffex trains, and the noise schedule it writes: a spec, a builder, a schedule config.

Example
-------
>>> unet = build_unet(UNetSpec(block_out_channels=(16, 32), norm_num_groups=8), 2, 16)
>>> unet.config.sample_size, count_parameters(unet) > 0
(16, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffex.errors import DiffexError


@dataclass(frozen=True)
class UNetSpec:
    """Architecture of a diffex-trained UNet2DModel.

    ``attention_max_res`` is the largest feature-map side that gets self-attention; the mid block
    always has it. Keep it <= 16: attention at 32x32 costs ~10x on a CPU.
    """

    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)
    layers_per_block: int = 1
    attention_max_res: int = 8
    norm_num_groups: int = 16
    attention_head_dim: int = 32
    dropout: float = 0.0


def build_unet(spec: UNetSpec, in_channels: int, size: int):
    """A fresh ``UNet2DModel`` following ``spec``.

    Example
    -------
    >>> unet = build_unet(UNetSpec(block_out_channels=(16, 32), norm_num_groups=8), 2, 16)
    >>> unet.config.sample_size
    16
    """
    from diffusers import UNet2DModel

    n_levels = len(spec.block_out_channels)
    if size % 2 ** (n_levels - 1):
        raise DiffexError(f"image size {size} is not divisible by 2^{n_levels - 1} for {n_levels} UNet levels")
    if any(c % spec.norm_num_groups for c in spec.block_out_channels):
        raise DiffexError(f"block_out_channels {spec.block_out_channels} must be multiples of norm_num_groups {spec.norm_num_groups}")
    res = [size // 2**i for i in range(n_levels)]
    down = tuple("AttnDownBlock2D" if r <= spec.attention_max_res else "DownBlock2D" for r in res)
    up = tuple("AttnUpBlock2D" if r <= spec.attention_max_res else "UpBlock2D" for r in reversed(res))
    return UNet2DModel(
        sample_size=size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=tuple(spec.block_out_channels),
        layers_per_block=spec.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=spec.norm_num_groups,
        attention_head_dim=spec.attention_head_dim,
        dropout=spec.dropout,
    )


def default_scheduler_config(num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                             prediction_type: str = "epsilon") -> dict:
    """DDPM schedule config as diffusers writes it (no clipping)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=False
    )
    return dict(sched.config)


def count_parameters(module: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))
