"""The h-space machinery: the mid-block hook, edited DDIM rendering, batching."""

from __future__ import annotations

import pytest
import torch

from diffex.models.diffusion import DiffusionInfo, DiffusionModel
from diffex.models.hooks import h_shape, mid_block_offset, record_h
from diffex.models.sampler import SamplerSpec, ddim_invert, ddim_render
from diffex.models.unet import UNetSpec, build_unet, default_scheduler_config


@pytest.fixture(scope="module")
def dm():
    torch.manual_seed(0)
    unet = build_unet(UNetSpec(block_out_channels=(16, 32, 32), norm_num_groups=8, attention_max_res=4, attention_head_dim=8), 2, 16)
    # Untrained UNets have zero-initialized output convs in places; randomize so every path matters.
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return DiffusionModel(unet, default_scheduler_config(), DiffusionInfo(2, 16))


def spec(steps, t_edit=0, t_end=None, asymmetric=False):
    return SamplerSpec(steps=steps, t_end=t_end, t_edit=t_edit, mode="asymmetric" if asymmetric else "symmetric")


def _manual_forward(unet, x, t, delta):
    """UNet2DModel.forward written out by hand, with ``delta`` added after the mid block."""
    emb = unet.time_embedding(unet.time_proj(torch.full((x.shape[0],), t, dtype=torch.long)).to(x.dtype))
    h = unet.conv_in(x)
    skips = (h,)
    for block in unet.down_blocks:
        h, res = block(hidden_states=h, temb=emb)
        skips += res
    h = unet.mid_block(h, emb) + delta  # (B, 32, 4, 4)
    for block in unet.up_blocks:
        res, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
        h = block(h, res, emb)
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))


def test_h_shape(dm):
    assert h_shape(dm) == (32, 4, 4)


