"""Stage 9, write: ``results.json``, ``attributes.csv``, ``morphology.csv``, ``provenance.json`` and the report.

``results.json`` is written last, through the typed schema (:mod:`diffex.report.results`): its
presence marks a finished experiment.

Example
-------
>>> write_stage(exp, results, morphology_rows)          # doctest: +SKIP
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from diffex.config import to_dict
from diffex.data.source import describe_input
from diffex.explain.describe import display_range
from diffex.explain.directions import Candidates
from diffex.explain.inputs import Experiment
from diffex.explain.invert import Inversions
from diffex.explain.rank import SELECTION_RULE
from diffex.explain.search import EffectTable, Gradients, Shortlist
from diffex.fsutil import atomic_file, sha256_file, write_json
from diffex.report.html import write_report
from diffex.report.results import (
    Attribute,
    CandidateSummary,
    DiffusionSummary,
    FlaggedImage,
    ImagingSummary,
    InversionSummary,
    Results,
    Statistics,
    write_results,
)
from diffex.runtime import describe_device, software_versions

ATTRIBUTE_COLUMNS = ("target", "rank", "name", "sign", "strength", "strength_unit", "sd_per_h_scale", "mean_shift_sd", "ends_in_data", "consistency", "consistency_measure", "n_images", "n_eligible", "baseline_at_target", "mean_delta_p",
                     "delta_p_ci95_low", "delta_p_ci95_high", "flip_rate", "coverage", "cumulative_flip_rate", "separation_auc",
                     "separation_cohens_d", "separation_p_value", "separation_p_adjusted", "separation_n", "selection_mean_delta_p",
                     "selection_lower_bound", "screening_score", "description")


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Counts (k, k): rows are true classes, columns predicted ones."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (y, pred), 1)
    return m


def statistics_summary(exp: Experiment, inv: Inversions, grads: Gradients, table: EffectTable) -> Statistics:
    """How the statistics were made (image sets, bootstrap unit, corrections, stopping rule, subsampling)."""
    cfg = exp.cfg
    ev_labels = exp.labels[inv.evaluation]
    units = {c: int(len(np.unique(exp.groups[inv.evaluation][ev_labels == exp.class_names.index(c)])))
             if exp.groups is not None else int((ev_labels == exp.class_names.index(c)).sum()) for c in exp.conditions}
    whole = "" if exp.groups is None else f"; each {exp.bootstrap_unit} entirely on one side"
    return Statistics(
        n_images_available=exp.n_available, selection_images=len(inv.selection), evaluation_images=len(inv.evaluation),
        gradient_images=len(grads.images), rank_images=len(table.images),
        split=(f"usable images split at random ({cfg.evaluation_fraction:.0%} held out for evaluation, per condition{whole}, "
               f"seed {cfg.seed + 3}); directions, gradients and the selection use only the selection images"),
        bootstrap_unit=exp.bootstrap_unit, bootstrap_units=units, bootstrap_resamples=cfg.bootstrap,
        p_adjust="holm (over every reported attribute)",
        selection_rule=SELECTION_RULE.format(conf=cfg.selection_confidence, n_boot=cfg.bootstrap, m=cfg.max_attributes) + (
            f"; only directions and signs along which the selection images of the target condition lie higher than the others "
            f"with AUC >= {cfg.selection_min_auc:g} could be picked" if cfg.selection_min_auc > 0 else ""),
        subsampling=list(exp.subsampling))


def build_results(exp: Experiment, inv: Inversions, grads: Gradients, cands: Candidates, shortlist: Shortlist, table: EffectTable,
                  attributes: list[Attribute], t_start: float) -> Results:
    """The experiment's results in the typed schema."""
    cfg, dm, labels = exp.cfg, exp.pair.dm, exp.labels
    low, high = display_range(exp)
    psnr = inv.psnr
    flagged = [FlaggedImage(exp.image_name(int(i)), float(psnr[i])) for i in np.flatnonzero(psnr < cfg.min_psnr)]
    training = dm.info.training or {}
    return Results(
        classifier=str(exp.classifier_path), diffusion=str(exp.diffusion_path), images=str(exp.images_source),
        class_names=exp.class_names, conditions=exp.conditions, channel_names=exp.channel_names, n_images=len(exp.records),
        per_condition={c: int((labels == exp.class_names.index(c)).sum()) for c in exp.conditions},
        classifier_accuracy=float((inv.probs_orig.argmax(1) == labels).mean()),
        classifier_accuracy_on_reconstructions=float((inv.probs_rec.argmax(1) == labels).mean()),
        confusion_matrix=confusion(labels, inv.probs_orig.argmax(1), len(exp.class_names)).tolist(),
        inversion=InversionSummary(cfg.steps, cfg.t_end, float(psnr.mean()), float(psnr.min()), float(np.median(psnr)), cfg.min_psnr, flagged),
        diffusion_model=DiffusionSummary(dm.info.image_size, int(sum(p.numel() for p in dm.unet.parameters())),
                                         (training.get("config") or {}).get("steps"), training.get("n_train"),
                                         dm.info.normalization_source),
        config=to_dict(cfg), display_ranges={c: [float(low[j]), float(high[j])] for j, c in enumerate(exp.channel_names)},
        h_shape=list(inv.h.shape[2:]), h_scale=inv.h_scale,
        candidates=[CandidateSummary(i, n, float(shortlist.scores[i]), bool(i in shortlist.order), cands.merged.get(n, []))
                    for i, n in enumerate(cands.names)],
        statistics=statistics_summary(exp, inv, grads, table), attributes=attributes,
        quality_gate_passed=bool((dm.info.quality_gate or {}).get("passed", False)), elapsed_s=round(time.time() - t_start, 1),
        unet_image_evaluations_this_run=dict(exp.evaluations), imaging=imaging_summary(exp),
        direction_training=dict(cands.diagnostics))


