"""Diffusion model folders, training and its resume, DDIM inversion/rendering, the quality gate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY_OBJECTIVE, TINY_UNET

from diffex.errors import DiffexError
from diffex.models.diffusion import DiffusionInfo, DiffusionModel
from diffex.models.diffusion_train import DiffusionTrainConfig, train_diffusion
from diffex.models.quality import format_gate, largest_object_area
from diffex.models.sampler import (
    SamplerSpec,
    ddim_invert,
    ddim_render,
    ddim_step_stochastic,
    ddim_timesteps,
    psnr,
    sample,
)
from diffex.models.unet import UNetSpec, build_unet, default_scheduler_config


def _tiny_cfg(**kw):
    base = dict(size=16, steps=4, batch_size=4, checkpoint_every=2, unet=UNetSpec(**TINY_UNET),
                gate_samples=4, gate_sample_steps=3, roundtrip_steps=3, **TINY_OBJECTIVE)
    base.update(kw)
    return DiffusionTrainConfig(**base)


def test_folder_is_diffusers_layout(tiny_diffusion):
    from diffusers import UNet2DModel

    out, dm, gate = tiny_diffusion
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json", "diffex.json", "checksums.json"} <= names
    unet = UNet2DModel.from_pretrained(out)  # opens with plain diffusers
    assert unet.config.in_channels == 2 and unet.config.sample_size == 16
    meta = json.loads((out / "diffex.json").read_text())
    assert meta["channel_names"] == ["DNA", "Actin"] and meta["normalization"]["method"] == "percentile"
    assert meta["quality_gate"] == gate and meta["training"]["n_train"] + meta["training"]["n_heldout"] == 24


def test_save_load_identical_outputs(tiny_diffusion):
    out, dm, _ = tiny_diffusion
    again = DiffusionModel.load(out)
    x = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(again.eps(x, 500), dm.eps(x, 500), rtol=0, atol=0)
    assert again.info.normalization == dm.info.normalization


def test_resume_after_crash_equals_uninterrupted(cells, tiny_diffusion, tmp_path, monkeypatch):
    import diffex.models.diffusion_train as dt

    out_ref, dm_ref, _ = tiny_diffusion
    calls = {"n": 0}
    real = dt.augment

    def crash_on_third_step(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(dt, "augment", crash_on_third_step)
    out = tmp_path / "dm"
    with pytest.raises(KeyboardInterrupt):
        train_diffusion(cells, out, _tiny_cfg(), device="cpu", show_progress=False)
    assert not out.exists() and (tmp_path / "dm.training" / "state.pt").exists()
    monkeypatch.setattr(dt, "augment", real)
    dm, _ = train_diffusion(cells, out, _tiny_cfg(), device="cpu", show_progress=False)
    for (k, a), (_, b) in zip(dm.unet.state_dict().items(), dm_ref.unet.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_resume_with_other_settings_is_refused(cells, tiny_diffusion, tmp_path):
    out_ref, _, _ = tiny_diffusion
    with pytest.raises(DiffexError, match="pass --force"):
        train_diffusion(cells, out_ref, _tiny_cfg(), device="cpu", show_progress=False)
    out = tmp_path / "dm"
    train_diffusion(cells, out, _tiny_cfg(steps=2), device="cpu", show_progress=False)
    with pytest.raises(DiffexError, match=r"other settings \(lr\)"):
        train_diffusion(cells, out, _tiny_cfg(steps=2, lr=1e-2), device="cpu", show_progress=False, force=True)


def test_resume_on_other_images_is_refused(cells, tmp_path):
    """A finished run's state is not reused for other training images (a rerun after the data changed)."""
    from diffex.data.synthetic import generate_dataset

    other = tmp_path / "other"
    generate_dataset(other, n_per_condition=12, seed=99)
    out = tmp_path / "dm"
    train_diffusion(cells, out, _tiny_cfg(steps=2), device="cpu", show_progress=False)
    with pytest.raises(DiffexError, match=r"other settings \(training images\)"):
        train_diffusion(other, out, _tiny_cfg(steps=2), device="cpu", show_progress=False, force=True)


def test_foreign_pipeline_layout_loads(tmp_path):
    from diffusers import DDPMScheduler

    unet = build_unet(UNetSpec(**TINY_UNET), 1, 8)
    unet.save_pretrained(tmp_path / "unet")
    DDPMScheduler(num_train_timesteps=100).save_pretrained(tmp_path / "scheduler")
    with pytest.raises(DiffexError, match=r"no normalization.*--diffusion-normalization"):
        DiffusionModel.load(tmp_path)
    (tmp_path / "diffex-normalization.json").write_text('{"identity": true}')
    dm = DiffusionModel.load(tmp_path)
    assert dm.info.normalization is None and dm.num_train_timesteps == 100
    assert dm.info.normalization_source.startswith("identity (declared in sidecar")
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(dm.from_model_space(dm.to_model_space(x)), x)


