"""Fixed Hounsfield-unit windows and resampling to a fixed pixel spacing, for CT.

CT intensities are physical (HU), so diffex does not normalize them by percentiles: a window maps
``[low, high]`` HU to [0, 1], the same for every image and every dataset, and several windows can
be stacked as channels (e.g. lung and mediastinum). Named presets follow the usual width/level
pairs; ``[low, high]`` may be given instead. A window is an affine map like
:class:`~diffex.data.normalize.Normalization`, so a window becomes the model's normalization and
renders map back to HU exactly.

Slices are resampled to one pixel spacing in mm before cropping, so that sizes are comparable
across scanners (linear interpolation; Gaussian anti-aliasing when shrinking).

Example
-------
>>> parse_windows("lung,mediastinum")
(HUWindow(name='lung', low=-1350.0, high=150.0), HUWindow(name='mediastinum', low=-125.0, high=225.0))
>>> window_normalization(parse_windows("-1000,400")).low
(-1000.0,)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffex.data.normalize import Normalization
from diffex.errors import DiffexError

# name: (width, level) in HU
PRESETS = {
    "lung": (1500.0, -600.0),
    "mediastinum": (350.0, 50.0),
    "soft_tissue": (400.0, 40.0),
    "bone": (1800.0, 400.0),
}


@dataclass(frozen=True)
class HUWindow:
    """A display/normalization window: ``low`` HU maps to 0, ``high`` HU to 1."""

    name: str
    low: float
    high: float

    def __post_init__(self):
        if not self.high > self.low:
            raise DiffexError(f"HU window {self.name!r}: high {self.high:g} must exceed low {self.low:g}")

    @property
    def width(self) -> float:
        return self.high - self.low

    @property
    def level(self) -> float:
        return (self.high + self.low) / 2

    def describe(self) -> str:
        """E.g. ``lung window W 1500 / L -600 HU ([-1350, 150])``."""
        return f"{self.name} window W {self.width:g} / L {self.level:g} HU ([{self.low:g}, {self.high:g}])"


def preset(name: str) -> HUWindow:
    """The named window (:data:`PRESETS`)."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    if key not in PRESETS:
        raise DiffexError(f"unknown HU window {name!r}; presets are {sorted(PRESETS)} or give 'low,high' in HU")
    width, level = PRESETS[key]
    return HUWindow(key, level - width / 2, level + width / 2)


def parse_windows(spec: str | list | tuple) -> tuple[HUWindow, ...]:
    """Windows from ``"lung"``, ``"lung,bone"``, ``"-1000,400"``, or a list of names and ``[low, high]`` pairs.

    One window per channel. Two numbers given as a string are one explicit window.
    """
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            numbers = None
        if numbers is not None:
            if len(numbers) != 2:
                raise DiffexError(f"an explicit HU window is two numbers 'low,high', got {spec!r}")
            return (HUWindow("custom", *numbers),)
        return tuple(preset(p) for p in parts)
    out = []
    for item in spec:
        if isinstance(item, str):
            out.append(preset(item))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            out.append(HUWindow("custom", float(item[0]), float(item[1])))
        else:
            raise DiffexError(f"an HU window is a preset name or [low, high], got {item!r}")
    if not out:
        raise DiffexError("no HU window given")
    return tuple(out)


def window_normalization(windows: tuple[HUWindow, ...]) -> Normalization:
    """The model normalization of these windows: channel c maps ``[low_c, high_c]`` HU to [0, 1]."""
    return Normalization(tuple(w.low for w in windows), tuple(w.high for w in windows), percentiles=(0.0, 100.0))


def hu_channels(hu: np.ndarray, n_windows: int) -> np.ndarray:
    """(Y, X) HU -> (n_windows, Y, X): the slice once per window (each channel gets its own window later)."""
    return np.repeat(np.asarray(hu, np.float32)[None], n_windows, axis=0)


def resample_to_spacing(image: np.ndarray, spacing: tuple[float, float], target: float) -> np.ndarray:
    """(Y, X) image at ``spacing`` (y, x) mm -> an image at exactly ``target`` mm per pixel over the same field.

    Output pixel j has its centre at (j + 0.5) * target mm, like input pixel i at (i + 0.5) * spacing;
    the output covers ``round(n * spacing / target)`` pixels. Linear interpolation, after a Gaussian blur
    of sd (target / spacing - 1) / 2 input pixels along an axis that shrinks (anti-aliasing).

    >>> resample_to_spacing(np.zeros((100, 50)), (0.5, 1.0), 1.0).shape
    (50, 50)
    """
    from scipy.ndimage import gaussian_filter, map_coordinates

    if target <= 0 or min(spacing) <= 0:
        raise DiffexError(f"pixel spacing must be > 0 mm, got {spacing} -> {target}")
    img = np.asarray(image, np.float64)
    if all(abs(s - target) < 1e-9 for s in spacing):
        return img.astype(np.float32)
    sigma = [max(0.0, (target / s - 1) / 2) for s in spacing]
    if any(sigma):
        img = gaussian_filter(img, sigma, mode="nearest")
    axes = [(np.arange(max(1, round(n * s / target))) + 0.5) * target / s - 0.5 for n, s in zip(img.shape, spacing)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))  # (2, Y', X') input pixel indices
    return map_coordinates(img, coords, order=1, mode="nearest").astype(np.float32)