def test_hook_equals_hand_written_forward(dm):
    x = torch.randn(3, 2, 16, 16)
    delta = torch.randn(3, 32, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(_manual_forward(dm.unet, x, 300, 0.0), dm.eps(x, 300))  # the manual forward is right
        with mid_block_offset(dm.unet, delta):
            hooked = dm.eps(x, 300)
        torch.testing.assert_close(hooked, _manual_forward(dm.unet, x, 300, delta))
        assert (hooked - dm.eps(x, 300)).abs().max() > 1e-3  # the offset does something
        assert len(dm.unet.mid_block._forward_hooks) == 0  # and is removed afterwards


def test_record_h(dm):
    store: list = []
    with torch.no_grad(), record_h(dm.unet, store):
        ddim_invert(dm, torch.randn(2, 2, 16, 16), spec(4))
    assert len(store) == 4 and store[0].shape == (2, 32, 4, 4)


def test_zero_or_late_edit_is_no_edit(dm):
    xt = torch.randn(2, 2, 16, 16)
    plain = ddim_render(dm, xt, spec(5))
    zero = torch.zeros(32, 4, 4)
    torch.testing.assert_close(ddim_render(dm, xt, spec(5), delta=zero), plain)
    # asymmetric steps run forked (batch 2B in the up path): equal up to batch-size-dependent rounding
    torch.testing.assert_close(ddim_render(dm, xt, spec(5, asymmetric=True), delta=zero), plain, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(ddim_render(dm, xt, spec(5, t_edit=1000), delta=torch.ones(32, 4, 4)), plain)


def test_edit_acts_only_on_early_steps(dm):
    xt = torch.randn(1, 2, 16, 16)
    d = torch.randn(1, 32, 4, 4)
    early = ddim_render(dm, xt, spec(5, t_edit=500), delta=d)
    full = ddim_render(dm, xt, spec(5), delta=d)
    plain = ddim_render(dm, xt, spec(5))
    assert (early - plain).abs().max() > 1e-4 and (early - full).abs().max() > 1e-4


@pytest.mark.parametrize("asymmetric", [False, True])
def test_batched_edits_equal_sequential(dm, asymmetric):
    xt = torch.randn(5, 2, 16, 16)
    delta = torch.randn(5, 32, 4, 4)
    batched = ddim_render(dm, xt, spec(4, 400, asymmetric=asymmetric), delta=delta, batch_size=2)
    one_by_one = torch.cat([
        ddim_render(dm, xt[i : i + 1], spec(4, 400, asymmetric=asymmetric), delta=delta[i : i + 1])
        for i in range(5)
    ])
    # Equal up to float32 batch-size-dependent rounding (amplified by 1/sqrt(alpha) at t ~ T);
    # a misaligned offset would differ by O(1).
    torch.testing.assert_close(batched, one_by_one, rtol=1e-3, atol=1e-3)
    assert (batched[1:] - one_by_one[:-1]).abs().max() > 0.1


def test_render_edits_batched_equals_sequential(dm):
    from diffex.models.sampler import edit_offsets, render_edits

    torch.manual_seed(1)
    xt = torch.randn(3, 2, 16, 16)
    dirs = torch.randn(2, *h_shape(dm))
    offs = edit_offsets(dirs, torch.tensor([-1.0, 0.5]), scale=2.0).flatten(0, 1)  # (4, *h)
    batched = render_edits(dm, xt, offs, spec(4, 300, asymmetric=True), batch_size=5)  # (3, 4, C, H, W)
    assert batched.shape == (3, 4, 2, 16, 16)
    for i in range(3):
        for e in range(4):
            one = ddim_render(dm, xt[i : i + 1], spec(4, 300, asymmetric=True), delta=offs[e : e + 1])
            torch.testing.assert_close(batched[i, e], one[0], atol=1e-3, rtol=1e-3)  # float32 batch rounding


def test_edit_offsets_scale_and_sign():
    from diffex.models.sampler import edit_offsets

    d = torch.zeros(1, 2, 1, 1)
    d[0, 0] = 1.0
    off = edit_offsets(d, torch.tensor([-2.0, 1.0]), scale=3.0)
    assert off.shape == (1, 2, 2, 1, 1)
    assert off[0, 0, 0, 0, 0] == -6.0 and off[0, 1, 0, 0, 0] == 3.0


def test_partial_inversion_timesteps():
    from diffex.models.sampler import ddim_timesteps

    assert ddim_timesteps(1000, 4).tolist() == [249, 499, 749, 999]
    assert ddim_timesteps(1000, 4, t_end=699).tolist() == [174, 349, 524, 699]
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 4, t_end=1000)


def test_differentiable_render_matches_no_grad_render(dm):
    from diffex.models.sampler import ddim_render_differentiable

    torch.manual_seed(2)
    xt = torch.randn(2, 2, 16, 16)
    delta = 0.3 * torch.randn(2, *h_shape(dm))
    ref = ddim_render(dm, xt, spec(3, t_end=699), delta=delta)
    got = ddim_render_differentiable(dm, xt, delta, spec(3, t_end=699))
    torch.testing.assert_close(got.detach(), ref, atol=1e-5, rtol=1e-5)


def test_evaluation_counter_counts_images_per_pass(dm):
    from diffex.models.hooks import EvaluationCounter

    with EvaluationCounter(dm.unet) as n:
        xt = ddim_invert(dm, torch.zeros(3, 2, 16, 16), spec(4))
        ddim_render(dm, xt, spec(4, 500, asymmetric=True), delta=torch.zeros(1, *h_shape(dm)))
    # inversion 3 x 4; rendering: 2 steps below t_edit (1 pass) + 2 at/above it (2 passes); h_shape's dry pass is 1
    assert n.predictions == 3 * 4 + 3 * (2 + 2 * 2) + 1
    # the two predictions of an edited step share one down path: 3 images x 2 steps fewer encoder passes
    assert n.down_paths == n.predictions - 3 * 2


def test_fork_equals_hand_written_forward(dm):
    from diffex.models.hooks import can_fork, mid_block_fork

    assert can_fork(dm.unet)
    x = torch.randn(3, 2, 16, 16)
    delta = torch.randn(3, 32, 4, 4)
    with torch.no_grad():
        with mid_block_fork(dm.unet, delta):
            both = dm.eps(x, 300)  # (6, C, H, W)
        torch.testing.assert_close(both[:3], _manual_forward(dm.unet, x, 300, delta), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(both[3:], _manual_forward(dm.unet, x, 300, 0.0), atol=1e-5, rtol=1e-5)
    assert not dm.unet.mid_block._forward_hooks and not any(b._forward_pre_hooks for b in dm.unet.up_blocks)


@pytest.mark.parametrize("per_image", [False, True])
def test_forked_asymmetric_render_equals_two_passes(dm, per_image):
    torch.manual_seed(1)
    xt = torch.randn(5, 2, 16, 16)
    delta = torch.randn(5 if per_image else 1, 32, 4, 4)
    kw = dict(delta=delta, batch_size=2)
    edit = spec(4, 300, asymmetric=True)
    forked, two = ddim_render(dm, xt, edit, **kw), ddim_render(dm, xt, edit, fork=False, **kw)
    torch.testing.assert_close(forked, two, atol=1e-3, rtol=1e-3)
    assert (forked - ddim_render(dm, xt, spec(4))).abs().max() > 1e-3  # the edit does something


def test_fourier_time_embedding_is_not_forked():
    from diffusers import UNet2DModel

    from diffex.models.hooks import can_fork

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       time_embedding_type="fourier", layers_per_block=1)
    assert not can_fork(unet)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_forked_render_equals_two_passes_for_v_and_x0_models(dm, prediction_type):
    """The fork returns (edited, unedited) for one x: the v -> epsilon (and x0 -> epsilon) conversion must pair
    each half with that x (regression: a v-prediction model crashed explain with a batch-size mismatch)."""
    from diffex.models.diffusion import DiffusionModel

    other = DiffusionModel(dm.unet, {**dm.scheduler_config, "prediction_type": prediction_type}, dm.info)
    torch.manual_seed(2)
    xt = torch.randn(4, 2, 16, 16)
    kw = dict(delta=torch.randn(4, 32, 4, 4), batch_size=2)
    edit = spec(4, 300, asymmetric=True)
    forked, two = ddim_render(other, xt, edit, **kw), ddim_render(other, xt, edit, fork=False, **kw)
    torch.testing.assert_close(forked, two, atol=1e-3, rtol=1e-3)


def test_render_edits_per_image_scales_equal_explicit_offsets(dm):
    """scales[i, e] * offsets[e] per image: the same renders as each image rendered alone under its own offset."""
    from diffex.models.sampler import render_edits

    torch.manual_seed(2)
    xt = torch.randn(3, 2, 16, 16)
    dirs = torch.nn.functional.normalize(torch.randn(2, *h_shape(dm)).flatten(1), dim=1).view(2, *h_shape(dm))
    scales = torch.tensor([[0.0, -3.0], [2.5, 1.0], [-1.5, 4.0]])  # (N, E)
    batched = render_edits(dm, xt, dirs, spec(4, 300, asymmetric=True), batch_size=4, scales=scales)
    for i in range(3):
        for e in range(2):
            one = ddim_render(dm, xt[i : i + 1], spec(4, 300, asymmetric=True), delta=scales[i, e] * dirs[e : e + 1])
            torch.testing.assert_close(batched[i, e], one[0], atol=1e-3, rtol=1e-3)
    plain = render_edits(dm, xt[:1], dirs[:1] * 0, spec(4, 300, asymmetric=True))
    torch.testing.assert_close(batched[0, 0], plain[0, 0], atol=1e-3, rtol=1e-3)  # scale 0 is the reconstruction
