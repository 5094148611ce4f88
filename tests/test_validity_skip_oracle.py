"""The ground-truth pattern in h and the skip connections (benchmarks/validity_skip_oracle.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_benchmarks import _load
from test_validity_flips import _tiny_configuration, tiny_experiment  # noqa: F401 - the shared fixture

from diffex.explain.calibrate import edit_steps
from diffex.models import hooks, sampler
from diffex.models.diffusion import tiny_model


@pytest.fixture(scope="module")
def oracle():
    _load("validity")
    return _load("validity_skip_oracle")


def _unet_by_hand(unet, x: torch.Tensor, t: int, h_offset, skip_offsets: list) -> tuple[torch.Tensor, torch.Tensor]:
    """A diffusers UNet2DModel's forward written out (no class embedding), with offsets added to the mid-block output and
    to the skips in the order the up blocks consume them: (output, mid-block output before its offset)."""
    emb = unet.time_embedding(unet.time_proj(torch.full((x.shape[0],), t)).to(x.dtype))
    sample = unet.conv_in(x)
    res = (sample,)
    for block in unet.down_blocks:
        sample, more = block(hidden_states=sample, temb=emb)
        res += more
    h = unet.mid_block(sample, emb)
    sample, k = h + h_offset, 0
    for block in unet.up_blocks:
        n = len(block.resnets)
        mine, res = res[-n:], res[:-n]
        sample = block(sample, tuple(r + skip_offsets[k + j] for j, r in enumerate(mine)), emb)
        k += n
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(sample))), h


def test_offsets_reach_the_skips_as_a_hand_written_forward(oracle):
    """Offsets on h and every skip give the hand-written forward's output; the down path (hence h) is untouched."""
    dm = tiny_model()
    shapes = oracle.layout(dm)
    assert len(shapes) == 1 + sum(len(b.resnets) for b in dm.unet.up_blocks)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 8, 8, generator=g)
    offs = [0.3 * torch.randn(2, *s, generator=g) for s in shapes]
    store: list = []
    with torch.no_grad():
        with oracle.activations(dm.unet, offsets=offs, store=store):
            got = dm.unet(x, 400).sample
        want, h = _unet_by_hand(dm.unet, x, 400, offs[0], offs[1:])
        plain = dm.unet(x, 400).sample
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(store[0][0], h)  # recorded before the offset
    assert (got - plain).abs().max() > 1e-2
    skips_only = [None, *offs[1:]]
    with torch.no_grad(), oracle.activations(dm.unet, offsets=skips_only, store=store):
        dm.unet(x, 400)
    torch.testing.assert_close(store[1][0], h)  # a skip offset leaves the mid block's input and output as they were


def test_recording_and_sampler_match_explains(oracle):
    """h recorded by the script equals explain's recorded h averaged over the edit steps, and an h-only edit renders
    as explain's (forked) sampler renders it."""
    dm = tiny_model()
    g = torch.Generator().manual_seed(0)
    xt = torch.randn(3, 1, 8, 8, generator=g)
    spec = sampler.SamplerSpec(steps=5, t_end=699, t_edit=300, mode="asymmetric")
    steps = edit_steps(spec.timesteps(dm.num_train_timesteps), spec.t_edit)
    store: list = []
    with torch.no_grad(), hooks.record_h(dm.unet, store):
        sampler.ddim_render(dm, xt, spec)
    h = torch.stack(store, 1)[:, torch.as_tensor(steps)].double().mean(1).flatten(1).numpy()  # (3, D)
    shapes = oracle.layout(dm)
    np.testing.assert_allclose(oracle.record(dm, xt, spec, steps, (0,), batch_size=2), h, rtol=1e-5, atol=1e-5)
    full = oracle.record(dm, xt, spec, steps, oracle.parts_of("h+skips", len(shapes)), batch_size=2)
    assert full.shape == (3, sum(int(np.prod(s)) for s in shapes))
    np.testing.assert_allclose(full[:, : h.shape[1]], h, rtol=1e-5, atol=1e-5)
    u = torch.randn(1, *shapes[0], generator=g)
    u /= u.norm()
    scales = torch.tensor([[0.0, 2.0], [1.0, -3.0], [5.0, 0.5]])
    want = sampler.render_edits(dm, xt, u.expand(2, *shapes[0]), spec, batch_size=4, scales=scales)
    got = oracle.render(dm, xt, oracle.unflatten(u.flatten().double().numpy(), shapes, (0,)), scales, spec, batch_size=4)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (got[2, 0] - got[0, 0]).abs().max() > 1e-2  # the edit does something
    with pytest.raises(ValueError, match="parts of"):
        oracle.unflatten(np.zeros(5), shapes, (0,))
    # the edited trajectory's own activations: at zero strength the reconstruction's, paired with their images
    parts = oracle.parts_of("h+skips", len(shapes))
    e = np.random.default_rng(0).normal(size=full.shape[1])
    unit = oracle.unflatten(e / np.linalg.norm(e), shapes, parts)
    x0, own = oracle.render(dm, xt, unit, torch.zeros(3, 2), spec, batch_size=4, along=(e, parts))
    np.testing.assert_allclose(own, np.repeat((full @ e)[:, None], 2, 1), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x0[:, 1], sampler.ddim_render(dm, xt, spec), rtol=1e-5, atol=1e-5)
    _, moved = oracle.render(dm, xt, unit, torch.full((3, 1), 3.0), spec, batch_size=4, along=(e, parts))
    assert np.abs(moved[:, 0] - full @ e).min() > 1e-3  # an edit moves the trajectory's own activations


