"""Gradients through the DDIM sampler against float64 central finite differences.

Both samplers (symmetric and asymmetric) over 10 and 12 steps, with a per-image Δh (B, *h) and a
shared Δh (1, *h) broadcast over the batch, at Δh = 0 and at a non-zero Δh. The loss is a fixed
random linear functional of the rendered images, so that the only thing differentiated is the
sampler itself; the classifier gradient is checked separately.
"""

from __future__ import annotations

import pytest
import torch

from diffex.models.diffusion import DiffusionInfo, DiffusionModel
from diffex.models.hooks import h_shape
from diffex.models.sampler import SamplerSpec, ddim_render, ddim_render_differentiable
from diffex.models.unet import UNetSpec, build_unet, default_scheduler_config


@pytest.fixture(scope="module")
def dm64():
    """A tiny two-level UNet in float64 with randomized weights (every path matters)."""
    torch.manual_seed(0)
    unet = build_unet(UNetSpec(block_out_channels=(8, 16), norm_num_groups=4, attention_max_res=4, attention_head_dim=8), 1, 8)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return DiffusionModel(unet.double(), default_scheduler_config(), DiffusionInfo(1, 8))


def _loss(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x * w).sum()


@pytest.mark.parametrize("mode", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("steps,t_end,t_edit", [(10, 699, 0), (12, 999, 300)])
@pytest.mark.parametrize("at_zero", [True, False])
def test_gradient_equals_float64_finite_differences(dm64, mode, per_image, steps, t_end, t_edit, at_zero):
    g = torch.Generator().manual_seed(steps + 7 * per_image)
    spec = SamplerSpec(steps=steps, t_end=t_end, t_edit=t_edit, mode=mode)
    xt = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    w = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    shape = (3 if per_image else 1, *h_shape(dm64))
    base = torch.zeros(shape, dtype=torch.float64) if at_zero else 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    v = torch.randn(shape, generator=g, dtype=torch.float64)
    delta = base.clone().requires_grad_(True)
    for p in dm64.unet.parameters():
        p.requires_grad_(False)
    (grad,) = torch.autograd.grad(_loss(ddim_render_differentiable(dm64, xt, delta, spec), w), delta)
    eps = 1e-5
    with torch.no_grad():
        plus = _loss(ddim_render(dm64, xt, spec, delta=base + eps * v), w)
        minus = _loss(ddim_render(dm64, xt, spec, delta=base - eps * v), w)
    fd = float((plus - minus) / (2 * eps))
    analytic = float((grad * v).sum())
    assert abs(fd) > 1e-3  # the edit moves the loss, so the comparison means something
    assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_float64_forward_matches_between_renders(dm64):
    """The differentiable render computes the same images as the no-grad render, forked or not."""
    torch.manual_seed(3)
    xt = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    delta = torch.randn(2, *h_shape(dm64), dtype=torch.float64)
    spec = SamplerSpec(steps=10, t_end=699, mode="asymmetric")
    ref = ddim_render(dm64, xt, spec, delta=delta, fork=False)
    torch.testing.assert_close(ddim_render(dm64, xt, spec, delta=delta), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ddim_render_differentiable(dm64, xt, delta, spec).detach(), ref, rtol=1e-10, atol=1e-10)
    assert ref.dtype == torch.float64


@pytest.mark.parametrize("mode", ["symmetric", "asymmetric"])
def test_classifier_gradients_equal_float64_finite_differences(dm64, mode):
    """∂ log p(target) / ∂Δh for a shared Δh, through the sampler and a classifier, per image."""
    from diffex.data.normalize import Normalization
    from diffex.explain.sensitivity import classifier_gradients
    from diffex.models.bridge import ModelPair
    from diffex.models.classifier import Classifier, ClassifierInfo

    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(4 * 64, 2))
    info = ClassifierInfo(class_names=("a", "b"), in_channels=1, image_size=8, normalization=Normalization((-1.0,), (1.0,)))
    pair = ModelPair(Classifier(net.double(), info), dm64)
    spec = SamplerSpec(steps=10, t_end=699, t_edit=200, mode=mode)
    xt = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    targets = torch.tensor([1, 0])
    g = classifier_gradients(pair, xt, targets, spec)  # (2, *h): one gradient per image
    v = torch.randn(1, *h_shape(dm64), dtype=torch.float64)
    eps = 1e-5
    with torch.no_grad():
        lp = [pair.log_probs(ddim_render(dm64, xt, spec, delta=s * eps * v)).gather(1, targets[:, None])[:, 0] for s in (1, -1)]
    fd = (lp[0] - lp[1]) / (2 * eps)  # (2,)
    analytic = (g * v).flatten(1).sum(1)
    assert g.dtype == torch.float64 and fd.abs().min() > 1e-4
    torch.testing.assert_close(analytic, fd, rtol=1e-5, atol=1e-9)
