"""``steer``: per measured readout that separates the conditions, the h edit whose *renders* move it and hold the others.

``readout`` regresses h on the readouts: the pattern with which h co-varies with a readout in the
real images. Rendering along that pattern need not move the readout alone (the decoder also
reads x_t and the skip connections), and on the validity benchmark it did not. This method
measures what edits do instead, then inverts it:

1. The readouts and their order are those of ``readout`` (:func:`~diffex.explain.directions.readout.usable`,
   ordered by |AUC − 0.5| between the conditions, near-copies dropped); each is expressed in units
   of its SD over the selection images (IQR / 1.349, or the plain SD where that is larger, as for
   shares and counts whose values mostly tie).
2. **Response.** The top q principal axes v_i of h (per-step centred, over the edit steps; sd_i the
   real images' SD along each) are each rendered at ±:data:`PROBE_SD` sd_i on :data:`PROBE_IMAGES`
   selection images with explain's own sampler. R[i, j] is the median over those images of the
   change of readout j per SD of axis i (central difference).
3. **Inversion.** For readout j the edit's coordinates a (q,) solve min ‖a‖ subject to Rᵀa = e_j
   (readout j up by one of its SDs, every other readout unchanged), regularized:
   a = R (RᵀR + λI)⁻¹ e_j, λ = :data:`RIDGE` × mean eigenvalue of RᵀR. The direction is
   Σ_i a_i sd_i v_i, made unit norm and pointing towards the condition the readout separates
   best (with two conditions, the second): towards higher readout values if they are higher there.

Solved and checked on the same R, the edit is specific by construction. ``leak`` (in
``results.json`` → ``direction_training.steer``) is therefore cross-fitted: the edit solved from
half of the probe images, its first-order effect measured with the other half's R, the largest
change of another readout as a share of the steered one's. A readout the renders do not move at
all gives no candidate. Like ``readout`` it finds only what a
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

import warnings

import numpy as np
import torch

from diffex.errors import DiffexError
from diffex.explain.calibrate import coordinates
from diffex.explain.directions.pca import principal_axes
from diffex.explain.directions.readout import distinct, measured_selection, separation, spread
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


def probe_images(labels: np.ndarray, seed: int, n: int = PROBE_IMAGES) -> np.ndarray:
    """Up to ``n`` selection images, as evenly over the conditions as they allow (seeded)."""
    rng = np.random.default_rng(seed + 31)
    groups = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    order = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
    return np.sort(np.asarray(order[:n]))


def response_matrix(ctx: DirectionContext, axes: torch.Tensor, sd: torch.Tensor, names: list[str], scale: np.ndarray,
                    images: np.ndarray) -> np.ndarray:
    """Per probe image, each readout's change (in its SDs) per SD along each axis, by central differences: (n, q, p)."""
    spec = ctx.edit_sampler or ctx.sampler or sampler.SamplerSpec()
    offsets = torch.cat([axes * sd[:, None], -axes * sd[:, None]]).float() * PROBE_SD  # (2q, D): +, then -
    offsets = offsets.view(len(offsets), *ctx.h_shape).to(ctx.pair.dm.device)
    frames = sampler.render_edits(ctx.pair.dm, ctx.xt[torch.as_tensor(images)].to(ctx.pair.dm.device), offsets, spec,
                                  batch_size=32)  # (n, 2q, C, H, W)
    raw = ctx.pair.raw(frames.flatten(0, 1)).cpu().numpy()
    meas = ctx.readouts(raw)
    vals = np.stack([np.asarray(meas[m], np.float64).reshape(len(images), -1) for m in names], -1) / scale  # (n, 2q, p)
    q = len(axes)
    return (vals[:, :q] - vals[:, q:]) / (2 * PROBE_SD)  # (n, q, p) per SD of the axis


