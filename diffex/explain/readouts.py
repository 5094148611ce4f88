"""The morphology readouts of an experiment's images: lesion readouts in HU and mm for CT, else per-channel objects.

One place decides which readouts an experiment's images get, so that the traversals' descriptions
(:mod:`diffex.explain.describe`) and the ``readout`` direction method measure the same things.

Example
-------
>>> import numpy as np
>>> from types import SimpleNamespace
>>> exp = SimpleNamespace(geometry=None, channel_names=["DNA"])   # a microscopy experiment
>>> img = np.zeros((1, 1, 32, 32), np.float32); img[0, 0, 8:24, 8:24] = 100
>>> float(measurements(exp, img)["DNA_AreaShape_Area"][0])
256.0
"""

from __future__ import annotations

import numpy as np

from diffex.report.ct_morphology import hu_channel, measure_many_ct
from diffex.report.morphology import measure_many


def lesion_channel(exp) -> int | None:
    """CT: the channel the lesion readouts use (None: microscopy, MR, or no window holding the lesion thresholds)."""
    geo = exp.geometry
    return None if geo is None else hu_channel(geo.modality, [(w.low, w.high) for w in geo.hu_windows])


def measurements(exp, images: np.ndarray) -> dict[str, np.ndarray]:
    """Readouts of raw (M, C, H, W) images: for CT the lesion in HU and mm, else per-channel Otsu objects."""
    ch = lesion_channel(exp)
    return measure_many(images, exp.channel_names) if ch is None else measure_many_ct(images, exp.geometry.spacing_mm, ch)
