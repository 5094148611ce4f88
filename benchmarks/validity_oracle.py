"""Known-answer traversals for the validity scorer: the data generator itself changes one true factor.

The validity benchmark measures each true factor on renders through a readout (nuclear size: the
DNA object's area; cytoplasm brightness: the Actin object's mean intensity; CT: the lesion's
diameter and solid share) and scores an attribute by how those readouts move along its traversals
(``validity_score.py``). Here the generator renders the perfect edit: per configuration, ``n``
cells (CT: patches) per condition are drawn, and each is rendered at :data:`FRAMES` values of one
true factor, its drawn value + s x Δ for s in [-1, 1] (Δ: the difference of the conditions' means
of that factor, or 2.5 within-condition SD where they do not differ), with every other factor,
texture and noise draw unchanged (``render_cell`` / ``render_patch`` ``overrides``); a cell whose
traversal would leave the generator's range (a solid share above 1) is drawn again, so that
strength is the factor's change. A third traversal moves every factor at once (a mixed edit). The
renders are written as files, measured by the scorer's own path for real images (read, fitted to
the models' size, measured) and scored as explain's traversals are: a one-factor edit must pass
|r| with its factor (>= ``MIN_R``), |r| with every other factor (<= ``MAX_OTHER_R``) and nuisance
drift (< ``MAX_DRIFT``); the mixed one must fail specificity.

On the raw readouts the perfect nuclear-size edit fails (the generator dims the cytoplasm over the
nucleus, so the Actin readout falls as the nucleus grows), as do both CT edits; the scorer
therefore decodes the readouts (``validity_decode.py``) with a decoder fitted here on one seed, and
this script checks it on draws of other seeds.

Usage::

    python benchmarks/validity_oracle.py --configuration sample --configuration ct --n 24

Example
-------
>>> f = oracle_factor_values(8.0, 1.6, 5, low=3.0)
>>> [round(v, 2) for v in f]
[6.4, 7.2, 8.0, 8.8, 9.6]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # validity_score

from validity_decode import (  # noqa: E402
    Decoder,
    changes,
    decoded_figures,
    decoded_r,
    fit_response,
    traversal_arrays,
    worst_drift,
)
from validity_score import (  # noqa: E402
    MAX_DRIFT,
    MAX_OTHER_R,
    MEASURE,
    MEASURE_CT,
    MICROSCOPY,
    MIN_R,
    NUISANCE_CT,
    Readouts,
    _real_ct,
    _real_measurements,
)

FRAMES = 7  # renders per traversal, as explain's default traversal_frames
MAX_DRAWS = 200  # draws per accepted cell (patch): cells whose traversal would leave the generator's range are drawn again
LIMITS = {"nucleus_radius": (3.0, None), "actin_level": (0.05, 1.0), "diameter_mm": (3.0, None), "solid_fraction": (0.05, 1.0)}
HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def oracle_factor_values(base: float, delta: float, frames: int, low: float | None = None, high: float | None = None) -> list[float]:
    """The factor's value at each frame: ``base`` + s x ``delta``, s evenly in [-1, 1], kept in the generator's range."""
    return [float(np.clip(base + s * delta, low, high)) for s in np.linspace(-1.0, 1.0, frames)]


def _copy(rng: np.random.Generator) -> np.random.Generator:
    out = np.random.Generator(type(rng.bit_generator)())
    out.bit_generator.state = rng.bit_generator.state
    return out


def generator_spec(path: Path | None, modality: str = "microscopy"):
    """The generator spec of a configuration: CT's default, or microscopy's from a YAML file (None: the sample data's)."""
    from diffex.data.synthetic import SyntheticSpec, spec_from_dict
    from diffex.data.synthetic_ct import CTSpec

    if modality == "ct":
        return CTSpec()
    if path is None:
        return SyntheticSpec()
    import yaml

    return spec_from_dict(yaml.safe_load(Path(path).read_text()) or {})


SPECS = {"sample": (None, "microscopy"), "single": (HERE / "validity" / "single_factor.yaml", "microscopy"),
         "subtle": (HERE / "validity" / "subtle_factor.yaml", "microscopy"), "ct": (None, "ct")}


def _delta(spec, factor: str) -> float:
    """Δ of ``factor``: the difference of the first two conditions' means, or 2.5 within-condition SD where they do not differ
    (the sample data's difference, d' = 2.5)."""
    means = [getattr(c, f"{factor}_mean") for c in list(spec.conditions.values())[:2]]
    return abs(means[1] - means[0]) or 2.5 * getattr(spec, f"{factor}_sd")


def traversal_plan(factors: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """The traversals rendered: each factor alone (the perfect edit), and all of them together (a mixed edit, which the
    scorer must reject as not specific). Name -> factor -> direction (+1: the factor grows with strength)."""
    return {**{f: {f: 1} for f in factors}, "mixed": dict.fromkeys(factors, 1)}


def _overrides(drawn: dict, spec, plan: dict[str, int], frames: int) -> list[dict[str, float]]:
    """The factor values of each frame of one traversal of one cell (patch)."""
    per = {f: oracle_factor_values(drawn[f], sign * _delta(spec, f), frames, *LIMITS[f]) for f, sign in plan.items()}
    return [{f: v[k] for f, v in per.items()} for k in range(frames)]


def _within_limits(drawn: dict, spec, factors: tuple[str, ...], frames: int) -> bool:
    """Whether every traversal of this cell (patch) stays inside the generator's range, so that strength is the factor's
    change in units of Δ (a clipped traversal would flatten the known answer)."""
    return all(oracle_factor_values(drawn[f], _delta(spec, f), frames, *LIMITS[f]) == oracle_factor_values(drawn[f], _delta(spec, f), frames)
               for f in factors)


def _draw_accepted(rng: np.random.Generator, draw, accept, what: str):
    """``draw(rng)`` -> (generator state before the draw, drawn factors, extras) until ``accept(drawn)`` (None: the first)."""
    for _ in range(MAX_DRAWS):
        state, drawn, extras = draw(rng)
        if accept is None or accept(drawn):
            return state, drawn, extras
    raise SystemExit(f"oracle: no {what} in {MAX_DRAWS} draws whose traversals stay in the generator's range")


def _traversal_renders(spec, factors: tuple[str, ...], frames: int):
    """The oracle's renders of one cell (patch): ((condition, drawn factors) -> {traversal: overrides per frame}, the draws
    accepted)."""
    plan = traversal_plan(factors)
    return (lambda condition, drawn: {name: _overrides(drawn, spec, p, frames) for name, p in plan.items()},
            lambda drawn: _within_limits(drawn, spec, factors, frames))


def write_microscopy(folder: Path, spec, factors: tuple[str, ...], n: int, seed: int, frames: int = FRAMES,
                     renders=None) -> list[dict]:
    """OME-TIFF renders of every traversal (:func:`traversal_plan`) under ``folder``/<condition>/; one row (path, condition,
    cell, traversal, frame) per render. ``renders``: other renders, ((condition, drawn factors) -> {name: overrides per
    frame}, accept (drawn factors -> bool, or None: every draw)) as :func:`_traversal_renders` gives."""
    from diffex.data.io import write_ome_tiff
    from diffex.data.synthetic import CHANNEL_NAMES, render_cell

    rng, rows = np.random.default_rng(seed), []
    plans, accept = renders or _traversal_renders(spec, factors, frames)
    for condition in list(spec.conditions)[:2]:
        (folder / condition).mkdir(parents=True, exist_ok=True)
        def draw(rng, condition=condition):
            state = _copy(rng)
            return state, render_cell(rng, condition, spec)[1], ()  # the next draw starts after this one

        for i in range(n):
            state, drawn, _ = _draw_accepted(rng, draw, accept, f"{condition} cell")
            for name, frames_of in plans(condition, drawn).items():
                for k, over in enumerate(frames_of):
                    img, _ = render_cell(_copy(state), condition, spec, overrides=over)
                    rel = f"{condition}/{condition}_{i:03d}_{name}_{k}.ome.tif"
                    write_ome_tiff(folder / rel, img, CHANNEL_NAMES)
                    rows.append({"path": rel, "condition": condition, "cell": f"{condition}{i}", "traversal": name, "frame": k})
    return rows


def write_ct(folder: Path, spec, factors: tuple[str, ...], n: int, seed: int, frames: int = FRAMES, renders=None) -> list[dict]:
    """DICOM renders of every traversal (or of ``renders``) under ``folder``/<condition>/ and a manifest; one row per render
    as above."""
    from diffex.data.synthetic import write_factors
    from diffex.data.synthetic_ct import _dicom, render_patch

    rng, rows = np.random.default_rng(seed), []
    plans, accept = renders or _traversal_renders(spec, factors, frames)
    for condition in list(spec.conditions)[:2]:
        (folder / condition).mkdir(parents=True, exist_ok=True)
        def draw(rng, condition=condition):
            noise, paren = rng.uniform(*spec.noise_sd_range), rng.uniform(*spec.parenchyma_range)
            state = _copy(rng)
            return state, render_patch(rng, condition, spec, noise, paren)[1], (noise, paren)

        for i in range(n):
            state, drawn, (noise, paren) = _draw_accepted(rng, draw, accept, f"{condition} patch")
            for j, (name, frames_of) in enumerate(plans(condition, drawn).items()):
                for k, over in enumerate(frames_of):
                    hu, _ = render_patch(_copy(state), condition, spec, noise, paren, overrides=over)
                    patient = f"{condition[:3]}{i:03d}r{j}f{k}"
                    rel = f"{condition}/{patient}_0.dcm"
                    _dicom(hu, spec, patient, f"oracle/{rel}").save_as(folder / rel, enforce_file_format=True)
                    rows.append({"path": rel, "condition": condition, "patient_id": patient, "cell": f"{condition}{i}",
                                 "traversal": name, "frame": k})
    write_factors(folder / "manifest.csv", rows, ("path", "condition", "patient_id"))
    return rows


def _ct_imaging() -> tuple[SimpleNamespace, int]:
    """The CT sample's geometry as its classifier records it (spacing, lung window), and the models' size."""
    cfg = json.loads((REPO / "sample_data" / "ct" / "models" / "classifier" / "config.json").read_text())
    return SimpleNamespace(**cfg["ct"]), int(cfg["training"]["config"]["size"])


@dataclass(frozen=True)
class Oracle:
    """Known-answer traversals of one configuration, measured: morphology.csv-like rows (``attribute`` = the traversal,
    ``ImageName`` = the cell, ``Strength`` = s), what is measured, and in which units trends are."""

    rows: list
    readouts: Readouts
    relative: bool
    image_size: float


def oracle_traversals(spec, n: int, seed: int, workdir: Path, size: int = 32) -> Oracle:
    """Render, write and measure the traversals of :func:`traversal_plan` with the generator ``spec`` (:func:`generator_spec`).

    Microscopy at ``size`` px (the models' size); CT in the CT sample's geometry. Every true factor of the modality is
    traversed, also one that does not differ between the configuration's conditions: the scorer measures specificity
    against it all the same.
    """
    from diffex.data.synthetic_ct import CTSpec

    ct = isinstance(spec, CTSpec)
    folder = Path(tempfile.mkdtemp(dir=workdir))
    if ct:
        imaging, size = _ct_imaging()
        plan = write_ct(folder, spec, tuple(MEASURE_CT), n, seed)
        paths, meas = _real_ct(folder, size, imaging)
        _, real = _real_ct(REPO / "sample_data" / "ct" / "heldout", size, imaging)
        width = size * float(imaging.spacing_mm)
        readouts = Readouts(MEASURE_CT, NUISANCE_CT, {c: width if "Center" in c else float(np.nanmedian(np.abs(real[c])))
                                                      for c in NUISANCE_CT.values()})
    else:
        from diffex.data.synthetic import CHANNEL_NAMES

        plan = write_microscopy(folder, spec, tuple(MEASURE), n, seed)
        paths, meas = _real_measurements(folder, size, list(CHANNEL_NAMES))
        readouts = MICROSCOPY
    where = {p: j for j, p in enumerate(paths)}
    cols = (*readouts.measure.values(), *readouts.nuisance.values())
    strengths = np.linspace(-1.0, 1.0, FRAMES)
    rows = [{"attribute": r["traversal"], "ImageName": r["cell"], "Strength": float(strengths[r["frame"]]),
             **{c: float(meas[c][where[r["path"]]]) for c in cols}} for r in plan]
    return Oracle(rows, readouts, relative=not ct, image_size=float(size))


def decoder_of(oracle: Oracle) -> Decoder:
    """The :class:`Decoder` fitted on an oracle's one-factor traversals."""
    r = oracle.readouts
    return fit_response(oracle.rows, tuple(r.measure), tuple(r.measure.values()), tuple(r.nuisance.values()),
                        oracle.relative, oracle.image_size)


def oracle_decoder(spec, size: int = 32, n: int = 32, seed: int = 5) -> Decoder:
    """The validity scorer's decoder for a configuration's generator ``spec`` (traversals rendered in a temporary folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        return decoder_of(oracle_traversals(spec, n, seed, Path(tmp), size))


def traversal_scores(oracle: Oracle, dec: Decoder, traversal: str) -> dict:
    """For one traversal: the scorer's figures on the raw readouts (as scored until 2026-11-29) and on the decoded factors,
    scored as each factor (``as``: factor -> figures; for a one-factor traversal its own is the one the table shows)."""
    r = oracle.readouts
    cols = (*r.measure.values(), *r.nuisance.values())
    s, v, ref = traversal_arrays(oracle.rows, traversal, cols)
    dz = changes(v, ref, cols, oracle.relative, oracle.image_size)
    raw = {f: decoded_r(s, dz[..., k]) for k, f in enumerate(r.measure)}
    raw_drift = {c: (float(np.nanmedian(dz[:, -1, len(r.measure) + k])), float(np.nanmedian(dz[:, 0, len(r.measure) + k])))
                 for k, c in enumerate(r.nuisance.values())}
    scored = {f: decoded_figures(dec, oracle.rows, traversal, f) for f in r.measure}
    shown = scored.get(traversal, scored[next(iter(r.measure))])
    return {"traversal": traversal, "n_traversals": len(s),
            "readout": {"r": raw, "nuisance": worst_drift(raw_drift, r.nuisance, r.drift_scale)},
            "decoded": {"r": shown["r"], "nuisance": worst_drift(shown["drift"], r.nuisance, r.drift_scale),
                        "as": {f: fig["r"] for f, fig in scored.items()}}}


def oracle_verdicts(score: dict, factors: tuple[str, ...]) -> dict:
    """What the scorer should say about a traversal, and what it says (per measurement kind): a one-factor traversal must
    pass r, specificity and nuisance; the mixed one must fail specificity whichever factor it is scored as."""
    out = {}
    for label in ("readout", "decoded"):
        drift = score[label]["nuisance"][0]
        as_ = score[label].get("as") or dict.fromkeys(factors, score[label]["r"])
        if score["traversal"] == "mixed":
            out[label] = all(max(abs(as_[f][g]) for g in factors if g != f) > MAX_OTHER_R for f in factors)
        else:
            f = score["traversal"]
            other = max((abs(as_[f][g]) for g in factors if g != f), default=0.0)
            out[label] = abs(as_[f][f]) >= MIN_R and other <= MAX_OTHER_R and drift is not None and drift < MAX_DRIFT
    return out


def run_configuration(name: str, n: int, seed: int, workdir: Path, size: int = 32, check_seed: int | None = None) -> list[dict]:
    """The oracle of configuration ``name`` (:data:`SPECS`): decoder fitted on ``seed``, checked on draws of ``check_seed``
    (default ``seed + 1``)."""
    spec = generator_spec(*SPECS[name])
    dec = decoder_of(oracle_traversals(spec, n, seed, workdir, size))
    test = oracle_traversals(spec, n, seed + 1 if check_seed is None else check_seed, workdir, size)
    factors = tuple(test.readouts.measure)
    rows = []
    for t in (*factors, "mixed"):
        sc = traversal_scores(test, dec, t)
        rows.append({"configuration": name, **sc, "as_expected": oracle_verdicts(sc, factors)})
    return rows


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def _cell(fig: dict, factors: tuple[str, ...]) -> str:
    drift, worst = fig["nuisance"]
    rs = " / ".join(f"{fig['r'][f]:+.2f}" for f in factors)
    return f"{rs}; {'–' if drift is None else f'{100 * drift:.0f}% ({worst})'}"


def table(rows: list[dict]) -> str:
    """Markdown table of the oracle: per configuration and traversal, r of each factor and the worst nuisance drift, measured
    on the raw readouts and decoded, and whether the scorer's verdict is the known answer."""
    lines = ["| configuration | traversal (images) | factors | readouts: r of each factor; nuisance drift | known answer? | "
             "decoded: r of each factor; nuisance drift | known answer? |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        factors = tuple(r["readout"]["r"])
        where = r["configuration"] + (f", checked on seed {r['check_seed']}" if "check_seed" in r else "")
        lines.append(f"| {where} | {r['traversal']} ({r['n_traversals']}) | {' / '.join(factors)} | "
                     f"{_cell(r['readout'], factors)} | {_mark(r['as_expected']['readout'])} | {_cell(r['decoded'], factors)} | "
                     f"{_mark(r['as_expected']['decoded'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configuration", action="append", choices=("sample", "single", "subtle", "ct"))
    ap.add_argument("--n", type=int, default=32, help="cells (patches) per condition, as the scorer's decoder")
    ap.add_argument("--seed", type=int, default=5, help="the decoder's draws (the scorer's: 5)")
    ap.add_argument("--check-seed", type=int, action="append", default=None, help="the checked draws (default: seed + 1)")
    ap.add_argument("--size", type=int, default=32, help="microscopy: the validity models' image size")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configuration or ("sample", "single", "subtle", "ct"):
            for check in args.check_seed or [args.seed + 1]:
                rows += [{**r, "check_seed": check} for r in run_configuration(name, args.n, args.seed, Path(tmp), args.size, check)]
    print(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
