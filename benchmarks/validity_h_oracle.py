"""Each true factor's ground-truth pattern in h, rendered: does the direction along which real images vary with a factor edit it?

Every method of issue 14 looks for directions in h (the U-Net mid-block activations) without knowing the factors. Here the
factors are known, so the direction along which the real data vary with each factor can be computed: real images' h
(averaged over the edit steps, as diffex's coordinates are) is regressed on all their generator factors at once (the
true factors in units of Δ, the conditions' difference; every nuisance factor standardised; orientation as cos and sin
of twice its angle), within h's top-r principal axes (r by 5-fold cross-validation of how well the pattern's coordinate
tracks the factor within conditions). The fit is on the experiment's *selection* images, or, with ``--fit-images``, on
another, larger set inverted with the experiment's models and sampler (e.g. the models' training folder). Factor f's
coefficient row a_f (D,) is how h changes per Δ of f with every other factor held: the pattern along which real images
with more f lie. Adding s x a_f to h moves an image's h as far as real images that differ by s Δ in f differ.

The pattern is rendered on the *evaluation* images as explain renders an attribute (its sampler, the offset added at
every edit step) at s in ±0.5 and ±1, and at explain's calibrated in-data strength along a_f towards the other condition
(``strength`` SD of the selection images' coordinates, stopped at the data's edge). The renders are classified and
measured with the validity scorer's readouts, decoded into factor changes (``validity_decode.py``). Reported per
factor: how well the coordinate along a_f tracks the factor in real images (Pearson r within conditions, on the
evaluation images, which the fit did not see), how much of an s Δ move of h the renders show as a change of f, whether
they change the other factor (decoded r, with the scorer's tie), and the flip rates. A pattern that renders weak or
mixed changes shows that where the data vary in h is not what an h offset edits; it does not rule out other directions
(``strength_sweep.py`` measures the methods' own; ``validity_skip_oracle.py`` the same pattern with the skip connections
included). ``validity_flip_ceiling.py`` gives the same figures for the generator's own perfect edit.

Usage::

    python benchmarks/validity_h_oracle.py ROOT/experiments_s11/sample/gradient --configuration sample

(any finished experiment of the configuration: only its inversions are used).

Example
-------
>>> X = np.column_stack([np.ones(6), [0, 1, 2, 0, 1, 2], [1, 1, 1, 0, 0, 0]])      # intercept, f, g
>>> h = np.outer(X[:, 1], [1.0, 2.0, 0.0]) + np.outer(X[:, 2], [0.0, 0.0, 5.0])     # f moves h along (1, 2, 0)
>>> factor_patterns(h, X, ["1", "f", "g"], ("f", "g"))["f"].round(6).tolist()
[1.0, 2.0, 0.0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

LEVELS = (-1.0, -0.5, 0.5, 1.0)  # s: the offset s x a_f, i.e. as far as real images differing by s Δ in f
RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)  # principal axes of h a pattern may be fitted in (chosen by cross-validation)
SKIP = {"path", "condition", "patient_id", "nucleus_area_px"}  # not factors (nucleus_area_px follows nucleus_radius)


def design(rows: list[dict], factors: tuple[str, ...], deltas: dict[str, float]) -> tuple[np.ndarray, list[str]]:
    """Regressors (n, 1 + P) of ground-truth rows: an intercept, the true factors in units of Δ, every other numeric
    column standardised (an angle column ``*_deg`` as cos and sin of twice the angle), and their names."""
    cols, names = [np.ones(len(rows))], ["intercept"]
    for f in factors:
        cols.append(np.array([float(r[f]) for r in rows]) / deltas[f])
        names.append(f)
    for c in [c for c in rows[0] if c not in SKIP and c not in factors]:
        v = np.array([float(r[c]) for r in rows])
        parts = {f"cos2({c})": np.cos(np.radians(2 * v)), f"sin2({c})": np.sin(np.radians(2 * v))} if c.endswith("_deg") else {c: v}
        for name, x in parts.items():
            if np.std(x) > 0:
                cols.append((x - x.mean()) / x.std())
                names.append(name)
    return np.column_stack(cols), names


def _axes(hbar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and principal axes (q, D) of h (n, D), the largest first."""
    mu = hbar.mean(0)
    return mu, np.linalg.svd(hbar - mu, full_matrices=False)[2]


