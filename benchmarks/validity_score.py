"""Scoring of the validity benchmark: one experiment folder against the ground truth of its images.

**Matching.** An attribute *matches* a true factor when (i) the median within-image |Spearman r|
of the factor's measurement with strength is >= ``MATCH_R``; (ii) its sign is the ground truth's:
positive strength moves images towards the attribute's target, so the measurement must rise when
the target condition has the higher mean of the factor in the factors CSV and fall otherwise;
(iii) its full-strength renders stay in the data: for the factor's measurement and each nuisance
measurement, at most ``MAX_OUTSIDE_SHARE`` of the full-strength renders (the "random sample" rows
of morphology.csv at the largest |strength|) lie outside the real images' 1st-99th percentile range.
A render is counted for a measurement only if its image's reconstruction (the strength-0 row) is
inside that range, or the edit takes it further out (by more than ``FURTHER_OUT`` of the range's
width, or across it): an image the diffusion model already reconstructs outside was not taken there
by the edit (as the flip rate leaves out images already at the target). Renders without a
strength-0 row are counted, and so is every render of a measurement for which fewer than half
would be; how many renders were left out is reported beside the share.
Of the matches, the lowest-ranked one that meets every criterion below is the factor's match
(else the lowest-ranked one); attributes that track the factor but are rejected are reported with
the reason ("wrong sign", "leaves the data").

**Criteria** (per factor, on its match; all false when there is none): ``top3`` rank <= 3;
``sign`` right sign; ``r`` |r| >= ``MIN_R``; ``specific`` |r| <= ``MAX_OTHER_R`` with every
other factor's measurement; ``separation`` AUC >= ``MIN_AUC`` and Holm-adjusted p < ``MAX_P_ADJUSTED``;
``nuisance`` the largest relative change of a nuisance measurement at +-strength < ``MAX_DRIFT``;
``in_data`` as (iii). A factor passes when every criterion holds. Its flip rate is reported beside
the share of images already at the target (baseline).

**Measurement of the factors.** The readouts are coupled (a larger nucleus dims the measured
cytoplasm; a more solid nodule has a larger measured diameter), so a perfect one-factor edit,
rendered by the generator itself, fails ``specific`` on the raw readouts (validity_oracle.py).
With a ``decoder`` (validity_decode.py, fitted per configuration on the generator's one-factor
traversals; the benchmark always passes one) the factors' r in (i), ``r`` and ``specific`` are
measured on the decoded factor changes, and ``nuisance`` on the nuisance readouts' changes that
the decoded factors do not explain; the raw-readout figures are kept beside them (``*_readout``).

Also, for the rank-1 attributes: proximity, L1 (in units of the display range) and SSIM between
the full-strength render and the strength-0 render over the example hyperstacks; realism, the
median |z| of the full-strength renders' measurements against the real images and the share of
renders with any |z| > 4; and on the real images, how well each measurement tracks its true factor.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from validity_decode import Decoder, decoded_figures, worst_drift  # noqa: F401 - Decoder: re-exported
from validity_figures import _mean, full_strength, proximity, proxy_validity, realism  # noqa: F401 - re-exported

MEASURE = {"nucleus_radius": "DNA_AreaShape_Area", "actin_level": "Actin_Intensity_MeanIntensity"}
NUISANCE = {"cell size": "Actin_AreaShape_Area", "cell x": "Actin_AreaShape_Center_X",
            "cell y": "Actin_AreaShape_Center_Y", "cell elongation": "Actin_AreaShape_Eccentricity"}
MEASURE_CT = {"diameter_mm": "Lesion_Diameter_mm", "solid_fraction": "Lesion_SolidShare"}
NUISANCE_CT = {"nodule x": "Lesion_CenterX_mm", "nodule y": "Lesion_CenterY_mm", "parenchyma density": "Lesion_ParenchymaHU",
               "margin irregularity": "Lesion_MarginIrregularity"}
RANDOM = "random sample"  # morphology.csv Role of the images the trends are computed on

MATCH_R = 0.7  # |r| from which an attribute tracks a factor (a match also needs the right sign and to stay in the data)
TOP_RANK = 3  # a factor's match must be among the top 3 attributes of its target
MIN_R = 0.8  # |r| of the match with its own factor
MAX_OTHER_R = 0.3  # |r| of the match with every other factor
MIN_AUC = 0.7  # separation of the conditions along the match
MAX_P_ADJUSTED = 0.01
MAX_DRIFT = 0.10  # largest relative change of a nuisance measurement at +-strength
MAX_OUTSIDE_SHARE = 0.10  # share of full-strength renders outside the real data's range, per measurement
FURTHER_OUT = 0.05  # a render of an image reconstructed outside counts when the edit takes it this much further (x range)
DATA_RANGE = (1, 99)  # percentiles of the real images that make "the range of the data"
MIN_TOP_FLIPS = 0.8  # cumulative flip rate of the match's target's top-3 attributes
CRITERIA = ("top3", "sign", "r", "specific", "separation", "nuisance", "in_data", "flips")
FIGURES = ("target", "rank", "r", "expected_sign", "other_r", "r_readout", "other_r_readout", "nuisance_drift_readout",
           "measured_on", "own_change", "other_change", "auc", "p_adjusted", "flip_rate", "baseline_at_target",
           "n_eligible", "top_flips", "nuisance_drift", "nuisance_worst", "outside_share", "outside_worst", "outside_left_out",
           "n_full_strength", "consistency")


# ------------------------------------------------------------------------------------ scoring
Real = tuple[list[str], dict[str, np.ndarray]]  # the real images' relative paths and measurements


def _real_measurements(images: Path, size: int, channel_names: list[str], imaging=None) -> Real:
    """Relative paths and morphology of the real images, at the models' size (CT: read and measured as explain does)."""
    from diffex.data.dataset import discover, load_images, relative_path
    from diffex.report.morphology import measure_many

    if imaging is not None:
        return _real_ct(images, size, imaging)
    recs = sorted(discover(images), key=lambda r: str(r.path))
    imgs = load_images(recs, size, show_progress=False)
    return [relative_path(r.path, images) for r in recs], measure_many(imgs.raw, channel_names)