def median_response(diff: np.ndarray) -> np.ndarray:
    """R (q, p): the median over images of per-image responses (n, q, p); 0 where no image has a value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: 0 below
        r = np.nanmedian(diff, axis=0)
    return np.where(np.isfinite(r), r, 0.0)


def cross_fitted_leak(diff: np.ndarray) -> np.ndarray:
    """Per readout j (p,): the edit solved from half of the probe images (even rows), its response measured on the
    other half (odd rows): the largest |change| of another readout as a share of readout j's own change (NaN: no
    own change). The in-sample prediction would be about the identity by construction; this one sees the noise."""
    fit, test = median_response(diff[0::2]), median_response(diff[1::2])
    pred = steering_coordinates(fit) @ test  # (p, p)
    own = np.abs(np.diag(pred))
    other = np.abs(pred - np.diag(np.diag(pred))).max(1) if len(pred) > 1 else np.zeros(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(own > 0, other / own, np.nan)


@register("steer", version=2)  # 2: each candidate's row in the diagnostics names its output and the way it moves the readout
def steer_directions(ctx: DirectionContext, k: int) -> tuple[torch.Tensor, list[str]]:
    """Edits whose measured renders move one separating readout and hold the others, towards the condition it names."""
    if ctx.xt is None:
        raise DiffexError("the steer method needs the images' inversions")
    labels, present, names, values = measured_selection(ctx, "steer")
    scale = spread(values)  # (p,)
    targets = present[1:] if len(present) == 2 else present
    tgt, auc = separation(values, labels, targets)
    keep = distinct(values, np.argsort(-np.abs(auc - 0.5), kind="stable"))
    steps = max(1, min(ctx.edit_steps, ctx.h.shape[1]))
    axes, _ = principal_axes(ctx.h[:, :steps], AXES)  # (q, D)
    coords_real = coordinates(ctx.h[:, :steps], axes.view(len(axes), *ctx.h_shape))  # (N, q), as explain calibrates
    sd = torch.as_tensor(coords_real.std(0, ddof=1), dtype=torch.float64).clamp_min(1e-12)  # (q,)
    images = probe_images(labels, ctx.seed)
    held = [names[j] for j in keep]
    diff = response_matrix(ctx, axes, sd, held, scale[keep], images)  # (n, q, p)
    resp = median_response(diff)  # (q, p)
    coords = steering_coordinates(resp)  # (p, q)
    own = np.abs(np.einsum("pq,qp->p", coords, resp))  # (p,) first-order change of each steered readout
    leak = cross_fitted_leak(diff) if len(images) >= 2 else np.full(len(held), np.nan)
    vecs, out_names, rows = [], [], []
    for i, j in enumerate(keep):
        if len(vecs) == k:
            break
        if own[i] < 1e-9:  # the renders do not move this readout at all: no edit can steer it
            continue
        higher = auc[j] >= 0.5
        d = torch.as_tensor(coords[i] * sd.numpy()) @ axes  # (D,)
        vecs.append((1.0 if higher else -1.0) * d / d.norm().clamp_min(1e-12))
        out_names.append(f"towards {ctx.class_names[int(tgt[j])]}: {measurement_label(names[j])} {'higher' if higher else 'lower'}, "
                         f"others held (AUC {auc[j]:.2f})")
        rows.append({"readout": names[j], "auc": round(float(auc[j]), 4), "condition": ctx.class_names[int(tgt[j])],
                     "leak": None if not np.isfinite(leak[i]) else round(float(leak[i]), 4), "name": out_names[-1],
                     "higher": bool(higher)})
    if not vecs:
        raise DiffexError("the steer method's probe renders moved none of the readouts; no edit can be solved for")
    ctx.diagnostics["steer"] = {"held": held, "candidates": rows, "axes": int(len(axes)), "probe_images": int(len(images)),
                                "probe_sd": PROBE_SD, "renders": int(2 * len(axes) * len(images))}
    out = torch.stack(vecs)
    return out.float().view(len(out), *ctx.h_shape), out_names
