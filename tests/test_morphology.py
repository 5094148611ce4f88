"""Morphology measurements and their trends along traversals."""

from __future__ import annotations

import numpy as np

from diffex.report.morphology import describe, measure, trend


def _disk(r: float, size: int = 48, value: float = 100.0, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    img = np.where((yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= r**2, value, 0.0)
    img += np.random.default_rng(seed).normal(0, noise, img.shape) * (img > 0)
    return img[None]


def test_area_perimeter_count():
    m = measure(_disk(10), ["DNA"])
    assert abs(m["DNA_AreaShape_Area"] - np.pi * 100) / (np.pi * 100) < 0.05
    assert abs(m["DNA_AreaShape_Perimeter"] - 2 * np.pi * 10) / (2 * np.pi * 10) < 0.15
    assert m["DNA_Count_Objects"] == 1 and m["DNA_AreaShape_Eccentricity"] < 0.2
    two = _disk(5) + np.roll(_disk(5), 14, axis=2)
    assert measure(two, ["DNA"])["DNA_Count_Objects"] == 2


def test_texture_orders_smooth_and_rough():
    yy, xx = np.mgrid[:48, :48]
    smooth = _disk(15) * (1 + 0.3 * np.sin(xx / 8.0))[None]  # slow variation
    rough = _disk(15) * (1 + 0.3 * np.sign(np.sin(xx * np.pi / 1.0 + 0.5)))[None]  # pixel-scale stripes
    ms, mr = measure(smooth, ["A"]), measure(rough, ["A"])
    assert mr["A_Texture_Contrast"] > 3 * ms["A_Texture_Contrast"]
    assert mr["A_Texture_Homogeneity"] < ms["A_Texture_Homogeneity"]


def test_blank_channel_gives_nan_not_an_error():
    m = measure(np.zeros((1, 16, 16)), ["X"])
    assert np.isnan(m["X_AreaShape_Area"]) and m["X_Intensity_MeanIntensityImage"] == 0


def test_trend_and_description():
    strengths = np.tile(np.linspace(-1, 1, 5), (3, 1))  # (3 images, 5 strengths)
    areas = np.array([[measure(_disk(8 + 2 * s + i), ["DNA"])["DNA_AreaShape_Area"] for s in row] for i, row in enumerate(strengths)])
    ref = np.array([measure(_disk(8 + i), ["DNA"])["DNA_AreaShape_Area"] for i in range(3)])
    t = trend(strengths, areas, ref, 0)
    assert t["spearman_r"] > 0.99 and t["change_at_max"] > 0.3 and t["change_at_min"] < -0.3
    flat = trend(strengths, np.ones((3, 5)), np.ones(3), 0)
    text = describe({"DNA_AreaShape_Area": t, "Actin_AreaShape_Area": flat})
    assert text.startswith("DNA area +") and "Actin" not in text
    assert describe({"Actin_AreaShape_Area": flat}) == "no consistent morphological change measured"


def test_consistency_on_constructed_traversals_with_known_answers():
    from diffex.report.morphology import consistency

    s = np.linspace(-1, 1, 5)
    same = np.stack([100 + k * 10 * s for k in (0.8, 1.0, 1.2, 1.5)])  # every image grows by 16-30, median 22
    assert consistency(same) == 1.0
    mixed = np.stack([100 + 10 * s, 100 + 10 * s, 100 - 10 * s, 100 + 40 * s, 100 + 1 * s])  # +20, +20, -20, +80, +2
    assert consistency(mixed) == 0.4  # median +20: two within [10, 40]; -20 wrong sign, +80 and +2 too far
    assert consistency(mixed, within=4.0) == 0.6  # +80 is within 4x
    with_nan = np.vstack([same, [np.nan] * 5])
    assert consistency(with_nan) == 1.0  # an image without a measurement is left out
    assert np.isnan(consistency(np.ones((3, 5))))  # nothing changes: undefined, not 100 %
