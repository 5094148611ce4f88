"""Percentile normalization and fitting images to a model's size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffex.data.normalize import Normalization, fit_to_size
from diffex.errors import DiffexError


def test_fit_maps_percentiles_to_unit_range():
    rng = np.random.default_rng(0)
    x = np.stack([rng.uniform(100, 200, (50, 8, 8)), rng.uniform(1000, 5000, (50, 8, 8))], axis=1)  # (N, C, H, W)
    n = Normalization.fit(x, (1.0, 99.0))
    y = n.forward(x)
    for c in range(2):
        assert np.percentile(y[:, c], 1) == pytest.approx(0, abs=1e-6)
        assert np.percentile(y[:, c], 99) == pytest.approx(1, abs=1e-6)
    assert y.min() < 0 and y.max() > 1  # no clipping


def test_intensity_difference_between_conditions_survives():
    dim = np.full((4, 1, 8, 8), 100.0)
    bright = np.full((4, 1, 8, 8), 300.0)
    n = Normalization.fit(np.concatenate([dim, bright]))
    assert n.forward(bright).mean() > n.forward(dim).mean()


def test_stored_parameters_round_trip_exactly():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 65535, (10, 3, 16, 16)).astype(np.float32)
    n = Normalization.fit(x)
    n2 = Normalization.from_dict(json.loads(json.dumps(n.to_dict())))
    assert n2 == n
    np.testing.assert_array_equal(n2.forward(x), n.forward(x))
    t = torch.from_numpy(x)
    torch.testing.assert_close(n.inverse(n.forward(t)), t, rtol=1e-5, atol=1e-2)


def test_constant_channel_is_an_error():
    x = np.ones((3, 2, 4, 4))
    x[:, 0] = np.random.default_rng(0).uniform(size=(3, 4, 4))
    with pytest.raises(DiffexError, match="channel 1: .* percentiles are equal"):
        Normalization.fit(x)


def test_wrong_channel_count_and_bad_dict():
    n = Normalization((0.0, 0.0), (1.0, 2.0))
    with pytest.raises(DiffexError, match="for 2 channels but the data has 3"):
        n.forward(np.zeros((1, 3, 2, 2)))
    with pytest.raises(DiffexError, match="unknown keys"):
        Normalization.from_dict({"low": [0], "high": [1], "scale": 2})
    with pytest.raises(DiffexError, match="high 0.0 <= low 1.0"):
        Normalization((1.0,), (0.0,))


def test_fit_to_size_modes():
    img = np.arange(2 * 40 * 48, dtype=np.float32).reshape(2, 40, 48)
    assert fit_to_size(img, 20).shape == (2, 20, 20)  # crop to 40x40, then 2x2 block mean
    np.testing.assert_allclose(fit_to_size(img, 20)[0, 0, 0], img[0, 0:2, 4:6].mean())
    assert fit_to_size(img, 30).shape == (2, 30, 30)  # non-integer factor: anti-aliased resize
    np.testing.assert_array_equal(fit_to_size(img, 16, "crop"), img[:, 12:28, 16:32])
    with pytest.raises(DiffexError, match="smaller than"):
        fit_to_size(img, 64, "crop")