def factor_patterns(hbar: np.ndarray, X: np.ndarray, names: list[str], factors: tuple[str, ...],
                    rank: int | None = None, axes: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Each factor's pattern (D,): its coefficient row in the least-squares fit of h (n, D) on the regressors X (n, P);
    with ``rank``, of h's coordinates in its top-``rank`` principal axes (the pattern lies in their span: with fewer
    images than dimensions the full-space fit is mostly noise). ``axes``: :func:`_axes` of ``hbar``, if already computed."""
    if rank is None:
        coef, *_ = np.linalg.lstsq(X, hbar, rcond=None)  # (P, D)
        return {f: coef[names.index(f)] for f in factors}
    mu, vh = axes if axes is not None else _axes(hbar)
    v = vh[:rank].T  # (D, r)
    coef, *_ = np.linalg.lstsq(X, (hbar - mu) @ v, rcond=None)  # (P, r)
    return {f: v @ coef[names.index(f)] for f in factors}


def choose_rank(hbar: np.ndarray, X: np.ndarray, names: list[str], factor: str, labels: np.ndarray, seed: int = 0,
                folds: int = 5) -> tuple[int, float]:
    """The rank (of :data:`RANKS`, below the training folds' size) whose pattern's coordinate best tracks ``factor`` within
    conditions on held-out folds (:func:`_within_r` over the pooled held-out coordinates), and that r."""
    fold = np.random.default_rng(seed).permutation(len(hbar)) % folds
    col = X[:, names.index(factor)]
    ranks = [r for r in RANKS if r < min(np.bincount(fold)) * (folds - 1)]
    coord = np.zeros((len(ranks), len(hbar)))  # held-out coordinates per rank
    for k in range(folds):
        tr, te = fold != k, fold == k
        axes = _axes(hbar[tr])  # one decomposition per fold, shared by every rank
        for j, r in enumerate(ranks):
            a = factor_patterns(hbar[tr], X[tr], names, (factor,), r, axes)[factor]
            coord[j, te] = (hbar[te] - axes[0]) @ (a / max(np.linalg.norm(a), 1e-12))
    best = (0, -np.inf)
    for j, r in enumerate(ranks):
        got = _within_r(coord[j], col, labels)
        if got > best[1]:
            best = (r, got)
    return best


def _hbar(h, steps: np.ndarray) -> np.ndarray:
    """h (N, S, *h) averaged over the edit steps (mask over S), flattened: (N, D), float64."""
    import torch

    return h[:, torch.as_tensor(steps)].double().mean(1).flatten(1).numpy()


def _within_r(x: np.ndarray, y: np.ndarray, labels: np.ndarray) -> float:
    """Pearson r of x and y after removing each condition's mean from both."""
    xc, yc = x.astype(float).copy(), y.astype(float).copy()
    for lab in np.unique(labels):
        m = labels == lab
        xc[m] -= xc[m].mean()
        yc[m] -= yc[m].mean()
    return float(np.corrcoef(xc, yc)[0, 1])


def _open_changed(exp_dir: Path, work: Path, device: str, changes: dict):
    """The experiment's images and models re-opened in a fresh folder with some settings changed (nothing cached)."""
    from dataclasses import replace

    from diffex.explain.config import config_from_dict
    from diffex.explain.inputs import open_experiment
    from diffex.report.results import read_results

    res = read_results(exp_dir / "results.json")
    cfg = replace(config_from_dict(json.loads((exp_dir / "config.resolved.json").read_text())), **changes)
    return open_experiment(res.classifier, res.images, work / "experiment", cfg.diffusion, cfg, device=device, show_progress=False), res


def _setup(exp_dir: Path, cfg_v, root: Path | None, device: str, changes: dict | None = None):
    from strength_sweep import _open_copy, _stages
    from validity_oracle import _delta, generator_spec
    from validity_score import read_truth

    with tempfile.TemporaryDirectory() as tmp:
        exp, res = _open_changed(exp_dir, Path(tmp), device, changes) if changes else _open_copy(exp_dir, Path(tmp), device)
        inv, _, cal = _stages(exp)
    spec = generator_spec(cfg_v.spec, cfg_v.modality)
    truth = {r["path"]: r for r in read_truth(cfg_v.paths(root)["factors"])}
    rows = [truth[exp.image_name(i)] for i in range(len(exp.records))]
    return exp, res, inv, cal, spec, rows, _delta


def fit_set(exp, images: Path, factors_csv: Path, folder: Path, device: str = "cpu"):
    """Another image set to fit the patterns on (e.g. the models' training images, more than the experiment's selection
    images): inverted with the experiment's models and sampler into ``folder`` (its cache: a rerun reuses it). Returns
    (its Experiment, Inversions, ground-truth rows in the experiment's image order)."""
    from dataclasses import replace

    from validity_score import read_truth

    from diffex.data.source import find_records
    from diffex.explain.inputs import open_experiment
    from diffex.explain.invert import invert_stage
    from diffex.progress import make_progress

    n = len(find_records(images, exp.geometry))
    cfg = replace(exp.cfg, max_images=n)
    fit = open_experiment(exp.classifier_path, images, folder, exp.diffusion_path, cfg, device=device, show_progress=False)
    with make_progress(False) as progress:
        inv = invert_stage(fit, progress)
    truth = {r["path"]: r for r in read_truth(factors_csv)}
    return fit, inv, [truth[fit.image_name(i)] for i in range(len(fit.records))]


def _fit_data(exp, inv, hbar, X, names, factors, deltas, steps, fit, device):
    """(h (n, D), regressors (n, P), labels (n,)) the patterns are fitted on: the selection images, or ``fit``'s set."""
    if fit is None:
        return hbar[inv.selection], X[inv.selection], exp.labels[inv.selection]
    fexp, finv, frows = fit_set(exp, *fit, device)
    h_fit = _hbar(finv.h, steps)[finv.usable]  # (n, D)
    X_fit, fnames = design([frows[i] for i in finv.usable], factors, deltas)
    if fnames != names:
        raise SystemExit(f"{fit[1]}: its factor columns {fnames} differ from the experiment's {names}")
    return h_fit, X_fit, fexp.labels[finv.usable]


def _render(exp, inv, u, scales: np.ndarray, dec, mode: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (n, L, classes) and decoded factor changes (n, L, F) of the evaluation images rendered with
    offsets ``scales`` (n, L) x u (1, *h), with explain's sampler (``mode``: another edit mode)."""
    from dataclasses import replace

    import torch

    from diffex.models import sampler

    ev, cfg = inv.evaluation, exp.cfg
    spec = cfg.sampler if mode is None else replace(cfg.sampler, mode=mode)
    x = sampler.render_edits(exp.pair.dm, inv.xt[ev], u.expand(scales.shape[1], *u.shape[1:]), spec,
                             batch_size=cfg.batch_size, scales=torch.as_tensor(scales))  # (n, L, C, H, W)
    return scored(exp, inv, x, dec)


def scored(exp, inv, x, dec) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (n, L, classes) and decoded factor changes (n, L, F) of renders x (n, L, C, H, W) of the
    evaluation images, against their reconstructions."""
    from strength_sweep import _decoded

    probs = exp.pair.probs(x.flatten(0, 1).to(exp.device)).numpy().reshape(*x.shape[:2], -1)  # (n, L, classes)
    s_hat, _ = _decoded(exp, dec, exp.pair.raw(x.flatten(0, 1)).numpy().reshape(*x.shape), exp.pair.raw(inv.xrec[inv.evaluation]).numpy())
    return probs, s_hat


def _pattern_row(exp, inv, cal, dec, coord: np.ndarray, norm: float, render, own: np.ndarray, fi: int) -> dict:
    """Render factor ``fi``'s pattern on the evaluation images and score it. ``coord`` (N,): each image's centred
    coordinate along the pattern's unit vector; ``norm``: the pattern's length (1 Δ of the factor along it);
    ``render(scales)``: (probs (n, L, classes), decoded changes (n, L, F)) of the evaluation images rendered with offsets
    ``scales`` (n, L) x the unit vector; ``own`` (N,): the factor in units of Δ."""
    from validity_decode import TIE, _span, decoded_r

    from diffex.explain.calibrate import calibrate
    from diffex.explain.effects import effect_table

    cfg, labels, sel, ev = exp.cfg, exp.labels, inv.selection, inv.evaluation
    c = calibrate(coord[sel, None], cal.calibration.h_scale, cfg.strength, cfg.strength_unit)
    means = {lab: own[sel][labels[sel] == lab].mean() for lab in np.unique(labels)}
    other = {lab: next(m for m in means if m != lab) for lab in means}
    toward = np.array([np.sign(means[other[lab]] - means[lab]) for lab in labels[ev]])  # (n,) the way to the other condition
    in_data = toward * np.array([c.amounts(coord[i:i + 1], 0, int(s))[0] for i, s in zip(ev, toward)])  # (n,) h units
    scales = np.column_stack([*(np.full(len(ev), s * norm) for s in LEVELS), in_data])  # (n, L)
    probs, s_hat = render(scales)
    one = np.where(toward > 0, LEVELS.index(1.0), LEVELS.index(-1.0))  # (n,) the 1 Δ frame towards the target
    picked = np.stack([probs[np.arange(len(ev)), one], probs[:, -1]], 1)[:, :, None]  # (n, 2, 1, classes)
    _, flipped, eligible = effect_table(picked, inv.probs_rec[ev], np.array([other[lab] for lab in labels[ev]]))
    traj = np.insert(s_hat[:, :len(LEVELS)], 2, 0.0, axis=1)  # (n, 5, F): the reconstruction at s = 0
    s_grid = np.broadcast_to(np.insert(np.array(LEVELS), 2, 0.0), traj.shape[:2])
    span, n_el, factors = _span(traj[..., fi]), max(int(eligible.sum()), 1), dec.factors
    return {"pattern_norm": norm, "sd": float(c.sd[0]), "delta_in_sd": norm / float(c.sd[0]),
            "within_r": _within_r(coord[ev], own[ev], labels[ev]), "pooled_r": float(np.corrcoef(coord[ev], own[ev])[0, 1]),
            "change_at_1": {g: float(np.nanmedian(s_hat[:, LEVELS.index(1.0), gi])) for gi, g in enumerate(factors)},
            "change_by_level": {f"{lv:+g}": {g: float(np.nanmedian(s_hat[:, j, gi])) for gi, g in enumerate(factors)}
                                for j, lv in enumerate(LEVELS)},
            "r": {g: decoded_r(s_grid, traj[..., gi], None if gi == fi else span, TIE) for gi, g in enumerate(factors)},
            "n_eligible": int(eligible.sum()), "flips_at_1": float(flipped[:, 0, 0].sum() / n_el),
            "in_data_shift_sd": float(np.mean(np.abs(in_data)) / c.sd[0]),
            "in_data_change": float(np.nanmedian(toward * s_hat[:, -1, fi])), "flips_in_data": float(flipped[:, 1, 0].sum() / n_el)}


def _h_row(exp, inv, cal, dec, steps, own: np.ndarray, a: np.ndarray, fi: int, mode: str | None = None) -> dict:
    """:func:`_pattern_row` of a pattern ``a`` (D,) in h, rendered with explain's sampler (``mode``: another edit mode)."""
    import torch

    from diffex.explain.calibrate import coordinates

    norm = float(np.linalg.norm(a))
    u = torch.as_tensor(a / norm, dtype=torch.float32).view(1, *inv.h.shape[2:])  # (1, *h)
    coord = coordinates(inv.h, u, steps)[:, 0]  # (N,) h units, centred
    return _pattern_row(exp, inv, cal, dec, coord, norm, lambda scales: _render(exp, inv, u, scales, dec, mode), own, fi)


def run(exp_dir: Path, cfg_v, root: Path | None = None, device: str = "cpu", fit: tuple[Path, Path, Path] | None = None,
        mode: str | None = None, changes: dict | None = None) -> list[dict]:
    """One row per true factor of the configuration's modality (see the module docstring). ``fit``: (images, factors CSV,
    folder) of another set to fit the patterns on, all its usable images (:func:`fit_set`); default: the selection images.
    ``mode``: render in this edit mode instead of the experiment's. ``changes``: explain settings changed for everything
    (e.g. ``t_end``; the images are then inverted again, nothing of the experiment's cache is used)."""
    from validity import decoder_for

    from diffex.explain.calibrate import edit_steps

    exp, res, inv, cal, spec, rows, delta_of = _setup(exp_dir, cfg_v, root, device, changes)
    dec = decoder_for(cfg_v, int(exp.raw.shape[-1]))
    factors, cfg = dec.factors, exp.cfg
    steps = edit_steps(cfg.sampler.timesteps(exp.pair.dm.num_train_timesteps), cfg.t_edit)
    hbar = _hbar(inv.h, steps)  # (N, D)
    deltas = {f: delta_of(spec, f) for f in factors}
    X, names = design(rows, factors, deltas)
    h_fit, X_fit, lab_fit = _fit_data(exp, inv, hbar, X, names, factors, deltas, steps, fit, device)
    out = []
    for fi, f in enumerate(factors):
        rank, cv_r = choose_rank(h_fit, X_fit, names, f, lab_fit, cfg.seed)
        a = factor_patterns(h_fit, X_fit, names, (f,), rank)[f]
        out.append({"factor": f, "fitted_on": len(h_fit), "rank": rank, "cv_within_r": cv_r, "mode": mode or cfg.mode,
                    "t_end": cfg.t_end, "median_psnr": float(np.median(inv.psnr)),
                    **_h_row(exp, inv, cal, dec, steps, X[:, 1 + fi], a, fi, mode)})
    return out


def table(rows: list[dict], configuration: str) -> str:
    """Markdown table of :func:`run`'s rows."""
    from diffex.models.sampler import DEFAULT_T_END

    lines = ["| configuration, factor (fitted on; principal axes; cross-validated r within) | 1 Δ of the factor (SD along its pattern) | coordinate tracks the factor (r within / pooled) | "
             "renders at +1 Δ: decoded change of each factor | decoded r of each factor (−1 … +1 Δ) | flips at 1 Δ towards the target "
             "(eligible) | in data: mean shift (SD), change of the factor (Δ), flips |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ch = ", ".join(f"{g} {v:+.2f}" for g, v in r["change_at_1"].items())
        rs = ", ".join(f"{g} {v:+.2f}" for g, v in r["r"].items())
        mode = "" if r.get("mode", "asymmetric") == "asymmetric" else f", rendered {r['mode']}"
        mode += f", t_end {r['t_end']} ({r['median_psnr']:.0f} dB)" if r.get("t_end", DEFAULT_T_END) != DEFAULT_T_END else ""
        lines.append(f"| {configuration}, {r['factor']}{mode} ({r['fitted_on']} images, {r['rank']} axes; {r['cv_within_r']:+.2f}) | {r['delta_in_sd']:.2f} | {r['within_r']:+.2f} / {r['pooled_r']:+.2f} | {ch} | {rs} | "
                     f"{100 * r['flips_at_1']:.0f} % ({r['n_eligible']}) | {r['in_data_shift_sd']:.2f}, {r['in_data_change']:+.2f}, "
                     f"{100 * r['flips_in_data']:.0f} % |")
    return "\n".join(lines)


def oracle_arguments(ap: argparse.ArgumentParser) -> None:
    """The arguments this script shares with ``validity_skip_oracle.py``: the experiment, its configuration, and the set
    the patterns are fitted on."""
    ap.add_argument("experiment", type=Path, help="a finished experiment of the configuration (its inversions are used)")
    ap.add_argument("--configuration", required=True, choices=("sample", "single", "subtle", "ct"))
    ap.add_argument("--root", type=Path, help="the validity root (single and subtle)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fit-images", type=Path, help="fit the patterns on these images instead of the selection images")
    ap.add_argument("--fit-factors", type=Path, help="their ground truth (with --fit-images)")
    ap.add_argument("--fit-folder", type=Path, help="where their inversions are cached (default: a temporary folder)")


def oracle_inputs(args, tmp: Path):
    """(validity configuration, fit set or None) of :func:`oracle_arguments`' parsed ``args``; ``tmp``: the default cache."""
    from validity import CONFIGURATIONS

    cfg_v = next(c for c in CONFIGURATIONS if c.name == args.configuration)
    if cfg_v.spec is not None and args.root is None:
        raise SystemExit(f"{cfg_v.name}: give --root, the folder where `validity.py prepare` put its images")
    if (args.fit_images is None) != (args.fit_factors is None):
        raise SystemExit("give --fit-images and --fit-factors together")
    return cfg_v, None if args.fit_images is None else (args.fit_images, args.fit_factors, args.fit_folder or Path(tmp) / "fit")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    oracle_arguments(ap)
    ap.add_argument("--mode", choices=("asymmetric", "symmetric"), help="render in this edit mode (default: the experiment's)")
    ap.add_argument("--t-end", type=int, help="invert to this timestep instead of the experiment's (everything is inverted again)")
    ap.add_argument("--min-psnr", type=float, help="with --t-end: the round-trip PSNR an image needs (explain's min_psnr)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_v, fit = oracle_inputs(args, Path(tmp))
        changes = {k: v for k, v in (("t_end", args.t_end), ("min_psnr", args.min_psnr)) if v is not None}
        rows = run(args.experiment, cfg_v, args.root, args.device, fit, args.mode, changes or None)
    print(json.dumps(rows, indent=1))
    print(table(rows, cfg_v.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