def test_h_space_reproduces_the_h_oracle(oracle, tiny_experiment, monkeypatch):  # noqa: F811
    """End to end on tiny models: in h alone, the script's own recording and sampler give the h oracle's rows; with the
    skips the pattern has most of its length outside h and still gives one row per factor."""
    res, root, spec = tiny_experiment
    cfg = _tiny_configuration(monkeypatch, spec)
    h_oracle = _load("validity_h_oracle")
    want = h_oracle.run(res.out, cfg, root, "cpu")
    got = oracle.run(res.out, cfg, root, "cpu", space="h")
    assert len(got) == len(want) == 2
    for w, g in zip(want, got):
        assert (g["factor"], g["rank"], g["n_eligible"]) == (w["factor"], w["rank"], w["n_eligible"])
        assert g["h_share"] == pytest.approx(1.0)
        assert (g["h_only_rank"], g["h_part_cos_h_only"], g["h_part_norm_over_h_only"]) == (g["rank"], pytest.approx(1.0), pytest.approx(1.0))
        for key in ("cv_within_r", "within_r", "pattern_norm", "sd", "in_data_shift_sd", "flips_at_1", "flips_in_data"):
            assert g[key] == pytest.approx(w[key], rel=1e-3, abs=1e-4), key
        assert g["change_at_1"] == pytest.approx(w["change_at_1"], abs=1e-3)
    half = oracle.run(res.out, cfg, root, "cpu", space="h", scale=0.5)  # frames at half the offsets; the in-data frame as is
    assert len(half) == 2
    for w, g in zip(want, half):
        assert g["pattern_norm"] == pytest.approx(0.5 * w["pattern_norm"], rel=1e-3)
        assert (g["sd"], g["in_data_shift_sd"], g["flips_in_data"]) == pytest.approx((w["sd"], w["in_data_shift_sd"], w["flips_in_data"]), rel=1e-3)
    units: dict = {"h+skips": [], "h": []}
    real_render = oracle.render

    def spy(dm, xt, unit, *args, **kw):
        units[now].append(unit)
        return real_render(dm, xt, unit, *args, **kw)

    monkeypatch.setattr(oracle, "render", spy)
    now = "h+skips"
    wide = oracle.run(res.out, cfg, root, "cpu", space="h+skips")
    assert [r["factor"] for r in wide] == ["nucleus_radius", "actin_level"]
    assert all(0 < r["h_share"] < 1 and r["space"] == r["rendered"] == "h+skips" for r in wide)
    assert all(set(r["trajectory_shift"]) == {"-1", "-0.5", "+0.5", "+1"} for r in wide)
    assert h_oracle.table(wide, "tiny [h+skips]").count("\n") == 3
    now = "h"  # the same pattern, only its h part rendered: same fit and coordinate, other renders
    part = oracle.run(res.out, cfg, root, "cpu", space="h+skips", rendered="h")
    for w, g in zip(wide, part):
        assert g["rendered"] == "h" and (g["rank"], g["h_share"]) == (w["rank"], w["h_share"])
        assert (g["pattern_norm"], g["sd"], g["within_r"]) == (w["pattern_norm"], w["sd"], w["within_r"])
        assert g["change_at_1"] != w["change_at_1"]
        assert w["rendered_norm"] == pytest.approx(w["pattern_norm"], rel=1e-5)
        assert g["rendered_norm"] == pytest.approx(w["pattern_norm"] * np.sqrt(w["h_share"]), rel=1e-5)
        assert "h_only_rank" not in w and g["h_only_rank"] == next(r["rank"] for r in got if r["factor"] == g["factor"])
    assert len(units["h"]) == len(units["h+skips"]) >= 2
    for uw, uh in zip(units["h+skips"], units["h"]):
        assert torch.equal(uh[0], uw[0]) and all(u is None for u in uh[1:]) and all(u is not None for u in uw)
    with pytest.raises(ValueError, match="the h part of a pattern fitted in skips"):
        oracle.run(res.out, cfg, root, "cpu", space="skips", rendered="h")


