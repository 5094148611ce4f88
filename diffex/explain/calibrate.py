"""Edit strength calibrated per direction from the real images' coordinates along it.

A direction d's *coordinate* of image i is its h, averaged over the steps the edit acts on and
centred, projected on d. Adding s·d to h at those steps moves that coordinate by s. With
``strength_unit: sd`` (the default) a traversal's full strength moves each image by
``strength`` standard deviations of the real images' coordinates along d, but never past the
edge of the real data: the narrower of their 1st-99th percentile range and the mean ± 3 SD.
So an image already near that edge moves less, and none is rendered where no real image lies.
With ``strength_unit: h_norm`` (diffex's behaviour until 2026-11-28, kept for comparison)
every image moves by ``strength`` × the mean ‖h‖, whatever the data's spread along d.

The spread and the edges are measured on the *selection* images (those the directions were
found on); the evaluation images are only moved.

Example
-------
>>> coords = np.array([[-2.0], [-1.0], [0.0], [1.0], [2.0]])
>>> cal = calibrate(coords, h_scale=10.0, strength=3.0, unit="sd")
>>> bool(cal.high[0] < 2.0 and cal.low[0] > -2.0)       # the 1st-99th percentile is the narrower edge
True
>>> cal.amounts(np.array([0.0, 1.9]), 0, +1).round(3).tolist()   # the second image is stopped at the edge
[1.96, 0.06]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

STRENGTH_UNITS = ("sd", "h_norm")
EDGE_PERCENTILES = (1.0, 99.0)
EDGE_SD = 3.0


def edit_steps(timesteps: np.ndarray, t_edit: int) -> np.ndarray:
    """Boolean mask over h's step axis (ordered from t_end down) of the steps an edit acts on (t >= t_edit).

    Example
    -------
    >>> edit_steps(np.array([174, 349, 524, 699]), 300).tolist()
    [True, True, True, False]
    """
    return np.asarray(timesteps)[::-1] >= t_edit


def coordinates(h: torch.Tensor, vectors: torch.Tensor, steps: np.ndarray | None = None) -> np.ndarray:
    """Each image's coordinate along each direction, (N, K): h averaged over ``steps`` (a mask; default all), centred, projected.

    h is (N, S, *h_shape), vectors (K, *h_shape) of unit norm, so adding s·d to h at those steps moves a coordinate by s.

    Example
    -------
    >>> h = torch.zeros(3, 2, 2); h[:, :, 0] = torch.tensor([[1.0], [2.0], [3.0]])
    >>> coordinates(h, torch.tensor([[1.0, 0.0]])).ravel().tolist()
    [-1.0, 0.0, 1.0]
    """
    if steps is not None:
        h = h[:, torch.as_tensor(np.asarray(steps, bool))]
    hbar = h.mean(1).flatten(1)  # (N, D)
    return ((hbar - hbar.mean(0)) @ vectors.flatten(1).float().T).numpy()


@dataclass(frozen=True)
class Calibration:
    """Per direction: the real data's spread and edges along it, and how far full strength moves an image.

    ``sd``, ``low`` and ``high`` are (K,) arrays in h units, on the centred coordinate of :func:`coordinates`.
    """

    unit: str
    strength: float
    h_scale: float  # mean ‖h‖ of the data
    sd: np.ndarray  # (K,) SD of the real (selection) images' coordinates
    low: np.ndarray  # (K,) lower edge of the real data: max(1st percentile, mean - 3 SD)
    high: np.ndarray  # (K,) upper edge: min(99th percentile, mean + 3 SD)

    def amounts(self, coords: np.ndarray, k: int, sign: int) -> np.ndarray:
        """How far (h units, >= 0) full strength moves each image along ``sign`` · d_k, (N,) from its coordinates (N,) along d_k."""
        c = np.asarray(coords, float)
        if self.unit == "h_norm":
            return np.full(c.shape, self.strength * self.h_scale)
        room = self.high[k] - c if sign > 0 else c - self.low[k]
        return np.clip(room, 0.0, self.strength * self.sd[k])

    def edges_sd(self, k: int, sign: int) -> tuple[float, float]:
        """The real data's edges along ``sign`` · d_k in SD units (low, high)."""
        lo, hi = self.low[k] / self.sd[k], self.high[k] / self.sd[k]
        return (float(lo), float(hi)) if sign > 0 else (float(-hi), float(-lo))

    def digest_parts(self) -> tuple:
        """What a stage key needs to change when the calibration changes."""
        return (self.unit, repr(self.strength), repr(self.h_scale), *np.round(np.concatenate([self.sd, self.low, self.high]), 6).tolist())


def calibrate(coords: np.ndarray, h_scale: float, strength: float, unit: str = "sd") -> Calibration:
    """The :class:`Calibration` of K directions from the real images' coordinates (n, K) along them."""
    if unit not in STRENGTH_UNITS:
        raise ValueError(f"strength_unit must be one of {STRENGTH_UNITS}, got {unit!r}")
    c = np.asarray(coords, float)  # (n, K)
    mean, sd = c.mean(0), c.std(0, ddof=1) if len(c) > 1 else np.zeros(c.shape[1])
    q_lo, q_hi = np.percentile(c, EDGE_PERCENTILES, axis=0)
    sd = np.where(sd > 0, sd, np.finfo(float).tiny)
    return Calibration(unit=unit, strength=float(strength), h_scale=float(h_scale), sd=sd,
                       low=np.maximum(q_lo, mean - EDGE_SD * sd), high=np.minimum(q_hi, mean + EDGE_SD * sd))


def frame_scales(up: np.ndarray, down: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Signed offsets (N, F) of a traversal along +d: fraction f > 0 moves f · ``up``, f < 0 moves f · ``down`` (h units).

    Example
    -------
    >>> frame_scales(np.array([2.0]), np.array([1.0]), np.array([-1.0, 0.0, 0.5, 1.0])).tolist()
    [[-1.0, 0.0, 1.0, 2.0]]
    """
    f = np.asarray(fractions, float)[None, :]  # (1, F)
    return np.where(f > 0, f * np.asarray(up, float)[:, None], f * np.asarray(down, float)[:, None])
