"""Soft readouts against the hard ones and finite differences, and the ``hold`` method on a real sampler."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from diffex.errors import DiffexError
from diffex.explain.directions import DirectionContext, get_method
from diffex.explain.directions.hold import PROBE_IMAGES, held_projection, readout_gradients
from diffex.explain.directions.steer import probe_images
from diffex.explain.soft_readouts import ct_soft, microscopy_soft
from diffex.models.bridge import ModelPair
from diffex.models.hooks import h_shape
from diffex.models.sampler import SamplerSpec, ddim_render
from diffex.report.ct_morphology import measure_lesion
from diffex.report.morphology import measure_many

CHANNELS = ["DNA", "Actin"]


def _blobs(n=6, seed=0):
    """(n, 2, 32, 32) smooth two-channel 'cells': an elliptic nucleus in DNA, a larger, dimmer cell in Actin, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    out = np.zeros((n, 2, 32, 32))
    for i in range(n):
        cy, cx = rng.uniform(12, 20, 2)
        a, b = rng.uniform(12, 40, 2)
        out[i, 0] = 100 * np.exp(-((yy - cy) ** 2 / a + (xx - cx) ** 2 / b))
        out[i, 1] = rng.uniform(30, 60) * np.exp(-((yy - cy) ** 2 / (3 * a) + (xx - cx) ** 2 / (4 * b)))
    return out + rng.normal(0, 0.5, out.shape)


def test_soft_readouts_agree_with_the_hard_readouts_on_blobs():
    img = _blobs()
    soft = {k: v.numpy() for k, v in microscopy_soft(torch.as_tensor(img), img, CHANNELS).items()}
    hard = measure_many(img, CHANNELS)
    for c in CHANNELS:
        np.testing.assert_allclose(soft[f"{c}_AreaShape_Area"], hard[f"{c}_AreaShape_Area"], rtol=0.12)
        np.testing.assert_allclose(soft[f"{c}_AreaShape_Perimeter"], hard[f"{c}_AreaShape_Perimeter"], rtol=0.15)
        for k in ("AreaShape_Center_X", "AreaShape_Center_Y"):
            np.testing.assert_allclose(soft[f"{c}_{k}"], hard[f"{c}_{k}"], atol=0.3)
        # the moments of a soft edge: good for elongated objects, coarser for round ones (0.14 against 0.30 measured)
        np.testing.assert_allclose(soft[f"{c}_AreaShape_Eccentricity"], hard[f"{c}_AreaShape_Eccentricity"], atol=0.18)
        np.testing.assert_allclose(soft[f"{c}_Intensity_MeanIntensity"], hard[f"{c}_Intensity_MeanIntensity"], rtol=0.08)
        np.testing.assert_allclose(soft[f"{c}_Intensity_MeanIntensityImage"], hard[f"{c}_Intensity_MeanIntensityImage"], rtol=1e-12)
    # no object in the reference: NaN, not a made-up value
    flat = np.zeros((1, 2, 8, 8))
    assert np.isnan(microscopy_soft(torch.zeros(1, 2, 8, 8), flat, CHANNELS)["DNA_AreaShape_Area"].numpy()).all()


def _ct_patches(n=4):
    """Synthetic CT patches in HU at 0.8 mm, from diffex's own generator."""
    from diffex.data.synthetic_ct import CTSpec, generate_patients

    return np.stack([p[3] for _, p in zip(range(n), generate_patients(CTSpec(), n, 0))]).astype(np.float64)[:, None]  # (n, 1, H, W)


def test_soft_lesion_readouts_agree_with_the_hard_ones():
    hu = _ct_patches()
    spacing = 0.7
    soft = {k: v.numpy() for k, v in ct_soft(torch.as_tensor(hu), hu, spacing).items()}
    hard = [measure_lesion(h[0], (spacing, spacing)) for h in hu]
    col = lambda k: np.array([r[k] for r in hard])  # noqa: E731
    # the soft lesion keeps what the hard one's opening shaves off (vessel stubs within the grown region): a bit larger
    np.testing.assert_allclose(soft["Lesion_Diameter_mm"], col("Lesion_Diameter_mm"), atol=0.8)
    assert (soft["Lesion_Diameter_mm"] >= col("Lesion_Diameter_mm")).all()
    np.testing.assert_allclose(soft["Lesion_MeanHU"], col("Lesion_MeanHU"), atol=50)
    for k in ("Lesion_P10HU", "Lesion_P50HU", "Lesion_P90HU"):  # the same pixels: the same percentiles
        np.testing.assert_allclose(soft[k], col(k), rtol=1e-12)
    np.testing.assert_allclose(soft["Lesion_SolidShare"], col("Lesion_SolidShare"), atol=0.08)
    np.testing.assert_allclose(soft["Lesion_CenterX_mm"], col("Lesion_CenterX_mm"), atol=0.4)
    np.testing.assert_allclose(soft["Lesion_CenterY_mm"], col("Lesion_CenterY_mm"), atol=0.4)
    np.testing.assert_allclose(soft["Lesion_ParenchymaHU"], col("Lesion_ParenchymaHU"), atol=20)


