"""The flip target's ceiling (benchmarks/validity_flip_ceiling.py) and the strength sweep (benchmarks/strength_sweep.py)."""

from __future__ import annotations

import csv
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import REPO
from test_benchmarks import _load


@pytest.fixture(scope="module")
def ceiling():
    _load("validity_oracle")
    return _load("validity_flip_ceiling")


@pytest.fixture(scope="module")
def tiny_experiment(tiny_classifier, tiny_diffusion, cells, tmp_path_factory):
    """A finished tiny experiment (read only), and a validity root and generator spec for its cells."""
    from test_explain import TINY

    from diffex.explain import explain

    tmp = tmp_path_factory.mktemp("flips")
    res = explain(tiny_classifier[0], cells, tmp / "exp", tiny_diffusion[0], TINY, device="cpu", show_progress=False)
    root = tmp / "root"
    (root / "tiny").mkdir(parents=True)
    shutil.copytree(cells, root / "tiny" / "heldout")
    shutil.copy(cells.parent / "cells_factors.csv", root / "tiny" / "heldout_factors.csv")
    (tmp / "tiny.yaml").write_text("size: 64\n")  # the generator's spec: the sample data's
    return res, root, tmp / "tiny.yaml"


def _tiny_configuration(monkeypatch, spec):
    """A validity configuration for the tiny experiment, with an identity decoder (the decoder: test_validity_decode.py)."""
    validity = _load("validity")
    dec = SimpleNamespace(factors=("nucleus_radius", "actin_level"), columns=tuple(validity.MEASURE.values()), nuisance=(),
                          response=np.eye(2), curvature=np.zeros((0, 2)), relative=True, image_size=16.0)
    monkeypatch.setattr(validity, "decoder_for", lambda cfg, size: dec)
    return validity.Configuration("tiny", ("nucleus_radius",), spec)


def test_flip_rates_match_a_loop(ceiling):
    """Flip rates and their union against a per-image loop, on random probabilities with images already at the target."""
    rng = np.random.default_rng(0)
    orig = rng.dirichlet([1, 1, 1], size=40)  # (n, classes)
    edit = rng.dirichlet([1, 1, 1], size=(40, 3))  # (n, E, classes)
    got = ceiling.flip_rates(edit, orig, 2, ["a", "b", "c"], ["a", "c"])
    eligible = [i for i in range(40) if orig[i].argmax() != 2]
    assert got["n_eligible"] == len(eligible) and 0 < len(eligible) < 40
    for e, name in enumerate("abc"):
        assert got[name] == sum(edit[i, e].argmax() == 2 for i in eligible) / len(eligible)
    assert got["union"] == sum(edit[i, 0].argmax() == 2 or edit[i, 2].argmax() == 2 for i in eligible) / len(eligible)


def test_in_data_end_is_explains_calibrated_traversal(ceiling):
    """The edited factor lands where diffex's calibration would take a coordinate with the same values."""
    from diffex.explain.calibrate import calibrate

    values = np.random.default_rng(1).normal(5.0, 2.0, 300)
    cal = ceiling.factor_calibration(values, 3.0)
    ref = calibrate(values[:, None], h_scale=1.0, strength=3.0)
    for v in (values.min(), 5.0, values.max(), 20.0):
        for sign in (1, -1):
            want = v + sign * float(np.clip(ref.high[0] - v if sign > 0 else v - ref.low[0], 0, 3 * ref.sd[0]))
            assert ceiling.in_data_end(v, cal, sign) == pytest.approx(want, abs=1e-12)
    assert ceiling.in_data_end(20.0, cal, 1) == 20.0  # beyond the edge already: not moved


def test_ceiling_renders_change_only_the_edited_factor(ceiling):
    from diffex.data.synthetic import SyntheticSpec, render_cell

    spec = SyntheticSpec()
    factors = ("nucleus_radius", "actin_level")
    cals = {f: ceiling.factor_calibration(np.linspace(lo, hi, 50), 3.0) for f, (lo, hi) in
            {"nucleus_radius": (6.0, 10.0), "actin_level": (0.3, 0.7)}.items()}
    signs = {(f, c): (1 if c == "control" else -1) for f in factors for c in ("control", "treated")}
    plans, accept = ceiling.ceiling_renders(spec, factors, cals, signs)
    assert accept is None
    img, drawn = render_cell(np.random.default_rng(4), "control", spec)
    plan = plans("control", drawn)
    assert list(plan) == ["original", *factors, "both", "nucleus_radius_delta", "actin_level_delta"]
    again, _ = render_cell(np.random.default_rng(4), "control", spec, overrides=plan["original"][0])
    assert np.array_equal(img, again)  # the unedited render is the cell itself
    for f in factors:
        _, got = render_cell(np.random.default_rng(4), "control", spec, overrides=plan[f][0])
        assert got[f] == pytest.approx(ceiling.in_data_end(drawn[f], cals[f], 1)) and got[f] > drawn[f]
        assert all(got[g] == drawn[g] for g in drawn if g not in (f, "nucleus_area_px"))
    assert plan["both"][0] == {f: plan[f][0][f] for f in factors}


