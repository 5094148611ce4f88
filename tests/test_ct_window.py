"""HU windows (presets, explicit, several as channels) and resampling to a fixed spacing in mm."""

from __future__ import annotations

import numpy as np
import pytest

from diffex.data.ct_window import hu_channels, parse_windows, preset, resample_to_spacing, window_normalization
from diffex.errors import DiffexError


def test_presets_are_width_and_level():
    w = preset("lung")
    assert (w.low, w.high, w.width, w.level) == (-1350.0, 150.0, 1500.0, -600.0)
    assert preset("Soft tissue") == preset("soft_tissue") and (preset("bone").low, preset("bone").high) == (-500.0, 1300.0)
    assert "W 350 / L 50 HU" in preset("mediastinum").describe()


def test_windows_map_hu_to_unit_range_and_back_exactly():
    windows = parse_windows(["lung", [-160, 240]])
    norm = window_normalization(windows)
    hu = np.array([-1350.0, -600.0, 150.0, -160.0, 40.0, 240.0], np.float32)
    x = hu_channels(hu.reshape(2, 3), 2)[None]  # (1, 2, 2, 3): the same HU in both channels
    y = norm.forward(x, channel_axis=1)
    np.testing.assert_allclose(y[0, 0].ravel()[:3], [0.0, 0.5, 1.0], atol=1e-7)  # lung window on the lung values
    np.testing.assert_allclose(y[0, 1].ravel()[3:], [0.0, 0.5, 1.0], atol=1e-7)  # soft-tissue window on its values
    np.testing.assert_allclose(norm.inverse(y, channel_axis=1), x, atol=1e-3)


def test_bad_windows():
    with pytest.raises(DiffexError, match="unknown HU window 'brain'"):
        parse_windows("brain")
    with pytest.raises(DiffexError, match="must exceed"):
        parse_windows("400,-1000")
    with pytest.raises(DiffexError, match="two numbers"):
        parse_windows("-1000,0,400")


def test_resampling_keeps_sizes_in_mm():
    """A disk of radius 6 mm drawn at 0.66 mm per pixel keeps its area (pi * 36 = 113.1 mm^2) at 1.0 and 0.5 mm."""
    spacing = 0.66
    n = 61
    yy, xx = (np.mgrid[:n, :n] - n // 2) * spacing
    disk = ((yy**2 + xx**2) <= 36.0).astype(np.float32)
    assert disk.sum() * spacing**2 == pytest.approx(np.pi * 36, rel=0.03)
    for target in (1.0, 0.5):
        out = resample_to_spacing(disk, (spacing, spacing), target)
        assert out.shape == (round(n * spacing / target),) * 2
        assert out.sum() * target**2 == pytest.approx(np.pi * 36, rel=0.03)  # intensity mass in mm^2 preserved
        # the disk stays where it was in mm (pixel centres at (i + 0.5) * spacing)
        centre = [(np.arange(out.shape[a]) + 0.5) @ out.sum(1 - a) / out.sum() * target for a in (0, 1)]
        assert centre == pytest.approx([n * spacing / 2] * 2, abs=0.1)
    with pytest.raises(DiffexError, match="must be > 0"):
        resample_to_spacing(disk, (0.0, 0.66), 1.0)
