"""``hold``: the readout directions of ``readout``, with every other readout held by the gradients of its renders.

``readout`` finds, per measured readout that separates the conditions, the pattern with which h
co-varies with it in the real images. Rendered, such a pattern moved other readouts too (on the
validity benchmark the cytoplasm pattern shrank the nucleus by 8 %). ``steer`` measured what edits
do by rendering probes, but 12 images' readouts were too noisy to invert. This method takes the
exact first-order effect instead:

1. The readouts, their order and their patterns p_j are those of ``readout``.
2. **Gradients.** For :data:`PROBE_IMAGES` selection images the soft readouts
   (:mod:`diffex.explain.soft_readouts`) of the render are differentiated through explain's own
   sampler with respect to a shared offset of h on the edited steps: one gradient g_k,i (D,) per
   readout k and image i. Ḡ_k is their mean over the images, in units of the readout's SD over the
   selection images.
3. **Hold.** For readout j the held set is every readout with a soft form that is not a copy of j
   (|Spearman r| ≤ 0.7 over the selection images, as ``readout`` judges copies): the other
   separating readouts and the nuisance ones alike (position, size, shape). With A the unit-normed
   Ḡ_k of the held set (m, D), p_j is projected onto A's null space, d = p_j − Aᵀ(AAᵀ + εI)⁻¹A p_j:
   the closest direction to the real-data pattern whose renders, to first order, leave every held
   readout where it was. It points towards the condition the readout separates best (with two
   conditions, the second) if the readout is higher there, else away from it, and is named like
   ``towards treated: Actin object intensity higher, others held (AUC 0.77)``.
4. **Keep what moves.** A readout without a soft form (texture, solidity, object count) gives no
   candidate: its own change cannot be computed. Nor does one whose held pattern would, to first
   order (Ḡ_j·d), move it against its name; both are listed in the diagnostics with the reason.

The held readouts' first-order change is zero by construction on the gradients it was solved from,
so ``leak`` (``results.json`` → ``direction_training.hold``) is cross-fitted: solved from half of
the probe images, measured with the other half's mean gradients, the largest |change| of a held
readout as a share of the steered one's (both in SDs). It costs one backward pass through the
sampler per readout for :data:`PROBE_IMAGES` images. Like ``readout`` it finds only what a readout
names.

Example
-------
>>> a = torch.tensor([[1.0, 0.0, 0.0]])           # the held readout's gradient
>>> held_projection(torch.tensor([[1.0, 1.0, 0.0]]), a).round(decimals=4)
tensor([[0., 1., 0.]], dtype=torch.float64)
"""

from __future__ import annotations

import numpy as np
import torch

from diffex.errors import DiffexError
from diffex.explain.directions.readout import (
    REDUNDANT,
    distinct,
    measured_selection,
    normal_scores,
    partial_patterns,
    separation,
    spearman,
    spread,
)
from diffex.explain.directions.registry import DirectionContext, register
from diffex.explain.directions.steer import probe_images
from diffex.models import sampler
from diffex.models.hooks import frozen
from diffex.report.morphology import measurement_label

PROBE_IMAGES = 12  # selection images whose renders are differentiated (seeded, split over the conditions)
EPS = 1e-8  # ε as a share of the mean diagonal of AAᵀ (rows are unit norm: about 1e-8)


def held_projection(vecs: torch.Tensor, held: torch.Tensor) -> torch.Tensor:
    """``vecs`` (k, D) with their components along the rows of ``held`` (m, D) removed (least squares, ridge ε), float64."""
    v = vecs.double()
    a = held.double()
    if a.shape[0] == 0:
        return v
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-30)
    gram = a @ a.T + EPS * torch.eye(len(a), dtype=torch.float64)  # (m, m)
    return v - (a.T @ torch.linalg.solve(gram, a @ v.T)).T


def readout_gradients(ctx: DirectionContext, images: np.ndarray, names: list[str]) -> torch.Tensor:
    """Per image and readout, ∂(soft readout)/∂Δh for a shared h offset on the edited steps: (n, p, D), NaN where the
    reference has no object for that readout."""
    dm = ctx.pair.dm
    spec = ctx.edit_sampler or ctx.sampler or sampler.SamplerSpec()
    idx = torch.as_tensor(images)
    xt = ctx.xt[idx].to(dm.device)  # (n, C, H, W)
    reference = ctx.pair.raw(ctx.x0[idx].float()).cpu().numpy()  # the reconstructions: the renders at Δh = 0
    dtype = next(dm.unet.parameters()).dtype
    out = torch.full((len(images), len(names), int(np.prod(ctx.h_shape))), float("nan"), dtype=torch.float64)
    with frozen(dm.unet):
        delta = torch.zeros((len(images), *ctx.h_shape), device=dm.device, dtype=dtype, requires_grad=True)  # (n, *h)
        with torch.enable_grad():
            raw = ctx.pair.raw(sampler.ddim_render_differentiable(dm, xt, delta, spec)).double().cpu()
            soft = ctx.soft_readouts(raw, reference)
            for j, name in enumerate(names):
                val = soft[name]  # (n,)
                ok = torch.isfinite(val)
                if not bool(ok.any()):
                    continue
                (g,) = torch.autograd.grad(val[ok].sum(), delta, retain_graph=j < len(names) - 1)
                out[ok, j] = g[ok].flatten(1).double().cpu()
    return out


