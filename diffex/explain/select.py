"""Stage 6, rank: AttFind per target condition over the effect table, with each attribute's statistics.

For every condition t, the images of the other conditions are moved towards t; AttFind
(:func:`diffex.explain.rank.attfind`) greedily picks the shortlisted direction and sign that raise
p(t) most over the images not yet explained. The statistics (:func:`diffex.explain.rank.attribute_statistics`)
add the condition separation of the real images' coordinates along each direction.

Example
-------
>>> attributes = rank_stage(exp, inv, cands, shortlist, table)     # doctest: +SKIP
>>> attributes[0].target, attributes[0].flip_rate                  # doctest: +SKIP
('control', 1.0)
"""

from __future__ import annotations

import numpy as np
import torch

from diffex.explain.directions import Candidates
from diffex.explain.effects import effect_table
from diffex.explain.inputs import Experiment
from diffex.explain.invert import Inversions
from diffex.explain.rank import SIGNS, attfind, attribute_statistics
from diffex.explain.search import EffectTable, Shortlist
from diffex.report.results import Attribute
from diffex.report.traversal import safe_name


def coordinates(h: torch.Tensor, vectors: torch.Tensor) -> np.ndarray:
    """Each image's coordinate along each direction: centred, time-averaged h projected, (N, K).

    h is (N, S, *h_shape), vectors (K, *h_shape).
    """
    hbar = h.mean(1).flatten(1)  # (N, D)
    return ((hbar - hbar.mean(0)) @ vectors.flatten(1).T).numpy()


def rank_stage(exp: Experiment, inv: Inversions, cands: Candidates, shortlist: Shortlist, table: EffectTable) -> list[Attribute]:
    """Selected attributes per target condition, in condition order, without traversals yet."""
    cfg, order = exp.cfg, shortlist.order
    proj = coordinates(inv.h, cands.vectors)[inv.usable][:, order]  # (N_usable, K')
    probs_rec = inv.probs_rec[table.images]
    attributes = []
    for t in [exp.class_names.index(c) for c in exp.conditions]:
        moved = exp.labels[table.images] != t  # the images of other conditions, moved towards t
        if not moved.any():
            continue
        targets = np.full(int(moved.sum()), t)
        effect, flipped = effect_table(table.probs_edit[moved], probs_rec[moved], targets)
        selections = attfind(effect, flipped, cfg.max_attributes)
        stats = attribute_statistics(selections, effect, flipped, proj, exp.labels[inv.usable] == t, cfg.bootstrap, cfg.seed)
        for s in stats:
            k = int(order[s["direction"]])
            attributes.append(Attribute(
                id=f"to-{safe_name(exp.class_names[t])}-{s['rank']}", target=exp.class_names[t], rank=s["rank"], name=cands.names[k],
                candidate=k, shortlist_index=s["direction"], sign=s["sign"], strength=cfg.strength, merged=cands.merged.get(cands.names[k], []),
                screening_score=float(shortlist.scores[k]), n_images=s["n_images"], mean_delta_p=s["mean_delta_p"],
                mean_delta_p_when_selected=s["mean_delta_p_when_selected"],
                mean_abs_delta_p=float(np.abs(effect[:, s["direction"], SIGNS.index(s["sign"])]).mean()),
                delta_p_ci95=s["delta_p_ci95"], flip_rate=s["flip_rate"], coverage=s["coverage"],
                cumulative_flip_rate=s["cumulative_flip_rate"], separation_auc=s["separation_auc"],
                separation_cohens_d=s["separation_cohens_d"], separation_p_value=s["separation_p_value"]))
    return attributes
