"""Validity benchmark: are diffex's explanations right, on synthetic data whose factors are known?

Three configurations, each with its own classifier and diffusion model:

- ``sample``: the shipped sample data (conditions differ in nuclear size and cytoplasm brightness);
- ``single``: the conditions differ in nuclear size only (benchmarks/validity/single_factor.yaml);
- ``subtle``: a subtle cytoplasm-brightness difference among strong nuisance variation
  (benchmarks/validity/subtle_factor.yaml).

For every direction method in the registry (``contrastive``, the DiffEx-style method, is the
baseline row) it runs ``diffex explain`` with that method alone on the configuration's held-out
images and scores the attributes against the ground truth, from the experiment folder only:

- rank of each true factor: the first attribute (per target condition, by rank) whose traversal
  changes that factor's measurement monotonically (median within-image |Spearman r| >= 0.7);
- |r| of each true factor with strength, for the rank-1 attributes (mean over target conditions);
- flip rate at the reported strength (rank-1 attributes);
- nuisance drift: the largest relative change of cell size, position or elongation at +-strength;
- proximity: L1 (in units of the display range) and SSIM between the full-strength render and the
  strength-0 render (the reconstruction), over the example hyperstacks;
- realism: the morphology of full-strength renders against the real images: median |z| of the
  measurements and the share of renders with any |z| > 4 (z against the real images' distribution).

The factors are measured on renders as: nuclear size -> ``DNA_AreaShape_Area``, cytoplasm
brightness -> ``Actin_Intensity_MeanIntensity``.

Usage::

    python benchmarks/validity.py prepare --root runs/validity          # data + models (hours on a CPU)
    python benchmarks/validity.py run --root runs/validity --device cpu  # 12 explain runs, then the table
    python benchmarks/validity.py score EXPERIMENT_DIR --images DIR --factors CSV   # one experiment
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent / "validity"

MEASURE = {"nucleus_radius": "DNA_AreaShape_Area", "actin_level": "Actin_Intensity_MeanIntensity"}
NUISANCE = {"cell size": "Actin_AreaShape_Area", "cell x": "Actin_AreaShape_Center_X",
            "cell y": "Actin_AreaShape_Center_Y", "cell elongation": "Actin_AreaShape_Eccentricity"}
MATCH_R = 0.7

# settings of the benchmark's explain runs (CPU-sized; the defaults otherwise)
EXPLAIN = {"max_images": 120, "gradient_images": 32, "rank_images": 32, "max_attributes": 2, "directions_per_method": 4,
           "screen_top": 4, "traversal_images": 2, "measure_images": 4}


@dataclass(frozen=True)
class Configuration:
    name: str
    differs: tuple[str, ...]  # the factors whose distribution differs between conditions
    spec: Path | None  # generator YAML (None: the sample data's defaults)

    def paths(self, root: Path) -> dict[str, Path]:
        if self.name == "sample":
            s = REPO / "sample_data"
            return {"images": s / "heldout", "factors": s / "heldout_factors.csv", "classifier": s / "models" / "classifier",
                    "diffusion": s / "models" / "diffusion", "train": s / "cells"}
        d = root / self.spec.stem  # e.g. ROOT/single_factor
        return {"images": d / "heldout", "factors": d / "heldout_factors.csv", "classifier": d / "classifier",
                "diffusion": d / "diffusion", "train": d / "cells"}


CONFIGURATIONS = (
    Configuration("sample", ("nucleus_radius", "actin_level"), None),
    Configuration("single", ("nucleus_radius",), HERE / "single_factor.yaml"),
    Configuration("subtle", ("actin_level",), HERE / "subtle_factor.yaml"),
)


def _diffex(*args: str) -> None:
    cmd = [shutil.which("diffex") or "diffex", *args]
    print("$ diffex " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def prepare(root: Path, device: str) -> None:
    """Generate the extra configurations' images and train their models (skips what exists)."""
    for cfg in CONFIGURATIONS:
        if cfg.spec is None:
            continue
        p = cfg.paths(root)
        if not p["train"].exists():
            _diffex("synthetic", "--config", str(cfg.spec), "--out", str(p["train"]), "--n", "300", "--seed", "10", "-q")
            _diffex("synthetic", "--config", str(cfg.spec), "--out", str(p["images"]), "--n", "60", "--seed", "11", "-q")
        if not (p["diffusion"] / "diffex.json").exists():
            _diffex("train-diffusion", "--images", str(p["train"]), "--out", str(p["diffusion"]),
                    "--config", str(HERE / "diffusion_train.yaml"), "--device", device, "-q")
        if not (p["classifier"] / "config.json").exists():
            _diffex("train-classifier", "--images", str(p["train"]), "--out", str(p["classifier"]),
                    "--config", str(HERE / "classifier_train.yaml"), "--device", device, "-q")


