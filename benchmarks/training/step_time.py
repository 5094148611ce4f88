"""Seconds per training step of the default diffusion recipe's UNet under each option, measured in one run.

    OMP_NUM_THREADS=2 python benchmarks/training/step_time.py fp32 bf16 fp32-cl bf16-cl bf16-compile

Batch 64 at 32 px, 2 channels, v-prediction-sized UNet (32, 64, 128); 3 warm-up steps (plus compilation
for ``-compile``), then the mean over ``--steps`` steps. ``bf16``: autocast (weights stay fp32); ``cl``:
channels-last memory format; ``compile``: ``torch.compile`` of the UNet (inductor).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from diffex.models.diffusion_train import DiffusionTrainConfig
from diffex.models.unet import build_unet


def step_time(mode: str, steps: int, threads: int) -> tuple[float, float]:
    """(seconds per step, seconds of warm-up incl. compilation) for one option string."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    unet = build_unet(DiffusionTrainConfig().unet, 2, 32)
    fmt = torch.channels_last if "cl" in mode else torch.contiguous_format
    unet = unet.to(memory_format=fmt)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    model = torch.compile(unet) if "compile" in mode else unet
    x = torch.randn(64, 2, 32, 32).contiguous(memory_format=fmt)
    t = torch.randint(0, 1000, (64,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in mode):
            pred = model(x, t).sample
        loss = F.mse_loss(pred.float(), x)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for _ in range(3):
        step()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps, warm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modes", nargs="+")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    for mode in a.modes:
        per_step, warm = step_time(mode, a.steps, a.threads)
        print(f"{mode:<14} {per_step:.3f} s/step  (warm-up {warm:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