def test_load_errors(tmp_path):
    with pytest.raises(DiffexError, match="not a local folder"):
        DiffusionModel.load("google/ddpm-cifar10-32")
    build_unet(UNetSpec(**TINY_UNET), 1, 8).save_pretrained(tmp_path)
    with pytest.raises(DiffexError, match="no scheduler_config.json"):
        DiffusionModel.load(tmp_path)


def test_build_unet_validates():
    with pytest.raises(DiffexError, match="not divisible"):
        build_unet(UNetSpec(block_out_channels=(8, 16, 32), norm_num_groups=8), 1, 18)


def test_ddim_timesteps_trailing():
    assert ddim_timesteps(1000, 4).tolist() == [249, 499, 749, 999]
    assert ddim_timesteps(10, 10).tolist() == list(range(10))


class _OracleUNet(torch.nn.Module):
    """The exact noise predictor for data concentrated on one image x*: eps = (x_t - sqrt(a) x*) / sqrt(1 - a)."""

    def __init__(self, x_star, acp):
        super().__init__()
        self.x_star, self.acp = x_star, acp
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        a = float(self.acp[int(t)])
        out = (x - math.sqrt(a) * self.x_star) / math.sqrt(1 - a)
        return type("Out", (), {"sample": out})()


def test_ddim_round_trip_is_exact_for_the_exact_denoiser():
    x_star = torch.rand(1, 2, 8, 8) * 2 - 1
    sched = default_scheduler_config()
    probe = DiffusionModel(build_unet(UNetSpec(**TINY_UNET), 2, 8), sched, DiffusionInfo(2, 8))
    dm = DiffusionModel(_OracleUNet(x_star, probe.alphas_cumprod), sched, DiffusionInfo(2, 8))
    xt = ddim_invert(dm, x_star, SamplerSpec(steps=10))
    torch.testing.assert_close(ddim_render(dm, xt, SamplerSpec(steps=10)), x_star, rtol=1e-4, atol=1e-4)
    assert float(psnr(ddim_render(dm, xt, SamplerSpec(steps=10)), x_star)[0]) > 60


class _GaussianOracleUNet(torch.nn.Module):
    """The exact noise predictor for pixels drawn i.i.d. from N(0, s^2): eps = sqrt(1 - a) x_t / (a s^2 + 1 - a)."""

    def __init__(self, s, acp):
        super().__init__()
        self.s, self.acp = s, acp
        self.w = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, t):
        a = float(self.acp[int(t)])
        return type("Out", (), {"sample": math.sqrt(1 - a) * x / (a * self.s**2 + 1 - a)})()


def test_stochastic_step_matches_diffusers_ddim_with_eta():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False, prediction_type="epsilon")
    sched.set_timesteps(10)  # leading spacing: the step from t = 500 goes to t = 400
    g = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    acp = sched.alphas_cumprod.to(torch.float64)
    for eta in (0.0, 0.5, 1.0):
        ref = sched.step(eps, 500, x, eta=eta, variance_noise=z).prev_sample
        ours = ddim_step_stochastic(x, eps, float(acp[500]), float(acp[400]), eta, z)
        torch.testing.assert_close(ours, ref.to(torch.float64), rtol=1e-5, atol=1e-6)
        # the last step, to the clean image (diffusers: final_alpha_cumprod = 1)
        last = sched.step(eps, 0, x, eta=eta, variance_noise=z).prev_sample
        torch.testing.assert_close(ddim_step_stochastic(x, eps, float(acp[0]), 1.0, eta, z), last.to(torch.float64), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="eta"):
        ddim_step_stochastic(x, eps, 0.5, 0.8, 1.5, z)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_samples_of_the_exact_gaussian_denoiser_have_the_data_spread(eta):
    sched = default_scheduler_config(beta_schedule="squaredcos_cap_v2")
    probe = DiffusionModel(build_unet(UNetSpec(**TINY_UNET), 1, 8), sched, DiffusionInfo(1, 8))
    dm = DiffusionModel(_GaussianOracleUNet(0.5, probe.alphas_cumprod), sched, DiffusionInfo(1, 8))
    # every timestep: both samplers are exact for the exact denoiser (at 200 steps eta = 1 gives sd 0.484)
    x = sample(dm, 128, steps=1000, seed=0, eta=eta)  # (128, 1, 8, 8): 8,192 pixels, sd of the sd ~0.004
    assert abs(float(x.std()) - 0.5) < 0.012
    assert abs(float(x.mean())) < 0.015
    other = sample(dm, 128, steps=1000, seed=0, eta=eta)
    assert torch.equal(x, other)  # seeded: the same samples again
    # the ODE carries the starting noise to the sample (here a pure rescaling, r = 1); fresh noise at every step forgets it
    start = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).double()  # sample()'s first draw
    r = float(torch.corrcoef(torch.stack([x.flatten(), start.flatten()]))[0, 1])
    assert r > 0.999 if eta == 0 else abs(r) < 0.05