# ------------------------------------------------------------------------------------ scoring
def _real_measurements(images: Path, size: int, channel_names: list[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Relative paths and morphology of the real images, at the models' size."""
    from diffex.data.dataset import discover, load_images, relative_path
    from diffex.report.morphology import measure_many

    recs = sorted(discover(images), key=lambda r: str(r.path))
    imgs = load_images(recs, size, show_progress=False)
    return [relative_path(r.path, images) for r in recs], measure_many(imgs.raw, channel_names)


def _proximity(exp: Path, att: dict, ranges: dict) -> tuple[list[float], list[float]]:
    from skimage.metrics import structural_similarity

    from diffex.report.folder import read_hyperstack

    chans = list(ranges)
    span = np.array([ranges[c][1] - ranges[c][0] for c in chans], float)
    strengths = np.asarray(att["traversal"]["strengths"])
    zero, full = int(np.argmin(np.abs(strengths))), len(strengths) - 1
    l1, ssim = [], []
    for ex in att["traversal"].get("shown", []):
        st = read_hyperstack(exp / "traversals" / ex["file"], len(chans))  # (F, C, H, W)
        a, b = st[full] / span[:, None, None], st[zero] / span[:, None, None]
        l1.append(float(np.abs(a - b).mean()))
        ssim.append(float(np.mean([structural_similarity(a[c], b[c], data_range=1.0) for c in range(len(chans))])))
    return l1, ssim


def score(exp: Path, images: Path, factors: Path, differs: tuple[str, ...]) -> dict:
    """Score one finished experiment folder against the ground truth of its images."""
    from diffex.report.folder import read_morphology

    res = json.loads((exp / "results.json").read_text())
    atts = res["attributes"]
    out: dict = {"attributes": len(atts), "elapsed_s": res.get("elapsed_s")}
    # rank of each true factor
    for f in differs:
        col = MEASURE[f]
        ranks = [a["rank"] for a in atts if abs(a["morphology"].get(col, {}).get("spearman_r", 0.0)) >= MATCH_R]
        out[f"rank_{f}"] = min(ranks) if ranks else None
    # specificity: how much the attribute matched to a differing factor also moves the other factor
    cross = []
    for f in differs:
        other = [g for g in MEASURE if g != f][0]
        match = sorted((a for a in atts if abs(a["morphology"].get(MEASURE[f], {}).get("spearman_r", 0.0)) >= MATCH_R), key=lambda a: a["rank"])
        if match and MEASURE[other] in match[0]["morphology"]:
            cross.append(abs(match[0]["morphology"][MEASURE[other]]["spearman_r"]))
    out["cross_r"] = max(cross) if cross else None
    top = [a for a in atts if a["rank"] == 1]
    for f in MEASURE:
        vals = [abs(a["morphology"][MEASURE[f]]["spearman_r"]) for a in top if MEASURE[f] in a["morphology"]]
        out[f"r_{f}"] = float(np.mean(vals)) if vals else None
    out["flip_rate"] = float(np.mean([a["flip_rate"] for a in top])) if top else None
    drift = [max(max(abs(a["morphology"][c]["change_at_max"]), abs(a["morphology"][c]["change_at_min"])) for c in NUISANCE.values())
             for a in top]
    out["nuisance_drift"] = float(np.mean(drift)) if drift else None
    l1, ssim = [], []
    for a in top:
        x, y = _proximity(exp, a, res["display_ranges"])
        l1 += x
        ssim += y
    out["l1"] = float(np.mean(l1)) if l1 else None
    out["ssim"] = float(np.mean(ssim)) if ssim else None
    # realism of full-strength renders against the real images' morphology
    paths, real = _real_measurements(images, int(res["diffusion_model"]["image_size"]), res["channel_names"])
    # how well each factor's measurement tracks the true factor on the real images (the proxy's validity)
    import csv

    from scipy.stats import spearmanr

    truth = {r["path"]: r for r in csv.DictReader(open(factors))}
    for f, col in MEASURE.items():
        pairs = [(float(truth[p][f]), v) for p, v in zip(paths, real[col]) if p in truth and np.isfinite(v)]
        out[f"proxy_r_{f}"] = float(spearmanr(*zip(*pairs))[0]) if len(pairs) > 2 else None
    cols = [c for c in real if np.isfinite(real[c]).sum() > 2 and np.nanstd(real[c]) > 0 and "Center" not in c]
    rows = [r for r in read_morphology(exp / "morphology.csv")
            if any(r["attribute"] == a["id"] for a in top) and abs(r["Strength"]) == max(abs(s) for s in top[0]["traversal"]["strengths"])] if top else []
    if rows:
        z = np.array([[(r[c] - np.nanmean(real[c])) / np.nanstd(real[c]) if isinstance(r.get(c), float) else np.nan for c in cols] for r in rows])
        out["realism_median_abs_z"] = float(np.nanmedian(np.abs(z)))
        out["realism_share_any_z_over_4"] = float(np.mean(np.nanmax(np.abs(np.nan_to_num(z, nan=99.0)), axis=1) > 4))
    else:
        out["realism_median_abs_z"] = out["realism_share_any_z_over_4"] = None
    return out


# ------------------------------------------------------------------------------------ running
def run(root: Path, out: Path, device: str, methods: list[str] | None = None, configs: list[str] | None = None) -> list[dict]:
    from diffex.explain.directions import list_methods

    methods = methods or list_methods()
    rows = []
    for cfg in CONFIGURATIONS:
        if configs and cfg.name not in configs:
            continue
        p = cfg.paths(root)
        missing = [str(v) for k, v in p.items() if k != "train" and not v.exists()]
        if missing:
            raise SystemExit(f"{cfg.name}: missing {missing}; run `python benchmarks/validity.py prepare --root {root}` first")
        shared = out / cfg.name / "inversions"  # the inversion cache is the same for every method
        for m in methods:
            exp = out / cfg.name / m
            if not (exp / "results.json").exists():
                if shared.exists() and not (exp / "cache" / "inversions").exists():
                    (exp / "cache").mkdir(parents=True, exist_ok=True)
                    shutil.copytree(shared, exp / "cache" / "inversions")
                yaml_path = out / cfg.name / "explain.yaml"
                yaml_path.parent.mkdir(parents=True, exist_ok=True)
                yaml_path.write_text("".join(f"{k}: {v}\n" for k, v in EXPLAIN.items()))
                t0 = time.perf_counter()
                _diffex("explain", "--classifier", str(p["classifier"]), "--images", str(p["images"]), "--diffusion", str(p["diffusion"]),
                        "--out", str(exp), "--config", str(yaml_path), "--method", m, "--device", device, "-q")
                print(f"  {cfg.name}/{m}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
                if not shared.exists():
                    shutil.copytree(exp / "cache" / "inversions", shared)
            row = {"configuration": cfg.name, "method": m, "differs": list(cfg.differs),
                   **score(exp, p["images"], p["factors"], cfg.differs)}
            gate = json.loads((p["diffusion"] / "diffex.json").read_text()).get("quality_gate", {})
            row["diffusion_gate_passed"] = bool(gate.get("passed"))
            rows.append(row)
    return rows


def _fmt(v, pct=False) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.0%}" if pct else f"{v:.2f}"
    return str(v)


def table(rows: list[dict]) -> str:
    """Markdown table of the scored runs."""
    head = ("| configuration (differs in) | method | rank nuclear size | rank cytoplasm brightness | other factor's abs r on the match | "
            "abs r nuclear size | abs r cytoplasm | flip rate | nuisance drift | L1 | SSIM | realism median abs z | renders with abs z > 4 |\n|"
            + "---|" * 13)
    lines = [head]
    for r in rows:
        diff = ", ".join({"nucleus_radius": "nuclear size", "actin_level": "cytoplasm"}[f] for f in r["differs"])
        rank_n = _fmt(r.get("rank_nucleus_radius")) if "nucleus_radius" in r["differs"] else "(not a factor)"
        rank_a = _fmt(r.get("rank_actin_level")) if "actin_level" in r["differs"] else "(not a factor)"
        lines.append(f"| {r['configuration']} ({diff}) | {r['method']}{' (baseline)' if r['method'] == 'contrastive' else ''} | {rank_n} | {rank_a} | "
                     f"{_fmt(r.get('cross_r'))} | {_fmt(r['r_nucleus_radius'])} | {_fmt(r['r_actin_level'])} | {_fmt(r['flip_rate'], True)} | {_fmt(r['nuisance_drift'], True)} | "
                     f"{_fmt(r['l1'])} | {_fmt(r['ssim'])} | {_fmt(r['realism_median_abs_z'])} | {_fmt(r['realism_share_any_z_over_4'], True)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--root", type=Path, default=REPO / "runs" / "validity")
    a.add_argument("--device", default="auto")
    b = sub.add_parser("run")
    b.add_argument("--root", type=Path, default=REPO / "runs" / "validity")
    b.add_argument("--out", type=Path, default=None, help="experiment folders (default ROOT/experiments)")
    b.add_argument("--device", default="auto")
    b.add_argument("--method", action="append", help="only these methods (default: every registered one)")
    b.add_argument("--configuration", action="append", help="only these configurations")
    c = sub.add_parser("score")
    c.add_argument("experiment", type=Path)
    c.add_argument("--images", type=Path, required=True)
    c.add_argument("--factors", type=Path, required=True)
    c.add_argument("--differs", action="append", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.cmd == "prepare":
        prepare(args.root, args.device)
    elif args.cmd == "run":
        rows = run(args.root, args.out or args.root / "experiments", args.device, args.method, args.configuration)
        print(json.dumps(rows, indent=1))
        print(table(rows))
    else:
        print(json.dumps(score(args.experiment, args.images, args.factors, tuple(args.differs or MEASURE)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