def _mean(grads: torch.Tensor) -> torch.Tensor:
    """Mean over images (n, p, D) -> (p, D), ignoring images without the readout (0 when none has it)."""
    return torch.nan_to_num(torch.nanmean(grads, 0))


def cross_fitted_leak(grads: torch.Tensor, own: int, held: list[int], pattern: torch.Tensor) -> float:
    """``pattern`` (D,) held with the even probe images' mean gradients, its first-order effect measured with the odd
    ones' (SD units): the largest |change| of a held readout as a share of readout ``own``'s."""
    fit, test = _mean(grads[0::2]), _mean(grads[1::2])
    d = held_projection(pattern[None], fit[held])[0]
    change = test @ d  # (p,)
    mine = abs(float(change[own]))
    other = max((abs(float(change[k])) for k in held), default=0.0)
    return other / mine if mine > 0 else float("nan")


@register("hold", version=2)  # 2: each candidate's row in the diagnostics names its output and the way it moves the readout
def hold_directions(ctx: DirectionContext, k: int) -> tuple[torch.Tensor, list[str]]:
    """Per separating readout, its real-data pattern with the other readouts held to first order, towards the condition it names."""
    if ctx.xt is None or ctx.soft_readouts is None:
        raise DiffexError("the hold method needs the images' inversions and differentiable readouts")
    labels, present, names, values = measured_selection(ctx, "hold")
    targets = present[1:] if len(present) == 2 else present
    tgt, auc = separation(values, labels, targets)
    keep = distinct(values, np.argsort(-np.abs(auc - 0.5), kind="stable"))
    steps = max(1, min(ctx.edit_steps, ctx.h.shape[1]))
    patterns = partial_patterns(ctx.h[:, :steps], normal_scores(values[:, keep]))  # (p_keep, D), towards higher readouts
    ref = ctx.pair.raw(ctx.x0[:1].float()).cpu().double()
    soft_names = set(ctx.soft_readouts(ref, ref.numpy()))
    smooth = [i for i, n in enumerate(names) if n in soft_names]  # readouts with a soft form: the ones that can be held
    images = probe_images(labels, ctx.seed, PROBE_IMAGES)
    scale = torch.as_tensor(spread(values)[smooth])  # (p_smooth,) the readouts' SDs over the selection images
    grads = readout_gradients(ctx, images, [names[i] for i in smooth]) / scale[None, :, None]  # (n, p_smooth, D) SD units
    pos = {i: s for s, i in enumerate(smooth)}  # readout index -> row of grads
    rho = spearman(values)  # (p, p)
    mean = _mean(grads)  # (p_smooth, D)
    vecs, out_names, rows, skipped = [], [], [], []
    for i, j in enumerate(keep):
        if len(vecs) == k:
            break
        if j not in pos:  # no soft form: its own change could not be computed, so nothing says the edit moves it
            skipped.append({"readout": names[j], "why": "no differentiable form"})
            continue
        held = [pos[m] for m in smooth if m != j and abs(rho[j, m]) <= REDUNDANT]
        sign = 1.0 if auc[j] >= 0.5 else -1.0  # the readout is higher in the target condition than in the rest
        d = sign * held_projection(patterns[i][None], mean[held])[0]  # (D,) towards the target condition
        own = sign * float(mean[pos[j]] @ d)  # first-order change of readout j, + when it moves the named way
        if own <= 0:
            skipped.append({"readout": names[j], "why": "with the others held, the pattern does not move it the named way"})
            continue
        vecs.append(d / d.norm().clamp_min(1e-30))
        leak = cross_fitted_leak(grads, pos[j], held, patterns[i]) if len(images) >= 2 else float("nan")
        out_names.append(f"towards {ctx.class_names[int(tgt[j])]}: {measurement_label(names[j])} {'higher' if sign > 0 else 'lower'}, "
                         f"others held (AUC {auc[j]:.2f})")
        rows.append({"readout": names[j], "auc": round(float(auc[j]), 4), "condition": ctx.class_names[int(tgt[j])],
                     "held": len(held), "leak": None if not np.isfinite(leak) else round(leak, 4), "name": out_names[-1],
                     "higher": bool(sign > 0)})
    if not vecs:
        why = [f"{s['readout']} ({s['why']})" for s in skipped]
        more = f" and {len(why) - 6} more" if len(why) > 6 else ""
        raise DiffexError(f"the hold method found no separating readout that its held pattern moves; skipped: {', '.join(why[:6])}{more}; "
                          "--method gradient finds directions without readouts")
    ctx.diagnostics["hold"] = {"smooth": [names[i] for i in smooth], "candidates": rows, "skipped": skipped,
                               "probe_images": int(len(images))}
    out = torch.stack(vecs)
    return out.float().view(len(out), *ctx.h_shape), out_names
