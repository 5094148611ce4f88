"""GPU paths (bf16 autocast training, device placement). Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from diffex.diffusion import UNetSpec
from diffex.diffusion_train import DiffusionTrainConfig, train_diffusion

from conftest import TINY_UNET


@pytest.mark.gpu
def test_diffusion_trains_on_gpu_with_bf16(cells, tmp_path):
    cfg = DiffusionTrainConfig(size=16, steps=4, batch_size=4, unet=UNetSpec(**TINY_UNET),
                               gate_samples=4, gate_sample_steps=3, roundtrip_steps=3)
    dm, gate = train_diffusion(cells, tmp_path / "dm", cfg, device="cuda", show_progress=False)
    assert dm.info.training["device"].startswith("cuda")
    assert all(torch.isfinite(p).all() for p in dm.unet.parameters())
    assert gate["roundtrip"]["n_images"] > 0
