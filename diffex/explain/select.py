"""Stages 6-7: select attributes on the selection images, then measure them on the evaluation images.

For every condition t, the images of the other conditions are moved towards t. AttFind
(:func:`diffex.explain.rank.attfind`) picks shortlisted directions and signs from the effect table
of the *selection* images. The picks are then rendered on the disjoint *evaluation* images, and
every reported statistic (Δp with its bootstrap CI, flip rate beside the share already at the
target, coverage, condition separation with Holm-adjusted p-values) comes from those, so that
neither the directions nor the selection inflate them.

Example
-------
>>> picks = select_stage(exp, inv, shortlist, table, cal.coords)                  # doctest: +SKIP
>>> ev = evaluation_stage(exp, inv, cands_key, cands, picks, progress)            # doctest: +SKIP
>>> attributes = statistics_stage(exp, inv, cands, shortlist, picks, ev)         # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffex.explain.cache import StageKey, cached, digest
from diffex.explain.directions import Candidates
from diffex.explain.effects import effect_table
from diffex.explain.inputs import Experiment
from diffex.explain.invert import Inversions
from diffex.explain.rank import attfind, attribute_statistics, holm, separating_pairs, separation
from diffex.explain.search import Calibrated, EffectTable, Shortlist
from diffex.models import sampler
from diffex.report.results import Attribute
from diffex.report.traversal import safe_name


@dataclass(frozen=True)
class Pick:
    """One selected attribute, before its evaluation."""

    target: int  # class index the images are moved towards
    rank: int
    candidate: int  # index into the candidates
    sign: int
    selection_mean_delta_p: float
    selection_lower_bound: float


@dataclass
class EvaluationTable:
    key: StageKey
    images: dict[int, np.ndarray]  # per target: evaluation images of the other conditions
    probs: dict[int, np.ndarray]  # per target: (n_t, picks of t, classes) classifier on the renders


def _groups(exp: Experiment, idx: np.ndarray) -> np.ndarray | None:
    return None if exp.groups is None else exp.groups[idx]


def select_stage(exp: Experiment, inv: Inversions, shortlist: Shortlist, table: EffectTable, coords: np.ndarray) -> list[Pick]:
    """AttFind per target condition on the selection images' effect table (with the stopping rule).

    With ``selection_min_auc`` > 0, directions and signs along which the selection images' coordinates
    (``coords`` (N, K), every image) do not separate the target condition that well are not selectable.
    """
    cfg, picks = exp.cfg, []
    probs_rec = inv.probs_rec[table.images]
    for t in [exp.class_names.index(c) for c in exp.conditions]:
        moved = exp.labels[table.images] != t  # the images of other conditions, moved towards t
        if not moved.any():
            continue
        effect, flipped, eligible = effect_table(table.probs_edit[moved], probs_rec[moved], np.full(int(moved.sum()), t))
        if cfg.selection_min_auc > 0:
            sel = inv.selection
            ok = separating_pairs(coords[sel][:, shortlist.order], exp.labels[sel] == t, cfg.selection_min_auc)  # (K', 2)
            effect = np.where(ok[None], effect, np.nan)  # not selectable: AttFind never picks a NaN column
        chosen = attfind(effect, flipped, cfg.max_attributes, eligible=eligible, n_boot=cfg.bootstrap, seed=cfg.seed,
                         confidence=cfg.selection_confidence, groups=_groups(exp, table.images[moved]))
        picks += [Pick(t, rank, int(shortlist.order[s.direction]), s.sign, s.mean_effect_on_remaining, s.lower_bound)
                  for rank, s in enumerate(chosen, 1)]
    return picks


def evaluation_stage(exp: Experiment, inv: Inversions, cands_key: StageKey, cands: Candidates, cal: Calibrated, picks: list[Pick],
                     progress) -> EvaluationTable:
    """Render every pick at full (calibrated) strength on the evaluation images of the other conditions; classify the renders."""
    cfg = exp.cfg
    targets = sorted({p.target for p in picks})
    images = {t: inv.evaluation[exp.labels[inv.evaluation] != t] for t in targets}
    keys = exp.inversion_keys
    key = StageKey("evaluation", {"directions": cands_key.digest, "picks": digest(*[(p.target, p.candidate, p.sign) for p in picks]),
                                  "images": digest(*(keys[i] for i in inv.evaluation)), "classifier": exp.classifier_digest,
                                  "calibration": cal.digest(), "sampler": digest(cfg.sampler),
                                  "batch_size": str(cfg.batch_size), "precision": cfg.precision})

    def compute():
        task = progress.add_task("evaluating attributes", total=sum(len(images[t]) * sum(p.target == t for p in picks) for t in targets))
        out = {}
        for t in targets:
            mine = [p for p in picks if p.target == t]
            dirs = torch.stack([cands.vectors[p.candidate] for p in mine])  # (P, *h)
            scales = np.stack([cal.scales(images[t], p.candidate, p.sign) for p in mine], 1)  # (n_t, P) signed, h units
            with exp.counted("evaluation"):
                x = sampler.render_edits(exp.pair.dm, inv.xt[images[t]], dirs, cfg.sampler, batch_size=cfg.batch_size,
                                         on_chunk=lambda k: progress.advance(task, k), scales=torch.as_tensor(scales))  # (n_t, P, C, H, W)
            out[f"probs_{t}"] = exp.pair.probs(x.flatten(0, 1).to(exp.device)).reshape(len(images[t]), len(mine), -1)
        return out, {}

    tensors, _ = cached(exp.cache, key, compute) if picks else ({}, {})
    return EvaluationTable(key, images, {t: tensors[f"probs_{t}"].numpy() for t in targets})


def _strength(cal: Calibrated, pick: Pick, moved: np.ndarray) -> dict:
    """The attribute's calibration: the real data's spread and edges along it, how far the moved images went, how many ended inside."""
    c, k = cal.calibration, pick.candidate
    lo, hi = c.edges_sd(k, pick.sign)
    start = pick.sign * np.asarray(cal.coords[moved, k], float) / c.sd[k]  # (n,) SD units along the attribute, float64 on any NumPy
    end = start + c.amounts(cal.coords[moved, k], k, pick.sign) / c.sd[k]
    inside = (end >= lo - 1e-9) & (end <= hi + 1e-9)
    return {"strength_unit": c.unit, "sd_h": float(c.sd[k]), "sd_per_h_scale": float(c.sd[k] / c.h_scale),
            "data_edges_sd": [round(lo, 4), round(hi, 4)], "mean_shift_sd": float(np.mean(end - start)) if len(end) else float("nan"),
            "ends_in_data": float(inside.mean()) if len(end) else float("nan")}


def _attribute(exp: Experiment, cands: Candidates, shortlist: Shortlist, pick: Pick, stats: dict, sep: dict, n_sep: dict,
               calib: dict) -> Attribute:
    name = cands.names[pick.candidate]
    named, higher = cands.named(pick.candidate)
    return Attribute(
        id=f"to-{safe_name(exp.class_names[pick.target])}-{pick.rank}", target=exp.class_names[pick.target], rank=pick.rank,
        name=name, candidate=pick.candidate, sign=pick.sign, strength=exp.cfg.strength, **calib, merged=cands.merged.get(name, []),
        screening_score=float(shortlist.scores[pick.candidate]), selection_mean_delta_p=pick.selection_mean_delta_p,
        selection_lower_bound=pick.selection_lower_bound, **stats, separation_auc=sep["auc"], separation_cohens_d=sep["cohens_d"],
        separation_p_value=sep["p_value"], separation_p_adjusted=float("nan"), separation_n=n_sep, named_measure=named,
        named_direction=higher * pick.sign)


def statistics_stage(exp: Experiment, inv: Inversions, cands: Candidates, shortlist: Shortlist, cal: Calibrated, picks: list[Pick],
                     ev: EvaluationTable) -> list[Attribute]:
    """Every pick's statistics on the evaluation images; separation p-values Holm-adjusted over all of them."""
    cfg = exp.cfg
    coords = cal.coords[inv.evaluation]  # (n_eval, K)
    labels = exp.labels[inv.evaluation]
    n_sep = {c: int((labels == exp.class_names.index(c)).sum()) for c in exp.conditions}
    attributes = []
    for t in sorted(ev.probs):
        mine = [p for p in picks if p.target == t]
        imgs = ev.images[t]
        probs = ev.probs[t][:, :, None, :]  # (n, P, 1, classes): one "sign" per pick
        effect, flipped, eligible = effect_table(probs, inv.probs_rec[imgs], np.full(len(imgs), t))
        stats = attribute_statistics(effect[:, :, 0], flipped[:, :, 0], eligible, n_boot=cfg.bootstrap, seed=cfg.seed,
                                     groups=_groups(exp, imgs))
        for p, st in zip(mine, stats):
            sep = separation(p.sign * coords[:, p.candidate], labels == t)
            attributes.append(_attribute(exp, cands, shortlist, p, st, sep, n_sep, _strength(cal, p, imgs)))
    order = {c: i for i, c in enumerate(exp.conditions)}
    attributes.sort(key=lambda a: (order[a.target], a.rank))
    for a, adj in zip(attributes, holm([a.separation_p_value for a in attributes])):
        a.separation_p_adjusted = float(adj)
    return attributes

