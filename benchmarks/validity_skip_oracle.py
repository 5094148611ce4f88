"""Each true factor's ground-truth pattern in the mid-block output *and the skip connections*, rendered: can an edit
that reaches the skips change the factor where an h offset does not?

``validity_h_oracle.py`` showed that the pattern in h (the U-Net's mid-block output) along which real cells vary with
nuclear size does not change the rendered nucleus, and named a plausible reason it did not measure: the skip
connections carry the size to the output, and an h offset leaves them as they were. This script measures it. The
activations are widened from h to h *and* every skip connection the up blocks receive (a diffusers UNet2DModel's
``conv_in`` output and each down block's outputs; :func:`layout`). Everything else is the h oracle's: the activations
are recorded along each image's reconstruction trajectory (where explain records h) and averaged over the edit steps;
each factor's pattern is the regression of these activations on all generator factors at once within the top-r
principal axes (r by cross-validation); it is rendered on the evaluation images at ±0.5 and ±1 Δ and at explain's
calibrated in-data strength along it, then classified and decoded. An edit adds the pattern's offset to every
activation of ``--space`` in the edited prediction of each edit step; the unedited prediction (Asyrp's direction term)
gets none (:func:`render`). The edited trajectory's own activations are recorded too: how far they move along the
pattern before the offset is added shows whether the offset comes on top of a change the trajectory already made.

``--space`` chooses the activations: ``h+skips`` (default), ``skips`` (the skips alone), or ``h``, which fits and renders
in h alone through this script's recording and sampler. ``h`` reproduces ``validity_h_oracle.py``'s rows and so checks
this code path; the tests check the recording against explain's own h and the sampler against explain's.
``--render`` renders only part of the fitted pattern (e.g. its h part, fitted in ``h+skips``), an ablation: at each
level the rendered part gets exactly the offset the whole pattern's render gives it, the other activations none, so the
difference from the whole render is what the other part's offsets contribute. The rows' levels, ``pattern_norm``,
``sd``, in-data frame and ``trajectory_shift`` stay those of the whole pattern; ``rendered_norm`` is the length of the
part actually offset at 1 Δ (the whole length x the square root of its share). The h part of the h+skips pattern comes
from the joint fit, not from an h-only fit, so whether it moves the factor tells whether *this* pattern needs its skip
offsets, not why the h-only pattern failed.

Usage::

    python benchmarks/validity_skip_oracle.py ROOT/experiments_s11/sample/gradient --configuration sample \\
        --fit-images sample_data/cells --fit-factors sample_data/cells_factors.csv --fit-folder ROOT/hfit_sample

Example
-------
>>> from diffex.models.diffusion import tiny_model
>>> layout(tiny_model())  # h, then the skips of each up block
[(32, 4, 4), (16, 4, 4), (32, 4, 4), (16, 8, 8), (16, 8, 8)]
>>> parts_of("skips", 3)
(1, 2)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffex.models import sampler  # noqa: E402

SPACES = ("h+skips", "skips", "h")


def parts_of(space: str, n_parts: int) -> tuple[int, ...]:
    """Indices into :func:`layout` of the activations ``space`` edits: 0 is h, 1 ... the skips."""
    return {"h": (0,), "skips": tuple(range(1, n_parts)), "h+skips": tuple(range(n_parts))}[space]


def restricted(unit: list, space: str, rendered: str) -> list:
    """The offsets of a pattern fitted in ``space`` (a list in :func:`layout` order) with only the parts of ``rendered``
    kept (None elsewhere: no offset); ``rendered`` must lie within ``space``.

    >>> restricted([1, 2, 3], "h+skips", "h")
    [1, None, None]
    >>> restricted([None, 2, 3], "skips", "h")
    Traceback (most recent call last):
    ...
    ValueError: cannot render the h part of a pattern fitted in skips
    """
    keep = set(parts_of(rendered, len(unit)))
    if not keep <= set(parts_of(space, len(unit))):
        raise ValueError(f"cannot render the {rendered} part of a pattern fitted in {space}")
    return [u if j in keep else None for j, u in enumerate(unit)]


@contextlib.contextmanager
def activations(unet, offsets: list | None = None, store: list | None = None):
    """While active, each UNet call's mid-block output gets ``offsets[0]`` added and the skip connections its up blocks
    receive get ``offsets[1:]`` added, in :func:`layout` order (None: left as is); the down path is not changed. With
    ``store``, each call appends its activations (before any offset) as a list in layout order."""
    current: list = []

    def mid(_m, _inp, out):
        current.clear()
        current.append(out)
        return out if offsets is None or offsets[0] is None else out + offsets[0].to(out.dtype)

    def up(first: int):
        def hook(_m, args):
            res = args[1]  # (sample, res_hidden_states_tuple, temb, ...): the skips this block consumes, in order
            current.extend(res)
            if offsets is None:
                return None
            new = tuple(r if offsets[first + j] is None else r + offsets[first + j].to(r.dtype) for j, r in enumerate(res))
            return (args[0], new, *args[2:])
        return hook

    def done(_m, _args, _out):
        if store is not None:
            store.append(list(current))

    handles, first = [unet.mid_block.register_forward_hook(mid)], 1
    for block in unet.up_blocks:
        handles.append(block.register_forward_pre_hook(up(first)))
        first += len(block.resnets)
    handles.append(unet.register_forward_hook(done))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def layout(dm) -> list[tuple[int, ...]]:
    """Per-image shapes of the activations an edit may offset: h, then each up block's skip connections in the order of
    the tuple it receives (diffusers' blocks read that tuple from its end)."""
    store: list = []
    x = torch.zeros(1, dm.info.in_channels, dm.info.image_size, dm.info.image_size, device=dm.device, dtype=dm.dtype)
    with torch.no_grad(), activations(dm.unet, store=store):
        dm.eps(x, 0)
    return [tuple(a.shape[1:]) for a in store[0]]


@torch.no_grad()
def record(dm, xt: torch.Tensor, spec, steps: np.ndarray, parts: tuple[int, ...], batch_size: int = 32) -> np.ndarray:
    """The activations ``parts`` of images x_T (N, C, H, W) along their reconstruction trajectory, averaged over the edit
    steps (a mask over the steps from t_end down, as explain's h), flattened and concatenated: (N, D), float64."""
    mask = np.asarray(steps, bool)
    out = []
    for xc in xt.split(batch_size):
        store: list = []
        with activations(dm.unet, store=store):
            sampler.ddim_render(dm, xc, spec)
        acc = sum(torch.cat([store[k][j].double().flatten(1) for j in parts], 1) for k in np.flatnonzero(mask))
        out.append((acc / mask.sum()).cpu().numpy())  # (b, D)
    return np.concatenate(out)


def unflatten(v: np.ndarray, shapes: list[tuple[int, ...]], parts: tuple[int, ...]) -> list:
    """A vector over ``parts`` (D,) as one tensor per :func:`layout` entry ((*shape) or None where not edited)."""
    sizes = [int(np.prod(shapes[j])) for j in parts]
    if sum(sizes) != len(v):
        raise ValueError(f"a vector of {len(v)} values for parts of {sum(sizes)}")
    out, at = [None] * len(shapes), 0
    for j, size in zip(parts, sizes):
        out[j] = torch.as_tensor(v[at:at + size], dtype=torch.float32).view(shapes[j])
        at += size
    return out


@torch.no_grad()
def render(dm, xt: torch.Tensor, unit: list, scales: torch.Tensor, spec, batch_size: int = 32, along=None):
    """Images x_T (n, C, H, W) rendered with offsets ``scales[i, l]`` x ``unit`` (a list in :func:`layout` order) at
    every edit step: (n, L, C, H, W). In asymmetric mode only the edited prediction (the predicted-x0 term) carries the
    offsets, as in explain's sampler. With ``along`` = (e (D,), parts), also (n, L): the coordinate along e of the
    edited trajectory's own activations ``parts`` (recorded before the offsets, averaged over the edit steps)."""
    n, levels = scales.shape
    img, s = torch.arange(n).repeat_interleave(levels), scales.flatten()  # (n*L,)
    ts = spec.timesteps(dm.num_train_timesteps)
    out, own = [], []
    for start in range(0, n * levels, batch_size):
        sl = slice(start, min(start + batch_size, n * levels))
        x = xt[img[sl]].to(dm.device, dm.dtype)  # (b, C, H, W)
        k = s[sl].to(dm.device, dm.dtype)
        offsets = [None if u is None else k.view(-1, *(1,) * u.dim()) * u.to(dm.device, dm.dtype) for u in unit]
        store: list | None = None if along is None else []
        for i in range(len(ts) - 1, -1, -1):
            t, prev = int(ts[i]), int(ts[i - 1]) if i > 0 else -1
            a_t, a_prev = sampler._alpha(dm, t), sampler._alpha(dm, prev)
            if t < spec.t_edit:
                x = sampler._ddim_step(x, dm.eps(x, t), a_t, a_prev)
                continue
            with activations(dm.unet, offsets=offsets, store=store):
                eps_edit = dm.eps(x, t)
            x = sampler._ddim_step(x, eps_edit, a_t, a_prev, dm.eps(x, t) if spec.asymmetric else None)
        out.append(x.float().cpu())
        if along is not None:  # store: one list of activations per edit step
            acc = sum(torch.cat([step[j].double().flatten(1) for j in along[1]], 1) for step in store) / len(store)
            own.append(acc.cpu().numpy() @ along[0])  # (b,)
    x = torch.cat(out).view(n, levels, *xt.shape[1:])
    return x if along is None else (x, np.concatenate(own).reshape(n, levels))


def _fit(exp, inv, A, X, names, factors, deltas, steps, parts, fit, device):
    """(activations (n, D), regressors (n, P), labels (n,)) the patterns are fitted on: the selection images, or
    ``fit``'s set (images, factors CSV, cache folder), recorded the same way."""
    from validity_h_oracle import design, fit_set

    if fit is None:
        return A[inv.selection], X[inv.selection], exp.labels[inv.selection]
    fexp, finv, frows = fit_set(exp, *fit, device)
    X_fit, fnames = design([frows[i] for i in finv.usable], factors, deltas)
    if fnames != names:
        raise SystemExit(f"{fit[1]}: its factor columns {fnames} differ from the experiment's {names}")
    cfg = exp.cfg
    A_fit = record(exp.pair.dm, finv.xt[finv.usable], cfg.sampler, steps, parts, cfg.batch_size)
    return A_fit, X_fit, fexp.labels[finv.usable]


def h_only_comparison(A_fit: np.ndarray, X_fit: np.ndarray, names: list, factor: str, labels, seed: int, a: np.ndarray,
                      n_h: int) -> dict:
    """How the h part of a pattern ``a`` (its first ``n_h`` values) compares with the pattern fitted in h alone on the same
    images (its own rank by cross-validation): the h-only fit's rank, the cosine of the two, and the ratio of lengths."""
    from validity_h_oracle import choose_rank, factor_patterns

    rank, _ = choose_rank(A_fit[:, :n_h], X_fit, names, factor, labels, seed)
    a_h = factor_patterns(A_fit[:, :n_h], X_fit, names, (factor,), rank)[factor]
    part = a[:n_h]
    return {"h_only_rank": rank, "h_part_cos_h_only": float(part @ a_h / (np.linalg.norm(part) * np.linalg.norm(a_h))),
            "h_part_norm_over_h_only": float(np.linalg.norm(part) / np.linalg.norm(a_h))}


def run(exp_dir: Path, cfg_v, root: Path | None = None, device: str = "cpu", fit: tuple[Path, Path, Path] | None = None,
        space: str = "h+skips", scale: float = 1.0, rendered: str | None = None) -> list[dict]:
    """One row per true factor (the h oracle's row, see :func:`validity_h_oracle._pattern_row`), with the space and the
    share of the pattern's squared length that lies in h, and ``trajectory_shift``: per ±0.5/±1 frame, the median move along the
    pattern (in Δ of the factor) of the edited trajectory's own activations, before the offset is added; the activations
    the up blocks see have moved by that plus the offset. ``scale``: the rendered levels are ``scale`` x (±0.5, ±1) Δ of
    the pattern (the in-data frame is unchanged); the rows then label those frames ±0.5 and ±1 as before, and their
    ``pattern_norm`` and ``delta_in_sd`` are the scaled frame's length. ``rendered``: offset only this part of the
    pattern (:func:`restricted`; None: all of ``space``); ``rendered_norm`` is that part's length at the 1 Δ frame.
    Rendering h alone, the rows also compare the pattern's h part with the h-only fit (:func:`h_only_comparison`)."""
    from validity import decoder_for
    from validity_h_oracle import LEVELS, _pattern_row, _setup, choose_rank, design, factor_patterns, scored

    from diffex.explain.calibrate import edit_steps

    exp, res, inv, cal, spec, rows, delta_of = _setup(exp_dir, cfg_v, root, device)
    dec = decoder_for(cfg_v, int(exp.raw.shape[-1]))
    factors, cfg, dm = dec.factors, exp.cfg, exp.pair.dm
    steps = edit_steps(cfg.sampler.timesteps(dm.num_train_timesteps), cfg.t_edit)
    shapes = layout(dm)
    parts = parts_of(space, len(shapes))
    rendered = rendered or space
    restricted([None] * len(shapes), space, rendered)  # refuse before the costly recording
    A = record(dm, inv.xt, cfg.sampler, steps, parts, cfg.batch_size)  # (N, D)
    deltas = {f: delta_of(spec, f) for f in factors}
    X, names = design(rows, factors, deltas)
    A_fit, X_fit, lab_fit = _fit(exp, inv, A, X, names, factors, deltas, steps, parts, fit, device)
    n_h = int(np.prod(shapes[0])) if 0 in parts else 0
    out = []
    for fi, f in enumerate(factors):
        rank, cv_r = choose_rank(A_fit, X_fit, names, f, lab_fit, cfg.seed)
        a = factor_patterns(A_fit, X_fit, names, (f,), rank)[f]
        norm = float(np.linalg.norm(a))
        unit = restricted(unflatten(a / norm, shapes, parts), space, rendered)
        coord = (A - A.mean(0)) @ (a / norm)  # (N,) centred, as explain's coordinates

        drift: dict = {}

        def draw(scales, unit=unit, e=a / norm, drift=drift):
            x, own = render(dm, inv.xt[inv.evaluation], unit, torch.as_tensor(scales), cfg.sampler, cfg.batch_size, (e, parts))
            moved = (own[:, :len(LEVELS)] - (A[inv.evaluation] @ e)[:, None]) / norm  # (n, 4) along e, in Δ
            drift.update(zip([f"{lv:+g}" for lv in LEVELS], np.median(moved, 0).tolist()))  # the fixed-level frames
            return scored(exp, inv, x, dec)

        kept = np.concatenate([np.ravel(u.numpy()) for u in unit if u is not None])  # the rendered part of a / norm
        out.append({"factor": f, "space": space, "rendered": rendered, "rendered_norm": scale * norm * float(np.linalg.norm(kept)),
                    "scale": scale, "h_share": float(a[:n_h] @ a[:n_h]) / norm**2, "fitted_on": len(A_fit),
                    "rank": rank, "cv_within_r": cv_r, "mode": cfg.mode, "t_end": cfg.t_end, "median_psnr": float(np.median(inv.psnr)),
                    **_pattern_row(exp, inv, cal, dec, coord, scale * norm, draw, X[:, 1 + fi], fi), "trajectory_shift": drift,
                    **(h_only_comparison(A_fit, X_fit, names, f, lab_fit, cfg.seed, a, n_h) if rendered == "h" else {})})
    return out


def main(argv=None) -> int:
    from validity_h_oracle import oracle_arguments, oracle_inputs, table

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    oracle_arguments(ap)
    ap.add_argument("--space", choices=SPACES, default="h+skips", help="the activations a pattern lives in and edits")
    ap.add_argument("--scale", type=float, default=1.0, help="render the pattern at this multiple of ±0.5 and ±1 Δ")
    ap.add_argument("--render", choices=SPACES, default=None, help="render only this part of the pattern (default: all of it)")
    args = ap.parse_args(argv)
    if args.render:  # refused before the inputs are prepared (the fit set's inversion takes minutes); 3 parts: h and two skips
        try:
            restricted([None] * 3, args.space, args.render)
        except ValueError as e:
            raise SystemExit(f"--render {args.render}: {e}") from None
    with tempfile.TemporaryDirectory() as tmp:
        cfg_v, fit = oracle_inputs(args, Path(tmp))
        rows = run(args.experiment, cfg_v, args.root, args.device, fit, args.space, args.scale, args.render)
    part = f" rendered in {args.render}" if args.render and args.render != args.space else ""
    print(json.dumps(rows, indent=1))
    print(table(rows, f"{cfg_v.name} [{args.space}{part}{'' if args.scale == 1 else f', x {args.scale:g}'}]"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
