"""Validity benchmark: are diffex's explanations right, on synthetic data whose factors are known?

Four configurations, each with its own classifier and diffusion model:

- ``sample``: the shipped sample data (conditions differ in nuclear size and cytoplasm brightness);
- ``single``: the conditions differ in nuclear size only (benchmarks/validity/single_factor.yaml);
- ``subtle``: a subtle cytoplasm-brightness difference among strong nuisance variation
  (benchmarks/validity/subtle_factor.yaml);
- ``ct``: the shipped CT sample (sample_data/ct/: lung nodules, benign vs malignant, differing in
  nodule diameter and solid share; ``diffex synthetic --modality ct``).

For every direction method in the registry (``contrastive``, the DiffEx-style method, is the
baseline row) it runs ``diffex explain`` with that method alone on the configuration's held-out
images and scores the attributes against the ground truth, from the experiment folder only
(``results.json`` through :mod:`diffex.report.results`, ``morphology.csv``, the hyperstacks).

The factors are measured on renders as: nuclear size -> ``DNA_AreaShape_Area``, cytoplasm
brightness -> ``Actin_Intensity_MeanIntensity``; nuisance: cell size, x, y and elongation. For CT
(lesion readouts in mm and HU, :mod:`diffex.report.ct_morphology`): nodule diameter ->
``Lesion_Diameter_mm``, solid fraction -> ``Lesion_SolidShare``; nuisance: nodule x and y (change
relative to the patch's width in mm), parenchyma density and margin irregularity (change relative
to the real images' median magnitude; CT trends are absolute, microscopy ones already relative).

The readouts are coupled (a larger nucleus dims the measured cytoplasm), so they are decoded into
factor changes with a decoder fitted on the configuration's generator (``validity_decode.py``,
``validity_oracle.py``: one-factor traversals rendered by the generator itself, the known answers
the scorer is checked against). The matching rules and criteria are in ``validity_score.py`` (the
scoring of one experiment folder).

Usage::

    python benchmarks/validity.py prepare --root runs/validity          # data + models (hours on a CPU)
    python benchmarks/validity.py run --root runs/validity --device cpu  # one explain run per method x configuration, then the table
    python benchmarks/validity.py score EXPERIMENT_DIR --images DIR --factors CSV   # one experiment
    python benchmarks/validity.py rescore --root runs/validity runs/validity/experiments/*/*/   # finished runs, scored again
    python benchmarks/validity.py summary run_sample.txt run_ct.txt ...   # per method over the printed rows; the best default

``run`` and ``rescore`` print the scored rows (JSON), the table, and the per-method summary (validity_summary.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent / "validity"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # validity_score, validity_table

from validity_score import *  # noqa: E402,F401,F403 - scoring: constants and functions, re-exported
from validity_score import _real_measurements  # noqa: E402 - rescore (and tests)

# settings of the benchmark's explain runs (CPU-sized; the defaults otherwise)
EXPLAIN = {"max_images": 120, "gradient_images": 32, "rank_images": 32, "max_attributes": 2, "directions_per_method": 4,
           "screen_top": 4, "traversal_images": 2, "measure_images": 4}


@dataclass(frozen=True)
class Configuration:
    name: str
    differs: tuple[str, ...]  # the factors whose distribution differs between conditions
    spec: Path | None  # generator YAML (None: the sample data's defaults)
    modality: str = "microscopy"  # "ct": lesion readouts (MEASURE_CT, NUISANCE_CT)

    def paths(self, root: Path) -> dict[str, Path]:
        if self.name == "sample":
            s = REPO / "sample_data"
            return {"images": s / "heldout", "factors": s / "heldout_factors.csv", "classifier": s / "models" / "classifier",
                    "diffusion": s / "models" / "diffusion", "train": s / "cells"}
        if self.name == "ct":
            s = REPO / "sample_data" / "ct"
            return {"images": s / "heldout", "factors": s / "heldout_factors.csv", "classifier": s / "models" / "classifier",
                    "diffusion": s / "models" / "diffusion", "train": s / "lesions"}
        d = root / self.spec.stem  # e.g. ROOT/single_factor
        return {"images": d / "heldout", "factors": d / "heldout_factors.csv", "classifier": d / "classifier",
                "diffusion": d / "diffusion", "train": d / "cells"}


CONFIGURATIONS = (
    Configuration("sample", ("nucleus_radius", "actin_level"), None),
    Configuration("single", ("nucleus_radius",), HERE / "single_factor.yaml"),
    Configuration("subtle", ("actin_level",), HERE / "subtle_factor.yaml"),
    Configuration("ct", ("diameter_mm", "solid_fraction"), None, "ct"),
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


def run(root: Path, out: Path, device: str, methods: list[str] | None = None, configs: list[str] | None = None,
        settings: dict | None = None) -> list[dict]:
    """Explain every configuration's images with each method into ``out``/configuration/method and score it; ``settings``
    override the benchmark's explain settings (``EXPLAIN``)."""
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
                yaml_path.write_text("".join(f"{k}: {v}\n" for k, v in {**EXPLAIN, **(settings or {})}.items()))
                t0 = time.perf_counter()
                _diffex("explain", "--classifier", str(p["classifier"]), "--images", str(p["images"]), "--diffusion", str(p["diffusion"]),
                        "--out", str(exp), "--config", str(yaml_path), "--method", m, "--device", device, "-q")
                print(f"  {cfg.name}/{m}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
                if not shared.exists():
                    shutil.copytree(exp / "cache" / "inversions", shared)
            rows.append(_row(cfg, m, exp, p, gate=gate_passed(p["diffusion"])))
    return rows


@functools.lru_cache(maxsize=None)
def decoder_for(cfg: Configuration, size: int):
    """The configuration's readout decoder (validity_decode.py), fitted on its generator's known-answer traversals."""
    from validity_oracle import generator_spec, oracle_decoder

    print(f"  {cfg.name}: fitting the readout decoder on the generator's one-factor traversals", file=sys.stderr, flush=True)
    return oracle_decoder(generator_spec(cfg.spec, cfg.modality), size)


def _row(cfg: Configuration, method: str, exp: Path, p: dict, gate: bool, real=None) -> dict:
    from diffex.report.results import read_results

    dec = decoder_for(cfg, read_results(exp / "results.json").diffusion_model.image_size)
    return {"configuration": cfg.name, "modality": cfg.modality, "method": method, "differs": list(cfg.differs),
            **score(exp, p["images"], p["factors"], cfg.differs, real, dec), "diffusion_gate_passed": gate,
            "decoder": dec.to_dict()}


def _check_images(exp: Path, recorded: Path, images: Path) -> None:
    """Refuse to score a folder against other images than it explained (compared file by file where the paths differ)."""
    from diffex.report.folder import read_morphology

    if recorded.resolve() == images.resolve():
        return
    if not recorded.is_dir():
        print(f"{exp}: the images it explained ({recorded}) are gone; scoring against {images}", file=sys.stderr)
        return
    names = sorted({str(r["ImageName"]) for r in read_morphology(exp / "morphology.csv")})
    differ = [n for n in names if not (images / n).is_file() or (images / n).read_bytes() != (recorded / n).read_bytes()]
    if differ:
        raise SystemExit(f"{exp}: it explained {recorded}, but {images} (from --root) differs there ({differ[0]}); "
                         "pass the --root its configuration was made under")


def rescore(root: Path, folders: list[Path]) -> list[dict]:
    """Score finished experiment folders (CONFIGURATION/METHOD, e.g. made by ``run``) again, without running explain;
    the diffusion gate is the one the run recorded. The real images are measured once per configuration and size; a
    folder that explained other images than the configuration's under ``root`` is refused.
    Folders without results.json (e.g. a configuration's shared ``inversions``) are skipped with a note."""
    from diffex.report.results import read_results

    by_name, rows, real = {c.name: c for c in CONFIGURATIONS}, [], {}
    for exp in folders:
        cfg = by_name.get(exp.parent.name)
        if cfg is None:
            raise SystemExit(f"{exp}: not an experiment folder CONFIGURATION/METHOD with CONFIGURATION one of {list(by_name)}")
        if not (exp / "results.json").exists():
            print(f"{exp}: skipped, no results.json (not a finished run)", file=sys.stderr)
            continue
        p, res = cfg.paths(root), read_results(exp / "results.json")
        _check_images(exp, Path(res.images), p["images"])
        key = (cfg.name, res.diffusion_model.image_size)
        if key not in real:
            real[key] = _real_measurements(p["images"], res.diffusion_model.image_size, res.channel_names, res.imaging)
        rows.append(_row(cfg, exp.name, exp, p, gate=res.quality_gate_passed, real=real[key]))
    if not rows:
        raise SystemExit("no finished experiment folder among " + ", ".join(map(str, folders)))
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table of the scored runs (benchmarks/validity_table.py)."""
    from validity_table import table as make_table

    return make_table(rows)


def summary(rows: list[dict], configurations: list[str] | None = None) -> str:
    """Per method over the rows, and the best default, against every registered method and ``configurations`` (default:
    all; validity_summary.py)."""
    from validity_summary import summary as make_summary

    from diffex.explain.directions import list_methods

    try:
        return make_summary(rows, configurations or [c.name for c in CONFIGURATIONS], list_methods())
    except ValueError as e:
        raise SystemExit(str(e)) from None


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
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an explain setting over the benchmark's own (e.g. selection_min_auc=0.7); use another --out")
    d = sub.add_parser("rescore", help="score finished experiment folders again (no explain run) and print the table")
    d.add_argument("folders", type=Path, nargs="+", help="experiment folders CONFIGURATION/METHOD")
    d.add_argument("--root", type=Path, default=REPO / "runs" / "validity")
    e = sub.add_parser("summary", help="per method over scored rows that run or rescore printed, and the best default")
    e.add_argument("files", type=Path, nargs="+", help="files holding the JSON rows printed by run or rescore")
    e.add_argument("--configuration", action="append", choices=[cfg.name for cfg in CONFIGURATIONS], default=None,
                   help="the configurations the default must be scored on (default: all)")
    c = sub.add_parser("score")
    c.add_argument("experiment", type=Path)
    c.add_argument("--images", type=Path, required=True)
    c.add_argument("--factors", type=Path, required=True)
    c.add_argument("--differs", action="append", default=None)
    c.add_argument("--configuration", choices=[cfg.name for cfg in CONFIGURATIONS], default=None,
                   help="decode the readouts with this configuration's oracle decoder (default: the readouts as the factors)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.cmd == "prepare":
        prepare(args.root, args.device)
    elif args.cmd == "run":
        extra = dict(kv.split("=", 1) for kv in args.set)
        rows = run(args.root, args.out or args.root / "experiments", args.device, args.method, args.configuration, extra)
        print(json.dumps(rows, indent=1))
        print(table(rows))
        print("\n" + summary(rows))
    elif args.cmd == "rescore":
        rows = rescore(args.root, args.folders)
        print(json.dumps(rows, indent=1))
        print(table(rows))
        print("\n" + summary(rows))
    elif args.cmd == "summary":
        from validity_summary import read_rows

        print(summary([r for f in args.files for r in read_rows(f)], args.configuration))
    else:
        dec = None
        if args.configuration:
            from diffex.report.results import read_results

            cfg = {c.name: c for c in CONFIGURATIONS}[args.configuration]
            dec = decoder_for(cfg, read_results(args.experiment / "results.json").diffusion_model.image_size)
        differs = tuple(args.differs) if args.differs else None
        print(json.dumps(score(args.experiment, args.images, args.factors, differs, decoder=dec), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
