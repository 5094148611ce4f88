"""Training objectives: epsilon and v targets, min-SNR weights, the cosine schedule; a v-prediction model
trained by diffex inverts and renders like an epsilon one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_UNET

from diffex.errors import DiffexError
from diffex.models.diffusion import DiffusionModel
from diffex.models.diffusion_train import DiffusionTrainConfig, _lr_factor, loss_weights, train_diffusion, training_target
from diffex.models.unet import UNetSpec, default_scheduler_config


def test_min_snr_weights_match_the_formula():
    acp = torch.tensor([0.999, 0.9, 0.5, 0.1, 0.001], dtype=torch.float64)
    snr = acp / (1 - acp)
    for gamma in (1.0, 5.0):
        expected_eps = [min(s, gamma) / s for s in snr.tolist()]
        expected_v = [min(s, gamma) / (s + 1) for s in snr.tolist()]
        np.testing.assert_allclose(loss_weights(acp, "epsilon", "min_snr", gamma).numpy(), expected_eps, rtol=1e-12)
        np.testing.assert_allclose(loss_weights(acp, "v_prediction", "min_snr", gamma).numpy(), expected_v, rtol=1e-12)
    assert loss_weights(acp, "v_prediction", "none", 5.0).tolist() == [1.0] * 5
    # the clip acts only where SNR > gamma: there the epsilon weight is below 1
    assert loss_weights(acp, "epsilon", "min_snr", 5.0)[:2].lt(1).all() and loss_weights(acp, "epsilon", "min_snr", 5.0)[2:].eq(1).all()


def test_v_target_and_the_adapters_conversion_agree():
    """The v the trainer teaches, fed to the adapter's v -> epsilon conversion, gives back the noise."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 2, 8, 8, generator=g), torch.randn(4, 2, 8, 8, generator=g)
    acp = torch.tensor([0.9, 0.5, 0.2, 0.01])
    a = acp[:, None, None, None]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    v = training_target(x0, noise, acp, "v_prediction")
    eps = a.sqrt() * v + (1 - a).sqrt() * xt  # the conversion the adapter applies (docs/formats.md)
    torch.testing.assert_close(eps, noise, atol=1e-5, rtol=1e-5)
    assert training_target(x0, noise, acp, "epsilon") is noise


def test_cosine_schedule_and_v_prediction_in_the_scheduler_config():
    cfg = default_scheduler_config(1000, "squaredcos_cap_v2", "v_prediction")
    assert cfg["prediction_type"] == "v_prediction" and cfg["beta_schedule"] == "squaredcos_cap_v2"


def test_bad_objective_settings():
    with pytest.raises(DiffexError, match="prediction_type must be one of"):
        DiffusionTrainConfig(prediction_type="sample")
    with pytest.raises(DiffexError, match="loss_weighting must be one of"):
        DiffusionTrainConfig(loss_weighting="p2")
    with pytest.raises(DiffexError, match="beta_schedule must be one of"):
        DiffusionTrainConfig(beta_schedule="cosine")
    with pytest.raises(DiffexError, match="lr_schedule must be one of"):
        DiffusionTrainConfig(lr_schedule="step")
    with pytest.raises(DiffexError, match="lr_min_factor"):
        DiffusionTrainConfig(lr_min_factor=1.5)


def test_cosine_learning_rate_matches_torchs_own_schedule():
    """After warm-up the factor follows torch's CosineAnnealingLR (eta_min = lr * min_factor) step by step;
    the constant schedule stays at 1."""
    warmup, total, lr, floor = 20, 220, 1e-3, 0.1
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=lr * floor)
    for step in range(warmup - 1, total):
        assert _lr_factor(step, warmup, "cosine", total, floor) * lr == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), step
        opt.step()
        ref.step()
    assert _lr_factor(5, warmup, "cosine", total, floor) == pytest.approx(6 / 20)
    assert _lr_factor(total + 50, warmup, "cosine", total, floor) == pytest.approx(floor)
    assert _lr_factor(150, warmup, "constant", total, floor) == 1.0


def test_v_prediction_model_trains_saves_and_round_trips(cells, tmp_path):
    cfg = DiffusionTrainConfig(size=16, steps=6, batch_size=4, checkpoint_every=3, unet=UNetSpec(**TINY_UNET),
                               gate_samples=4, gate_sample_steps=3, roundtrip_steps=3, prediction_type="v_prediction",
                               beta_schedule="squaredcos_cap_v2", loss_weighting="min_snr")
    dm, gate = train_diffusion(cells, tmp_path / "dm", cfg, device="cpu", show_progress=False)
    loaded = DiffusionModel.load(tmp_path / "dm")
    assert loaded.prediction_type == "v_prediction"
    assert loaded.scheduler_config["beta_schedule"] == "squaredcos_cap_v2"
    assert np.isfinite(gate["roundtrip"]["psnr_mean_db"]) and gate["roundtrip"]["n_images"] > 0
    x = torch.rand(2, 2, 16, 16) * 2 - 1
    from diffex.models.sampler import SamplerSpec, ddim_invert, ddim_render

    spec = SamplerSpec(steps=10, t_end=999)
    xt = ddim_invert(loaded, x, spec=spec)
    back = ddim_render(loaded, xt, spec=spec)
    assert torch.isfinite(back).all() and back.shape == x.shape
