"""AttFind, its stopping rule, and the attribute statistics, including adversarial effect tables."""

from __future__ import annotations

import numpy as np
import pytest

from diffex.explain.effects import effect_table
from diffex.explain.rank import (
    attfind,
    attribute_statistics,
    bootstrap_ci,
    holm,
    lower_bound,
    separation,
)


def test_picks_largest_mean_effect_then_the_rest():
    eff = np.zeros((40, 3, 2))
    eff[:20, 0, 1] = 0.9  # explains images 0-19
    eff[20:, 1, 0] = 0.6  # explains images 20-39
    eff[:, 2, 1] = 0.1
    sel = attfind(eff, eff > 0.5, 5)
    # direction 0 (+): mean 0.45 over all 40 beats 0.3; then direction 1 (-) on the 20 left; then direction 2 has
    # nothing left to explain
    assert [(s.direction, s.sign, s.newly_explained) for s in sel] == [(0, 1, 20), (1, -1, 20)]


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
    assert all(s.mean_effect_on_remaining > 0 and s.lower_bound > 0 for s in sel)


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


def test_stops_when_the_next_effect_is_not_distinguishable_from_zero():
    """A positive mean carried by one image in twenty is noise: the rule stops; the reference rule does not."""
    eff = np.zeros((20, 2, 2))
    eff[:, 0, 1] = 0.9  # a real effect on every image, flips them all but image 19
    flipped = eff > 0.5
    flipped[19] = False
    eff[19, 1, 1] = 0.5  # direction 1 helps only the one image left, by a single image's worth
    chosen = attfind(eff, flipped, 5)
    assert [(s.direction, s.sign) for s in chosen] == [(0, 1)]
    eff2 = np.zeros((20, 2, 2))
    eff2[:, 1, 0] = np.r_[[0.8] * 1, [0.0] * 19]  # mean 0.04 > 0, lower bound 0
    assert attfind(eff2, eff2 > 0.5, 5) == []
    assert lower_bound(eff2[:, 1, 0]) == 0.0
    assert [(s.direction, s.sign) for s in attfind(eff2, eff2 > 0.5, 5, confidence=None)] == [(1, -1)]


def test_images_already_at_the_target_are_neither_remaining_nor_flipped():
    probs_rec = np.array([[0.2, 0.8], [0.7, 0.3], [0.6, 0.4], [0.9, 0.1]])  # image 0 is already at class 1
    probs_edit = np.zeros((4, 1, 2, 2))
    probs_edit[..., 1] = 0.9  # every edit makes class 1 most probable
    probs_edit[..., 0] = 0.1
    effect, flipped, eligible = effect_table(probs_edit, probs_rec, np.full(4, 1))
    assert eligible.tolist() == [False, True, True, True]
    assert flipped[:, 0, 1].tolist() == [False, True, True, True]
    stats = attribute_statistics(effect[:, :, 1], flipped[:, :, 1], eligible, n_boot=50)
    assert stats[0]["flip_rate"] == 1.0 and stats[0]["n_eligible"] == 3 and stats[0]["baseline_at_target"] == 0.25
    assert stats[0]["mean_delta_p"] == pytest.approx(np.mean([0.1, 0.6, 0.5, 0.8]))
    sel = attfind(effect, flipped, 3, eligible=eligible)
    assert sel[0].newly_explained == 3


def test_bootstrap_ci_covers_mean_and_is_seeded():
    v = np.random.default_rng(0).normal(1.0, 1.0, 200)
    lo, hi = bootstrap_ci(v, 500, seed=3)
    assert lo < v.mean() < hi and hi - lo < 0.5
    assert bootstrap_ci(v, 500, seed=3) == (lo, hi)


