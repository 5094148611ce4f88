"""One attribute of a finished experiment rendered at growing strengths: how its flips, its factor changes and its place
in the real data grow.

An attribute's full strength is calibrated on the real images' coordinates along its direction in h (at most ``strength``
SD, never past the data's edge; :mod:`diffex.explain.calibrate`). Whether that moves the *image* as far as the real data
varies is a separate question: this script renders the evaluation images of the other conditions at explain's calibrated
strength and at fixed multiples of the coordinate's SD (not stopped at the edge), classifies the renders and measures them
with the validity scorer's readouts, decoded into the true factors (``validity_decode.py``). Per strength it reports the
mean shift (SD), the share of images whose coordinate ends inside the data's edges, the flip rate (explain's: eligible
images are those whose reconstruction is not classed as the target), each factor's median decoded change against the
reconstruction (units of Δ, the conditions' difference), the share of renders whose factor readouts leave the real
images' 1st-99th percentile range, and KID on the classifier's penultimate features: the renders' excess over their
own reconstructions against the experiment's real images of the target condition, paired per subset
(:func:`diffex.models.kid.kid_excess`; read only where it is stable), and the same against all the real images.
Those features are the ones the classifier tells the conditions apart with, so the KID mixes realism with the edit's
effect: an edit that makes the images more like real target-condition cells lowers the first (a negative excess).
A stably positive excess says the edited images are further from those real images than before the edit. The real
images pass through the diffusion model's normalization and back, as the renders do. ``validity_flip_ceiling.py``
gives the same figures for the generator's perfect
in-data edit.

The experiment's cached stages are reused from a copy of its cache (nothing in the experiment folder is written). The
decoder extrapolates beyond the ±1 Δ of its fit; changes far beyond are indicative.

Usage::

    python benchmarks/strength_sweep.py ROOT/experiments_s11/sample/hold:to-control-2 --configuration sample

Example
-------
>>> sweep_scales(np.array([-0.5, -1.0]), sd=2.0, sign=-1, multiples=(3.0, 6.0)).tolist()  # rows: images; columns: levels
[[-0.5, -6.0, -12.0], [-1.0, -6.0, -12.0]]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # validity

MULTIPLES = (3.0, 6.0, 12.0)


def sweep_scales(calibrated: np.ndarray, sd: float, sign: int, multiples=MULTIPLES) -> np.ndarray:
    """Signed offsets (n, 1 + len(multiples)) in h units: each image's calibrated full strength (``calibrated`` (n,),
    signed), then ``sign`` x m x ``sd`` for every multiple m (not stopped at the data's edge)."""
    fixed = np.broadcast_to(sign * sd * np.asarray(multiples, float), (len(calibrated), len(multiples)))
    return np.concatenate([np.asarray(calibrated, float)[:, None], fixed], 1)


def _open_copy(exp_dir: Path, work: Path, device: str):
    """The experiment re-opened on a copy of its cache (its stages up to the calibration, from the cache)."""
    from diffex.explain.config import config_from_dict
    from diffex.explain.inputs import open_experiment
    from diffex.report.results import read_results

    res = read_results(exp_dir / "results.json")
    out = work / "experiment"
    out.mkdir()
    shutil.copytree(exp_dir / "cache", out / "cache", ignore=shutil.ignore_patterns("traversals"))
    shutil.copy(exp_dir / "config.resolved.json", out / "config.resolved.json")
    cfg = config_from_dict(json.loads((exp_dir / "config.resolved.json").read_text()))
    exp = open_experiment(res.classifier, res.images, out, cfg.diffusion, cfg, device=device, show_progress=False)
    return exp, res


def _stages(exp):
    from diffex.explain.invert import invert_stage
    from diffex.explain.search import calibration_stage, candidates_stage, gradients_stage
    from diffex.progress import make_progress

    with make_progress(False) as progress:
        inv = invert_stage(exp, progress)
        grads = gradients_stage(exp, inv, progress)
        _, cands = candidates_stage(exp, inv, grads, progress)
        cal = calibration_stage(exp, inv, cands)
    return inv, cands, cal


def _decoded(exp, dec, raw: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, dict]:
    """Decoded factor changes (n, L, F) of renders raw (n, L, C, H, W) against the reconstructions ref (n, C, H, W), and
    the factor readouts' values (column -> (n, L))."""
    from validity_decode import changes, decode

    from diffex.explain.readouts import measurements

    cols = (*dec.columns, *dec.nuisance)
    m = measurements(exp, raw.reshape(-1, *raw.shape[2:]))
    m_ref = measurements(exp, ref)
    values = np.stack([m[c].reshape(raw.shape[:2]) for c in cols], -1)  # (n, L, R)
    dz = changes(values, np.stack([m_ref[c] for c in cols], -1), cols, dec.relative, dec.image_size)
    return decode(dec, dz), {c: values[..., k] for k, c in enumerate(dec.columns)}


def _kid_per_level(exp, raw: np.ndarray, ref: np.ndarray, real_sets: dict[str, np.ndarray]) -> list[dict | None]:
    """Per level, KID excess (:func:`~diffex.models.kid.kid_excess`) of the renders raw (n, L, C, H, W) over their
    reconstructions ref (n, C, H, W) against each set of the experiment's real images (name -> indices); None per
    level without features. The real images make the round trip through model space that the renders make."""
    from diffex.models.kid import kid_excess, penultimate_features

    feats = lambda x: penultimate_features(exp.pair.clf, x)  # noqa: E731 - (n, d) float64, or None
    rec = feats(ref)
    if rec is None:
        return [None] * raw.shape[1]
    real = {k: feats(exp.pair.raw(exp.pair.to_model_space(exp.raw[idx])).cpu().numpy()) for k, idx in real_sets.items()}
    levels = [feats(raw[:, j]) for j in range(raw.shape[1])]
    return [{k: kid_excess(r, edited, rec) for k, r in real.items()} for edited in levels]


def _real_slope(exp, coord_sd: np.ndarray, factors_csv: Path, cfg_v, factors: tuple[str, ...]) -> dict:
    """Among the experiment's real images: each true factor's least-squares change (units of Δ) per SD of their
    coordinate along the attribute (``coord_sd`` (N,), signed as the attribute), and its Pearson r with the coordinate.
    What moving an image's coordinate by one SD means in the real data."""
    from validity_oracle import _delta, generator_spec
    from validity_score import read_truth

    spec = generator_spec(cfg_v.spec, cfg_v.modality)
    truth = {r["path"]: r for r in read_truth(factors_csv)}
    rows = [truth[exp.image_name(i)] for i in range(len(coord_sd))]
    out = {}
    for f in factors:
        y = np.array([float(r[f]) for r in rows]) / _delta(spec, f)  # (N,) in units of Δ
        slope = np.polyfit(coord_sd, y, 1)[0]
        out[f] = {"per_sd": float(slope), "r": float(np.corrcoef(coord_sd, y)[0, 1])}
    return out


def sweep(exp_dir: Path, att_id: str, cfg_v, root: Path | None = None, device: str = "cpu", multiples=MULTIPLES) -> list[dict]:
    """The figures of the module docstring for attribute ``att_id`` of the experiment ``exp_dir``, one row per strength;
    ``cfg_v``: its validity configuration (``validity.CONFIGURATIONS``), whose images and factors are under ``root``."""
    import torch
    from validity import _real_measurements, decoder_for

    from diffex.explain.effects import effect_table
    from diffex.models import sampler

    with tempfile.TemporaryDirectory() as tmp:
        exp, res = _open_copy(exp_dir, Path(tmp), device)
        inv, cands, cal = _stages(exp)
    att = next((a for a in res.attributes if a.id == att_id), None)
    if att is None:
        raise SystemExit(f"{exp_dir}: no attribute {att_id!r}; it has {[a.id for a in res.attributes]}")
    if cands.names[att.candidate] != att.name:
        raise SystemExit(f"{exp_dir}: the cached candidates differ from the finished run's ({att.name})")
    t, k, sd = exp.class_names.index(att.target), att.candidate, float(cal.calibration.sd[att.candidate])
    images = inv.evaluation[exp.labels[inv.evaluation] != t]  # (n,) moved towards the target
    scales = sweep_scales(cal.scales(images, k, att.sign), sd, att.sign, multiples)  # (n, L)
    x = sampler.render_edits(exp.pair.dm, inv.xt[images], cands.vectors[k][None].expand(scales.shape[1], *cands.vectors[k].shape),
                             exp.cfg.sampler, batch_size=exp.cfg.batch_size, scales=torch.as_tensor(scales))  # (n, L, C, H, W)
    probs = exp.pair.probs(x.flatten(0, 1).to(exp.device)).numpy().reshape(*scales.shape, -1)  # (n, L, classes)
    _, flipped, eligible = effect_table(probs[:, :, None], inv.probs_rec[images], np.full(len(images), t))
    dec = decoder_for(cfg_v, int(exp.raw.shape[-1]))
    raw, ref = exp.pair.raw(x.flatten(0, 1)).numpy().reshape(*x.shape), exp.pair.raw(inv.xrec[images]).numpy()
    s_hat, values = _decoded(exp, dec, raw, ref)
    kids = _kid_per_level(exp, raw, ref, {"target": np.flatnonzero(exp.labels == t), "all": np.arange(len(exp.labels))})
    p = cfg_v.paths(root)
    _, real = _real_measurements(p["images"], int(exp.raw.shape[-1]), list(exp.channel_names), res.imaging)
    edges = {c: np.nanpercentile(real[c], [1, 99]) for c in dec.columns}
    lo, hi = cal.calibration.edges_sd(k, att.sign)
    coord = att.sign * np.asarray(cal.coords[:, k], float) / sd  # (N,) SD units along the attribute (float64, as explain's)
    start = coord[images]
    real_slope = _real_slope(exp, coord, p["factors"], cfg_v, dec.factors)
    rows = []
    for j, label in enumerate(["calibrated", *(f"{m:g} SD" for m in multiples)]):
        end = start + np.abs(scales[:, j]) / sd  # explain's tolerance: an image stopped at the edge is inside
        outside = np.mean(np.any([(values[c][:, j] < edges[c][0]) | (values[c][:, j] > edges[c][1]) for c in dec.columns], 0))
        rows.append({"experiment": str(exp_dir), "attribute": att_id, "name": att.name, "strength": label,
                     "mean_shift_sd": float(np.mean(np.abs(scales[:, j]) / sd)), "ends_in_data": float(np.mean((end >= lo - 1e-9) & (end <= hi + 1e-9))),
                     "n_eligible": int(eligible.sum()), "flip_rate": float(flipped[:, j, 0].sum() / max(int(eligible.sum()), 1)),
                     "change": {f: float(np.nanmedian(s_hat[:, j, i])) for i, f in enumerate(dec.factors)},
                     "readouts_outside_real": float(outside), "real_change_per_sd": real_slope, "kid": kids[j]})
    return rows


def _kid_cell(k: dict | None) -> str:
    if k is None:
        return "–"
    e = k["excess"]
    return f"{1e3 * e['mean']:+.2f} ({1e3 * e['sd']:.2f}{'' if k['stable'] else ', not stable'})"


def table(rows: list[dict]) -> str:
    """Markdown table of sweeps."""
    lines = ["| experiment, attribute | strength | mean shift (SD) | ends in data | flips (eligible) | decoded change of the renders (Δ) | "
             "real images that much further along it (Δ) | renders outside the real 1-99 % | KID x 1000, renders over "
             "their reconstructions (sd): against the real target-condition images; all real images |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ch = ", ".join(f"{f} {v:+.2f}" for f, v in r["change"].items())
        real = ", ".join(f"{f} {v['per_sd'] * r['mean_shift_sd']:+.2f}" for f, v in r["real_change_per_sd"].items())
        lines.append(f"| {Path(r['experiment']).name} {r['attribute']} | {r['strength']} | {r['mean_shift_sd']:.2f} | "
                     f"{100 * r['ends_in_data']:.0f} % | {100 * r['flip_rate']:.0f} % ({r['n_eligible']}) | {ch} | {real} | "
                     f"{100 * r['readouts_outside_real']:.0f} % | {_kid_cell((r.get('kid') or {}).get('target'))}; {_kid_cell((r.get('kid') or {}).get('all'))} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("attribute", nargs="+", help="EXPERIMENT_DIR:ATTRIBUTE_ID, e.g. ROOT/sample/hold:to-control-2")
    ap.add_argument("--configuration", required=True, choices=("sample", "single", "subtle", "ct"))
    ap.add_argument("--multiple", type=float, action="append", help=f"SD multiples (default {MULTIPLES})")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--root", type=Path, help="the validity root (single and subtle: where `validity.py prepare` put them)")
    args = ap.parse_args(argv)
    from validity import CONFIGURATIONS

    cfg_v = next(c for c in CONFIGURATIONS if c.name == args.configuration)
    if cfg_v.spec is not None and args.root is None:
        raise SystemExit(f"{cfg_v.name}: give --root, the folder where `validity.py prepare` put its images")
    rows = []
    for spec in args.attribute:
        exp, _, att = spec.rpartition(":")
        if not exp:
            raise SystemExit(f"{spec}: give EXPERIMENT_DIR:ATTRIBUTE_ID")
        rows += sweep(Path(exp), att, cfg_v, args.root, args.device, tuple(args.multiple or MULTIPLES))
    print(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
