"""The diffusion training objective and schedules: min-SNR loss weights, the prediction target,
EMA and learning-rate schedules, and which precision a run uses.

Example
-------
>>> training_precision("fp32", torch.device("cpu"))
'fp32'
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


def loss_weights(acp_t: torch.Tensor, prediction_type: str, weighting: str, gamma: float) -> torch.Tensor:
    """Per-sample loss weights from alpha-bar at the sampled timesteps, shape (B,).

    Min-SNR weighting (Hang et al. 2023) with SNR = acp / (1 - acp): ``min(SNR, gamma) / SNR`` for
    epsilon targets and ``min(SNR, gamma) / (SNR + 1)`` for v targets; ones without weighting.

    Example
    -------
    >>> acp = torch.tensor([0.5, 10 / 11])          # SNR 1 and 10
    >>> [round(w, 4) for w in loss_weights(acp, "epsilon", "min_snr", 5.0).tolist()]
    [1.0, 0.5]
    >>> [round(w, 4) for w in loss_weights(acp, "v_prediction", "min_snr", 5.0).tolist()]
    [0.5, 0.4545]
    """
    if weighting == "none":
        return torch.ones_like(acp_t)
    snr = acp_t / (1 - acp_t)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1)


def training_target(x0: torch.Tensor, noise: torch.Tensor, acp_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """What the UNet learns to predict at x_t = sqrt(a) x0 + sqrt(1 - a) noise: the noise, or v = sqrt(a) noise - sqrt(1 - a) x0."""
    if prediction_type == "epsilon":
        return noise
    a = acp_t[:, None, None, None]
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def _ema_decay(step: int, max_decay: float) -> float:
    """EMA warm-up: averages over ~step/10 recent steps early, ``max_decay`` later."""
    return min(max_decay, (1 + step) / (10 + step))


def _lr_factor(step: int, warmup: int, schedule: str = "constant", total: int = 1, min_factor: float = 0.1) -> float:
    """Linear learning-rate warm-up over ``warmup`` steps, then 1 (constant) or a half cosine down to ``min_factor`` at ``total``.

    >>> [round(_lr_factor(s, 10, "cosine", 110, 0.1), 3) for s in (0, 9, 59, 109)]
    [0.1, 1.0, 0.55, 0.1]
    """
    if step + 1 < warmup or schedule == "constant":
        return min(1.0, (step + 1) / max(1, warmup))
    frac = min(1.0, (step + 1 - warmup) / max(1, total - warmup))
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * frac))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX-BF16 or AVX512-BF16 in /proc/cpuinfo; False elsewhere)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def training_precision(precision: str, dev: torch.device) -> str:
    """The precision a run uses: ``auto`` means bf16 autocast on a GPU or a CPU with native bf16, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if dev.type == "cuda" or (dev.type == "cpu" and cpu_has_native_bf16()) else "fp32"
