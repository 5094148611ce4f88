"""New direction generators on tiny synthetic h with planted directions: each recovers them (|cos| >= 0.9)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffex.errors import DiffexError
from diffex.explain.directions import DirectionContext, get_method

H_SHAPE = (16, 2, 2)  # D = 64


def _planted(n=120, seed=0, shift=1.0, nuisance=4.0, factor_sd=2.0):
    """h (n, S=4, *H_SHAPE): isotropic unit noise in all 64 dimensions, nuisance factors (sd ``nuisance``) along 3
    directions that do not differ between the conditions, and a true factor along the planted unit direction u
    (orthogonal to them) that varies within each condition (sd ``factor_sd``) and whose mean differs between the
    conditions by ``shift`` x 2.5 x its sd (d' 2.5, like the sample data's factors), as h carries real factors."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(64, 4)))
    u, nuis = q[:, 0], q[:, 1:]
    y = np.repeat([0, 1], n // 2)
    factor = factor_sd * (rng.normal(size=n) + 2.5 * shift * y)  # (n,)
    base = rng.normal(size=(n, 64)) + (rng.normal(size=(n, 3)) * nuisance) @ nuis.T + np.outer(factor, u)  # (n, D)
    steps = np.stack([base + 0.3 * rng.normal(size=(n, 64)) for _ in range(4)], 1)  # (n, S, D): the same per step, plus noise
    return torch.as_tensor(steps, dtype=torch.float32).view(n, 4, *H_SHAPE), y, u, nuis


def _ctx(h, labels, steps=3):
    return DirectionContext(None, torch.zeros(len(h), 1, 4, 4), h, torch.zeros(1, *H_SHAPE), np.zeros(1, int), ["control", "treated"],
                            np.arange(steps) * 100 + 400, 1.0, seed=0, labels=labels)


def test_discriminative_recovers_a_planted_condition_direction_against_stronger_nuisance():
    h, y, u, nuis = _planted()
    vecs, names = get_method("discriminative")(_ctx(h, y), 3)
    assert names == ["towards treated, mean over the edit steps", "towards treated, early steps", "towards treated, late steps"]
    flat = vecs.flatten(1).double().numpy()
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    cos = flat @ u
    assert (cos >= 0.9).all(), cos  # right direction and sign (towards treated)
    assert np.abs(flat @ nuis).max() < 0.2  # the nuisance, 4x stronger than the shift, is projected out
    # the plain mean difference is pulled towards the nuisance by chance imbalance; LDA is not worse than it
    diff = (h[y == 1].mean(0) - h[y == 0].mean(0)).mean(0).flatten().double().numpy()
    assert cos[0] >= abs(diff @ u) / np.linalg.norm(diff) - 1e-9


def test_discriminative_finds_nothing_where_the_conditions_do_not_differ():
    h, y, u, nuis = _planted(shift=0.0)
    vecs, _ = get_method("discriminative")(_ctx(h, y), 1)
    flat = vecs.flatten(1).double().numpy()[0]
    assert abs(flat @ u) / np.linalg.norm(flat) < 0.5  # no planted direction to find: not aligned with u by construction


def test_discriminative_needs_conditions():
    h, y, _, _ = _planted(n=8)
    with pytest.raises(DiffexError, match="needs the conditions"):
        get_method("discriminative")(_ctx(h, None), 1)
    with pytest.raises(DiffexError, match="two conditions"):
        get_method("discriminative")(_ctx(h, np.zeros(8, int)), 1)


def _planted_sparse(n=160, seed=0, atoms=6, noise=0.05, more_in=1):
    """h (n, S=4, *H_SHAPE) made of sparse non-negative codes on ``atoms`` orthonormal directions, plus noise.
    Atom 0 fires in 40 % of the images of condition ``more_in`` and 5 % of the others; the rest in 15 % of every image."""
    rng = np.random.default_rng(seed)
    d = np.linalg.qr(rng.normal(size=(64, atoms)))[0].T  # (atoms, D)
    y = np.repeat([0, 1], n // 2)
    p = np.full((n, atoms), 0.15)
    p[:, 0] = np.where(y == more_in, 0.4, 0.05)
    codes = rng.exponential(size=(n, atoms)) * (rng.random((n, atoms)) < p) * 3.0  # (n, atoms)
    steps = np.stack([codes @ d + noise * rng.normal(size=(n, 64)) for _ in range(4)], 1)  # (n, S, D)
    return torch.as_tensor(steps, dtype=torch.float32).view(n, 4, *H_SHAPE), y, d


def _unit_rows(vecs):
    flat = vecs.flatten(1).double().numpy()
    return flat / np.linalg.norm(flat, axis=1, keepdims=True)


def test_sparse_recovers_planted_atoms_and_ranks_the_condition_atom_first():
    h, y, d = _planted_sparse()
    ctx = _ctx(h, y)
    vecs, names = get_method("sparse")(ctx, 12)
    cos = _unit_rows(vecs) @ d.T  # (k, atoms)
    assert cos[0, 0] >= 0.9, (names[0], cos[0])  # the condition atom first, pointing towards treated
    assert names[0].startswith(("atom", )) and "towards treated (fires more in treated" in names[0]
    assert not any("other conditions" in n for n in names)
    assert np.abs(cos[1:, 0]).max() < 0.9  # near-copies of the first atom are not offered again
    diag = ctx.diagnostics["sparse"]
    assert diag["loss_last"] < 0.5 * diag["loss_first"] and diag["explained_variance"] > 0.9
    assert diag["components"] == 64 and diag["components_variance"] == pytest.approx(1.0)  # 64 components hold all of D = 64
    # the methods paragraph reports the fit as measured
    from types import SimpleNamespace

    from diffex.report.methods import _training_text
    text = _training_text(SimpleNamespace(direction_training={"sparse": diag}))[0]
    assert f"{diag['atoms']} atoms" in text and f"{100 * diag['explained_variance']:.0f} %" in text
    assert f"{diag['active_per_row']:.1f} active atoms" in text


def test_sparse_without_conditions_ranks_by_code_energy():
    h, _, d = _planted_sparse()
    vecs, names = get_method("sparse")(_ctx(h, None), 6)
    assert all("of the code energy" in n for n in names)
    cos = np.abs(_unit_rows(vecs) @ d.T)  # (6, 6)
    assert (cos.max(1) >= 0.9).all(), cos.max(1)  # each candidate is a planted atom ...
    assert sorted(cos.argmax(1)) == list(range(6))  # ... and each planted atom is offered once


def test_sparse_dictionary_recovers_sparse_codes_but_not_a_random_basis():
    """A check with power: the same fit on dense Gaussian rows (no sparse structure) matches no fixed basis."""
    rng = np.random.default_rng(1)
    d = np.linalg.qr(rng.normal(size=(20, 4)))[0].T
    from diffex.explain.directions.sparse import fit_sparse_dictionary
    sparse_x = rng.exponential(size=(800, 4)) * (rng.random((800, 4)) < 0.2) @ d
    dense_x = rng.normal(size=(800, 4)) @ d * 0.5
    for x, expect in ((sparse_x, True), (dense_x, False)):
        fit = fit_sparse_dictionary(torch.as_tensor(x), atoms=8, seed=0)
        best = np.abs(fit.atoms.numpy() @ d.T).max(0)
        assert bool((best >= 0.95).all()) is expect, best


def _planted_ignored(n=120, seed=0):
    """The planted data plus a second direction v along which the conditions differ more strongly (d' 4) but the
    classifier never looks: the per-image gradients span u and two other directions, not v."""
    h, y, u, nuis = _planted(n=n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    basis = np.linalg.qr(np.column_stack([u, nuis, rng.normal(size=(64, 3))]))[0]
    v, others = basis[:, 4], basis[:, 5:7]
    h = h + torch.as_tensor(np.outer(4.0 * y + rng.normal(size=n), v), dtype=torch.float32).view(n, 1, *H_SHAPE)
    coef = rng.normal(size=(24, 3))
    grads = torch.as_tensor(coef @ np.column_stack([u, others]).T, dtype=torch.float32).view(24, *H_SHAPE)
    return h, y, u, v, grads


def test_gradspan_finds_the_condition_direction_the_classifier_looks_at():
    h, y, u, v, grads = _planted_ignored()
    ctx = _ctx(h, y)
    ctx.grads = grads
    vecs, names = get_method("gradspan")(ctx, 3)
    assert names[0] == "towards treated in the gradient span (3 axes), mean over the edit steps"
    cos = _unit_rows(vecs)
    assert (cos @ u >= 0.9).all(), cos @ u
    assert np.abs(cos @ v).max() < 1e-6  # v lies outside the gradients' span
    plain = _unit_rows(get_method("discriminative")(ctx, 1)[0])[0]
    assert plain @ u < 0.7 and abs(plain @ v) > 0.5  # without the span, the stronger, ignored difference dominates


def test_gradspan_needs_conditions_and_gradients():
    h, y, _, _, grads = _planted_ignored(n=20)
    ctx = _ctx(h, None)
    ctx.grads = grads
    with pytest.raises(DiffexError, match="gradspan method needs the conditions"):
        get_method("gradspan")(ctx, 1)
    with pytest.raises(DiffexError, match="non-zero classifier gradients"):
        get_method("gradspan")(_ctx(h, y), 1)


def test_sparse_candidates_point_towards_the_condition_they_name():
    """The condition atom fires more in control: the candidate towards treated removes it (-d), and says so."""
    h, y, d = _planted_sparse(more_in=0)
    vecs, names = get_method("sparse")(_ctx(h, y), 3)
    cos = _unit_rows(vecs) @ d.T
    assert cos[0, 0] <= -0.9, (names[0], cos[0])
    assert "towards treated (fires more in control" in names[0]
    along = h.flatten(2).mean(1).double().numpy() @ _unit_rows(vecs)[0]  # each image's coordinate along the candidate
    assert along[y == 1].mean() > along[y == 0].mean()  # it points towards treated, as named


def test_sparse_with_three_conditions_names_the_condition_an_atom_separates():
    h, y2, d = _planted_sparse(n=240)
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], 80)
    codes = rng.exponential(size=(240, 6)) * (rng.random((240, 6)) < 0.15) * 3.0
    codes[:, 0] = rng.exponential(size=240) * (rng.random(240) < np.array([0.02, 0.2, 0.45])[y]) * 3.0  # fires most in "c"
    steps = np.stack([codes @ d + 0.05 * rng.normal(size=(240, 64)) for _ in range(4)], 1)
    ctx = _ctx(torch.as_tensor(steps, dtype=torch.float32).view(240, 4, *H_SHAPE), y)
    ctx.class_names = ["a", "b", "c"]
    vecs, names = get_method("sparse")(ctx, 3)
    cos = _unit_rows(vecs) @ d.T
    assert abs(cos[0, 0]) >= 0.9 and names[0].startswith("atom ") and " towards " in names[0], (names, cos[:, 0])
    along = torch.as_tensor(steps).mean(1).double().numpy() @ _unit_rows(vecs)[0]
    named = names[0].split(" towards ")[1].split(" ")[0]
    means = {c: along[y == i].mean() for i, c in enumerate(ctx.class_names)}
    assert named in ("a", "c") and means[named] == (max if named == "c" else min)(means.values())


def test_sparse_refuses_h_that_does_not_vary_and_conditions_of_one_image():
    h, y, _ = _planted_sparse(n=20)
    with pytest.raises(DiffexError, match="h that varies"):
        get_method("sparse")(_ctx(torch.ones_like(h), y), 2)
    y1 = np.zeros(20, int)
    y1[0] = 1
    with pytest.raises(DiffexError, match="two images of each condition"):
        get_method("sparse")(_ctx(h, y1), 2)


def test_gradspan_uses_every_axis_of_the_span_even_the_weakest():
    """u is the gradients' weakest of three axes: the rank choice must be able to reach 3, not only powers of two."""
    h, y, u, nuis = _planted(seed=4)
    rng = np.random.default_rng(5)
    others = np.linalg.qr(np.column_stack([u, nuis, rng.normal(size=(64, 2))]))[0][:, 4:6]
    coef = rng.normal(size=(24, 3)) * np.array([0.2, 3.0, 2.0])  # u weakest
    ctx = _ctx(h, y)
    ctx.grads = torch.as_tensor(coef @ np.column_stack([u, others]).T, dtype=torch.float32).view(24, *H_SHAPE)
    from diffex.explain.directions.gradspan import gradient_axes
    axes = gradient_axes(ctx.grads).numpy()
    assert axes.shape[1] == 3 and abs(axes[:, 2] @ u) > 0.9  # the planted direction is the last axis
    vecs, _ = get_method("gradspan")(ctx, 1)
    assert _unit_rows(vecs)[0] @ u >= 0.9


def test_changed_methods_carry_a_version_into_the_cache_key():
    from diffex.explain.directions import method_versions
    assert method_versions(["gradient", "pca", "sparse", "gradspan"]) == {"sparse": 2, "gradspan": 2}
    assert method_versions(["gradient", "pca"]) == {}  # first versions leave existing cache keys as they were
