"""The ``readout`` direction method on tiny synthetic h with planted readout patterns."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffex.errors import DiffexError
from diffex.explain.directions import DirectionContext, get_method
from diffex.explain.directions.readout import normal_scores, partial_patterns
from diffex.explain.directions.steer import steering_coordinates

H_SHAPE = (16, 2, 2)  # D = 64


def _planted(n=160, seed=0, flip=False):
    """h (n, S=4, *H_SHAPE) carrying three readouts along orthonormal patterns u_a, u_b, u_c, plus strong noise.

    Readouts a (d' 3) and b (d' 2) both differ between the conditions, so they are correlated over the pooled
    images; c (a nuisance) does not. The readout table also has a noisy monotone copy of a, a constant and a
    readout missing in most images."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(64, 6)))
    u = q[:, :3].T  # (3, D): a, b, c
    y = np.repeat([0, 1], n // 2)
    z = rng.normal(size=(n, 3)) + np.outer(y, [3.0, 2.0, 0.0])  # (n, 3) readouts' true values
    base = z @ (2.0 * u) + rng.normal(size=(n, 3)) @ (3.0 * q[:, 3:].T) + rng.normal(size=(n, 64))  # (n, D)
    steps = np.stack([base + 0.3 * rng.normal(size=(n, 64)) for _ in range(4)], 1)  # (n, S, D)
    missing = np.full(n, np.nan)
    missing[:5] = 1.0
    table = {"DNA_AreaShape_Area": 50 + 10 * z[:, 0], "Actin_Intensity_MeanIntensity": 0.3 + 0.05 * z[:, 1],
             "DNA_AreaShape_Perimeter": np.exp(0.2 * (z[:, 0] + 0.3 * rng.normal(size=n))),
             "DNA_AreaShape_Center_X": 16 + 2 * z[:, 2], "DNA_Count_Objects": np.ones(n), "DNA_Texture_Contrast": missing}
    labels = 1 - y if flip else y
    return torch.as_tensor(steps, dtype=torch.float32).view(n, 4, *H_SHAPE), labels, u, table


def _ctx(h, labels, table):
    """A context whose 'images' carry their index in pixel (0, 0, 0), so that the readouts can be looked up."""
    x0 = torch.zeros(len(h), 1, 4, 4)
    x0[:, 0, 0, 0] = torch.arange(len(h), dtype=torch.float32)

    def readouts(raw):
        idx = raw[:, 0, 0, 0].round().astype(int)
        return {k: np.asarray(v)[idx] for k, v in table.items()}

    return DirectionContext(SimpleNamespace(raw=lambda x: x), x0, h, torch.zeros(1, *H_SHAPE), np.zeros(1, int),
                            ["control", "treated"], np.array([400, 500, 600]), 1.0, seed=0, labels=labels,
                            readouts=None if table is None else readouts)


def _unit(vecs):
    flat = vecs.flatten(1).double().numpy()
    return flat / np.linalg.norm(flat, axis=1, keepdims=True)


def test_readout_directions_each_move_one_readout_although_the_readouts_are_correlated():
    h, y, u, table = _planted()
    ctx = _ctx(h, y, table)
    vecs, names = get_method("readout")(ctx, 3)
    assert names == ["towards treated: DNA area higher (AUC 0.99)", "towards treated: Actin object intensity higher (AUC 0.91)",
                     "towards treated: DNA x position higher (AUC 0.55)"]
    cos = _unit(vecs) @ u.T  # (3 candidates, 3 patterns)
    assert cos[0, 0] >= 0.9 and cos[1, 1] >= 0.9, cos  # each its own readout, pointing towards treated
    assert abs(cos[0, 1]) < 0.2 and abs(cos[1, 0]) < 0.2, cos  # and not the other readout
    assert abs(cos[2, 2]) >= 0.9, cos  # the nuisance readout, which does not separate the conditions, comes last
    # power: along the conditions' mean difference of h the two readouts are mixed, so specificity is not free
    diff = (h[y == 1].mean(0) - h[y == 0].mean(0)).mean(0).flatten().double().numpy()
    mixed = np.abs(u @ diff / np.linalg.norm(diff))
    assert mixed[0] > 0.5 and mixed[1] > 0.4, mixed
    # the copy of the area, the constant and the mostly missing readout are not covariates
    assert ctx.diagnostics["readout"]["covariates"] == ["DNA_AreaShape_Area", "Actin_Intensity_MeanIntensity", "DNA_AreaShape_Center_X"]
    auc = ctx.diagnostics["readout"]["candidates"][0]["auc"]
    a = table["DNA_AreaShape_Area"]
    assert auc == pytest.approx(float((a[y == 1][:, None] > a[y == 0][None]).mean()), abs=1e-4)  # brute-force AUC


def test_readout_candidates_point_towards_the_condition_they_name():
    h, y, u, table = _planted(flip=True)  # now the area is lower in treated
    vecs, names = get_method("readout")(_ctx(h, y, table), 2)
    assert names[0].startswith("towards treated: DNA area lower (AUC 0.0")
    assert (_unit(vecs) @ u.T)[0, 0] <= -0.9  # the area goes down, towards treated


def test_partial_patterns_equal_a_brute_force_ridge_regression_in_the_full_space():
    rng = np.random.default_rng(3)
    n, d, p = 40, 12, 3
    h = torch.as_tensor(rng.normal(size=(n, 2, d)))  # n > d: the principal basis spans all of h
    z = normal_scores(rng.normal(size=(n, p)) ** 3)
    got = partial_patterns(h, z, rank=64).numpy()
    want = np.zeros((p, d))
    for s in range(2):
        x = h[:, s].numpy() - h[:, s].numpy().mean(0)
        b = np.linalg.inv(z.T @ z / n + 0.1 * np.eye(p)) @ z.T @ x / n  # (p, d)
        want += b / np.linalg.norm(b, axis=1, keepdims=True)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-10)