def test_gate_is_recorded_and_printed(tiny_diffusion):
    _, _, gate = tiny_diffusion
    assert {r["measure"] for r in gate["statistics"]} == {"mean_intensity", "object_area"}
    assert all({"sample_median", "data_median", "rel_sd_diff"} <= set(r) for r in gate["statistics"])
    assert gate["roundtrip"]["n_images"] == 2 and gate["n_samples"] == 4
    text = format_gate(gate)
    assert "DDIM round trip" in text and ("PASSED" in text or "FAILED" in text)


def test_largest_object_area():
    img = np.zeros((20, 20))
    img[2:6, 2:6] = 1.0  # 16 px
    img[10:18, 10:18] = 1.0  # 64 px
    assert largest_object_area(img) == 64
    assert largest_object_area(np.ones((4, 4))) == 0


def test_bf16_precision_is_close_to_fp32_and_returns_float32(tiny_diffusion):
    fp32 = DiffusionModel.load(tiny_diffusion[0])
    bf16 = DiffusionModel.load(tiny_diffusion[0], precision="bf16")
    torch.manual_seed(0)
    x = torch.randn(3, 2, 16, 16)
    with torch.no_grad():
        a, b = fp32.eps(x, 500), bf16.eps(x, 500)
    assert b.dtype == torch.float32 and not torch.equal(a, b)  # bf16 really ran
    assert float((a - b).norm() / a.norm()) < 0.03
    with torch.no_grad():
        xt = ddim_invert(bf16, x.clamp(-1, 1), SamplerSpec(steps=3))
        assert torch.isfinite(ddim_render(bf16, xt, SamplerSpec(steps=3))).all()
    with pytest.raises(DiffexError, match="precision must be one of"):
        DiffusionModel.load(tiny_diffusion[0], precision="fp16")


def test_resume_rules_for_the_cosine_schedule_and_precision(cells, tmp_path):
    """Under the cosine schedule the total step count shapes the curve, so a changed --steps is refused; the
    precision is compared as used (fp32 vs bf16), not as asked ("auto")."""
    out = tmp_path / "dm"
    train_diffusion(cells, out, _tiny_cfg(steps=2, lr_schedule="cosine"), device="cpu", show_progress=False)
    with pytest.raises(DiffexError, match=r"other settings \(steps\)"):
        train_diffusion(cells, out, _tiny_cfg(steps=4, lr_schedule="cosine"), device="cpu", show_progress=False, force=True)
    out2 = tmp_path / "dm2"
    const = dict(lr_schedule="constant")  # under the constant schedule a finished run may be trained further
    train_diffusion(cells, out2, _tiny_cfg(steps=2, precision="fp32", **const), device="cpu", show_progress=False)
    with pytest.raises(DiffexError, match=r"other settings \(precision\)"):
        train_diffusion(cells, out2, _tiny_cfg(steps=4, precision="bf16", **const), device="cpu", show_progress=False, force=True)
    dm, _ = train_diffusion(cells, out2, _tiny_cfg(steps=4, precision="fp32", **const), device="cpu", show_progress=False, force=True)
    assert dm.info.training["precision"] == "fp32"


def test_gate_settings_must_fit_the_schedule():
    with pytest.raises(DiffexError, match="roundtrip_t_end"):
        _tiny_cfg(roundtrip_t_end=1200)
    with pytest.raises(DiffexError, match="roundtrip_steps"):
        _tiny_cfg(roundtrip_steps=50, roundtrip_t_end=20)