def _real_ct(images: Path, size: int, imaging) -> Real:
    """CT: the manifest's patches resampled and windowed with the experiment's geometry, lesion readouts in mm and HU."""
    from diffex.data.ct_load import CTGeometry
    from diffex.data.dataset import image_name
    from diffex.data.source import find_records, load_records
    from diffex.report.ct_morphology import hu_channel, measure_many_ct

    geo = CTGeometry.from_dict({"modality": imaging.modality, "spacing_mm": imaging.spacing_mm, "windows": imaging.windows}, size)
    recs = find_records(images, geo)
    data = load_records(recs, size, "area", geo, show_progress=False)
    ch = hu_channel(geo.modality, [(w.low, w.high) for w in geo.hu_windows])
    return [image_name(r, images) for r in recs], measure_many_ct(data.raw, geo.spacing_mm, ch)


def read_truth(factors: Path) -> list[dict]:
    """Rows of the ground-truth CSV (path, condition, factor values as text)."""
    import csv

    with open(factors, newline="") as fh:
        return list(csv.DictReader(fh))


def expected_sign(truth: list[dict], factor: str, target: str) -> int:
    """+1 when the target condition's images have the higher mean of ``factor`` (ground truth), else -1.

    Positive strength moves images towards the target, so a right attribute's measurement rises
    with strength (Spearman r > 0) exactly when this is +1.
    """
    mine = [float(r[factor]) for r in truth if r["condition"] == target]
    rest = [float(r[factor]) for r in truth if r["condition"] != target]
    if not mine or not rest:
        raise SystemExit(f"ground truth: no images of condition {target!r}, or none of another condition")
    return 1 if np.mean(mine) > np.mean(rest) else -1


def trend_r(att, column: str) -> float:
    """Median within-image Spearman r of a measurement with strength (0 when not measured)."""
    t = att.morphology.get(column)
    return float(t.spearman_r) if t is not None and np.isfinite(t.spearman_r) else 0.0


def random_rows(rows: list[dict]) -> list[dict]:
    """morphology.csv rows of the random sample (every row when there is no Role column)."""
    return [r for r in rows if r.get("Role", RANDOM) == RANDOM]


def data_ranges(real: dict[str, np.ndarray], columns) -> dict[str, tuple[float, float]]:
    """The real images' DATA_RANGE percentiles of each measurement (columns without finite values left out)."""
    out = {}
    for c in columns:
        v = np.asarray(real.get(c, []), float)
        v = v[np.isfinite(v)]
        if len(v):
            lo, hi = np.percentile(v, DATA_RANGE)
            out[c] = (float(lo), float(hi))
    return out


def zero_strength(rows: list[dict], att_id: str) -> dict[str, dict]:
    """The attribute's strength-0 row (the reconstruction) of each image, by image name."""
    return {str(r["ImageName"]): r for r in rows if str(r["attribute"]) == att_id and abs(r["Strength"]) < 1e-9}


