"""The flip target's ceiling: how often can a perfect, in-data edit of one true factor flip the classifier?

The validity benchmark (issue 14) asks three things of a factor's attribute at once: it moves that factor alone
(``specific``); it is rendered inside the real data (diffex's calibration: each image moves at most ``strength`` SD of the
real images along the attribute, and never past the narrower of their 1st-99th percentile range and mean ± 3 SD); and its
target's top-3 attributes flip >= 80 % of the eligible images cumulatively (``flips``). Whether one classifier allows all
three is a property of the classifier and the data, not of any method, and it can be measured without one: the data
generator renders the attribute a method should find.

Each cell (CT: patch) drawn from a configuration's generator is rendered unedited and with one true factor moved towards the
other condition by exactly that calibrated amount, with the calibration computed on the configuration's held-out images'
*true* factor values (``heldout_factors.csv``) and every other factor, texture and noise draw unchanged (``render_cell`` /
``render_patch`` ``overrides``). The renders are written as files, read the way explain reads images and classified. A
render flips when the unedited one is not classed as the target and the edited one is (explain's ``effect_table``). The
flip rate of one factor's edit is what a perfect one-factor attribute reaches; the union over the factors is the most that
a top-k of perfect one-factor attributes reaches (``cumulative_flip_rate``). For reference also: all factors moved
together (each in the data), and each factor moved by Δ (the difference of the conditions' means) regardless of the
data's edges.

This is a ceiling for edits in the data's factor space: a diffusion model's render of an attribute also changes what the
generator does not, and its reconstruction moves the classifier by itself. It does not score any method.

Usage::

    python benchmarks/validity_flip_ceiling.py --configuration sample --configuration ct --n 100

Example
-------
>>> cal = factor_calibration(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), strength=3.0)
>>> round(float(cal.high[0]), 3), round(float(3 * cal.sd[0]), 3)     # the 99th percentile; 3 SD
(4.96, 4.743)
>>> round(in_data_end(4.5, cal, +1), 3), round(in_data_end(4.5, cal, -1), 3)   # stopped at the edges both ways
(4.96, 1.04)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # validity_oracle

from validity_oracle import LIMITS, SPECS, _delta, generator_spec, write_ct, write_microscopy  # noqa: E402
from validity_score import MEASURE, MEASURE_CT, MIN_TOP_FLIPS, expected_sign, read_truth  # noqa: E402

from diffex.explain.calibrate import Calibration, calibrate  # noqa: E402
from diffex.explain.effects import effect_table  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def factor_calibration(values: np.ndarray, strength: float) -> Calibration:
    """diffex's calibration (:func:`diffex.explain.calibrate.calibrate`) of one factor from the real images' values (n,)."""
    return calibrate(np.asarray(values, float)[:, None], h_scale=1.0, strength=strength)


def in_data_end(value: float, cal: Calibration, sign: int) -> float:
    """Where full strength takes an image whose factor is ``value``, moved towards ``sign``: as far as explain's calibrated
    traversal would move its coordinate (at most ``strength`` SD, never past the real data's edge)."""
    return float(value + sign * cal.amounts(np.array([value]), 0, sign)[0])


def _limited(factor: str, value: float) -> float:
    lo, hi = LIMITS[factor]
    return float(np.clip(value, lo, hi))


def ceiling_renders(spec, factors: tuple[str, ...], cals: dict, signs: dict):
    """The renders of one cell (patch) for the writers of ``validity_oracle``: the unedited one, each factor moved to its
    in-data end towards the other condition, all of them together, and each moved by Δ. ``signs``: (factor, condition) ->
    +1 when moving towards the other condition raises the factor."""
    def plans(condition: str, drawn: dict) -> dict[str, list[dict]]:
        end = {f: _limited(f, in_data_end(drawn[f], cals[f], signs[f, condition])) for f in factors}
        delta = {f: _limited(f, drawn[f] + signs[f, condition] * _delta(spec, f)) for f in factors}
        return {"original": [{}], **{f: [{f: end[f]}] for f in factors}, "both": [dict(end)],
                **{f"{f}_delta": [{f: delta[f]}] for f in factors}}

    return plans, None


def classify(folder: Path, clf) -> dict[str, np.ndarray]:
    """Class probabilities of every render under ``folder`` (relative path -> (classes,)), read as explain reads images."""
    from diffex.data.ct_load import CTGeometry
    from diffex.data.dataset import image_name
    from diffex.data.source import find_records, load_records

    size = int(clf.info.image_size)
    geo = CTGeometry.from_dict(clf.info.ct, size) if clf.info.ct else None
    recs = find_records(folder, geo)
    data = load_records(recs, size, clf.info.resize_mode, geo, show_progress=False)
    probs = clf.predict_proba_raw(data.raw)  # (N, classes)
    return {image_name(r, folder): p for r, p in zip(recs, probs)}


def flip_rates(probs_edit: np.ndarray, probs_orig: np.ndarray, target: int, names: list[str],
               union: list[str]) -> dict:
    """Flip rate of each edit (columns ``names`` of ``probs_edit`` (N, E, classes)) among the eligible images, and of the
    ``union`` of some edits (an image flipped by any of them), as explain counts them.

    Example
    -------
    >>> orig = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8]])        # the third is already at the target
    >>> edit = np.array([[[0.4, 0.6], [0.7, 0.3]], [[0.6, 0.4], [0.3, 0.7]], [[0.1, 0.9], [0.1, 0.9]]])
    >>> r = flip_rates(edit, orig, 1, ["a", "b"], ["a", "b"])
    >>> r["n_eligible"], r["a"], r["b"], r["union"]
    (2, 0.5, 0.5, 1.0)
    """
    _, flipped, eligible = effect_table(probs_edit[:, :, None], probs_orig, np.full(len(probs_orig), target))
    flipped = flipped[:, :, 0]  # (N, E)
    n = int(eligible.sum())
    rate = (lambda f: float(f.sum() / n)) if n else (lambda f: float("nan"))
    out = {"n_eligible": n, **{name: rate(flipped[:, e]) for e, name in enumerate(names)}}
    out["union"] = rate(flipped[:, [names.index(u) for u in union]].any(1))
    return out


def run_configuration(name: str, n: int, seed: int, workdir: Path, root: Path | None = None, strength: float = 3.0) -> list[dict]:
    """The ceiling of configuration ``name``: ``n`` cells (patches) per condition drawn with ``seed``; one row per target."""
    from diffex.models.classifier import load_classifier

    spec = generator_spec(*SPECS[name])
    ct = name == "ct"
    factors = tuple(MEASURE_CT if ct else MEASURE)
    base = REPO / "sample_data" / ("ct" if ct else "") if name in ("sample", "ct") else root / Path(SPECS[name][0]).stem
    truth = read_truth(base / "heldout_factors.csv")
    clf = load_classifier(base / "models" / "classifier" if name in ("sample", "ct") else base / "classifier")
    conditions = list(spec.conditions)[:2]
    cals = {f: factor_calibration(np.array([float(r[f]) for r in truth]), strength) for f in factors}
    signs = {(f, c): expected_sign(truth, f, next(o for o in conditions if o != c)) for f in factors for c in conditions}
    folder = Path(tempfile.mkdtemp(dir=workdir))
    write = write_ct if ct else write_microscopy
    rows = write(folder, spec, factors, n, seed, renders=ceiling_renders(spec, factors, cals, signs))
    probs = classify(folder, clf)
    edits = [*factors, "both", *(f"{f}_delta" for f in factors)]
    out = []
    for c in conditions:
        target = next(o for o in conditions if o != c)
        cells = sorted({r["cell"] for r in rows if r["condition"] == c})
        path = {(r["cell"], r["traversal"]): r["path"] for r in rows if r["condition"] == c}
        orig = np.stack([probs[path[cell, "original"]] for cell in cells])  # (n, classes)
        edit = np.stack([[probs[path[cell, e]] for e in edits] for cell in cells])  # (n, E, classes)
        rates = flip_rates(edit, orig, list(clf.info.class_names).index(target), edits, list(factors))
        shift = {f: float(np.mean([cals[f].amounts(np.array([float(r[f]) for r in truth if r["condition"] == c]), 0,
                                                  signs[f, c]) / cals[f].sd[0]])) for f in factors}
        out.append({"configuration": name, "seed": seed, "moved": c, "target": target, "factors": list(factors),
                    "towards": {f: signs[f, c] for f in factors},
                    "strength_sd": strength, "mean_shift_sd_real": shift, **rates})
    return out


def table(rows: list[dict]) -> str:
    """Markdown table of the ceilings, one row per configuration and target."""
    lines = ["| configuration | moved → target (eligible) | one factor in data | either factor (top-k of one-factor edits) | "
             f"all factors in data | one factor by Δ | ≥ {MIN_TOP_FLIPS:.0%}? |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        fs = r["factors"]
        one = ", ".join(f"{f} {100 * r[f]:.0f} %" for f in fs)
        delta = ", ".join(f"{f} {100 * r[f + '_delta']:.0f} %" for f in fs)
        lines.append(f"| {r['configuration']} | {r['moved']} → {r['target']} ({r['n_eligible']}) | {one} | {100 * r['union']:.0f} % | "
                     f"{100 * r['both']:.0f} % | {delta} | {'yes' if r['union'] >= MIN_TOP_FLIPS else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configuration", action="append", choices=tuple(SPECS))
    ap.add_argument("--n", type=int, default=100, help="cells (patches) drawn per condition")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--strength", type=float, default=3.0, help="full strength in SD of the real images (explain's default)")
    ap.add_argument("--root", type=Path, help="the validity root holding single_factor/ and subtle_factor/ (validity.py prepare)")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configuration or ("sample", "ct"):
            if name in ("single", "subtle") and args.root is None:
                raise SystemExit(f"{name}: give --root, the folder where `validity.py prepare` put its models")
            rows += run_configuration(name, args.n, args.seed, Path(tmp), args.root, args.strength)
    print(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
