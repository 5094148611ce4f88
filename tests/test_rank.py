"""AttFind and the attribute statistics, including adversarial effect tables."""

from __future__ import annotations

import numpy as np
import pytest

from diffex.explain.rank import attfind, attribute_statistics, bootstrap_ci, separation


def test_picks_largest_mean_effect_then_the_rest():
    eff = np.zeros((4, 3, 2))
    eff[:, 0, 1] = [0.9, 0.9, 0.0, 0.0]  # explains images 0, 1
    eff[:, 1, 0] = [0.0, 0.0, 0.6, 0.6]  # explains images 2, 3
    eff[:, 2, 1] = 0.1
    sel = attfind(eff, eff > 0.5, 5)
    # direction 0 (+): mean 0.45 over all four beats 0.3; then direction 1 (-) on the two left
    assert [(s.direction, s.sign, s.newly_explained) for s in sel] == [(0, 1, 2), (1, -1, 2)]


@pytest.mark.parametrize(
    "eff",
    [
        np.full((5, 3, 2), -0.2),  # no positive effect at all
        np.zeros((5, 3, 2)),  # all ties at zero
        np.full((5, 3, 2), 0.3),  # all ties, positive, nothing flips
        np.full((5, 3, 2), np.nan),  # broken table
        np.zeros((0, 3, 2)),  # no images
        np.zeros((5, 0, 2)),  # no candidates
    ],
)
def test_always_terminates(eff):
    sel = attfind(eff, np.zeros_like(eff, dtype=bool), 10)
    assert len(sel) <= eff.shape[1]
    assert all(s.mean_effect_on_remaining > 0 for s in sel)


def test_positive_effect_without_flips_uses_each_direction_once():
    eff = np.full((6, 4, 2), 0.1)
    sel = attfind(eff, np.zeros_like(eff, dtype=bool), 100)
    assert sorted(s.direction for s in sel) == [0, 1, 2, 3]


def test_stops_when_every_image_is_explained():
    eff = np.full((3, 4, 2), 0.8)
    sel = attfind(eff, eff > 0.5, 100)
    assert len(sel) == 1 and sel[0].newly_explained == 3


def test_ties_go_to_lower_index():
    eff = np.full((2, 3, 2), 0.5)
    assert attfind(eff, eff > 0.4, 1)[0].direction == 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        attfind(np.zeros((2, 2, 2)), np.zeros((2, 2, 3), bool), 1)


def test_bootstrap_ci_covers_mean_and_is_seeded():
    v = np.random.default_rng(0).normal(1.0, 1.0, 200)
    lo, hi = bootstrap_ci(v, 500, seed=3)
    assert lo < v.mean() < hi and hi - lo < 0.5
    assert bootstrap_ci(v, 500, seed=3) == (lo, hi)


def test_separation_auc():
    proj = np.r_[np.arange(10), np.arange(10) + 100.0]
    tgt = np.r_[np.zeros(10, bool), np.ones(10, bool)]
    s = separation(proj, tgt)
    assert s["auc"] == 1.0 and s["p_value"] < 1e-3
    assert separation(-proj, tgt)["auc"] == 0.0


def test_statistics_cumulative_flip_rate():
    eff = np.zeros((4, 2, 2))
    eff[:2, 0, 1] = 0.9
    eff[2:, 1, 1] = 0.7
    flipped = eff > 0.5
    sel = attfind(eff, flipped, 5)
    stats = attribute_statistics(sel, eff, flipped, np.random.default_rng(0).normal(size=(6, 2)), np.r_[True, True, True, False, False, False], 100)
    assert [s["cumulative_flip_rate"] for s in stats] == [0.5, 1.0]
    assert [s["coverage"] for s in stats] == [0.5, 0.5]
    assert stats[0]["delta_p_ci95"][0] <= stats[0]["mean_delta_p"] <= stats[0]["delta_p_ci95"][1]