def _distance(row: dict, column: str, lo: float, hi: float) -> float:
    """How far the row's value lies outside [lo, hi], signed: < 0 below, > 0 above, 0 inside; NaN when missing."""
    v = row.get(column)
    if not isinstance(v, float) or not np.isfinite(v):
        return float("nan")  # no object found
    return v - hi if v > hi else v - lo if v < lo else 0.0


def _outside(render: dict, recon: dict | None, column: str, lo: float, hi: float) -> bool | None:
    """Whether the render counts as outside the range (None: left out, its reconstruction was outside already).

    A render of an image reconstructed outside is left out unless the edit takes it further out, by more than
    ``FURTHER_OUT`` of the range's width, or across the range, or loses the object the reconstruction had.
    """
    d = _distance(render, column, lo, hi)
    if recon is None or (d0 := _distance(recon, column, lo, hi)) == 0.0:
        return d != 0.0  # NaN (no object) is outside
    if np.isnan(d0):
        return None  # no object in the reconstruction: nothing to compare the render with
    further = np.isnan(d) or np.sign(d) == -np.sign(d0) or abs(d) > abs(d0) + FURTHER_OUT * (hi - lo)
    return True if further else None


def outside_share(rows: list[dict], ranges: dict[str, tuple[float, float]],
                  zero: dict[str, dict] | None = None) -> tuple[float | None, str | None, int]:
    """The largest share, over the measurements, of renders outside the real range; that measurement; and how many
    renders were left out of at least one measurement's count.

    A render is left out of a measurement's count when ``zero`` (image name -> strength-0 row) has its image's
    reconstruction outside that measurement's range already and the edit does not take it further out (see
    ``_outside``); renders without a strength-0 row are counted. When fewer than half the renders would be counted
    for a measurement, every one is counted there (the check must not lapse). A missing or non-finite measurement
    (no object found) is outside. (None, None, 0) without renders.

    >>> rows = [{"ImageName": "a", "x": 5.0}, {"ImageName": "b", "x": 0.5}, {"ImageName": "c", "x": 2.0}]
    >>> outside_share(rows, {"x": (1.0, 3.0)})
    (0.6666666666666666, 'x', 0)
    >>> outside_share(rows, {"x": (1.0, 3.0)}, zero={"b": {"x": 0.6}})  # b's reconstruction is outside already
    (0.5, 'x', 1)
    >>> outside_share(rows, {"x": (1.0, 3.0)}, zero={"b": {"x": 0.9}})  # ... and the edit takes it further out
    (0.6666666666666666, 'x', 0)
    """
    if not rows:
        return None, None, 0
    zero = zero or {}
    share, worst, left_out = 0.0, None, set()
    for c, (lo, hi) in ranges.items():
        verdicts = [_outside(r, zero.get(str(r.get("ImageName"))), c, lo, hi) for r in rows]
        if sum(v is not None for v in verdicts) * 2 < len(rows):  # mostly reconstructed outside: count every render
            verdicts = [_outside(r, None, c, lo, hi) for r in rows]
        left_out.update(i for i, v in enumerate(verdicts) if v is None)
        out = float(np.mean([v for v in verdicts if v is not None]))
        if out > share:
            share, worst = out, c
    return share, worst, len(left_out)


def nuisance_drift(att, nuisance: dict[str, str] | None = None, scale: dict[str, float] | None = None) -> tuple[float | None, str | None]:
    """The largest relative change of a nuisance measurement at +-strength (unmeasured: inf), and which.

    ``scale`` (column -> divisor) turns absolute changes (CT trends) into relative ones; microscopy trends are relative already.
    """
    nuisance, scale = nuisance or NUISANCE, scale or {}
    drift = {n: float(np.nan_to_num(max(abs(t.change_at_max), abs(t.change_at_min)) / scale.get(c, 1.0), nan=np.inf))
             for n, c in nuisance.items() if (t := att.morphology.get(c)) is not None}
    if not drift:
        return None, None
    worst = max(drift, key=drift.get)
    return drift[worst], worst


@dataclass(frozen=True)
class Readouts:
    """What a configuration measures: factor -> column, nuisance name -> column, and the drift divisors of absolute trends."""

    measure: dict
    nuisance: dict
    drift_scale: dict


MICROSCOPY = Readouts(MEASURE, NUISANCE, {})


