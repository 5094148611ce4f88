"""``sparse``: atoms of a sparse dictionary (a sparse autoencoder) of h, ranked by how well they separate the conditions.

The images' h at every edit step is centred per step and scaled per step to unit mean squared norm,
then projected onto its top r principal components (r = min(:data:`RANK`, rank of the data)). A
sparse autoencoder with :data:`ATOMS_PER_DIM` x r unit-norm atoms, a ReLU encoder and an L1 penalty
on the codes, is fitted to these rows (full-batch Adam, seeded, deterministic). Each atom is a
direction d_j in h; an image's activation of it is its code averaged over the edit steps.

With conditions, each atom's activation is compared between one condition and the rest (AUC; with
two conditions only the second against the first, since one direction serves both as its
negative; with more, every condition against the rest, keeping the condition where |AUC - 0.5| is
largest). Atoms are ranked by that |AUC - 0.5| and every candidate points *towards* its
condition c: +d_j when c activates the atom more (adding the feature), -d_j when c activates it
less (removing it). Names say both, e.g. ``atom 55 towards treated (fires more in control, AUC
0.62, in 18 % of images)``. Without conditions atoms are ranked by how much of the codes' energy
they carry. Atoms that never fire are dropped, and so is an atom within |cos| 0.9 of a
better-ranked one (dictionaries split a feature into near-copies; a factor that varies either way
around its mean is learned as a pair +d, -d, which is one candidate).

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

from diffex.errors import DiffexError
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
    """Rows of w (m, D) scaled to unit norm."""
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def fit_sparse_dictionary(x: torch.Tensor, atoms: int, seed: int = 0, l1: float = L1, iterations: int = ITERATIONS) -> SparseFit:
    """Sparse autoencoder codes = relu((x - b) W_e + c), x ≈ codes W_d + b, rows of W_d unit norm.

    Parameters
    ----------
    x : Tensor (n, D)
        Rows to encode, with a mean squared norm of at most about 1 (the L1 weight is set for that
        scale; ``sparse`` passes the share of the variance its components hold, 0.95 on the sample data).
    atoms : int
        Dictionary size m.
    seed : int
        Seeds the initial decoder (random unit rows; the encoder starts as its transpose).
    l1 : float
        Weight of the mean L1 norm of the codes in the loss.
    iterations : int
        Full-batch Adam steps (learning rate :data:`LR`), the decoder rows renormalized after each.

    Returns
    -------
    SparseFit
        The unit-norm atoms (m, D), the codes (n, m) of ``x``, the share of its variance the
        reconstruction explains, the mean number of active codes per row and the loss per step.
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
    if not len(sv) or float(sv[0]) <= 1e-12:
        raise DiffexError("the sparse method needs h that varies between the images; it is the same for all of them")
    r = int(min(RANK, (sv > sv[0] * 1e-8).sum()))
    return flat @ vh[:r].T, vh[:r].T, s, float((sv[:r] ** 2).sum() / (sv**2).sum())


def _rank(ctx: DirectionContext, act: np.ndarray) -> tuple[list[int], list[float], list[str]]:
    """Order, signs and descriptions of the live atoms; act (n, m) is each image's mean code (see the module docstring)."""
    live = np.flatnonzero(act.max(0) > 0)
    energy = (act**2).mean(0)
    fires = (act > 0).mean(0)
    if ctx.labels is None or len(np.unique(ctx.labels)) < 2:
        order = sorted(live, key=lambda j: -energy[j])
        share = energy / max(energy.sum(), 1e-30)
        return order, [1.0] * len(order), [f"atom {j} ({share[j]:.0%} of the code energy)" for j in order]
    labels = np.asarray(ctx.labels)
    present = list(np.unique(labels))
    if min(int((labels == c).sum()) for c in present) < 2:
        raise DiffexError("the sparse method needs at least two images of each condition")
    conds = present[1:] if len(present) == 2 else present
    auc = {(j, c): _auc(act[:, j], labels == c) for j in live for c in conds}  # condition c against the rest
    best = {j: max(conds, key=lambda c: abs(auc[j, c] - 0.5)) for j in live}  # ties: the first condition
    order = sorted(live, key=lambda j: (-abs(auc[j, best[j]] - 0.5), -energy[j]))
    signs, names = [], []
    for j in order:
        c, a = best[j], auc[j, best[j]]
        more = ctx.class_names[int(c)] if a >= 0.5 else (ctx.class_names[int(present[0])] if len(present) == 2 else "the other conditions")
        signs.append(1.0 if a >= 0.5 else -1.0)  # towards c: add the feature c has more of, remove the one it has less of
        names.append(f"atom {j} towards {ctx.class_names[int(c)]} (fires more in {more}, AUC {max(a, 1 - a):.2f}, in {fires[j]:.0%} of images)")
    return order, signs, names


@register("sparse", version=2)  # 2: candidates named towards the condition they point to
def sparse_directions(ctx: DirectionContext, k: int) -> tuple[torch.Tensor, list[str]]:
    """The k atoms of a sparse dictionary of h that best separate the conditions (or carry most code energy)."""
    rows, basis, s, held = _rows(ctx)  # (n*S', r), (D, r)
    fit = fit_sparse_dictionary(rows, atoms=ATOMS_PER_DIM * rows.shape[1], seed=ctx.seed)
    act = fit.codes.view(ctx.h.shape[0], s, -1).mean(1).numpy()  # (n, m): each image's activation
    order, signs, names = _rank(ctx, act)
    picks = _distinct(fit.atoms, order, k)
    if not picks:
        raise DiffexError("the sparse method found no atom that fires on these images")
    vecs = torch.stack([signs[i] * (fit.atoms[order[i]] @ basis.T) for i in picks])  # (k, D)
    ctx.diagnostics["sparse"] = {"components": rows.shape[1], "components_variance": held, "atoms": fit.atoms.shape[0],
                                 "live_atoms": int((act.max(0) > 0).sum()), "explained_variance": fit.explained,
                                 "active_per_row": fit.active, "loss_first": fit.loss[0], "loss_last": fit.loss[-1]}
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