def test_ceiling_pairs_each_edit_with_its_own_cell(ceiling, tmp_path):
    """At (almost) zero strength every edit is its cell, so nothing flips; a wrong pairing of renders would flip some."""
    rows = ceiling.run_configuration("sample", 6, 3, tmp_path, strength=1e-9)
    assert [r["moved"] for r in rows] == ["control", "treated"]
    for r in rows:
        assert r["n_eligible"] > 0
        assert all(r[f] == 0.0 for f in (*r["factors"], "both", "union"))
        assert any(r[f + "_delta"] > 0 for f in r["factors"])  # the Δ edits do not depend on the strength: they flip some
    # "towards the other condition": the sign of the difference of the held-out conditions' means, counted here
    with open(REPO / "sample_data" / "heldout_factors.csv", newline="") as fh:
        truth = list(csv.DictReader(fh))
    for r in rows:
        for f in r["factors"]:
            mean = {c: np.mean([float(t[f]) for t in truth if t["condition"] == c]) for c in (r["moved"], r["target"])}
            assert r["towards"][f] == (1 if mean[r["target"]] > mean[r["moved"]] else -1)
    md = ceiling.table(rows)
    assert md.count("\n") == 3 and md.splitlines()[-1].endswith("| no |")


def test_real_slope_recovers_a_planted_slope(tmp_path):
    """Factors planted as 2 Δ and -0.5 Δ per SD of the coordinate, plus noise: the fitted slopes and r."""
    _load("validity")
    sweep = _load("strength_sweep")
    oracle = _load("validity_oracle")
    spec = oracle.generator_spec(None)
    rng = np.random.default_rng(2)
    coord = rng.normal(0, 1, 400)
    names = [f"c/{i}.tif" for i in range(400)]
    d_n, d_a = oracle._delta(spec, "nucleus_radius"), oracle._delta(spec, "actin_level")
    with open(tmp_path / "f.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "condition", "nucleus_radius", "actin_level"])
        for i, c in enumerate(coord):
            w.writerow([names[i], "c", 8 + 2 * c * d_n, 0.5 - 0.5 * c * d_a + rng.normal(0, 0.5 * d_a)])
    exp = SimpleNamespace(image_name=lambda i: names[i])
    cfg = SimpleNamespace(spec=None, modality="microscopy")
    got = sweep._real_slope(exp, coord, tmp_path / "f.csv", cfg, ("nucleus_radius", "actin_level"))
    assert got["nucleus_radius"]["per_sd"] == pytest.approx(2.0, rel=1e-6) and got["nucleus_radius"]["r"] == pytest.approx(1.0)
    assert got["actin_level"]["per_sd"] == pytest.approx(-0.5, abs=0.06)
    assert -0.8 < got["actin_level"]["r"] < -0.6  # -0.5 / sqrt(0.5) = -0.71 in expectation


def test_sweep_reproduces_explains_own_figures_at_calibrated_strength(tiny_experiment, monkeypatch):
    """Re-rendered from the experiment's cache at explain's calibrated strength, the sweep's first row is explain's
    evaluation: the same shift, share in data and flip rate; the experiment folder is left as it was."""
    res, root, spec = tiny_experiment
    cfg = _tiny_configuration(monkeypatch, spec)
    sweep = _load("strength_sweep")
    att = res.attributes[0]
    before = sorted(p.relative_to(res.out) for p in res.out.rglob("*"))
    seen = []  # the real images the KID is taken against
    kid_per_level = sweep._kid_per_level

    def recorded(exp, raw, ref, sets):
        seen.append((exp.labels, sets))
        return kid_per_level(exp, raw, ref, sets)

    monkeypatch.setattr(sweep, "_kid_per_level", recorded)
    rows = sweep.sweep(res.out, att.id, cfg, root, "cpu", multiples=(3.0, 6.0))
    assert [r["strength"] for r in rows] == ["calibrated", "3 SD", "6 SD"]
    first = rows[0]
    assert first["mean_shift_sd"] == pytest.approx(att.mean_shift_sd, rel=1e-9)
    assert first["ends_in_data"] == att.ends_in_data
    assert (first["n_eligible"], first["flip_rate"]) == (att.n_eligible, att.flip_rate)
    assert [r["mean_shift_sd"] for r in rows[1:]] == pytest.approx([3.0, 6.0])
    assert sorted(p.relative_to(res.out) for p in res.out.rglob("*")) == before
    assert sweep.table(rows).count("\n") == 4
    (labels, sets), = seen
    target = res.results.class_names.index(att.target)
    assert sets["target"].tolist() == np.flatnonzero(labels == target).tolist() and sets["all"].tolist() == list(range(len(labels)))
    assert all(r["kid"][k]["n_subsets"] == 50 and r["kid"][k]["subset_size"] >= 2 for r in rows for k in ("target", "all"))


def test_sweep_kid_is_the_renders_excess_over_their_reconstructions(tiny_experiment, tmp_path):
    """Renders equal to their reconstructions have no excess; brighter ones have the excess of the features computed
    here from the real images asked for, paired in the renders' order."""
    from diffex.models.kid import kid_excess, penultimate_features

    res, _, _ = tiny_experiment
    sweep = _load("strength_sweep")
    exp, _ = sweep._open_copy(res.out, tmp_path, "cpu")
    ref = np.asarray(exp.raw[:6], np.float32)  # (6, C, H, W), standing for the reconstructions
    brighter = 1.5 * ref
    real = np.flatnonzero(exp.labels == 1)  # the images of one condition
    got = sweep._kid_per_level(exp, np.stack([ref, brighter], 1), ref, {"one": real})  # levels: unedited, brighter
    assert got[0]["one"]["excess"] == {"mean": 0.0, "sd": 0.0} and got[0]["one"]["stable"] is False
    feats = lambda x: penultimate_features(exp.pair.clf, x)  # noqa: E731
    trip = lambda x: exp.pair.raw(exp.pair.to_model_space(x)).cpu().numpy()  # noqa: E731 - the renders' round trip
    assert got[1]["one"] == kid_excess(feats(trip(np.asarray(exp.raw)[real])), feats(brighter), feats(ref))
    assert got[1]["one"] != kid_excess(feats(trip(np.asarray(exp.raw))), feats(brighter), feats(ref))  # not all the real images
    assert got[1]["one"]["excess"]["mean"] > 0

def test_h_oracle_design_and_patterns():
    """The regressors (Δ units, standardised nuisance, an angle as cos/sin of 2θ) and a pattern planted among nuisance."""
    oracle = _load("validity_h_oracle")
    rng = np.random.default_rng(3)
    n = 200
    rows = [{"path": f"{i}.tif", "condition": "a", "f": rng.normal(8, 1), "g": rng.normal(0.5, 0.1), "nucleus_area_px": 1.0,
             "orientation_deg": rng.uniform(0, 180), "gain": rng.normal(1, 0.2), "const": 3.0} for i in range(n)]
    X, names = oracle.design(rows, ("f", "g"), {"f": 2.0, "g": 0.25})
    assert names == ["intercept", "f", "g", "cos2(orientation_deg)", "sin2(orientation_deg)", "gain"]  # const: no variance
    assert np.allclose(X[:, 1], [r["f"] / 2.0 for r in rows]) and np.allclose(X[:, 5].std(), 1.0)
    a_f, a_g, a_gain = rng.normal(size=(3, 30))
    h = np.outer(X[:, 1], a_f) + np.outer(X[:, 2], a_g) + np.outer(X[:, 5], a_gain) + 0.01 * rng.normal(size=(n, 30))
    got = oracle.factor_patterns(h, X, names, ("f", "g"))
    assert np.allclose(got["f"], a_f, atol=0.01) and np.allclose(got["g"], a_g, atol=0.02)
    assert oracle._within_r(np.r_[0.0, 1, 10, 11], np.r_[0.0, 1, 0, 1], np.r_[0, 0, 1, 1]) == pytest.approx(1.0)


def test_h_oracle_renders_each_factors_pattern(tiny_experiment, monkeypatch):
    """End to end on tiny models: one row per factor; flips counted over the images whose reconstruction is not at the
    other condition (counted here independently); the in-data strength never beyond explain's full strength."""
    from test_explain import TINY

    res, root, spec = tiny_experiment
    cfg = _tiny_configuration(monkeypatch, spec)
    oracle = _load("validity_h_oracle")
    rows = oracle.run(res.out, cfg, root, "cpu")
    assert [r["factor"] for r in rows] == ["nucleus_radius", "actin_level"]
    exp, _, inv, _, _, _, _ = oracle._setup(res.out, cfg, root, "cpu")
    ev = inv.evaluation
    eligible = sum(inv.probs_rec[i].argmax() != 1 - exp.labels[i] for i in ev)  # two conditions: the target is the other
    for r in rows:
        assert r["n_eligible"] == eligible
        assert 0 <= r["in_data_shift_sd"] <= TINY.strength + 1e-9
        assert r["delta_in_sd"] == pytest.approx(r["pattern_norm"] / r["sd"])
        assert set(r["r"]) == set(r["change_at_1"]) == {"nucleus_radius", "actin_level"}
    assert oracle.table(rows, "tiny").count("\n") == 3
    # another inversion depth: everything inverted again in a fresh folder; the experiment is left as it was
    before = sorted(p.relative_to(res.out) for p in res.out.rglob("*"))
    deeper = oracle.run(res.out, cfg, root, "cpu", changes={"t_end": 500})
    assert [r["t_end"] for r in deeper] == [500, 500] and [r["t_end"] for r in rows] == [TINY.t_end] * 2
    assert sorted(p.relative_to(res.out) for p in res.out.rglob("*")) == before
    assert "t_end 500" in oracle.table(deeper, "tiny")


def test_h_oracle_counts_flips_of_the_right_frames(tiny_experiment, monkeypatch):
    """Renders replaced by planted outputs: only one frame (0: -1 Δ, 3: +1 Δ, 4: in data) is classed as each image's
    target, and the decoded change of nuclear size is the offset itself. The flips at 1 Δ with frame 0 are the images whose
    way to the other condition is down, with frame 3 those whose way is up: together every eligible image. The in-data
    frame flips every eligible image and no 1 Δ frame."""
    res, root, spec = tiny_experiment
    cfg = _tiny_configuration(monkeypatch, spec)
    oracle = _load("validity_h_oracle")
    exp, _, inv, _, _, _, _ = oracle._setup(res.out, cfg, root, "cpu")
    own = exp.labels[inv.evaluation]  # (n,) class index of each evaluation image; the target is the other one

    def planted(frame):
        def render(exp_, inv_, u, scales, dec, mode=None):
            cls = np.repeat(own[:, None], scales.shape[1], 1)  # (n, L) every frame classed as the image's own condition ...
            cls[:, frame] = 1 - own  # ... except ``frame``, classed as the target
            s_hat = np.stack([scales, np.zeros_like(scales)], -1)  # (n, L, F): nuclear size moves by the offset (h units)
            return np.eye(2)[cls], s_hat
        return render

    runs = {}
    for frame in (0, 3, 4):
        monkeypatch.setattr(oracle, "_render", planted(frame))
        runs[frame] = {r["factor"]: r for r in oracle.run(res.out, cfg, root, "cpu")}
    eligible = sum(inv.probs_rec[i].argmax() != 1 - exp.labels[i] for i in inv.evaluation)
    with open(root / "tiny" / "heldout_factors.csv", newline="") as fh:
        truth = {t["path"]: t for t in csv.DictReader(fh)}
    for f in ("nucleus_radius", "actin_level"):
        assert all(runs[k][f]["n_eligible"] == eligible for k in runs)
        assert runs[0][f]["flips_at_1"] + runs[3][f]["flips_at_1"] == pytest.approx(1.0)
        # the way down is the way of images whose condition has the higher mean of f on the selection images
        value = {exp.image_name(i): float(truth[exp.image_name(i)][f]) for i in range(len(exp.records))}
        mean = {c: np.mean([value[exp.image_name(i)] for i in inv.selection if exp.labels[i] == c]) for c in (0, 1)}
        down = [i for i in inv.evaluation if inv.probs_rec[i].argmax() == exp.labels[i] and mean[exp.labels[i]] > mean[1 - exp.labels[i]]]
        assert runs[0][f]["flips_at_1"] == pytest.approx(len(down) / eligible)
        assert (runs[4][f]["flips_in_data"], runs[4][f]["flips_at_1"]) == (1.0, 0.0)
        assert runs[0][f]["flips_in_data"] == runs[3][f]["flips_in_data"] == 0.0
    nuc, act = runs[4]["nucleus_radius"], runs[4]["actin_level"]
    assert nuc["change_at_1"] == {"nucleus_radius": pytest.approx(nuc["pattern_norm"]), "actin_level": 0.0}
    assert nuc["change_by_level"]["-0.5"] == {"nucleus_radius": pytest.approx(-0.5 * nuc["pattern_norm"]), "actin_level": 0.0}
    assert nuc["r"] == {"nucleus_radius": pytest.approx(1.0), "actin_level": 0.0}
    assert nuc["in_data_change"] > 0 and act["in_data_change"] == 0.0  # towards the target, whichever way that is


@pytest.mark.parametrize("name", ["validity_flip_ceiling", "strength_sweep", "validity_h_oracle"])
def test_the_new_modules_doctests(name):
    import doctest

    _load("validity")
    mod = _load(name)
    result = doctest.testmod(mod)
    assert result.failed == 0 and result.attempted >= 1
