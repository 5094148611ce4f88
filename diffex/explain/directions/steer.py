"""``steer``: per measured readout that separates the conditions, the h edit whose *renders* move it and hold the others.

``readout`` regresses h on the readouts: the pattern with which h co-varies with a readout in the
real images. Rendering along that pattern need not move the readout alone (the decoder also
reads x_t and the skip connections), and on the validity benchmark it did not. This method
measures what edits do instead, then inverts it:

1. The readouts and their order are those of ``readout`` (:func:`~diffex.explain.directions.readout.usable`,
   ordered by |AUC − 0.5| between the conditions, near-copies dropped); each is expressed in units
   of its robust SD over the selection images (IQR / 1.349).
2. **Response.** The top q principal axes v_i of h (per-step centred, over the edit steps; sd_i the
   real images' SD along each) are each rendered at ±:data:`PROBE_SD` sd_i on :data:`PROBE_IMAGES`
   selection images with explain's own sampler. R[i, j] is the median over those images of the
   change of readout j per SD of axis i (central difference).
3. **Inversion.** For readout j the edit's coordinates a (q,) solve min ‖a‖ subject to Rᵀa = e_j
   (readout j up by one of its SDs, every other readout unchanged), regularized:
   a = R (RᵀR + λI)⁻¹ e_j, λ = :data:`RIDGE` × mean eigenvalue of RᵀR. The direction is
   Σ_i a_i sd_i v_i, made unit norm and pointing towards the condition the readout separates
   best (with two conditions, the second): towards higher readout values if they are higher there.

To first order in the edit, the predicted change of the readouts along the direction is Rᵀa; its
share outside readout j (``leak``, recorded in ``results.json`` → ``direction_training.steer``) is
the method's own estimate of how specific the attribute is. Like ``readout`` it finds only what a
readout names. It costs 2 q × :data:`PROBE_IMAGES` renders.

Example
-------
>>> rng = np.random.default_rng(0)
>>> R = rng.normal(size=(8, 3))                       # 8 probe axes x 3 readouts: measured responses
>>> a = steering_coordinates(R)                       # (3 readouts, 8 axes)
>>> np.round(a @ R, 2)                                # each moves its own readout, the others hardly
array([[ 1.,  0.,  0.],
       [ 0.,  1., -0.],
       [ 0., -0.,  1.]])
"""

from __future__ import annotations

import numpy as np
import torch

from diffex.errors import DiffexError
from diffex.explain.directions.readout import distinct, separation, usable
from diffex.explain.directions.registry import DirectionContext, register
from diffex.models import sampler
from diffex.report.morphology import measurement_label

AXES = 16  # principal axes of h probed
PROBE_SD = 1.5  # probe step along each axis, in SD of the real images' coordinates along it
PROBE_IMAGES = 12  # selection images the probes are rendered on (seeded, split over the conditions)
RIDGE = 0.001  # λ as a share of the mean eigenvalue of RᵀR


def steering_coordinates(response: np.ndarray) -> np.ndarray:
    """Rows a_j (p, q): the regularized minimum-norm coordinates with response (q, p) ᵀ a_j ≈ e_j."""
    r = np.asarray(response, np.float64)
    gram = r.T @ r  # (p, p)
    lam = RIDGE * max(np.trace(gram) / len(gram), 1e-12)
    return np.linalg.solve(gram + lam * np.eye(len(gram)), r.T)  # (p, q): row j is (R (RᵀR + λI)⁻¹ e_j)ᵀ


