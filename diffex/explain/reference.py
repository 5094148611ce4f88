"""The DiffEx reference procedure for attribute selection, kept as a baseline for speed and agreement.

It follows the structure of the reference implementation: a greedy AttFind in which **every
round** re-inverts each remaining image with 50 DDIM steps and renders 20 steps for every image x
direction x sign, then picks the direction and sign with the largest mean effect and removes the
images it flips (images already classified as their target are left out from the first round:
they cannot be flipped). Unlike the reference loop, which can run forever, it stops after
``max_attributes`` rounds, when no image is left, or when no positive effect remains. It selects
what :func:`diffex.explain.rank.attfind` with ``confidence=None`` selects from the first round's
table (tests/test_reference.py).

diffex's own route (:mod:`diffex.explain.pipeline`) inverts once, screens candidates with gradients and
renders a shortlist once; ``benchmarks/speed.py`` runs both in one process.

Example
-------
>>> sel = reference_attfind(pair, x0, targets, directions, offset_norm=58.0, max_attributes=2)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from diffex.explain.effects import effect_table
from diffex.explain.rank import SIGNS, Selection
from diffex.models.sampler import (
    SamplerSpec,
    ddim_invert,
    ddim_render,
    edit_offsets,
    render_edits,
)

REFERENCE_INVERSION = SamplerSpec(steps=50)  # full inversion, 50 DDIM steps to t = T - 1
REFERENCE_RENDER = SamplerSpec(steps=20)  # 20 rendering steps from t = T - 1


def reference_attfind(
    pair,
    x0: torch.Tensor,
    targets: np.ndarray,
    directions: torch.Tensor,
    offset_norm: float,
    max_attributes: int,
    *,
    invert_spec: SamplerSpec = REFERENCE_INVERSION,
    render_spec: SamplerSpec = REFERENCE_RENDER,
    batch_size: int = 32,
    cache_inversion: bool = False,
) -> list[Selection]:
    """Greedy selection, re-encoding inside the loop (the reference's cost profile).

    Parameters
    ----------
    x0 : (N, C, H, W) images in model space; targets : (N,) target class per image
    directions : (K, *h_shape) unit directions; offset_norm : ‖Δh‖ of every edit, in h units
    invert_spec, render_spec : the inversion (reference: 50 steps to t = T - 1) and the rendering
        (reference: 20 steps; its ``mode`` and ``t_edit`` apply to the edits)
    cache_inversion : invert and reconstruct every image once and reuse it in later rounds (the
        inversion is deterministic, so the selection is the same; the stronger baseline)
    """
    dm = pair.dm
    targets = np.asarray(targets)
    n, k = x0.shape[0], directions.shape[0]
    remaining = None  # set in the first round: the images not already at their target
    available = np.ones(k, dtype=bool)
    offsets = edit_offsets(directions, torch.tensor([-1.0, 1.0]), offset_norm).flatten(0, 1)  # (K*2, *h)
    plain = replace(render_spec, t_edit=0, mode="symmetric")
    out: list[Selection] = []
    while len(out) < max_attributes and (remaining is None or remaining.any()) and available.any():
        idx = np.arange(n) if remaining is None else np.flatnonzero(remaining)
        if cache_inversion:
            if remaining is None:
                xt_all = ddim_invert(dm, x0, invert_spec, batch_size=batch_size)
                p_rec_all = pair.probs(ddim_render(dm, xt_all, plain, batch_size=batch_size)).numpy()
            xt, p_rec = xt_all[idx], p_rec_all[idx]
        else:
            xt = ddim_invert(dm, x0[idx], invert_spec, batch_size=batch_size)  # re-encoded every round
            p_rec = pair.probs(ddim_render(dm, xt, plain, batch_size=batch_size)).numpy()  # (n, classes)
        edits = render_edits(dm, xt, offsets, render_spec, batch_size=batch_size)  # (n, K*2, C, H, W)
        p_all = pair.probs(edits.flatten(0, 1)).numpy().reshape(len(idx), k, 2, -1)  # (n, K, 2, classes)
        effect, flipped, eligible = effect_table(p_all, p_rec, targets[idx])
        if remaining is None:
            remaining, effect, flipped, idx = eligible.copy(), effect[eligible], flipped[eligible], idx[eligible]
            if not remaining.any():
                break
        means = effect.mean(0)
        means[~available] = -np.inf
        best = int(np.argmax(means))
        d, s = divmod(best, 2)
        if not means[d, s] > 0:
            break
        newly = flipped[:, d, s]
        out.append(Selection(d, SIGNS[s], float(means[d, s]), float(means[d, s]), int(newly.sum())))
        remaining[idx[newly]] = False
        available[d] = False
    return out
