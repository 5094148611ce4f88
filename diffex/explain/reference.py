"""The DiffEx reference procedure for attribute selection, kept as a baseline for speed and agreement.

It follows the structure of the reference implementation: a greedy AttFind in which **every
round** re-inverts each remaining image with 50 DDIM steps and renders 20 steps for every image x
direction x sign, then picks the direction and sign with the largest mean effect and removes the
images it flips. Unlike the reference loop, which can run forever, it stops after
``max_attributes`` rounds, when no image is left, or when no positive effect remains.

diffex's own route (:mod:`diffex.pipeline`) inverts once, screens candidates with gradients and
renders a shortlist once; ``benchmarks/speed.py`` runs both in one process.

Example
-------
>>> sel = reference_attfind(pair, x0, targets, directions, strength=58.0, max_attributes=2)   # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch

from diffex.explain.rank import SIGNS, Selection
from diffex.models.sampler import ddim_invert, ddim_render, edit_offsets, render_edits


def reference_attfind(
    pair,
    x0: torch.Tensor,
    targets: np.ndarray,
    directions: torch.Tensor,
    strength: float,
    max_attributes: int,
    invert_steps: int = 50,
    render_steps: int = 20,
    batch_size: int = 32,
    asymmetric: bool = False,
) -> list[Selection]:
    """Greedy selection, re-encoding inside the loop (the reference's cost profile).

    Parameters
    ----------
    x0 : (N, C, H, W) images in model space; targets : (N,) target class per image
    directions : (K, *h_shape) unit directions; strength : offset norm in h units
    """
    dm = pair.dm
    targets = np.asarray(targets)
    n, k = x0.shape[0], directions.shape[0]
    remaining = np.ones(n, dtype=bool)
    available = np.ones(k, dtype=bool)
    offsets = edit_offsets(directions, torch.tensor([-1.0, 1.0]), strength).flatten(0, 1)  # (K*2, *h)
    out: list[Selection] = []
    while len(out) < max_attributes and remaining.any() and available.any():
        idx = np.flatnonzero(remaining)
        xt = ddim_invert(dm, x0[idx], invert_steps, batch_size=batch_size)  # re-encoded every round
        rec = ddim_render(dm, xt, render_steps, batch_size=batch_size)
        edits = render_edits(dm, xt, offsets, render_steps, batch_size, 0, asymmetric)  # (n, K*2, C, H, W)
        tgt = torch.as_tensor(targets[idx])
        p_rec = pair.probs(rec).gather(1, tgt[:, None])[:, 0]  # (n,)
        p_all = pair.probs(edits.flatten(0, 1)).view(len(idx), k, 2, -1)  # (n, K, 2, classes)
        p_edit = p_all.gather(3, tgt.view(-1, 1, 1, 1).expand(-1, k, 2, 1))[..., 0]  # (n, K, 2)
        effect = (p_edit - p_rec[:, None, None]).numpy()
        flipped = (p_all.argmax(-1) == tgt.view(-1, 1, 1)).numpy()
        means = effect.mean(0)
        means[~available] = -np.inf
        best = int(np.argmax(means))
        d, s = divmod(best, 2)
        if not means[d, s] > 0:
            break
        newly = flipped[:, d, s]
        out.append(Selection(d, SIGNS[s], float(means[d, s]), int(newly.sum())))
        remaining[idx[newly]] = False
        available[d] = False
    return out