def imaging_summary(exp: Experiment) -> ImagingSummary | None:
    """CT/MR: the spacing and windows of the models, and how images became their inputs."""
    geo = exp.geometry
    if geo is None:
        return None
    return ImagingSummary(geo.modality, geo.spacing_mm, geo.to_dict()["windows"],
                          describe_input(geo, exp.pair.dm.info.resize_mode, exp.pair.dm.info.image_size))


def write_attributes_csv(path: Path, attributes: list[Attribute]) -> None:
    """One row per attribute (ATTRIBUTE_COLUMNS); floats with 6 significant digits."""
    with atomic_file(path) as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(ATTRIBUTE_COLUMNS)
        for a in attributes:
            row = {**vars(a), "delta_p_ci95_low": a.delta_p_ci95[0], "delta_p_ci95_high": a.delta_p_ci95[1],
                   "separation_n": ";".join(f"{c}:{n}" for c, n in a.separation_n.items())}
            w.writerow([f"{row[c]:.6g}" if isinstance(row[c], float) else row[c] for c in ATTRIBUTE_COLUMNS])


def write_morphology_csv(path: Path, rows: list[dict]) -> None:
    """One row per traversal render: attribute, image, condition, strength, p(target), measurements."""
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    with atomic_file(path) as fh:
        w = csv.DictWriter(fh, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def image_sets(exp: Experiment, inv: Inversions) -> list[str]:
    """Per image: "selection", "evaluation", "excluded (round trip)" or "unused" (evaluation images beyond evaluation_images)."""
    sets = ["unused"] * len(exp.records)
    for i in np.flatnonzero(inv.psnr < exp.cfg.min_psnr):
        sets[i] = "excluded (round trip)"
    for name, idx in (("selection", inv.selection), ("evaluation", inv.evaluation)):
        for i in idx:
            sets[i] = name
    return sets


def provenance(exp: Experiment, inv: Inversions) -> dict:
    """Command, software, device, seed, settings, the SHA-256 of both models' files and of every image, and its set."""
    def sums(path: Path) -> dict[str, str]:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        return {p.relative_to(path).as_posix() if path.is_dir() else p.name: sha256_file(p) for p in files}

    cfg_dict = to_dict(exp.cfg)
    return {
        "command": exp.command, "software": software_versions(), "device": describe_device(exp.device), "seed": cfg_dict["seed"],
        "config": cfg_dict, "classifier": {"path": str(exp.classifier_path), "sha256": sums(exp.classifier_path)},
        "diffusion": {"path": str(exp.diffusion_path), "sha256": sums(exp.diffusion_path)},
        "images": [{"path": exp.image_name(i), "condition": r.condition, "sha256": s, "set": k} | ({"in_file": r.locator} if r.locator else {})
                   for i, (r, s, k) in enumerate(zip(exp.records, exp.source_sha or exp.file_sha, image_sets(exp, inv)))],
    }


def write_stage(exp: Experiment, inv: Inversions, results: Results, morphology_rows: list[dict]) -> None:
    """Write every output file of the experiment folder; results.json last."""
    write_morphology_csv(exp.out / "morphology.csv", morphology_rows)
    write_attributes_csv(exp.out / "attributes.csv", results.attributes)
    write_json(exp.out / "provenance.json", provenance(exp, inv))
    write_report(exp.out, results)
    write_results(exp.out / "results.json", results)  # last: its presence marks a finished experiment