def test_cluster_bootstrap_resamples_groups_not_images():
    """Two replicates, one all 0 and one all 1: only 0, 0.5 and 1 are possible means; images would give ~[0.4, 0.6]."""
    v = np.r_[np.zeros(50), np.ones(50)]
    groups = np.r_[["r1"] * 50, ["r2"] * 50]
    assert bootstrap_ci(v, 2000, seed=1, groups=groups) == (0.0, 1.0)
    lo, hi = bootstrap_ci(v, 2000, seed=1)
    assert 0.35 < lo < 0.45 and 0.55 < hi < 0.65
    # every image its own group is the image bootstrap, draw for draw
    assert bootstrap_ci(v, 500, seed=4, groups=np.arange(100)) == bootstrap_ci(v, 500, seed=4)


def test_holm_known_answer_and_bounds():
    # by hand: sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    assert holm([]).tolist() == []


def test_separation_auc():
    proj = np.r_[np.arange(10), np.arange(10) + 100.0]
    tgt = np.r_[np.zeros(10, bool), np.ones(10, bool)]
    s = separation(proj, tgt)
    assert s["auc"] == 1.0 and s["p_value"] < 1e-3
    assert separation(-proj, tgt)["auc"] == 0.0


def test_statistics_cumulative_flip_rate_and_coverage():
    eff = np.zeros((4, 2))
    eff[:2, 0] = 0.9
    eff[2:, 1] = 0.7
    eff[0, 1] = 0.8  # image 0 is flipped by both: counted once in the cumulative rate, not in rank 2's coverage
    stats = attribute_statistics(eff, eff > 0.5, np.ones(4, bool), n_boot=100)
    assert [s["cumulative_flip_rate"] for s in stats] == [0.5, 1.0]
    assert [s["coverage"] for s in stats] == [0.5, 0.5]
    assert [s["flip_rate"] for s in stats] == [0.5, 0.75]
    assert stats[0]["delta_p_ci95"][0] <= stats[0]["mean_delta_p"] <= stats[0]["delta_p_ci95"][1]


def test_separating_pairs_against_brute_force_and_attfind_never_picks_what_they_exclude():
    from diffex.explain.rank import separating_pairs

    rng = np.random.default_rng(0)
    coords = rng.normal(size=(30, 5)) + np.outer(np.arange(30) >= 15, [2.0, -2.0, 0.0, 0.3, -0.3])
    in_t = np.arange(30) >= 15
    ok = separating_pairs(coords, in_t, 0.7)
    for k in range(5):  # brute force: the share of (target, other) pairs in which the target image lies higher
        auc = np.mean([[a > b for b in coords[~in_t, k]] for a in coords[in_t, k]])
        assert ok[k].tolist() == [1 - auc >= 0.7, auc >= 0.7]
    assert ok[0].tolist() == [False, True] and ok[1].tolist() == [True, False] and not ok[2].any()
    # the effect table with the excluded pairs blanked, as select_stage does: the largest effect is never picked
    effect = np.full((10, 5, 2), 0.1)
    effect[:, 2, 1] = 0.9  # d2 (no separation) moves the classifier most
    flipped = effect > 0.5
    blank = np.where(ok[None], effect, np.nan)
    assert (attfind(effect, flipped, 1, n_boot=50)[0].direction, attfind(blank, flipped, 1, n_boot=50)[0].direction) == (2, 0)


def test_explain_with_separation_gated_selection_says_so(tiny_classifier, tiny_diffusion, cells, tmp_path):
    import json
    from dataclasses import replace

    from test_explain import TINY

    from diffex.errors import DiffexError
    from diffex.explain import explain

    res = explain(tiny_classifier[0], cells, tmp_path / "exp", tiny_diffusion[0], replace(TINY, selection_min_auc=0.999),
                  device="cpu", show_progress=False)
    r = json.loads((res.out / "results.json").read_text())
    assert "with AUC >= 0.999 could be picked" in r["statistics"]["selection_rule"]
    assert r["attributes"] == []  # nothing separates 16 tiny images that well
    plain = explain(tiny_classifier[0], cells, tmp_path / "plain", tiny_diffusion[0], TINY, device="cpu", show_progress=False)
    assert plain.results.attributes  # power: without the gate the same run picks attributes
    with pytest.raises(DiffexError, match="selection_min_auc"):
        replace(TINY, selection_min_auc=1.0)
