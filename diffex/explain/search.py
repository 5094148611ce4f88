"""Stages 2-5: classifier gradients, candidate directions, first-order screening, the effect table.

Each stage's result is a file in ``OUT/cache/`` keyed by its inputs (:mod:`diffex.explain.cache`):
the images it used (their inversion keys), the classifier, the settings it reads and the keys of
the stages before it. Changing any of them recomputes the stage and everything after it.

Example
-------
>>> grads = gradients_stage(exp, inv, progress)                  # doctest: +SKIP
>>> cands = candidates_stage(exp, inv, grads, progress)         # doctest: +SKIP
>>> shortlist = screen_stage(exp, inv, grads, cands)            # doctest: +SKIP
>>> table = effect_table_stage(exp, inv, cands, shortlist, progress)   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffex.config import to_dict
from diffex.data.dataset import stratified_indices
from diffex.explain.cache import StageKey, cached, digest
from diffex.explain.calibrate import Calibration, calibrate, coordinates, edit_steps
from diffex.explain.directions import Candidates, DirectionContext, generate, method_versions
from diffex.explain.inputs import Experiment
from diffex.explain.invert import Inversions
from diffex.explain.readouts import measurements
from diffex.explain.soft_readouts import soft_measurements
from diffex.explain.sensitivity import classifier_gradients, screen
from diffex.models import sampler


@dataclass
class Gradients:
    key: StageKey
    images: np.ndarray  # indices of the images the gradients were taken on
    grads: torch.Tensor  # (M, *h) ∂ log p(target) / ∂Δh per image


@dataclass
class Shortlist:
    key: StageKey
    order: np.ndarray  # (K',) candidate indices to render, best first
    scores: np.ndarray  # (K,) every candidate's first-order score


@dataclass
class Calibrated:
    """Every candidate's calibration and every image's coordinate along it."""

    calibration: Calibration
    coords: np.ndarray  # (N, K) coordinates of all images (h units, centred), over the edit steps

    def scales(self, images: np.ndarray, k: int, sign: int) -> np.ndarray:
        """Signed full-strength offsets (h units) of ``images`` along d_k: sign × how far each moves."""
        return sign * self.calibration.amounts(self.coords[images, k], k, sign)  # (n,)

    def digest(self) -> str:
        return digest(*self.calibration.digest_parts())


@dataclass
class EffectTable:
    key: StageKey
    images: np.ndarray  # (n,) indices of the ranking images
    probs_edit: np.ndarray  # (n, K', 2, classes) classifier on every image x shortlisted candidate x sign


def _images_digest(exp: Experiment, idx: np.ndarray) -> str:
    keys = exp.inversion_keys
    return digest(*(keys[i] for i in idx))


def gradients_stage(exp: Experiment, inv: Inversions, progress) -> Gradients:
    """Per-image classifier gradients on ``gradient_images`` usable images (stratified, seeded)."""
    cfg = exp.cfg
    idx = stratified_indices(exp.labels, cfg.gradient_images, cfg.seed + 1, inv.selection)
    if len(idx) < len(inv.selection):
        exp.note_subsample(f"classifier gradients on {len(idx)} of the {len(inv.selection)} selection images (gradient_images, "
                           f"drawn at random in proportion to each condition, seed {cfg.seed + 1})")
    spec = cfg.gradient_sampler
    key = StageKey("gradients", {"images": _images_digest(exp, idx), "classifier": exp.classifier_digest,
                                 "targets": digest(*inv.targets[idx]), "sampler": digest(spec), "precision": cfg.precision})

    def compute():
        task = progress.add_task("classifier gradients", total=len(idx))
        with exp.counted("gradients"):
            g = classifier_gradients(exp.pair, inv.xt[idx], torch.as_tensor(inv.targets[idx]), spec,
                                     batch_size=min(16, cfg.batch_size), on_chunk=lambda k: progress.advance(task, k))
        return {"grads": g}, {"images": idx.tolist()}

    tensors, _ = cached(exp.cache, key, compute)
    return Gradients(key, idx, tensors["grads"])


def candidates_stage(exp: Experiment, inv: Inversions, grads: Gradients, progress) -> tuple[StageKey, Candidates]:
    """Candidate directions from the configured methods, near-parallel ones merged."""
    cfg = exp.cfg
    ts = cfg.sampler.timesteps(exp.pair.dm.num_train_timesteps)
    edit_ts = ts[ts >= cfg.t_edit]
    names = ["methods", "directions_per_method", "merge_cos", "seed", "contrastive_iterations"]
    names += ["learned_setting", "precision", "steps", "t_end", "t_edit"] if "learned" in cfg.methods else []
    names += ["precision", "steps", "t_end", "t_edit", "mode"] if {"steer", "hold"} & set(cfg.methods) else []  # they render
    names = list(dict.fromkeys(names))
    settings = {k: to_dict(cfg)[k] for k in names}
    versions = method_versions(list(cfg.methods))
    if versions:  # only changed methods: the keys of caches made before versions existed stay valid
        settings["method_versions"] = versions
    key = StageKey("directions", {"gradients": grads.key.digest, "images": _images_digest(exp, inv.selection),
                                  "settings": digest(settings), "edit_timesteps": digest(*edit_ts)})

    def compute():
        task = progress.add_task("candidate directions", total=1)
        ctx = DirectionContext(exp.pair, inv.xrec[inv.selection], inv.h[inv.selection], grads.grads, inv.targets[grads.images],
                               exp.class_names, edit_ts, inv.h_scale, seed=cfg.seed, contrastive_iterations=cfg.contrastive_iterations,
                               labels=exp.labels[inv.selection], xt=inv.xt[inv.selection], sampler=cfg.gradient_sampler,
                               learned_setting=cfg.learned_setting, cache=exp.cache, progress=progress,
                               cache_inputs={"images": _images_digest(exp, inv.selection), "precision": cfg.precision},
                               readouts=lambda raw: measurements(exp, raw), edit_sampler=cfg.sampler,
                               soft_readouts=lambda raw, ref: soft_measurements(exp, raw, ref))
        with exp.counted("directions"):
            cands = generate(ctx, list(cfg.methods), cfg.directions_per_method, cfg.merge_cos)
        progress.advance(task)
        return {"vectors": cands.vectors}, {"names": cands.names, "merged": cands.merged, "diagnostics": cands.diagnostics}

    tensors, meta = cached(exp.cache, key, compute)
    return key, Candidates(tensors["vectors"], meta["names"], meta["merged"], meta.get("diagnostics", {}))


def calibration_stage(exp: Experiment, inv: Inversions, cands: Candidates) -> Calibrated:
    """Each candidate's spread and edges on the selection images' coordinates over the edit steps (see :mod:`.calibrate`)."""
    cfg = exp.cfg
    steps = edit_steps(cfg.sampler.timesteps(exp.pair.dm.num_train_timesteps), cfg.t_edit)
    coords = coordinates(inv.h, cands.vectors, steps)  # (N, K)
    return Calibrated(calibrate(coords[inv.selection], inv.h_scale, cfg.strength, cfg.strength_unit), coords)


def screen_stage(exp: Experiment, inv: Inversions, grads: Gradients, cands_key: StageKey, cands: Candidates) -> Shortlist:
    """The ``screen_top`` candidates with the largest first-order mean Δp (dot products; no rendering).

    The first-order change of p(target) of image i is p_i ⟨g_i, d⟩ per unit of Δh; images already
    classified as their target weigh 0, as in AttFind.
    """
    top = min(exp.cfg.screen_top, len(cands.names))
    key = StageKey("screen", {"gradients": grads.key.digest, "directions": cands_key.digest, "top": str(top), "rule": "first-order mean dp"})
    tgt = inv.targets[grads.images]
    p_target = inv.probs_rec[grads.images, tgt]
    weights = p_target * (inv.probs_rec[grads.images].argmax(1) != tgt)

    def compute():
        order, scores = screen(grads.grads, tgt, cands.vectors, top, weights=weights)
        return {"order": torch.as_tensor(order), "scores": torch.as_tensor(scores)}, {}

    tensors, _ = cached(exp.cache, key, compute)
    return Shortlist(key, tensors["order"].numpy(), tensors["scores"].numpy())


def effect_table_stage(exp: Experiment, inv: Inversions, cands: Candidates, shortlist: Shortlist, cal: Calibrated,
                       progress) -> EffectTable:
    """Render ``rank_images`` images x shortlisted candidates x both signs once at full (calibrated) strength; classify the renders."""
    cfg = exp.cfg
    idx = stratified_indices(exp.labels, cfg.rank_images, cfg.seed + 2, inv.selection)
    if len(idx) < len(inv.selection):
        exp.note_subsample(f"attributes selected on {len(idx)} of the {len(inv.selection)} selection images (rank_images, "
                           f"drawn at random in proportion to each condition, seed {cfg.seed + 2})")
    key = StageKey("effects", {"images": _images_digest(exp, idx), "screen": shortlist.key.digest, "classifier": exp.classifier_digest,
                               "calibration": cal.digest(), "sampler": digest(cfg.sampler),
                               "batch_size": str(cfg.batch_size), "precision": cfg.precision})

    def compute():
        offsets = cands.vectors[shortlist.order].repeat_interleave(2, 0)  # (K'*2, *h): candidate-major, sign minor
        scales = np.stack([cal.scales(idx, int(k), s) for k in shortlist.order for s in (-1, 1)], 1)  # (n, K'*2) signed
        task = progress.add_task("rendering edits", total=len(idx) * len(offsets))
        with exp.counted("effect_table"):
            x_edit = sampler.render_edits(exp.pair.dm, inv.xt[idx], offsets, cfg.sampler, batch_size=cfg.batch_size,
                                          on_chunk=lambda k: progress.advance(task, k), scales=torch.as_tensor(scales))
        pe = exp.pair.probs(x_edit.flatten(0, 1).to(exp.device)).reshape(len(idx), len(shortlist.order), 2, -1)
        return {"probs_edit": pe}, {"images": idx.tolist()}

    tensors, _ = cached(exp.cache, key, compute)
    return EffectTable(key, idx, tensors["probs_edit"].numpy())