def principal_axes(h: torch.Tensor, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-q principal axes (q, D) of h (N, S, *h_shape), centred per step, and the SD (q,) of the images'
    coordinates along each (averaged over the steps, as explain's calibration measures them)."""
    x = h.double().flatten(2)  # (N, S, D)
    centred = x - x.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred.flatten(0, 1), full_matrices=False)
    axes = vh[: min(q, vh.shape[0])]  # (q, D)
    coords = (centred @ axes.T).mean(1)  # (N, q)
    return axes, coords.std(0).clamp_min(1e-12)


def _probe_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """Up to :data:`PROBE_IMAGES` selection images, as evenly over the conditions as they allow (seeded)."""
    rng = np.random.default_rng(seed + 31)
    groups = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    order = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
    return np.sort(np.asarray(order[:PROBE_IMAGES]))


def response_matrix(ctx: DirectionContext, axes: torch.Tensor, sd: torch.Tensor, names: list[str], scale: np.ndarray,
                    images: np.ndarray) -> np.ndarray:
    """R (q, p): median over ``images`` of each readout's change (in its SDs) per SD along each axis, by central differences."""
    spec = ctx.edit_sampler or ctx.sampler or sampler.SamplerSpec()
    offsets = torch.cat([axes * sd[:, None], -axes * sd[:, None]]).float() * PROBE_SD  # (2q, D): +, then -
    offsets = offsets.view(len(offsets), *ctx.h_shape).to(ctx.pair.dm.device)
    frames = sampler.render_edits(ctx.pair.dm, ctx.xt[torch.as_tensor(images)].to(ctx.pair.dm.device), offsets, spec,
                                  batch_size=32)  # (n, 2q, C, H, W)
    raw = ctx.pair.raw(frames.flatten(0, 1)).cpu().numpy()
    meas = ctx.readouts(raw)
    vals = np.stack([np.asarray(meas[m], np.float64).reshape(len(images), -1) for m in names], -1) / scale  # (n, 2q, p)
    q = len(axes)
    diff = (vals[:, :q] - vals[:, q:]) / (2 * PROBE_SD)  # (n, q, p) per SD of the axis
    r = np.nanmedian(diff, axis=0)  # (q, p)
    return np.where(np.isfinite(r), r, 0.0)


@register("steer")
def steer_directions(ctx: DirectionContext, k: int) -> tuple[torch.Tensor, list[str]]:
    """Edits whose measured renders move one separating readout and hold the others, towards the condition it names."""
    if ctx.labels is None or ctx.readouts is None or ctx.xt is None:
        raise DiffexError("the steer method needs the conditions of the images, their readouts and their inversions")
    labels = np.asarray(ctx.labels)
    present = [int(c) for c in np.unique(labels)]
    if len(present) < 2 or min((labels == c).sum() for c in present) < 2:
        raise DiffexError("the steer method needs at least two images of each of two conditions")
    names, values = usable(ctx.readouts(ctx.pair.raw(ctx.x0.float()).cpu().numpy()))
    q75, q25 = np.percentile(values, [75, 25], axis=0) if names else (np.zeros(0), np.zeros(0))
    spread = (q75 - q25) / 1.349
    names, values, spread = [n for n, s in zip(names, spread) if s > 0], values[:, spread > 0], spread[spread > 0]
    if not names:
        raise DiffexError("the steer method found no readout that varies between the images")
    targets = present[1:] if len(present) == 2 else present
    tgt, auc = separation(values, labels, targets)
    keep = distinct(values, np.argsort(-np.abs(auc - 0.5), kind="stable"))
    steps = max(1, min(ctx.edit_steps, ctx.h.shape[1]))
    axes, sd = principal_axes(ctx.h[:, :steps], AXES)  # (q, D), (q,)
    images = _probe_images(labels, ctx.seed)
    held = [names[j] for j in keep]
    resp = response_matrix(ctx, axes, sd, held, spread[keep], images)  # (q, p)
    coords = steering_coordinates(resp)  # (p, q)
    predicted = coords @ resp  # (p, p): row j, the first-order change of every held readout along edit j
    vecs, out_names, rows = [], [], []
    for i, j in enumerate(keep[:k]):
        higher = auc[j] >= 0.5
        d = torch.as_tensor(coords[i] * sd.numpy()) @ axes  # (D,)
        vecs.append((1.0 if higher else -1.0) * d / d.norm().clamp_min(1e-12))
        out_names.append(f"towards {ctx.class_names[int(tgt[j])]}: {measurement_label(names[j])} {'higher' if higher else 'lower'}, "
                         f"others held (AUC {auc[j]:.2f})")
        own, other = abs(predicted[i, i]), np.delete(np.abs(predicted[i]), i)
        rows.append({"readout": names[j], "auc": round(float(auc[j]), 4), "condition": ctx.class_names[int(tgt[j])],
                     "leak": round(float(other.max() / own), 4) if len(other) and own > 0 else 0.0})
    ctx.diagnostics["steer"] = {"held": held, "candidates": rows, "axes": int(len(axes)), "probe_images": int(len(images)),
                                "probe_sd": PROBE_SD, "renders": int(2 * len(axes) * len(images))}
    out = torch.stack(vecs)
    return out.float().view(len(out), *ctx.h_shape), out_names