@pytest.mark.parametrize("modality", ["microscopy", "ct"])
def test_soft_readout_gradients_match_float64_finite_differences(modality):
    ref = _blobs(2) if modality == "microscopy" else _ct_patches(2)
    soft = (lambda x: microscopy_soft(x, ref, CHANNELS)) if modality == "microscopy" else (lambda x: ct_soft(x, ref, 0.7))
    x = torch.as_tensor(ref).clone().requires_grad_(True)
    v = torch.as_tensor(np.random.default_rng(1).normal(size=ref.shape)) * (1.0 if modality == "microscopy" else 20.0)
    eps = 1e-4
    for name, val in soft(x).items():
        (g,) = torch.autograd.grad(val.sum(), x, retain_graph=True)
        with torch.no_grad():
            fd = (soft(x + eps * v)[name].sum() - soft(x - eps * v)[name].sum()) / (2 * eps)
        analytic = float((g * v).sum())
        assert analytic == pytest.approx(float(fd), rel=1e-5, abs=1e-9), name


def test_held_projection_is_the_null_space_projection():
    rng = np.random.default_rng(0)
    a, v = rng.normal(size=(3, 20)), rng.normal(size=(2, 20))
    d = held_projection(torch.as_tensor(v), torch.as_tensor(a)).numpy()
    brute = v - v @ np.linalg.pinv(a) @ a  # brute force: minus the least-squares fit by a's rows
    np.testing.assert_allclose(d, brute, atol=1e-6)
    assert np.abs(a @ d.T).max() < 1e-6


@pytest.fixture(scope="module")
def ctx64(tiny_classifier, tiny_diffusion):
    """A float64 tiny model pair and a context whose reconstructions are the sampler's own renders of x_T."""
    dm = copy.deepcopy(tiny_diffusion[1])
    dm.unet.double()
    pair = ModelPair(tiny_classifier[1], dm)
    hs = h_shape(dm)
    torch.manual_seed(0)
    n = 16
    spec = SamplerSpec(steps=3, t_end=699)
    xt = torch.randn(n, 2, 16, 16, dtype=torch.float64)
    x0 = ddim_render(dm, xt, spec)  # (n, C, H, W): the renders at Δh = 0
    labels = np.arange(n) % 2
    h = torch.randn(n, 3, *hs, dtype=torch.float64) + torch.as_tensor(labels, dtype=torch.float64).view(n, 1, 1, 1, 1)
    return DirectionContext(pair, x0, h, torch.zeros(1, *hs), np.zeros(1, int), ["control", "treated"], np.array([333, 666]), 1.0,
                            labels=labels, xt=xt, edit_sampler=spec, readouts=lambda raw: measure_many(raw, CHANNELS),
                            soft_readouts=lambda raw, ref: microscopy_soft(raw, ref, CHANNELS))


def _fd_changes(ctx, d, names, eps=1e-4):
    """Independent check: mean over the probe images of each soft readout's change per unit of d, by central differences
    of renders (no autograd)."""
    idx = torch.as_tensor(probe_images(ctx.labels, ctx.seed, PROBE_IMAGES))
    ref = ctx.pair.raw(ctx.x0[idx]).numpy()
    spec = ctx.edit_sampler
    with torch.no_grad():
        plus = ctx.soft_readouts(ctx.pair.raw(ddim_render(ctx.pair.dm, ctx.xt[idx], spec, delta=eps * d)), ref)
        minus = ctx.soft_readouts(ctx.pair.raw(ddim_render(ctx.pair.dm, ctx.xt[idx], spec, delta=-eps * d)), ref)
    return {m: float(torch.nanmean((plus[m] - minus[m]) / (2 * eps))) for m in names}


