"""Strength calibrated per direction from the real images' coordinates (diffex.explain.calibrate)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffex.explain.calibrate import calibrate, coordinates, edit_steps, frame_scales


def _planted(n=400, seed=0):
    """h (n, S=3, 4, 2, 2) whose coordinate along d0 is a known N(0, 2^2) draw and along d1 a skewed one."""
    rng = np.random.default_rng(seed)
    d = torch.zeros(2, 4, 2, 2)
    d[0, 0, 0, 0] = 1.0
    d[1, 1] = 0.5  # unit norm over the 4 entries of channel 1
    a = rng.normal(0, 2.0, n)
    b = rng.exponential(1.0, n)
    h = torch.as_tensor(rng.normal(0, 0.3, (n, 3, 4, 2, 2)), dtype=torch.float32)
    h[:, :, 0, 0, 0] = torch.as_tensor(a, dtype=torch.float32)[:, None]
    h[:, :, 1] = torch.as_tensor(b / 2, dtype=torch.float32)[:, None, None, None]  # <h, d1> = b
    return h, d, a, b


def test_coordinates_are_the_planted_values_and_an_edit_moves_them_by_its_size():
    h, d, a, b = _planted()
    c = coordinates(h, d)
    np.testing.assert_allclose(c[:, 0], a - a.mean(), atol=1e-4)
    np.testing.assert_allclose(c[:, 1], b - b.mean(), atol=1e-4)
    steps = np.array([True, True, False])
    moved = h.clone()
    moved[:, steps] += 1.7 * d[0]  # the edit: +1.7 d0 on the edited steps only
    shift = coordinates(torch.cat([h, moved]), d, steps)  # one centring for both
    np.testing.assert_allclose(shift[len(h):, 0] - shift[: len(h), 0], 1.7, atol=1e-4)
    np.testing.assert_allclose(shift[len(h):, 1] - shift[: len(h), 1], 0.0, atol=1e-4)


def test_edges_are_the_narrower_of_percentiles_and_three_sd_against_a_brute_force_computation():
    h, d, a, b = _planted()
    c = coordinates(h, d)
    cal = calibrate(c, h_scale=10.0, strength=3.0)
    for k in range(2):
        x = c[:, k].astype(float)
        mu, sd = x.mean(), x.std(ddof=1)
        assert cal.sd[k] == pytest.approx(sd, rel=1e-9)
        assert cal.low[k] == pytest.approx(max(np.percentile(x, 1), mu - 3 * sd))
        assert cal.high[k] == pytest.approx(min(np.percentile(x, 99), mu + 3 * sd))
    # Gaussian d0: the 1-99 % range (about ±2.33 SD) is the narrower one
    assert cal.high[0] / cal.sd[0] == pytest.approx(2.33, abs=0.25)
    # skewed d1 (exponential, mean 1, sd 1): the low edge is the 1st percentile (near the minimum, about -1 SD),
    # the high edge the 99th percentile (3.6 SD above the mean in theory) capped at +3 SD
    assert cal.low[1] / cal.sd[1] == pytest.approx(-0.99, abs=0.1)
    assert cal.high[1] / cal.sd[1] == pytest.approx(3.0, abs=1e-6)  # the mean is 0 up to float32 rounding


def test_traversal_ends_stay_inside_the_planted_data_range():
    h, d, a, b = _planted()
    c = coordinates(h, d)
    cal = calibrate(c[:200], h_scale=10.0, strength=3.0)  # calibrated on "selection" images, applied to the others
    for k in range(2):
        for sign in (1, -1):
            amt = cal.amounts(c[200:, k], k, sign)
            end = c[200:, k] + sign * amt
            assert (amt >= 0).all() and (amt <= 3.0 * cal.sd[k] + 1e-12).all()
            inside = (c[200:, k] >= cal.low[k]) & (c[200:, k] <= cal.high[k])
            assert (end[inside] >= cal.low[k] - 1e-9).all() and (end[inside] <= cal.high[k] + 1e-9).all()
            # an image already beyond the edge in the direction of travel is not moved further out
            beyond = (c[200:, k] > cal.high[k]) if sign > 0 else (c[200:, k] < cal.low[k])
            assert (amt[beyond] == 0).all()
            # images far from the edge move the full 3 SD; those near it stop exactly at it
            room = (cal.high[k] - c[200:, k]) if sign > 0 else (c[200:, k] - cal.low[k])
            np.testing.assert_allclose(amt, np.clip(room, 0, 3.0 * cal.sd[k]))
    # a small strength is not clipped for central images: exactly strength x SD
    small = calibrate(c[:200], h_scale=10.0, strength=0.5)
    centre = np.abs(c[200:, 0]) < cal.sd[0]
    np.testing.assert_allclose(small.amounts(c[200:, 0], 0, 1)[centre], 0.5 * small.sd[0])


def test_h_norm_unit_moves_every_image_by_strength_times_mean_norm():
    h, d, a, b = _planted()
    cal = calibrate(coordinates(h, d), h_scale=7.0, strength=1.5, unit="h_norm")
    np.testing.assert_allclose(cal.amounts(np.array([-100.0, 0.0, 100.0]), 0, 1), 10.5)
    with pytest.raises(ValueError, match="strength_unit"):
        calibrate(coordinates(h, d), 1.0, 1.0, unit="furlongs")


def test_frame_scales_and_edit_steps():
    s = frame_scales(np.array([2.0, 0.0]), np.array([1.0, 4.0]), np.linspace(-1, 1, 5))
    np.testing.assert_allclose(s, [[-1.0, -0.5, 0.0, 1.0, 2.0], [-4.0, -2.0, 0.0, 0.0, 0.0]])
    # h's steps run from t_end down; an edit with t_edit = 500 acts on the first (noisiest) steps only
    assert edit_steps(np.array([99, 299, 499, 699]), 500).tolist() == [True, False, False, False]


def test_explain_renders_each_image_inside_the_real_data_brute_force(tiny_classifier, tiny_diffusion, cells, tmp_path, monkeypatch):
    """A real (tiny) explain run: every reported calibration figure recomputed in float64 from the run's own h and directions."""
    import json
    from dataclasses import replace

    from test_explain import TINY

    import diffex.explain.pipeline as pipeline
    from diffex.explain import explain

    seen = {}
    real_stage = pipeline.calibration_stage

    def spy(exp, inv, cands):
        seen.update(inv=inv, cands=cands, names=[exp.image_name(i) for i in range(len(exp.records))])
        return real_stage(exp, inv, cands)

    monkeypatch.setattr(pipeline, "calibration_stage", spy)
    cfg = replace(TINY, traversal_frames=5, strength=2.0, t_edit=400)
    res = explain(tiny_classifier[0], cells, tmp_path / "exp", tiny_diffusion[0], cfg, device="cpu", show_progress=False)
    assert res.attributes
    inv, cands, names = seen["inv"], seen["cands"], seen["names"]
    ts = np.sort(np.unique(np.asarray(cfg.sampler.timesteps(1000))))[::-1]  # h's steps, from t_end down
    h = inv.h.double().numpy()[:, ts >= 400].mean(1).reshape(len(names), -1)  # (N, D) over the edited steps only
    coords = (h - h.mean(0)) @ cands.vectors.double().numpy().reshape(len(cands.names), -1).T  # (N, K)
    sel = coords[inv.selection]
    for a in res.attributes:
        c = a.sign * coords[:, a.candidate]
        sd = sel[:, a.candidate].std(ddof=1)
        lo = max(np.percentile(a.sign * sel[:, a.candidate], 1), np.mean(a.sign * sel[:, a.candidate]) - 3 * sd)
        hi = min(np.percentile(a.sign * sel[:, a.candidate], 99), np.mean(a.sign * sel[:, a.candidate]) + 3 * sd)
        assert a.strength_unit == "sd" and a.sd_h == pytest.approx(sd, rel=1e-4)
        np.testing.assert_allclose(a.data_edges_sd, [lo / sd, hi / sd], atol=1e-3)
        for img, shifts in zip(a.traversal.images, a.traversal.shift_sd):
            ci = c[names.index(img)]
            up, down = np.clip(hi - ci, 0, 2.0 * sd) / sd, np.clip(ci - lo, 0, 2.0 * sd) / sd
            np.testing.assert_allclose(shifts, [-down, -down / 2, 0.0, up / 2, up], atol=2e-3)
            assert lo - 1e-3 * sd <= ci + shifts[-1] * sd <= hi + 1e-3 * sd or ci > hi  # the + end inside the data (shift_sd has 4 decimals)
        ev = inv.evaluation
        moved = ev[np.array([res.results.class_names[int(k)] != a.target for k in np.asarray(_labels(res, names))[ev]])]
        end = c[moved] + np.clip(hi - c[moved], 0, 2.0 * sd)  # the moved images' full-strength ends
        np.testing.assert_allclose(a.mean_shift_sd, np.mean(end - c[moved]) / sd, atol=1e-3)
        assert a.ends_in_data == pytest.approx(np.mean((end >= lo - 1e-9 * sd) & (end <= hi + 1e-9 * sd)), abs=1e-9)
        got = sorted(v for vs in a.coordinate.values() for v in vs)
        np.testing.assert_allclose(got, np.sort(c[ev] / sd), atol=1e-3)
    rows = json.loads((tmp_path / "exp" / "results.json").read_text())["attributes"]
    assert all(r["strength_unit"] == "sd" for r in rows)


def _labels(res, names):
    """Class index of every image, from the images' condition folders (the tiny cells are control/ and treated/)."""
    return [res.results.class_names.index(n.split("/")[0]) for n in names]
