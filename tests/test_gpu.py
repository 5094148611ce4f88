"""GPU paths (bf16 autocast training, device placement). Skipped without CUDA."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_UNET

from diffex.models.diffusion_train import DiffusionTrainConfig, train_diffusion
from diffex.models.unet import UNetSpec


@pytest.mark.gpu
def test_diffusion_trains_on_gpu_with_bf16(cells, tmp_path):
    cfg = DiffusionTrainConfig(size=16, steps=4, batch_size=4, unet=UNetSpec(**TINY_UNET),
                               gate_samples=4, gate_sample_steps=3, roundtrip_steps=3)
    dm, gate = train_diffusion(cells, tmp_path / "dm", cfg, device="cuda", show_progress=False)
    assert dm.info.training["device"].startswith("cuda")
    assert all(torch.isfinite(p).all() for p in dm.unet.parameters())
    assert gate["roundtrip"]["n_images"] > 0


@pytest.mark.gpu
def test_explain_on_gpu_in_bf16(tiny_classifier, tiny_diffusion, cells, tmp_path):
    from dataclasses import replace

    from test_explain import TINY

    from diffex.explain import explain

    res = explain(tiny_classifier[0], cells, tmp_path / "exp", tiny_diffusion[0], replace(TINY, precision="bf16"),
                  device="cuda", show_progress=False)
    assert res.results.config["precision"] == "bf16"
    assert math.isfinite(res.results.inversion.psnr_db_mean)
    assert (res.out / "report.html").exists()


@pytest.mark.gpu
def test_speed_benchmark_on_gpu_in_bf16(tiny_classifier, tiny_diffusion, cells):
    from test_benchmarks import _load

    from diffex.explain import ExplainConfig

    cfg = ExplainConfig(steps=3, t_end=999, screen_top=2, batch_size=64, precision="bf16", strength=1.0, strength_unit="h_norm")
    res = _load("speed").run(tiny_classifier[0], tiny_diffusion[0], cells, n=6, k=3, m=2, device="cuda", cfg=cfg)
    assert not res["device"].startswith("cpu") and res["precision"] == "bf16"
    assert res["reference"]["unet_image_evaluations"] > 0 and res["diffex"]["unet_image_evaluations"] > 0
