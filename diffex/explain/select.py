"""Stages 6-7: select attributes on the selection images, then measure them on the evaluation images.

For every condition t, the images of the other conditions are moved towards t. AttFind
(:func:`diffex.explain.rank.attfind`) picks shortlisted directions and signs from the effect table
of the *selection* images. The picks are then rendered on the disjoint *evaluation* images, and
every reported statistic (Δp with its bootstrap CI, flip rate beside the share already at the
target, coverage, condition separation with Holm-adjusted p-values) comes from those, so that
neither the directions nor the selection inflate them.

Example
-------
>>> picks = select_stage(exp, inv, shortlist, table)                              # doctest: +SKIP
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
from diffex.explain.rank import attfind, attribute_statistics, holm, separation
from diffex.explain.search import EffectTable, Shortlist
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


def coordinates(h: torch.Tensor, vectors: torch.Tensor) -> np.ndarray:
    """Each image's coordinate along each direction: centred, time-averaged h projected, (N, K).

    h is (N, S, *h_shape), vectors (K, *h_shape).
    """
    hbar = h.mean(1).flatten(1)  # (N, D)
    return ((hbar - hbar.mean(0)) @ vectors.flatten(1).T).numpy()


def _groups(exp: Experiment, idx: np.ndarray) -> np.ndarray | None:
    return None if exp.groups is None else exp.groups[idx]


def select_stage(exp: Experiment, inv: Inversions, shortlist: Shortlist, table: EffectTable) -> list[Pick]:
    """AttFind per target condition on the selection images' effect table (with the stopping rule)."""
    cfg, picks = exp.cfg, []
    probs_rec = inv.probs_rec[table.images]
    for t in [exp.class_names.index(c) for c in exp.conditions]:
        moved = exp.labels[table.images] != t  # the images of other conditions, moved towards t
        if not moved.any():
            continue
        effect, flipped, eligible = effect_table(table.probs_edit[moved], probs_rec[moved], np.full(int(moved.sum()), t))
        chosen = attfind(effect, flipped, cfg.max_attributes, eligible=eligible, n_boot=cfg.bootstrap, seed=cfg.seed,
                         confidence=cfg.selection_confidence, groups=_groups(exp, table.images[moved]))
        picks += [Pick(t, rank, int(shortlist.order[s.direction]), s.sign, s.mean_effect_on_remaining, s.lower_bound)
                  for rank, s in enumerate(chosen, 1)]
    return picks


def evaluation_stage(exp: Experiment, inv: Inversions, cands_key: StageKey, cands: Candidates, picks: list[Pick],
                     progress) -> EvaluationTable:
    """Render every pick on the evaluation images of the other conditions; classify the renders."""
    cfg = exp.cfg
    targets = sorted({p.target for p in picks})
    images = {t: inv.evaluation[exp.labels[inv.evaluation] != t] for t in targets}
    keys = exp.inversion_keys
    key = StageKey("evaluation", {"directions": cands_key.digest, "picks": digest(*[(p.target, p.candidate, p.sign) for p in picks]),
                                  "images": digest(*(keys[i] for i in inv.evaluation)), "classifier": exp.classifier_digest,
                                  "strength": repr(cfg.strength), "h_scale": repr(inv.h_scale), "sampler": digest(cfg.sampler),
                                  "batch_size": str(cfg.batch_size), "precision": cfg.precision})

    def compute():
        task = progress.add_task("evaluating attributes", total=sum(len(images[t]) * sum(p.target == t for p in picks) for t in targets))
        out = {}
        for t in targets:
            mine = [p for p in picks if p.target == t]
            dirs = torch.stack([p.sign * cands.vectors[p.candidate] for p in mine])  # (P, *h)
            offsets = sampler.edit_offsets(dirs, torch.tensor([cfg.strength]), inv.h_scale)[:, 0]  # (P, *h)
            with exp.counted("evaluation"):
                x = sampler.render_edits(exp.pair.dm, inv.xt[images[t]], offsets, cfg.sampler, batch_size=cfg.batch_size,
                                         on_chunk=lambda k: progress.advance(task, k))  # (n_t, P, C, H, W)
            out[f"probs_{t}"] = exp.pair.probs(x.flatten(0, 1).to(exp.device)).reshape(len(images[t]), len(mine), -1)
        return out, {}

    tensors, _ = cached(exp.cache, key, compute) if picks else ({}, {})
    return EvaluationTable(key, images, {t: tensors[f"probs_{t}"].numpy() for t in targets})


def _attribute(exp: Experiment, cands: Candidates, shortlist: Shortlist, pick: Pick, stats: dict, sep: dict, n_sep: dict) -> Attribute:
    name = cands.names[pick.candidate]
    return Attribute(
        id=f"to-{safe_name(exp.class_names[pick.target])}-{pick.rank}", target=exp.class_names[pick.target], rank=pick.rank,
        name=name, candidate=pick.candidate, sign=pick.sign, strength=exp.cfg.strength, merged=cands.merged.get(name, []),
        screening_score=float(shortlist.scores[pick.candidate]), selection_mean_delta_p=pick.selection_mean_delta_p,
        selection_lower_bound=pick.selection_lower_bound, **stats, separation_auc=sep["auc"], separation_cohens_d=sep["cohens_d"],
        separation_p_value=sep["p_value"], separation_p_adjusted=float("nan"), separation_n=n_sep)


def statistics_stage(exp: Experiment, inv: Inversions, cands: Candidates, shortlist: Shortlist, picks: list[Pick],
                     ev: EvaluationTable) -> list[Attribute]:
    """Every pick's statistics on the evaluation images; separation p-values Holm-adjusted over all of them."""
    cfg = exp.cfg
    coords = coordinates(inv.h, cands.vectors)[inv.evaluation]  # (n_eval, K)
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
            attributes.append(_attribute(exp, cands, shortlist, p, st, sep, n_sep))
    order = {c: i for i, c in enumerate(exp.conditions)}
    attributes.sort(key=lambda a: (order[a.target], a.rank))
    for a, adj in zip(attributes, holm([a.separation_p_value for a in attributes])):
        a.separation_p_adjusted = float(adj)
    return attributes