def test_normal_scores_are_rank_based_and_standard():
    s = normal_scores(np.array([[1.0], [100.0], [2.0], [3.0]]))[:, 0]
    np.testing.assert_allclose(s, [-1.150349, 1.150349, -0.318639, 0.318639], atol=1e-6)  # Φ⁻¹(1/8, 7/8, 3/8, 5/8)


def test_readout_method_refuses_what_it_cannot_use():
    h, y, _, table = _planted(n=20)
    with pytest.raises(DiffexError, match="needs the conditions"):
        get_method("readout")(_ctx(h, None, table), 1)
    with pytest.raises(DiffexError, match="readouts"):
        get_method("readout")(_ctx(h, y, None), 1)
    with pytest.raises(DiffexError, match="no readout that varies"):
        get_method("readout")(_ctx(h, y, {"DNA_Count_Objects": np.ones(20)}), 1)
    with pytest.raises(DiffexError, match="two images of each"):
        get_method("readout")(_ctx(h, np.r_[1, np.zeros(19, int)], table), 1)


def test_explain_with_readout_measures_the_reconstructions_and_says_so(tiny_classifier, tiny_diffusion, cells, tmp_path):
    """An explain run with ``--method readout --method steer --method hold``: candidates, covariates and methods sentences
    reach results.json and the report."""
    import json
    from dataclasses import replace

    from test_explain import TINY

    from diffex.explain import explain
    from diffex.report.html import write_report
    from diffex.report.morphology import measurement_label

    res = explain(tiny_classifier[0], cells, tmp_path / "exp", tiny_diffusion[0], replace(TINY, methods=("readout", "steer", "hold")),
                  device="cpu", show_progress=False)
    r = json.loads((res.out / "results.json").read_text())
    ro = r["direction_training"]["readout"]
    names = [c["name"] for c in r["candidates"] if c["name"].startswith("readout:")]
    assert names and all(n.startswith("readout:towards ") for n in names)
    st = r["direction_training"]["steer"]
    assert st["renders"] == 2 * st["axes"] * st["probe_images"] and st["held"] and all(c.startswith(("DNA_", "Actin_")) for c in st["held"])
    assert [c["readout"] for c in ro["candidates"]][: len(names)] == ro["covariates"][: len(names)]
    assert all(c.startswith(("DNA_", "Actin_")) for c in ro["covariates"])
    html = (res.out / "report.html").read_text()
    assert f"with {len(ro['covariates'])} readouts as covariates" in html
    assert f"The steered directions were solved from {st['renders']} probe renders" in html
    ho = r["direction_training"]["hold"]
    assert ho["smooth"] and all(c["held"] <= len(ho["smooth"]) for c in ho["candidates"])
    assert f"The held directions used gradients of the readouts through the sampler on {ho['probe_images']} selection images" in html
    # every attribute records the readout its name promises and the way it moves towards the target; the report flags the
    # ones whose renders do not move it that way (recomputed here from the trends in results.json)
    rows = {f"{m}:{c['name']}": c for m in ("readout", "steer", "hold") for c in r["direction_training"][m]["candidates"]}
    assert len(rows) == sum(len(r["direction_training"][m]["candidates"]) for m in ("readout", "steer", "hold"))
    flagged = 0
    for a in r["attributes"]:
        row = rows[a["name"]]
        assert row["name"].split(": ", 1)[1].startswith(measurement_label(row["readout"]) + (" higher" if row["higher"] else " lower"))
        assert (a["named_measure"], a["named_direction"]) == (row["readout"], (1 if row["higher"] else -1) * a["sign"])
        trend = a["morphology"].get(a["named_measure"])
        flagged += trend is not None and a["named_direction"] * trend["spearman_r"] < 0.5
    assert r["attributes"] and html.count("<p>Its name says") == flagged
    # the report flags an attribute whose renders move its named readout the other way
    a = r["attributes"][0]
    a["morphology"][a["named_measure"]]["spearman_r"] = -0.9 * a["named_direction"]
    (res.out / "results.json").write_text(json.dumps(r))
    html = write_report(res.out).read_text()
    way = "higher" if a["named_direction"] > 0 else "lower"
    assert html.count("<p>Its name says") == 1 + sum(
        b["named_direction"] * b["morphology"].get(b["named_measure"], {"spearman_r": 1.0})["spearman_r"] < 0.5 for b in r["attributes"][1:])
    assert f"do not consistently move {measurement_label(a['named_measure'])} {way} towards {a['target']}" in html


