"""Per-channel percentile normalization and fitting images to a model's size.

The normalization is computed once, on a model's training images, and stored with the model, so
that an intensity difference between conditions survives it (per-image min-max would erase it).
``forward`` maps raw intensities so that the low percentile goes to 0 and the high one to 1;
values outside stay outside (no clipping) and ``inverse`` undoes it exactly.

Example
-------
>>> import numpy as np
>>> x = np.random.default_rng(0).uniform(100, 4000, (10, 2, 8, 8)).astype(np.float32)
>>> norm = Normalization.fit(x, channel_axis=1)
>>> y = norm.forward(x, channel_axis=1)
>>> bool(np.allclose(norm.inverse(y, channel_axis=1), x, rtol=1e-5))
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffex.errors import DiffexError

DEFAULT_PERCENTILES = (1.0, 99.8)
# Pixels sampled per channel when fitting percentiles on a large set.
_MAX_FIT_PIXELS = 4_000_000


@dataclass(frozen=True)
class Normalization:
    """Per-channel affine map ``(x - low) / (high - low)``.

    Attributes
    ----------
    low, high : tuple of float
        Raw intensity mapped to 0 and 1, per channel.
    percentiles : tuple of float
        The percentiles ``low`` and ``high`` were computed at (provenance).
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES

    def __post_init__(self):
        if len(self.low) != len(self.high):
            raise DiffexError(f"normalization: {len(self.low)} low values but {len(self.high)} high values")
        for c, (lo, hi) in enumerate(zip(self.low, self.high)):
            if not hi > lo:
                raise DiffexError(f"normalization: channel {c} has high {hi} <= low {lo}")

    @property
    def n_channels(self) -> int:
        return len(self.low)

    @classmethod
    def fit(
        cls,
        images: np.ndarray,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
        channel_axis: int = 1,
        seed: int = 0,
    ) -> Normalization:
        """Percentiles per channel over all pixels of ``images`` (sampled when very large)."""
        lo_p, hi_p = percentiles
        if not 0 <= lo_p < hi_p <= 100:
            raise DiffexError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
        x = np.moveaxis(np.asarray(images), channel_axis, 0).reshape(images.shape[channel_axis], -1)
        if x.shape[1] > _MAX_FIT_PIXELS:
            idx = np.random.default_rng(seed).choice(x.shape[1], _MAX_FIT_PIXELS, replace=False)
            x = x[:, idx]
        low = np.percentile(x, lo_p, axis=1)
        high = np.percentile(x, hi_p, axis=1)
        for c in range(len(low)):
            if not high[c] > low[c]:
                raise DiffexError(
                    f"channel {c}: the {lo_p}th and {hi_p}th percentiles are equal ({low[c]:g}); "
                    "the channel is (nearly) constant over the training images"
                )
        return cls(tuple(float(v) for v in low), tuple(float(v) for v in high), (float(lo_p), float(hi_p)))

    def _shape(self, ndim: int, channel_axis: int) -> list[int]:
        shape = [1] * ndim
        shape[channel_axis] = self.n_channels
        return shape

    def _check(self, x, channel_axis: int) -> None:
        if x.shape[channel_axis] != self.n_channels:
            raise DiffexError(
                f"normalization is for {self.n_channels} channels but the data has {x.shape[channel_axis]}"
            )

    def forward(self, x, channel_axis: int = 1):
        """Raw intensities -> normalized (numpy array or torch tensor)."""
        self._check(x, channel_axis)
        lo, hi = self._arrays(x, channel_axis)
        return (x - lo) / (hi - lo)

    def inverse(self, y, channel_axis: int = 1):
        """Normalized -> raw intensities (numpy array or torch tensor)."""
        self._check(y, channel_axis)
        lo, hi = self._arrays(y, channel_axis)
        return y * (hi - lo) + lo

    def _arrays(self, x, channel_axis: int):
        shape = self._shape(x.ndim, channel_axis)
        if isinstance(x, torch.Tensor):
            lo = torch.tensor(self.low, dtype=x.dtype, device=x.device).reshape(shape)
            hi = torch.tensor(self.high, dtype=x.dtype, device=x.device).reshape(shape)
        else:
            lo = np.asarray(self.low, dtype=np.float32).reshape(shape)
            hi = np.asarray(self.high, dtype=np.float32).reshape(shape)
        return lo, hi

    def to_dict(self) -> dict:
        return {"method": "percentile", "percentiles": list(self.percentiles), "low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        known = {"method", "percentiles", "low", "high"}
        if set(d) - known:
            raise DiffexError(f"normalization: unknown keys {sorted(set(d) - known)}")
        if d.get("method", "percentile") != "percentile":
            raise DiffexError(f"normalization: unknown method {d['method']!r}")
        try:
            return cls(tuple(map(float, d["low"])), tuple(map(float, d["high"])), tuple(map(float, d.get("percentiles", DEFAULT_PERCENTILES))))
        except KeyError as exc:
            raise DiffexError(f"normalization: missing key {exc}") from exc


RESIZE_MODES = ("resize", "crop")


def fit_to_size(image: np.ndarray, size: int, mode: str = "resize") -> np.ndarray:
    """Bring a (C, Y, X) image to (C, size, size).

    ``"resize"`` center-crops to a square (the shorter side) and then resamples with
    anti-aliasing, preserving the intensity range; ``"crop"`` center-crops only and needs an image
    at least ``size`` on each side.

    Example
    -------
    >>> fit_to_size(np.ones((2, 64, 80), np.float32), 32).shape
    (2, 32, 32)
    """
    if mode not in RESIZE_MODES:
        raise DiffexError(f"unknown resize mode {mode!r}; choose from {RESIZE_MODES}")
    c, h, w = image.shape
    if mode == "crop":
        if h < size or w < size:
            raise DiffexError(f"image of {h}x{w} is smaller than the model's {size}x{size}; use resize mode")
        y0, x0 = (h - size) // 2, (w - size) // 2
        return image[:, y0 : y0 + size, x0 : x0 + size]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    sq = image[:, y0 : y0 + side, x0 : x0 + side]
    if side == size:
        return sq
    if side % size == 0:  # exact block averaging: cheap and what anti-aliasing approximates
        f = side // size
        return sq.reshape(c, size, f, size, f).mean(axis=(2, 4), dtype=np.float64).astype(image.dtype)
    from skimage.transform import resize

    return resize(sq, (c, size, size), order=1, anti_aliasing=side > size, preserve_range=True).astype(image.dtype)


def describe_geometry(mode: str, size: int) -> str:
    """Human-readable record of :func:`fit_to_size` settings for model configs."""
    if mode == "crop":
        return f"center-crop to {size}x{size}"
    return f"center-crop to square, then resize to {size}x{size} (block mean or anti-aliased bilinear)"