def test_doctests(oracle):
    import doctest

    result = doctest.testmod(oracle)
    assert result.failed == 0 and result.attempted >= 2


@pytest.mark.parametrize("name", ["validity_skip_oracle", "validity_h_oracle"])
def test_command_lines_reject_incomplete_inputs(name, oracle):
    """Both oracles' shared arguments: single and subtle need the validity root; the fit set needs its ground truth."""
    mod = _load(name)
    with pytest.raises(SystemExit, match="give --root"):
        mod.main(["exp", "--configuration", "single"])
    with pytest.raises(SystemExit, match="--fit-images and --fit-factors together"):
        mod.main(["exp", "--configuration", "sample", "--fit-images", "cells"])
    if name == "validity_skip_oracle":
        with pytest.raises(SystemExit, match="--render h: cannot render the h part of a pattern fitted in skips"):
            mod.main(["exp", "--configuration", "sample", "--space", "skips", "--render", "h"])


@torch.no_grad()
def test_the_edited_trajectorys_own_move_matches_a_step_by_step_loop(oracle):
    """At non-zero strength, the edited trajectory's own h along the pattern (recorded before the offset, averaged over
    explain's edit steps) equals a loop that renders one image at a time with its own mid-block hook."""
    dm = tiny_model()
    g = torch.Generator().manual_seed(3)
    xt = torch.randn(2, 1, 8, 8, generator=g)
    spec = sampler.SamplerSpec(steps=5, t_end=699, t_edit=300, mode="asymmetric")
    shapes = oracle.layout(dm)
    u = torch.randn(*shapes[0], generator=g)
    u /= u.norm()
    e = u.flatten().double().numpy()
    k = torch.tensor([[2.5, -4.0], [6.0, 0.0]])  # (image, level)
    _, own = oracle.render(dm, xt, oracle.unflatten(e, shapes, (0,)), k, spec, batch_size=3, along=(e, (0,)))
    ts = spec.timesteps(dm.num_train_timesteps)
    n_edit = int(np.sum(edit_steps(ts, spec.t_edit)))
    want = np.zeros((2, 2))
    for n in range(2):
        for lv in range(2):
            x, hs = xt[n:n + 1], []

            def hook(_m, _inp, out, s=float(k[n, lv])):
                hs.append(out.double().flatten())
                return out + s * u

            for i in range(len(ts) - 1, -1, -1):
                t, prev = int(ts[i]), int(ts[i - 1]) if i > 0 else -1
                a_t, a_prev = sampler._alpha(dm, t), sampler._alpha(dm, prev)
                if t < spec.t_edit:
                    x = sampler._ddim_step(x, dm.eps(x, t), a_t, a_prev)
                    continue
                handle = dm.unet.mid_block.register_forward_hook(hook)
                eps_edit = dm.eps(x, t)
                handle.remove()
                x = sampler._ddim_step(x, eps_edit, a_t, a_prev, dm.eps(x, t))
            assert len(hs) == n_edit
            want[n, lv] = float(torch.stack(hs).mean(0).numpy() @ e)
    np.testing.assert_allclose(own, want, rtol=1e-5, atol=1e-5)
    assert abs(want[0, 0] - want[0, 1]) > 1e-3  # the two strengths moved the trajectory differently
