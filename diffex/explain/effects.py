"""The effect table: what each rendered edit does to the classifier, in one place.

For image i, candidate k and sign σ (index 0 = negative), the effect is the probability of the
image's target class after the edit minus that of its reconstruction (not of the original image,
so that inversion error is not counted as an effect), and the edit *flips* the image when the
classifier's most probable class after the edit is the target. The pipeline, the speed benchmark
and the reference procedure all use :func:`effect_table`.

Example
-------
>>> import numpy as np
>>> probs_edit = np.array([[[[0.7, 0.3], [0.2, 0.8]]]])    # (N=1, K=1, 2 signs, 2 classes)
>>> probs_rec = np.array([[0.6, 0.4]])                      # (N, classes)
>>> effect, flipped, eligible = effect_table(probs_edit, probs_rec, np.array([1]))
>>> effect.round(2).tolist(), flipped.tolist(), eligible.tolist()
([[[-0.1, 0.4]]], [[[False, True]]], [True])
>>> effect_table(probs_edit, probs_rec, np.array([0]))[1].tolist()   # already at class 0: never a flip
[[[False, False]]]
"""

from __future__ import annotations

import numpy as np


def effect_table(probs_edit: np.ndarray, probs_rec: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Effects and flips of edits.

    Parameters
    ----------
    probs_edit : (N, K, 2, classes) class probabilities of every image under every candidate and sign
    probs_rec : (N, classes) class probabilities of the reconstructions
    targets : (N,) target class of each image

    Returns
    -------
    effect : (N, K, 2) p(target | edit) - p(target | reconstruction)
    flipped : (N, K, 2) bool, the image is eligible and the edit's most probable class is the target
    eligible : (N,) bool, the reconstruction's most probable class is not the target
    """
    probs_edit, probs_rec = np.asarray(probs_edit), np.asarray(probs_rec)
    targets = np.asarray(targets, dtype=np.int64)
    tgt = targets[:, None, None]  # (N, 1, 1)
    p_edit = np.take_along_axis(probs_edit, tgt[..., None], axis=-1)[..., 0]  # (N, K, 2)
    p_rec = probs_rec[np.arange(len(targets)), targets]  # (N,)
    effect = p_edit - p_rec[:, None, None]
    eligible = probs_rec.argmax(-1) != targets
    flipped = (probs_edit.argmax(-1) == tgt) & eligible[:, None, None]
    return effect, flipped, eligible
