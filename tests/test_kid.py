"""KID: the vectorized unbiased MMD^2 against a brute-force double sum, its behaviour on known cases, and the
classifier's penultimate features against timm's own pre-logits path; the gate's KID block."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from diffex.models.kid import kid, mmd2_unbiased, penultimate_features
from diffex.models.quality import kid_summary


def _brute_mmd2(x, y):
    d = x.shape[1]
    k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    sxy = sum(k(a, b) for a in x for b in y) / (m * n)
    return sxx + syy - 2 * sxy


def test_mmd2_matches_the_brute_force_double_sum():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 5)), rng.normal(0.3, 1.2, size=(7, 5))
    assert mmd2_unbiased(x, y) == pytest.approx(_brute_mmd2(x, y), rel=1e-12)
    assert mmd2_unbiased(x, y) == pytest.approx(mmd2_unbiased(y, x), rel=1e-12)  # symmetric


def test_kid_is_unbiased_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    same = [mmd2_unbiased(rng.normal(size=(50, 4)), rng.normal(size=(50, 4))) for _ in range(200)]
    # unbiased: the mean over 200 independent pairs is 0 within 3 standard errors (and single values go negative)
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same)) and min(same) < 0
    x = rng.normal(size=(400, 4))
    values = [kid(x, rng.normal(shift, 1, size=(400, 4)), n_subsets=10, subset_size=100)["mean"] for shift in (0.0, 0.25, 0.5, 1.0)]
    assert values == sorted(values) and values[0] < 0.02 < values[1]


def test_penultimate_features_are_timms_pre_logits(tiny_classifier):
    clf = tiny_classifier[1]
    size, ch = clf.info.image_size, clf.info.in_channels
    raw = np.random.default_rng(2).uniform(0, 3000, (5, ch, size, size)).astype(np.float32)
    ours = penultimate_features(clf, raw)
    with torch.no_grad():
        x = clf.normalize(torch.from_numpy(raw))
        ref = clf.module.forward_head(clf.module.forward_features(x), pre_logits=True).double().numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    assert ours.shape == (5, clf.module.num_features)


def test_kid_summary_refuses_a_size_mismatch(tiny_classifier):
    clf = tiny_classifier[1]
    s = clf.info.image_size
    raw = np.zeros((4, clf.info.in_channels, 2 * s, 2 * s), np.float32)
    out = kid_summary(clf, raw, raw, raw)
    assert out["computed"] is False and f"at {s} px" in out["reason"]


def test_gate_reports_both_round_trips_kid_and_a_montage(tiny_diffusion, tiny_classifier, cells):
    from PIL import Image

    from diffex.data.dataset import discover, load_images
    from diffex.explain.config import ExplainConfig
    from diffex.models.diffusion import DiffusionModel
    from diffex.models.diffusion_train import DiffusionTrainConfig
    from diffex.models.quality import MONTAGE_FILE, format_gate, quality_gate

    # the gate's defaults are explain's own settings
    assert (DiffusionTrainConfig().roundtrip_steps, DiffusionTrainConfig().roundtrip_t_end) == (ExplainConfig().steps, ExplainConfig().t_end)
    folder, _, gate = tiny_diffusion
    assert gate["roundtrip_explain"]["t_end"] == 699 and gate["roundtrip_explain"]["gates"]
    assert gate["roundtrip"]["t_end"] == 999 and not gate["roundtrip"]["gates"] and "passed" not in gate["roundtrip"]
    assert gate["passed"] == (all(r["passed"] for r in gate["statistics"]) and gate["roundtrip_explain"]["passed"])
    png = Image.open(folder / MONTAGE_FILE)
    assert png.size == (4 * 18 * 3, 2 * 18 * 3 + 6)  # a row of 4 real images above a row of 4 samples: 16 px + 2 px gaps, x3, a 6 px band
    DiffusionModel.load(folder)  # the montage is inside the checksummed folder
    dm = DiffusionModel.load(folder)
    imgs = load_images(discover(cells), 16, show_progress=False)
    g2, samples = quality_gate(dm, imgs.raw[:12], imgs.raw[12:20], n_samples=8, sample_steps=3, roundtrip_steps=3,
                               classifier=tiny_classifier[1])
    assert samples.shape == (8, 2, 16, 16)
    k = g2["kid"]
    assert k["computed"] and k["subset_size"] == 8 and k["features"] == tiny_classifier[1].module.num_features
    # the same numbers from the features directly: training images (clipped like the gate's) vs samples / held-out
    clip = lambda x: dm.from_model_space(dm.to_model_space(torch.from_numpy(x))).numpy()  # noqa: E731
    f_train, f_held, f_samp = (penultimate_features(tiny_classifier[1], x) for x in (clip(imgs.raw[:12]), clip(imgs.raw[12:20]), samples))
    assert k["samples"] == kid(f_train, f_samp, subset_size=8, seed=0)
    assert k["heldout_real"] == kid(f_train, f_held, subset_size=8, seed=0)
    text = format_gate(g2)
    assert "steps to t = 699" in text and "reported, not gating" in text and "KID on the classifier" in text


def test_kid_excess_pairs_each_draw_and_matches_a_brute_force_loop():
    from diffex.models.kid import kid_excess

    rng = np.random.default_rng(3)
    real, ref = rng.normal(size=(12, 4)), rng.normal(size=(8, 4))
    edited = ref + np.array([0.8, 0.0, 0.0, 0.0])  # every image moved along the first feature
    got = kid_excess(real, edited, ref, n_subsets=5, subset_size=6, seed=11)
    draw = np.random.default_rng(11)  # the same draws, scored by the double sum
    e, f = [], []
    for _ in range(5):
        r, i = draw.choice(12, 6, replace=False), draw.choice(8, 6, replace=False)
        e.append(_brute_mmd2(real[r], edited[i]))
        f.append(_brute_mmd2(real[r], ref[i]))
    d = np.array(e) - np.array(f)
    perm = draw.permutation(12)  # then the real rows' two halves
    assert got["real_halves"] == kid(real[perm[:6]], real[perm[6:12]], 5, 6, 11)
    assert got["edited"]["mean"] == pytest.approx(np.mean(e), rel=1e-12)
    assert got["reference"]["sd"] == pytest.approx(np.std(f, ddof=1), rel=1e-12)
    assert got["excess"]["mean"] == pytest.approx(np.mean(d), rel=1e-12)
    assert got["excess"]["sd"] == pytest.approx(np.std(d, ddof=1), rel=1e-12)
    assert got["subset_size"] == 6 and got["stable"] == bool(abs(np.mean(d)) >= 2 * np.std(d, ddof=1))


def test_kid_excess_known_cases():
    from diffex.models.kid import kid_excess

    rng = np.random.default_rng(0)
    real, ref = rng.normal(size=(200, 6)), rng.normal(size=(100, 6))
    same = kid_excess(real, ref.copy(), ref)
    assert same["excess"] == {"mean": 0.0, "sd": 0.0} and same["stable"] is False  # no edit: nothing to read
    far = kid_excess(real, ref + 1.5, ref)
    assert far["stable"] is True and far["excess"]["mean"] > 10 * far["excess"]["sd"]
    assert far["subset_size"] == 50  # half of the smaller set: the draws vary on both sides
    # a small edit: pairing cancels the noise the two sets share; unpaired draws (two independent KIDs) would leave
    # the excess with the sd of a difference of independent estimates, sqrt(sd_e^2 + sd_r^2) (about 0.26 here)
    small = kid_excess(real, ref + 0.2, ref)
    a, b = (kid(real, x, 50, 50, seed) for x, seed in ((ref + 0.2, 1), (ref, 2)))
    assert small["excess"]["sd"] < 0.5 * np.hypot(a["sd"], b["sd"])
    # every draw the same rows (subsets as large as both sets): no resampling, so nothing is called stable
    whole = kid_excess(real[:30], ref[:30] + 1.5, ref[:30], subset_size=30)
    assert whole["excess"]["mean"] > 0 and whole["stable"] is False
    with pytest.raises(ValueError, match="must pair up"):
        kid_excess(real, ref[:10], ref)
    with pytest.raises(ValueError, match="at least 2 rows"):
        kid_excess(real[:3], ref[:3], ref[:3])
