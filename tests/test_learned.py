"""The ``learned`` method (shift module + reconstructor + discriminator through the sampler) on a tiny model."""

from __future__ import annotations

import types
from dataclasses import replace

import numpy as np
import pytest
import torch

from diffex.errors import DiffexError
from diffex.explain.directions import DirectionContext, generate
from diffex.explain.directions import learned as L
from diffex.models.diffusion import tiny_model
from diffex.models.hooks import h_shape, record_h
from diffex.models.sampler import SamplerSpec, ddim_invert, ddim_render

SPEC = SamplerSpec(steps=4, t_end=699)
FAST = replace(L.PRESETS["reduced"], iterations=60, batch=8, steps=4, eval_pairs=96)


def _ctx(n=24, cache=None) -> DirectionContext:
    """Real inversions of random images by an untrained tiny UNet, with the h of their renders."""
    dm = tiny_model(in_channels=1, size=8)
    torch.manual_seed(0)
    x0 = torch.rand(n, 1, 8, 8) * 2 - 1
    xt = ddim_invert(dm, x0, SPEC)
    store: list = []
    with torch.no_grad(), record_h(dm.unet, store):
        xrec = ddim_render(dm, xt, SPEC)
    h = torch.stack(store, 1)  # (N, S, *h)
    return DirectionContext(types.SimpleNamespace(dm=dm), xrec, h, torch.zeros(1, *h_shape(dm)), np.zeros(1, int), ["a", "b"],
                            SPEC.timesteps(1000), 1.0, xt=xt, sampler=SPEC, cache=cache, cache_inputs={"images": "test"})


@pytest.fixture(scope="module")
def trained():
    ctx = _ctx()
    return ctx, *L.train_learned(ctx, 3, FAST, SPEC)


def test_loss_decreases_and_the_reconstructor_beats_chance(trained):
    _, dirs, rec = trained
    loss = np.asarray(rec["history"]["loss"])
    assert loss[-6:].mean() < 0.5 * loss[:6].mean(), (loss[:6], loss[-6:])
    ev = rec["evaluation"]
    assert ev["pairs"] == 96 and ev["chance"] == pytest.approx(1 / 3)
    # fresh pairs, never trained on: the direction is named far above chance (one-sided exact binomial test)
    assert ev["accuracy"] > 0.7 and ev["p_value"] < 1e-10, ev
    assert ev["p_value"] == pytest.approx(L.binomial_tail(round(ev["accuracy"] * 96), 96, 1 / 3))
    assert ev["shift_mae"] < ev["shift_mae_of_guessing_zero"]
    # ordered by how well the reconstructor tells them apart
    acc = ev["accuracy_per_direction"]
    assert acc == sorted(acc, reverse=True)


def test_directions_are_orthonormal_and_deterministic(trained):
    ctx, dirs, _ = trained
    flat = dirs.flatten(1).double()
    torch.testing.assert_close(flat @ flat.T, torch.eye(3, dtype=torch.float64), atol=1e-5, rtol=0)
    again, _ = L.train_learned(ctx, 3, replace(FAST, iterations=60), SPEC)
    torch.testing.assert_close(again, dirs)


def test_shifts_are_calibrated_to_the_real_spread(trained):
    """A shift of ε moves each real image's coordinate along d_k by exactly ε · strength · σ_k."""
    ctx, _, _ = trained
    tr = L._Trainer(ctx, 3, FAST, SPEC)
    dirs = tr.directions().detach()
    kk, eps = torch.tensor([0, 2, 1]), torch.tensor([0.5, -1.0, 0.25])
    delta = tr.shifts(dirs, kk, eps).flatten(1).double()  # (3, D)
    hbar = ctx.h[:, : len(ctx.timesteps)].double().mean(1).flatten(1)
    sigma = ((hbar - hbar.mean(0)) @ dirs.double().T).std(0)  # (K,) brute force, float64
    moved = (delta * dirs.double()[kk]).sum(1)
    torch.testing.assert_close(moved, eps.double() * FAST.strength_sd * sigma[kk], rtol=1e-4, atol=0)
    # and only along d_k
    torch.testing.assert_close(delta.norm(dim=1), moved.abs(), rtol=1e-4, atol=0)


def test_binomial_tail_against_a_known_answer():
    assert L.binomial_tail(0, 10, 0.3) == pytest.approx(1.0)
    assert L.binomial_tail(10, 10, 0.5) == pytest.approx(2.0**-10)
    assert L.binomial_tail(2, 4, 0.5) == pytest.approx(11 / 16)


def test_orthonormal_keeps_the_span_and_fixes_signs():
    raw = torch.tensor([[3.0, 0.0, 0.0], [1.0, 2.0, 0.0]])
    q = L.orthonormal(raw)
    torch.testing.assert_close(q, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))


def test_training_is_cached_and_reused(tmp_path, monkeypatch):
    ctx = _ctx(cache=tmp_path)
    monkeypatch.setattr(L, "PRESETS", {**L.PRESETS, "reduced": replace(FAST, iterations=3, eval_pairs=8)})
    first = generate(ctx, ["learned"], k=2)
    assert (tmp_path / "learned.safetensors").exists()
    assert first.diagnostics["learned"]["settings"]["iterations"] == 3 and "history" not in first.diagnostics["learned"]

    def fail(*a, **k):
        raise AssertionError("retrained although the cached training matches")

    monkeypatch.setattr(L, "train_learned", fail)
    second = generate(_ctx(cache=tmp_path), ["learned"], k=2)
    torch.testing.assert_close(second.vectors, first.vectors)
    # other settings are not served from that cache
    monkeypatch.setattr(L, "PRESETS", {**L.PRESETS, "reduced": replace(FAST, iterations=4, eval_pairs=8)})
    with pytest.raises(AssertionError, match="retrained"):
        generate(_ctx(cache=tmp_path), ["learned"], k=2)


def test_bad_settings_are_errors():
    with pytest.raises(DiffexError, match="learned_setting must be one of"):
        L.resolve_setting("huge", "cpu")
    assert L.resolve_setting("auto", "cuda") == L.PRESETS["full"]
    with pytest.raises(DiffexError, match="k >= 2"):
        L.train_learned(_ctx(n=4), 1, FAST, SPEC)
    with pytest.raises(DiffexError, match="x_T"):
        L.train_learned(replace(_ctx(n=4), xt=None), 2, FAST, SPEC)


def test_explain_with_learned_records_its_training(tiny_classifier, tiny_diffusion, cells, tmp_path, monkeypatch):
    """An explain run with ``--method learned``: the training is cached, recorded in results.json and described."""
    import json

    from test_explain import TINY

    from diffex.explain import explain

    monkeypatch.setitem(L.PRESETS, "reduced", replace(FAST, iterations=4, batch=4, steps=2, eval_pairs=8))
    cfg = replace(TINY, methods=("learned", "pca"))
    res = explain(tiny_classifier[0], cells, tmp_path / "exp", tiny_diffusion[0], cfg, device="cpu", show_progress=False)
    assert (res.out / "cache" / "learned.safetensors").exists()
    r = json.loads((res.out / "results.json").read_text())
    lt = r["direction_training"]["learned"]
    assert lt["settings"]["iterations"] == 4 and lt["k"] == 2 and lt["evaluation"]["pairs"] == 8
    assert any(c["name"].startswith("learned:") for c in r["candidates"])
    html = (res.out / "report.html").read_text()
    assert "the reconstructor named the direction in" in html