def figures(att, factor: str, sign: int, rows: list[dict], ranges: dict, top_flips: float = float("nan"),
            readouts: Readouts = MICROSCOPY, decoder=None) -> dict:
    """The scores of one attribute as the match of ``factor`` (see FIGURES); ``top_flips``: its target's top-3 cumulative flip rate.

    With a ``decoder`` (validity_decode.py) r, specificity and nuisance drift are measured on the decoded factors;
    ``*_readout`` keep them on the raw readouts, as they were scored until 2026-11-29.
    """
    measure, nuisance = readouts.measure, readouts.nuisance
    col = measure[factor]
    r_raw = {g: trend_r(att, c) for g, c in measure.items()}
    drift_raw = nuisance_drift(att, nuisance, readouts.drift_scale)
    change = {}
    if decoder is not None:
        dec = decoded_figures(decoder, rows, att.id, factor)
        rs, change, (drift, drift_worst) = dec["r"], dec["change"], worst_drift(dec["drift"], nuisance, readouts.drift_scale)
    else:
        rs, (drift, drift_worst) = r_raw, drift_raw
    full = full_strength(rows, att.id)
    share, share_worst, left_out = outside_share(full, {c: ranges[c] for c in (col, *nuisance.values()) if c in ranges},
                                                 zero_strength(rows, att.id))
    return {"target": att.target, "rank": att.rank, "r": rs[factor], "expected_sign": sign,
            "other_r": max((abs(rs[g]) for g in measure if g != factor), default=0.0),
            "r_readout": r_raw[factor], "other_r_readout": max((abs(r_raw[g]) for g in measure if g != factor), default=0.0),
            "nuisance_drift_readout": drift_raw[0], "measured_on": "decoded factors" if decoder is not None else "readouts",
            "own_change": change.get(factor), "other_change": max((change[g] for g in measure if g != factor and g in change),
                                                                  key=abs, default=None),
            "auc": att.separation_auc, "p_adjusted": att.separation_p_adjusted, "flip_rate": att.flip_rate,
            "baseline_at_target": att.baseline_at_target, "n_eligible": att.n_eligible, "top_flips": top_flips,
            "nuisance_drift": drift, "nuisance_worst": drift_worst, "outside_share": share, "outside_worst": share_worst,
            "outside_left_out": left_out, "n_full_strength": len(full),
            "consistency": float(getattr(att, "consistency", float("nan")))}


def criteria(fig: dict) -> dict[str, bool]:
    """Pass/fail of each criterion (see CRITERIA) for an attribute's figures; all False without an attribute."""
    if fig["rank"] is None:
        return dict.fromkeys(CRITERIA, False)
    return {
        "top3": fig["rank"] <= TOP_RANK,
        "sign": bool(np.sign(fig["r"]) == fig["expected_sign"]),
        "r": abs(fig["r"]) >= MIN_R,
        "specific": fig["other_r"] <= MAX_OTHER_R,
        "separation": bool(fig["auc"] >= MIN_AUC and fig["p_adjusted"] < MAX_P_ADJUSTED),
        "nuisance": fig["nuisance_drift"] is not None and fig["nuisance_drift"] < MAX_DRIFT,
        "in_data": fig["outside_share"] is not None and fig["outside_share"] <= MAX_OUTSIDE_SHARE,
        "flips": bool(fig["top_flips"] >= MIN_TOP_FLIPS),
    }


def rejection(fig: dict) -> str | None:
    """Why an attribute that tracks a factor is not a match of it (None: it is)."""
    if not criteria(fig)["sign"]:
        return f"wrong sign (r = {fig['r']:+.2f}, the ground truth says {'+' if fig['expected_sign'] > 0 else '-'})"
    if fig["outside_share"] is None:
        return "leaves the data (no full-strength renders in morphology.csv to check)"
    if fig["outside_share"] > MAX_OUTSIDE_SHARE:
        return f"leaves the data ({fig['outside_share']:.0%} of full-strength renders outside the real {fig['outside_worst']})"
    return None