def test_init_from_starts_at_the_given_weights(cells, tiny_diffusion, tmp_path):
    """init_from: zero steps of learning rate leave the weights exactly where the given model's are; a changed model is not resumed."""
    from diffex.models.diffusion_init import init_digest

    out_ref, dm_ref, _ = tiny_diffusion
    out = tmp_path / "ft"
    dm, _ = train_diffusion(cells, out, _tiny_cfg(steps=2, lr=0.0, init_from=str(out_ref)), device="cpu", show_progress=False)
    for (k, a), (_, b) in zip(dm.unet.state_dict().items(), dm_ref.unet.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert dm.info.normalization == dm_ref.info.normalization
    fresh, _ = train_diffusion(cells, tmp_path / "fresh", _tiny_cfg(steps=2, lr=0.0), device="cpu", show_progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.unet.state_dict().values(), dm_ref.unet.state_dict().values()))
    # the state remembers the starting weights by content: other weights at that path are refused
    other = tmp_path / "other"
    train_diffusion(cells, other, _tiny_cfg(steps=1), device="cpu", show_progress=False)
    assert init_digest(other) != init_digest(out_ref)
    with pytest.raises(DiffexError, match=r"other settings \(init_from\)"):
        train_diffusion(cells, out, _tiny_cfg(steps=2, lr=0.0, init_from=str(other)), device="cpu", show_progress=False, force=True)


def test_init_rescale_starts_from_a_model_of_another_size(cells, tiny_diffusion, tmp_path):
    """init_rescale: the 16 px model's weights start a 12 px run unchanged (zero learning rate); without it, an error."""
    out_ref, dm_ref, _ = tiny_diffusion
    with pytest.raises(DiffexError, match=r"at 16 px; this run trains 2 at 12 px \(init_rescale"):
        train_diffusion(cells, tmp_path / "x", _tiny_cfg(size=12, steps=1, init_from=str(out_ref)), device="cpu", show_progress=False)
    dm, _ = train_diffusion(cells, tmp_path / "y", _tiny_cfg(size=12, steps=2, lr=0.0, init_from=str(out_ref), init_rescale=True),
                            device="cpu", show_progress=False)
    assert dm.info.image_size == 12
    for (k, a), (_, b) in zip(dm.unet.state_dict().items(), dm_ref.unet.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    # at 24 px no level is <= attention_max_res 8 (24, 12), so the 16 px model's attention at 8 px has nowhere to go
    with pytest.raises(DiffexError, match="another UNet architecture.*attention_max_res can place self-attention elsewhere"):
        train_diffusion(cells, tmp_path / "z", _tiny_cfg(size=24, steps=1, init_from=str(out_ref), init_rescale=True),
                        device="cpu", show_progress=False)


def test_init_rescale_lets_only_the_spacing_differ(tiny_diffusion, tmp_path):
    """A CT model at 0.8 mm starts a 0.4 mm run under init_rescale; other windows or another modality never do."""
    from dataclasses import replace

    from diffex.models.diffusion_init import initial_model

    _, dm_ref, _ = tiny_diffusion
    lung = [{"name": "lung", "low": -1350.0, "high": 150.0}]
    ct = {"modality": "ct", "spacing_mm": 0.8, "windows": lung}
    folder = DiffusionModel(dm_ref.unet, dm_ref.scheduler_config, replace(dm_ref.info, ct=ct)).save(tmp_path / "ct")
    unet = build_unet(UNetSpec(**TINY_UNET), 2, 12)  # 12 px: attention at the 6 px level, as at 16 px
    finer = {**ct, "spacing_mm": 0.4}
    assert initial_model(folder, unet, 2, 12, finer, rescale=True).info.ct == ct
    with pytest.raises(DiffexError, match="another geometry"):
        initial_model(folder, unet, 2, 16, finer)
    with pytest.raises(DiffexError, match="another modality or windows"):
        initial_model(folder, unet, 2, 12, {**finer, "windows": [{"name": "mediastinum", "low": -125.0, "high": 225.0}]}, rescale=True)
    with pytest.raises(DiffexError, match="another modality or windows"):
        initial_model(folder, unet, 2, 12, None, rescale=True)


def test_init_from_another_architecture_is_an_error(cells, tiny_diffusion, tmp_path):
    out_ref, _, _ = tiny_diffusion
    wide = _tiny_cfg(steps=1, init_from=str(out_ref), unet=UNetSpec(**{**TINY_UNET, "block_out_channels": (16, 48)}))
    with pytest.raises(DiffexError, match="another UNet architecture"):
        train_diffusion(cells, tmp_path / "x", wide, device="cpu", show_progress=False)
    with pytest.raises(DiffexError, match="not a diffusers UNet2DModel folder"):
        train_diffusion(cells, tmp_path / "y", _tiny_cfg(steps=1, init_from=str(tmp_path)), device="cpu", show_progress=False)
