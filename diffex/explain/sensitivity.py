"""Classifier sensitivity in h-space: per-image gradients through the sampler, and screening.

g_i = ∂ log p(target_i | render(x_T,i, Δh)) / ∂Δh at Δh = 0 (one Δh for all edited steps), where
target_i is the condition the image is pushed towards. The first-order effect of a candidate
direction d on image i is then ⟨g_i, d⟩·s: ranking every candidate costs dot products, and only the
best K' are rendered (:func:`screen`).

Example
-------
>>> g = classifier_gradients(pair, xt, targets, SamplerSpec(steps=20, t_end=699))  # doctest: +SKIP
>>> g = torch.tensor([[1.0, 0.0], [1.0, 0.1]])                  # (N=2, D=2) per-image gradients
>>> candidates = torch.tensor([[0.0, 1.0], [1.0, 0.0]])         # (K=2, D) unit directions
>>> order, scores = screen(g, np.array([1, 1]), candidates, top=1)
>>> order.tolist(), scores.round(2).tolist()
([1], [0.05, 1.0])
"""

from __future__ import annotations

import numpy as np
import torch

from diffex.models.hooks import frozen, h_shape
from diffex.models.sampler import SamplerSpec, ddim_render_differentiable


def classifier_gradients(
    pair, xt: torch.Tensor, targets: torch.Tensor, spec: SamplerSpec, *, batch_size: int = 16, on_chunk=None
) -> torch.Tensor:
    """Per-image gradient of log p(target) with respect to a shared h offset, (N, *h_shape).

    The offset acts on every step of ``spec`` with t >= ``spec.t_edit``, rendered in ``spec.mode``.
    Each DDIM step is checkpointed, so memory grows with the batch, not with the step count.
    Model parameters are not differentiated.
    """
    dm = pair.dm
    hs = h_shape(dm)
    dtype = next(dm.unet.parameters()).dtype  # float32, or float64 in gradient checks
    out = []
    with frozen(dm.unet, pair.clf.module):
        for start in range(0, xt.shape[0], batch_size):
            x = xt[start : start + batch_size].to(dm.device)  # (b, C, H, W)
            tgt = targets[start : start + batch_size].to(dm.device)  # (b,)
            delta = torch.zeros((x.shape[0], *hs), device=dm.device, dtype=dtype, requires_grad=True)  # (b, *h)
            x0 = ddim_render_differentiable(dm, x, delta, spec)
            logp = pair.log_probs(x0).gather(1, tgt[:, None].to(x0.device))  # (b, 1)
            (grad,) = torch.autograd.grad(logp.sum(), delta)
            out.append(grad.detach().cpu())
            if on_chunk is not None:
                on_chunk(x.shape[0])
    return torch.cat(out)


def first_order_effects(grads: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """⟨g_i, d_k⟩ for every image and candidate, (N, K)."""
    return grads.flatten(1).double() @ candidates.flatten(1).double().T


def screen(
    grads: torch.Tensor, targets: np.ndarray, candidates: torch.Tensor, top: int, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rank candidates by their predicted (first-order) effect, best first.

    A candidate's score is, over target conditions, the largest |mean_i w_i ⟨g_i, d⟩| of the images
    pushed towards that target (either sign of d can be used, so the magnitude counts). With
    ``weights`` w_i = p_i(target) (0 for images already at the target) this is the first-order mean
    change of p(target), the quantity AttFind selects by; without, of log p(target).

    Returns
    -------
    order : ndarray of int, the indices of the ``top`` best candidates
    scores : ndarray of float, (K,) every candidate's score
    """
    fo = first_order_effects(grads, candidates).numpy()  # (N, K)
    if weights is not None:
        fo = fo * np.asarray(weights, dtype=np.float64)[:, None]
    targets = np.asarray(targets)
    per_target = np.stack([np.abs(fo[targets == t].mean(0)) for t in np.unique(targets)])  # (T, K)
    scores = per_target.max(0)
    order = np.argsort(-scores, kind="stable")[:top]
    return order, scores
