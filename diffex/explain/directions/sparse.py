"""``sparse``: atoms of a sparse dictionary (a sparse autoencoder) of h, ranked by how well they separate the conditions.

The images' h at every edit step is centred per step and scaled per step to unit mean squared norm,
then projected onto its top r principal components (r = min(:data:`RANK`, rank of the data)). A
sparse autoencoder with :data:`ATOMS_PER_DIM` x r unit-norm atoms, a ReLU encoder and an L1 penalty
on the codes, is fitted to these rows (full-batch Adam, seeded, deterministic). Each atom is a
direction d_j in h; an image's activation of it is its code averaged over the edit steps. With
conditions, atoms are ranked by |AUC - 0.5| of that activation between the target condition and
the rest, and signed so that the direction points towards the condition that activates the atom
more; without them, by how much of the codes' energy they carry. Atoms that never fire are dropped,
and so is an atom within |cos| 0.9 of a better-ranked one (dictionaries split a feature into near-copies).

A continuous factor that varies either way around its mean is learned as two opposite atoms
(+d, -d); the registry's merge keeps the first of such a pair.

Example
-------
>>> rng = np.random.default_rng(0)
>>> d = np.linalg.qr(rng.normal(size=(20, 3)))[0].T               # 3 planted orthonormal atoms
>>> codes = rng.exponential(size=(600, 3)) * (rng.random((600, 3)) < 0.2)
>>> x = torch.as_tensor(codes @ d + 0.01 * rng.normal(size=(600, 20)))
>>> fit = fit_sparse_dictionary(x, atoms=6, seed=0)
>>> cos = (fit.atoms @ torch.as_tensor(d).T).abs().max(0).values  # best match per planted atom
>>> bool((cos > 0.9).all())
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffex.explain.directions.discriminative import _auc
from diffex.explain.directions.registry import DirectionContext, register

RANK = 64  # principal components of h the dictionary is learned in
ATOMS_PER_DIM = 2  # dictionary size per dimension (overcomplete: a factor may need +d and -d)
L1 = 0.05  # L1 weight on the codes, for rows of unit mean squared norm
ITERATIONS = 600
LR = 0.01
DISTINCT_COS = 0.9  # an atom this close to a better-ranked one (a split of the same feature) is skipped


@dataclass(frozen=True)
class SparseFit:
    """A fitted dictionary: unit-norm atoms (m, D), codes (n, m) of the rows, and what the fit achieved."""

    atoms: torch.Tensor
    codes: torch.Tensor
    explained: float  # share of the rows' variance the reconstruction explains
    active: float  # mean number of non-zero codes per row
    loss: list[float]


def _normalize(w: torch.Tensor) -> torch.Tensor:
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def fit_sparse_dictionary(x: torch.Tensor, atoms: int, seed: int = 0, l1: float = L1, iterations: int = ITERATIONS) -> SparseFit:
    """Sparse autoencoder codes = relu((x - b) W_e + c), x ≈ codes W_d + b, rows of W_d unit norm.

    Parameters
    ----------
    x : Tensor (n, D)
        Rows to encode; scaled so that their mean squared norm is about 1 (the L1 weight assumes it).
    atoms : int
        Dictionary size m.
    """
    x = x.double()
    g = torch.Generator().manual_seed(seed)
    dec = _normalize(torch.randn(atoms, x.shape[1], generator=g, dtype=torch.float64))  # (m, D)
    params = {
        "dec": dec.clone().requires_grad_(True),
        "enc": dec.T.clone().requires_grad_(True),  # (D, m): tied at the start
        "c": torch.zeros(atoms, dtype=torch.float64, requires_grad=True),
        "b": x.mean(0).clone().requires_grad_(True),
    }
    opt = torch.optim.Adam(params.values(), lr=LR)
    losses = []
    for _ in range(iterations):
        opt.zero_grad()
        codes = torch.relu((x - params["b"]) @ params["enc"] + params["c"])  # (n, m)
        rec = codes @ params["dec"] + params["b"]
        loss = ((x - rec) ** 2).sum(1).mean() + l1 * codes.sum(1).mean()
        loss.backward()
        opt.step()
        with torch.no_grad():
            params["dec"].copy_(_normalize(params["dec"]))
        losses.append(loss.item())
    with torch.no_grad():
        codes = torch.relu((x - params["b"]) @ params["enc"] + params["c"])
        rec = codes @ params["dec"] + params["b"]
        explained = 1 - float(((x - rec) ** 2).sum() / ((x - x.mean(0)) ** 2).sum().clamp_min(1e-30))
        active = float((codes > 0).sum(1).double().mean())
    return SparseFit(params["dec"].detach(), codes, explained, active, losses)


def _rows(ctx: DirectionContext) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """Edit-step h, centred and scaled per step, in its top principal components: (n*S', r), basis (D, r), S',
    and the share of the variance the r components hold."""
    s = max(1, min(ctx.edit_steps, ctx.h.shape[1]))
    h = ctx.h[:, :s].double().flatten(2)  # (n, S', D)
    h = h - h.mean(0, keepdim=True)
    h = h / h.pow(2).sum(2).mean(0).sqrt().clamp_min(1e-12)[None, :, None]  # unit mean squared norm per step
    flat = h.flatten(0, 1)  # (n*S', D)
    _, sv, vh = torch.linalg.svd(flat, full_matrices=False)
    r = int(min(RANK, (sv > sv[0] * 1e-8).sum()))
    return flat @ vh[:r].T, vh[:r].T, s, float((sv[:r] ** 2).sum() / (sv**2).sum())


def _rank(ctx: DirectionContext, act: np.ndarray) -> tuple[list[int], list[float], list[str]]:
    """Order, signs and descriptions of the live atoms; act (n, m) is each image's mean code."""
    live = np.flatnonzero(act.max(0) > 0)
    energy = (act**2).mean(0)
    if ctx.labels is None or len(np.unique(ctx.labels)) < 2:
        order = sorted(live, key=lambda j: -energy[j])
        share = energy / max(energy.sum(), 1e-30)
        return order, [1.0] * len(order), [f"atom {j} ({share[j]:.0%} of the code energy)" for j in order]
    labels = np.asarray(ctx.labels)
    present = np.unique(labels)
    target = present[1]  # two conditions: one direction serves both (its negative)
    y = labels == target
    rest = ctx.class_names[int(present[0])] if len(present) == 2 else "the other conditions"
    auc = {j: _auc(act[:, j], y) for j in live}
    order = sorted(live, key=lambda j: (-abs(auc[j] - 0.5), -energy[j]))
    signs = [1.0 if auc[j] >= 0.5 else -1.0 for j in order]
    names = []
    for j in order:
        towards = ctx.class_names[int(target)] if auc[j] >= 0.5 else rest
        names.append(f"atom {j} towards {towards} (AUC {max(auc[j], 1 - auc[j]):.2f}, fires in {np.mean(act[:, j] > 0):.0%})")
    return order, signs, names


@register("sparse")
def sparse_directions(ctx: DirectionContext, k: int) -> tuple[torch.Tensor, list[str]]:
    """The k atoms of a sparse dictionary of h that best separate the conditions (or carry most code energy)."""
    rows, basis, s, held = _rows(ctx)  # (n*S', r), (D, r)
    fit = fit_sparse_dictionary(rows, atoms=ATOMS_PER_DIM * rows.shape[1], seed=ctx.seed)
    act = fit.codes.view(ctx.h.shape[0], s, -1).mean(1).numpy()  # (n, m): each image's activation
    order, signs, names = _rank(ctx, act)
    picks = _distinct(fit.atoms, order, k)
    vecs = torch.stack([signs[i] * (fit.atoms[order[i]] @ basis.T) for i in picks])  # (k, D)
    ctx.diagnostics["sparse"] = {"components": rows.shape[1], "components_variance": held, "atoms": fit.atoms.shape[0], "live_atoms": int((act.max(0) > 0).sum()),
                                 "explained_variance": fit.explained, "active_per_row": fit.active,
                                 "loss_first": fit.loss[0], "loss_last": fit.loss[-1]}
    return vecs.float().view(len(vecs), *ctx.h_shape), [names[i] for i in picks]


def _distinct(atoms: torch.Tensor, order: list[int], k: int) -> list[int]:
    """Positions in ``order`` of the first k atoms not near-parallel (|cos| > :data:`DISTINCT_COS`) to an earlier pick."""
    picks: list[int] = []
    for i, j in enumerate(order):
        if len(picks) == k:
            break
        if all(abs(float(atoms[j] @ atoms[order[p]])) <= DISTINCT_COS for p in picks):
            picks.append(i)
    return picks