def match_factor(atts: list, factor: str, truth: list[dict], rows: list[dict], ranges: dict, readouts: Readouts = MICROSCOPY,
                 decoder=None) -> dict:
    """The match of one true factor among the attributes, its figures, criteria and the rejected attributes (tracking the
    factor: decoded with ``decoder``, else its readout)."""
    col = readouts.measure[factor]
    r_of = ({a.id: decoded_figures(decoder, rows, a.id, factor)["r"][factor] for a in atts} if decoder is not None
            else {a.id: trend_r(a, col) for a in atts})
    matches, rejected = [], {}
    for a in sorted(atts, key=lambda a: (a.rank, -abs(r_of[a.id]))):
        if abs(r_of[a.id]) < MATCH_R:
            continue
        top_flips = max((b.cumulative_flip_rate for b in atts if b.target == a.target and b.rank <= TOP_RANK), default=float("nan"))
        fig = figures(a, factor, expected_sign(truth, factor, a.target), rows, ranges, top_flips, readouts, decoder)
        why = rejection(fig)
        if why:
            rejected[a.id] = why
        else:
            matches.append((a, fig))
    if not matches:
        fig = dict.fromkeys(FIGURES)
        return {"attribute": None, **fig, "criteria": criteria(fig), "passed": False, "rejected": rejected}
    a, fig = min(matches, key=lambda m: not all(criteria(m[1]).values()))  # first passing one, else the lowest rank
    crit = criteria(fig)
    return {"attribute": a.id, **fig, "criteria": crit, "passed": all(crit.values()), "rejected": rejected}


def score(exp: Path, images: Path | None, factors: Path, differs: tuple[str, ...] | None = None, real: Real | None = None,
          decoder=None) -> dict:
    """Score one finished experiment folder against the ground truth of its images.

    ``differs``: the factors the conditions differ in (None: the two its modality measures, MEASURE or MEASURE_CT).
    ``real``: the real images' (relative paths, measurements); measured from ``images`` when None. ``decoder``: the
    configuration's (validity_oracle.py); without one the readouts are taken as the factors.
    """
    from diffex.report.folder import read_morphology
    from diffex.report.results import read_results

    res = read_results(exp / "results.json")
    size = res.diffusion_model.image_size
    paths, meas = real if real is not None else _real_measurements(images, size, res.channel_names, res.imaging)
    readouts = readouts_of(res, meas)
    truth = read_truth(factors)
    rows = random_rows(read_morphology(exp / "morphology.csv"))
    ranges = data_ranges(meas, [*readouts.measure.values(), *readouts.nuisance.values()])
    if decoder is not None and (tuple(decoder.columns) != tuple(readouts.measure.values())
                                or set(decoder.nuisance) != set(readouts.nuisance.values())):
        raise SystemExit(f"{exp}: the decoder reads {decoder.columns} and {decoder.nuisance}, the experiment's readouts are "
                         f"{tuple(readouts.measure.values())} and {tuple(readouts.nuisance.values())}")
    unknown = [f for f in differs or () if f not in readouts.measure]
    if unknown:
        raise SystemExit(f"{exp}: cannot score {unknown}; this experiment's readouts measure {list(readouts.measure)}")
    per_factor = {f: match_factor(res.attributes, f, truth, rows, ranges, readouts, decoder)
                  for f in differs or readouts.measure}
    top = [a for a in res.attributes if a.rank == 1]
    return {"attributes": len(res.attributes), "elapsed_s": res.elapsed_s, "factors": per_factor,
            "passed": all(v["passed"] for v in per_factor.values()), **strength_figures(res.attributes),
            **proximity(exp, top, res.display_ranges), **proxy_validity(paths, meas, truth, readouts.measure), **realism(rows, top, meas)}


def readouts_of(res, real: dict[str, np.ndarray]) -> Readouts:
    """The experiment's readouts: microscopy's, or for CT the lesion readouts with drift relative to the patch width (positions)
    and to the real images' median magnitude (the rest)."""
    if res.imaging is None:
        return MICROSCOPY
    width = res.diffusion_model.image_size * res.imaging.spacing_mm
    scale = {c: width if "Center" in c else float(np.nanmedian(np.abs(real.get(c, [np.nan])))) for c in NUISANCE_CT.values()}
    return Readouts(MEASURE_CT, NUISANCE_CT, scale)


def strength_figures(atts: list) -> dict:
    """How far the rank-1 attributes moved the images (SD of the real data along them) and how many ended inside the data."""
    top = [a for a in atts if a.rank == 1]
    return {"strength_unit": top[0].strength_unit if top else None,
            "mean_shift_sd": _mean([a.mean_shift_sd for a in top if np.isfinite(a.mean_shift_sd)]),
            "ends_in_data": _mean([a.ends_in_data for a in top if np.isfinite(a.ends_in_data)])}


# ------------------------------------------------------------------------------------ running
def gate_passed(diffusion: Path) -> bool:
    """Whether the diffusion model passed its quality gate (from its diffex.json)."""
    return bool(json.loads((diffusion / "diffex.json").read_text()).get("quality_gate", {}).get("passed"))