def _steer_world(n=40, seed=0):
    """h with its variance in a 10-dimensional subspace, and a linear 'renderer' whose 3 readouts respond to an edit
    through a mixing matrix M (3, D) within that subspace: readout j's gradient M[j] moves the other readouts too."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(64, 10)))[0]  # (D, 10)
    h = rng.normal(size=(n, 3, 10)) * np.linspace(4, 1, 10) @ basis.T + 0.05 * rng.normal(size=(n, 3, 64))  # (n, S, D)
    mix = np.array([[1.0, 0.6, 0.0], [0.5, 1.0, 0.4], [0.0, 0.5, 1.0]])  # correlated responses
    m = mix @ rng.normal(size=(3, 10)) @ basis.T  # (3, D)
    y = np.repeat([0, 1], n // 2)
    base = rng.normal(size=(n, 3)) + np.outer(y, [2.0, 1.0, 0.2])  # readouts of the reconstructions
    return torch.as_tensor(h, dtype=torch.float32).view(n, 3, *H_SHAPE), y, m, base


def _steer_ctx(monkeypatch, y, m, base, h, names):
    from diffex.explain.directions import steer

    def render(dm, xt, offsets, spec, batch_size=32, scales=None):  # image i under offset e: its readouts + M offset
        moved = offsets.flatten(1).double().numpy() @ m.T  # (E, p)
        return torch.as_tensor(xt.double().numpy()[:, None, 0, 0, :] + moved[None])[:, :, None, None]  # (n, E, 1, 1, p)

    monkeypatch.setattr(steer.sampler, "render_edits", render)
    x0 = torch.as_tensor(base[:, None, None], dtype=torch.float32)  # (n, 1, 1, p): the reconstructions carry their readouts
    return DirectionContext(SimpleNamespace(raw=lambda x: x, dm=SimpleNamespace(device="cpu")), x0, h, torch.zeros(1, *H_SHAPE),
                            np.zeros(1, int), ["control", "treated"], np.array([400, 500, 600]), 1.0, seed=0, labels=y,
                            xt=x0, readouts=lambda raw: {k: raw[:, 0, 0, j] for j, k in enumerate(names)})


@pytest.mark.parametrize("flip", [False, True])
def test_steer_inverts_the_measured_responses_so_that_one_readout_moves_alone(monkeypatch, flip):
    h, y, m, base = _steer_world()
    order = [2, 0, 1]  # the readout table starts with the one that separates least, so that held order != table order
    m, base = m[order], base[:, order]
    names = ["DNA_AreaShape_Eccentricity", "DNA_AreaShape_Area", "Actin_Intensity_MeanIntensity"]
    ctx = _steer_ctx(monkeypatch, 1 - y if flip else y, m, base, h, names)
    vecs, out = get_method("steer")(ctx, 3)
    word = "lower" if flip else "higher"
    assert [o.split(",")[0] for o in out] == [f"towards treated: DNA area {word}", f"towards treated: Actin object intensity {word}",
                                              f"towards treated: DNA eccentricity {word}"]
    assert ctx.diagnostics["steer"]["held"] == [names[1], names[2], names[0]]
    spread = np.maximum((np.percentile(base, 75, axis=0) - np.percentile(base, 25, axis=0)) / 1.349, base.std(0))
    effect = vecs.flatten(1).double().numpy() @ m.T / spread  # (3 edits, 3 table columns) in each readout's SDs
    for i, col in enumerate([1, 2, 0]):
        own = -effect[i, col] if flip else effect[i, col]  # towards treated: up, or down when treated is lower
        assert own > 0 and np.delete(np.abs(effect[i]), col).max() < 0.05 * own, effect
    leak = [c["leak"] for c in ctx.diagnostics["steer"]["candidates"]]
    assert max(leak) < 0.05 and ctx.diagnostics["steer"]["renders"] == 2 * 16 * 12  # noiseless: both halves agree
    # setup check: each readout's own gradient direction M[j] moves the others by a large share
    naive = (m @ m.T) / spread
    assert max(np.delete(np.abs(naive[j]), j).max() / naive[j, j] for j in range(3)) > 0.3


def test_steer_keeps_readouts_whose_values_mostly_tie_and_refuses_unmoved_renders(monkeypatch):
    h, y, m, base = _steer_world()
    base[:, 2] = np.where(np.arange(len(base)) % 10 == 0, 0.5, 1.0)  # a share that is 1 in 90 % of the images: IQR 0
    names = ["DNA_AreaShape_Area", "Actin_Intensity_MeanIntensity", "DNA_AreaShape_Solidity"]
    ctx = _steer_ctx(monkeypatch, y, m, base, h, names)
    get_method("steer")(ctx, 3)
    assert "DNA_AreaShape_Solidity" in ctx.diagnostics["steer"]["held"]
    with pytest.raises(DiffexError, match="moved none of the readouts"):
        get_method("steer")(_steer_ctx(monkeypatch, y, 0 * m, base, h, names), 3)


def test_cross_fitted_leak_sees_what_the_in_sample_fit_hides():
    from diffex.explain.directions.steer import cross_fitted_leak

    rng = np.random.default_rng(2)
    r = rng.normal(size=(16, 3))
    same = np.repeat(r[None], 6, axis=0)  # (n, q, p): every image responds alike
    pred = steering_coordinates(r) @ r
    want = [np.delete(np.abs(pred[j]), j).max() / abs(pred[j, j]) for j in range(3)]  # brute force, in sample
    np.testing.assert_allclose(cross_fitted_leak(same), want, rtol=1e-9)
    noisy = same + np.where(np.arange(6)[:, None, None] % 2 == 1, rng.normal(size=(6, 16, 3)), 0.0)  # the test half differs
    assert cross_fitted_leak(noisy).max() > 10 * max(want)


def test_steering_coordinates_approach_the_exact_minimum_norm_solution():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(10, 4))
    a = steering_coordinates(r)  # (4, 10)
    exact = np.linalg.pinv(r.T)  # (10, 4): min-norm a with rᵀ a = e_j, column j
    np.testing.assert_allclose(a @ r, np.eye(4), atol=0.05)
    assert np.abs(a.T - exact).max() < 0.05 * np.abs(exact).max()


def test_attribute_records_its_named_readout_and_the_way_it_moves_towards_the_target():
    """named_direction is the name's way times the pick's sign: a pick against the name moves the readout the other way."""
    from diffex.explain.directions import Candidates
    from diffex.explain.select import _attribute

    NS = SimpleNamespace

    rows = [{"name": "towards treated: DNA area higher (AUC 0.80)", "readout": "DNA_AreaShape_Area", "higher": True},
            {"name": "towards treated: Actin object intensity lower (AUC 0.20)", "readout": "Actin_Intensity_MeanIntensity",
             "higher": False}]
    cands = Candidates(torch.zeros(3, 2), [f"readout:{r['name']}" for r in rows] + ["gradient:mean"],
                       diagnostics={"readout": {"candidates": rows}})
    exp = NS(class_names=["control", "treated"], cfg=NS(strength=3.0))
    stats = dict(n_images=10, n_eligible=9, baseline_at_target=0.1, mean_delta_p=0.2, mean_abs_delta_p=0.2, delta_p_ci95=[0.1, 0.3],
                 flip_rate=0.5, coverage=0.5, cumulative_flip_rate=0.5)
    sep = {"auc": 0.8, "cohens_d": 1.0, "p_value": 0.001}

    def attribute(candidate, sign, target):
        pick = NS(target=target, rank=1, candidate=candidate, sign=sign, selection_mean_delta_p=0.2, selection_lower_bound=0.1)
        a = _attribute(exp, cands, NS(scores=np.zeros(3)), pick, stats, sep, {"control": 5, "treated": 5}, {})
        return a.named_measure, a.named_direction

    assert attribute(0, +1, 1) == ("DNA_AreaShape_Area", +1)
    assert attribute(0, -1, 0) == ("DNA_AreaShape_Area", -1)  # towards control along -d: DNA area falls
    assert attribute(1, +1, 1) == ("Actin_Intensity_MeanIntensity", -1)
    assert attribute(1, -1, 1) == ("Actin_Intensity_MeanIntensity", +1)  # picked against its name: intensity rises
    assert attribute(2, -1, 0) == ("", 0)  # an unnamed method
    old = Candidates(cands.vectors, cands.names, diagnostics={"readout": {"candidates": [{"readout": "DNA_AreaShape_Area"}]}})
    assert old.named(0) == ("", 0)  # cached before the way was recorded: not guessed from the name
