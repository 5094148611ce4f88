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