def test_readout_gradients_match_finite_differences_through_the_sampler(ctx64):
    names = ["DNA_AreaShape_Area", "Actin_Intensity_MeanIntensity", "Actin_AreaShape_Center_X"]
    images = probe_images(ctx64.labels, ctx64.seed, PROBE_IMAGES)
    g = readout_gradients(ctx64, images, names)  # (n, p, D)
    v = torch.randn(*ctx64.h_shape, dtype=torch.float64)
    fd = _fd_changes(ctx64, v, names)
    for j, m in enumerate(names):
        assert float(torch.nanmean(g[:, j] @ v.flatten())) == pytest.approx(fd[m], rel=1e-4, abs=1e-8), m


def test_hold_candidates_leave_the_held_readouts_unchanged_to_first_order(ctx64):
    from scipy.stats import spearmanr

    from diffex.explain.directions.readout import usable

    vecs, names = get_method("hold")(ctx64, 4)
    rows = ctx64.diagnostics["hold"]["candidates"]
    assert 2 <= len(vecs) == len(rows) <= 4 and all(", others held (AUC " in n for n in names)
    smooth = ctx64.diagnostics["hold"]["smooth"]
    assert all(r["readout"] in smooth for r in rows)  # only readouts whose own change can be computed
    assert all(s["why"] for s in ctx64.diagnostics["hold"]["skipped"])
    readout_names, values = usable(ctx64.readouts(ctx64.pair.raw(ctx64.x0).numpy()))
    col = {m: values[:, readout_names.index(m)] for m in smooth}

    patterns, _ = get_method("readout")(ctx64, 100)  # every readout' patterns, not held
    unheld = dict(zip([r["readout"] for r in ctx64.diagnostics["readout"]["candidates"]], patterns.double()))
    for d, row in zip(vecs.double(), rows):
        own = row["readout"]
        held = [m for m in smooth if m != own and abs(spearmanr(col[own], col[m])[0]) <= 0.7]
        assert len(held) == row["held"] >= 5
        fd = _fd_changes(ctx64, d, held)
        scale = {m: np.maximum(np.subtract(*np.percentile(col[m], [75, 25])) / 1.349, col[m].std()) for m in fd}
        moved = max(abs(fd[m]) / scale[m] for m in held)
        # power: the readout method's unprojected pattern moves the held readouts, by far more
        before = _fd_changes(ctx64, unheld[own].view(ctx64.h_shape), held)
        assert moved < 1e-4 * max(abs(before[m]) / scale[m] for m in held), row
        own_change = _fd_changes(ctx64, d, [own])[own]  # and it moves its own readout the way its name says
        assert own_change > 0 if "higher" in names[rows.index(row)] else own_change < 0
        # both point towards the same condition; the projection changed the pattern
        assert 0 < float(d.flatten() @ unheld[own].flatten()) < 0.999


def test_hold_refuses_what_it_cannot_use(ctx64):
    from dataclasses import replace

    with pytest.raises(DiffexError, match="differentiable readouts"):
        get_method("hold")(replace(ctx64, soft_readouts=None), 1)
    with pytest.raises(DiffexError, match="two images of each"):
        get_method("hold")(replace(ctx64, labels=np.zeros(16, int)), 1)


def test_cross_fitted_leak_against_brute_force():
    from diffex.explain.directions.hold import cross_fitted_leak

    rng = np.random.default_rng(0)
    g = torch.as_tensor(rng.normal(size=(1, 3, 6))).repeat(4, 1, 1)  # (n=4, p=3, D=6): every image the same gradients
    pattern = torch.as_tensor(rng.normal(size=6))
    assert cross_fitted_leak(g, 0, [1, 2], pattern) < 1e-6  # both halves agree: held exactly
    g[1::2, 1] += torch.as_tensor(rng.normal(size=6))  # the odd images' readout 1 responds otherwise
    d = held_projection(pattern[None], g[0, [1, 2]])[0]  # solved on the even images
    change = g[1] @ d  # measured with the odd images' mean gradients (all odd images alike)
    assert cross_fitted_leak(g, 0, [1, 2], pattern) == pytest.approx(abs(float(change[1])) / abs(float(change[0])), rel=1e-9)


def test_hold_names_what_it_skipped_when_nothing_is_left(ctx64):
    from dataclasses import replace

    none_smooth = replace(ctx64, soft_readouts=lambda raw, ref: {})  # no readout has a differentiable form
    with pytest.raises(DiffexError, match=r"skipped: \w+ \(no differentiable form\), .* and 10 more; --method gradient finds directions without readouts$"):
        get_method("hold")(none_smooth, 2)

