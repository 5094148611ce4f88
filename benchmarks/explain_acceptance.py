"""Check an explain run on synthetic cells or CT lesions against its ground truth (issue acceptance criteria).

The synthetic cells' conditions differ in ``nucleus_radius`` (measured on renders as DNA object area)
and ``actin_level`` (Actin object mean intensity); cell size, position and elongation are nuisance
factors. The synthetic lesions' conditions differ in ``diameter_mm`` and ``solid_fraction`` (the lesion
readouts of ``validity_score.MEASURE_CT``), with the nodule's position, mean density and margin as
nuisance; which set applies follows from the experiment (CT when it has an imaging geometry).
Each true factor is matched to an attribute and judged by the rules of
``benchmarks/validity.py`` (see its docstring): right sign of the change (from the ground truth),
|r| >= 0.8 with its factor and <= 0.3 with the other, among the top 3, condition separation
(AUC >= 0.7, adjusted p < 0.01), nuisance drift of the match < 10 %, full-strength renders within
the real images' range. As in the benchmark, the readouts are decoded into factor changes with the
decoder fitted on the images' generator (``--spec``, default the sample data's; CT: the lesion
generator's; validity_decode.py); ``--readouts`` scores the raw readouts instead. This prints every attribute's figures, then each
factor's match and the criteria it fails. Exit code 0 when every factor passes, 1 otherwise.

The real images are those the experiment explained (``images`` in results.json) and the ground
truth is the CSV the generator wrote beside them (``<images>_factors.csv``) unless given.

Usage: python benchmarks/explain_acceptance.py EXPERIMENT_DIR [--images DIR] [--factors CSV] [--differs FACTOR ...]
[--spec YAML | --readouts]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path


def _validity():
    """benchmarks/validity.py, loaded by path (the benchmarks are scripts, not a package)."""
    if "validity" not in sys.modules:
        spec = importlib.util.spec_from_file_location("validity", Path(__file__).resolve().with_name("validity.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules["validity"] = mod  # dataclasses look their module up here
        spec.loader.exec_module(mod)
    return sys.modules["validity"]


def _print_attributes(res, v, readouts) -> None:
    """One line per attribute: rank, flips, the raw readouts' r with strength, and the largest nuisance drift."""
    print(f"{'attribute':<28} {'rank':>4} {'flips (baseline)':>17} " + " ".join(f"{'readout r ' + f:>24}" for f in readouts.measure)
          + "  max nuisance drift (readouts)")
    for a in res.attributes:
        drift, worst = v.nuisance_drift(a, readouts.nuisance, readouts.drift_scale)
        flips = f"{a.flip_rate:.0%} ({a.baseline_at_target:.0%})"
        print(f"{a.id[:28]:<28} {a.rank:>4} {flips:>17} "
              + " ".join(f"{v.trend_r(a, col):>+24.2f}" for col in readouts.measure.values())
              + (f"  {worst} {drift:.0%}" if worst else "  –"))


def _left_out(s: dict) -> str:
    left = s.get("outside_left_out") or 0
    return f", {left} of {s['n_full_strength']} renders not counted: reconstruction outside already" if left else ""


def _verdict(factor: str, s: dict) -> str:
    """One factor's match and the criteria it fails, then the attributes that track it but were rejected, and why."""
    rejected = "".join(f"\n  not a match: {k} {reason}" for k, reason in s["rejected"].items())
    if s["attribute"] is None:
        return f"{factor}: NOT matched" + (rejected or " (no attribute tracks it)")
    failed = [k for k, ok in s["criteria"].items() if not ok]
    return (f"{factor}: matched by {s['attribute']} (rank {s['rank']}, r {s['r']:+.2f}, other factor |r| {s['other_r']:.2f}, "
            f"AUC {s['auc']:.2f}, p adj {s['p_adjusted']:.2g}, nuisance {s['nuisance_drift']:.0%}, "
            f"outside the data {s['outside_share']:.0%}{_left_out(s)}): " + ("passed" if not failed else "fails " + ", ".join(failed)) + rejected)


def main(exp: Path, images: Path | None = None, factors: Path | None = None, differs: tuple[str, ...] | None = None,
         spec: Path | None = None, decode: bool = True) -> int:
    """Print the attributes and each factor's verdict; 0 when every factor passes, else 1.

    ``spec``: the generator YAML of the cells (None: the sample data's; ignored for CT); ``decode=False``: the raw readouts as the factors.
    """
    from diffex.report.results import read_results

    v = _validity()
    exp = Path(exp)
    res = read_results(exp / "results.json")
    images = Path(images or res.images)
    factors = Path(factors or images.parent / f"{images.name}_factors.csv")
    if not factors.exists():
        raise SystemExit(f"{factors}: no ground truth; pass --factors")
    modality = "ct" if res.imaging is not None else "microscopy"
    dec = v.decoder_for(v.Configuration("acceptance", (), spec, modality), res.diffusion_model.image_size) if decode else None
    real = v._real_measurements(images, res.diffusion_model.image_size, res.channel_names, res.imaging)
    row = v.score(exp, images, factors, differs, real=real, decoder=dec)
    _print_attributes(res, v, v.readouts_of(res, real[1]))
    print()
    for f, s in row["factors"].items():
        print(_verdict(f, s))
    print("acceptance:", "PASSED" if row["passed"] else "FAILED")
    return 0 if row["passed"] else 1


def cli(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", type=Path)
    ap.add_argument("--images", type=Path, default=None, help="the real images (default: those of the experiment)")
    ap.add_argument("--factors", type=Path, default=None, help="ground-truth CSV (default: <images>_factors.csv)")
    ap.add_argument("--differs", action="append", default=None,
                    help="factors the conditions differ in (default: the two the modality measures)")
    ap.add_argument("--spec", type=Path, default=None,
                    help="generator YAML of the cells (default: the sample data's; CT uses the lesion generator's)")
    ap.add_argument("--readouts", action="store_true", help="score the raw readouts, not the decoded factors")
    args = ap.parse_args(argv)
    return main(args.experiment, args.images, args.factors, tuple(args.differs) if args.differs else None, args.spec,
                not args.readouts)


if __name__ == "__main__":
    sys.exit(cli())
