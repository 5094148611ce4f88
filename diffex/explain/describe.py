"""Stages 7-8, traversals and describe: render each attribute along its strengths, measure the renders.

Per attribute, the most affected and a typical image of each condition are rendered at
``traversal_frames`` strengths from −s to +s (plus ``measure_images`` more per condition for the
measurements), cached per attribute under ``cache/traversals/``, written as ImageJ hyperstacks, a
PNG grid and a GIF, and measured per channel (:mod:`diffex.report.morphology`); the largest
monotone changes become the attribute's description.

Example
-------
>>> attributes, rows = describe_stage(exp, inv, cands_key, cands, table, attributes, progress)   # doctest: +SKIP
>>> attributes[0].description                                                                   # doctest: +SKIP
'DNA area -49%, Actin object intensity -48%, Actin eccentricity +40%'
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from diffex.data.dataset import relative_path
from diffex.explain.cache import StageKey, digest, load_tensors, save_tensors
from diffex.explain.directions import Candidates
from diffex.explain.inputs import Experiment
from diffex.explain.invert import Inversions
from diffex.explain.rank import SIGNS
from diffex.explain.search import EffectTable
from diffex.explain.select import coordinates
from diffex.models import sampler
from diffex.report.morphology import describe, measure_many, trend
from diffex.report.results import Attribute, ShownExample, Traversal, Trend
from diffex.report.traversal import animated_gif, grid_png, safe_name, write_hyperstack


def display_range(exp: Experiment) -> tuple[np.ndarray, np.ndarray]:
    """Fixed per-channel display range (low, high): the diffusion model's normalization range."""
    norm, n = exp.pair.dm.info.normalization, len(exp.channel_names)
    if norm is None:
        return np.full(n, -1.0), np.ones(n)
    return np.array(norm.low), np.array(norm.high)


def traversal_images(exp: Experiment, inv: Inversions, table: EffectTable, att: Attribute) -> tuple[list[int], list[int]]:
    """Rows of the effect table to render: (shown examples, further measured images).

    Per condition, the most affected and a typical image (by |Δp of the target| under this edit)
    are shown, and up to ``measure_images`` per condition are measured.
    """
    cfg, t = exp.cfg, exp.class_names.index(att.target)
    change = np.abs(table.probs_edit[:, att.shortlist_index, SIGNS.index(att.sign), t] - inv.probs_rec[table.images][:, t])
    shown, extra = [], []
    for c in exp.conditions:
        members = np.flatnonzero(exp.labels[table.images] == exp.class_names.index(c))
        by = members[np.argsort(-change[members], kind="stable")]
        picked = list(dict.fromkeys([int(by[0]), int(by[len(by) // 2])]))[: cfg.traversal_images]
        shown += picked
        extra += [int(m) for m in by if m not in picked][: max(0, cfg.measure_images - len(picked))]
    return shown, extra


def render_traversal(exp: Experiment, inv: Inversions, cands_key: StageKey, cands: Candidates, att: Attribute,
                     images: np.ndarray, strengths: np.ndarray) -> torch.Tensor:
    """Frames (n, F, C, H, W) in model space of ``images`` along the attribute, cached by content."""
    cfg, keys = exp.cfg, exp.inversion_keys
    tag = digest(cands_key.digest, att.candidate, att.sign, *(keys[i] for i in images), *strengths.tolist(), repr(inv.h_scale),
                 cfg.sampler, cfg.batch_size, cfg.precision)
    path = exp.cache / "traversals" / f"{att.id}-{tag}.safetensors"
    if not path.exists():
        offsets = sampler.edit_offsets(att.sign * cands.vectors[att.candidate : att.candidate + 1], torch.as_tensor(strengths), inv.h_scale)[0]
        with exp.counted("traversals"):
            frames = sampler.render_edits(exp.pair.dm, inv.xt[images], offsets, cfg.sampler, batch_size=cfg.batch_size)  # (n, F, C, H, W)
        save_tensors(path, {"frames": frames})
    return load_tensors(path)[0]["frames"]


def _measure(exp: Experiment, att: Attribute, raw: np.ndarray, ref: np.ndarray, images: np.ndarray, strengths: np.ndarray,
             p_target: np.ndarray) -> tuple[dict[str, Trend], list[dict]]:
    """Trends of every measurement along the traversals, and one morphology.csv row per render."""
    size = exp.pair.dm.info.image_size
    meas = measure_many(raw.reshape(-1, *raw.shape[2:]), exp.channel_names)
    meas_ref = measure_many(ref, exp.channel_names)
    svals = np.broadcast_to(strengths, raw.shape[:2])
    trends = {m: Trend(**trend(svals, v.reshape(raw.shape[:2]), meas_ref[m], size if "Center" in m else 0)) for m, v in meas.items()}
    rows = []
    for i, im in enumerate(images):
        for f, s in enumerate(strengths):
            rows.append({"attribute": att.id, "ImageName": relative_path(exp.records[im].path, exp.images_source),
                         "Condition": exp.records[im].condition, "Strength": float(s), f"P_{att.target}": float(p_target[i, f]),
                         **{m: float(v.reshape(raw.shape[:2])[i, f]) for m, v in meas.items()}})
    return trends, rows


def _write_files(exp: Experiment, att: Attribute, raw: np.ndarray, ref: np.ndarray, images: np.ndarray, n_shown: int,
                 strengths: np.ndarray) -> list[ShownExample]:
    """Hyperstacks of the shown examples, the PNG grid and the GIF; returns the shown examples."""
    low, high = display_range(exp)
    base = exp.out / "traversals" / att.id
    shown = []
    for i in range(n_shown):
        rec = exp.records[images[i]]
        name = f"{base.name}_{safe_name(Path(rec.path).name.split('.')[0])}.tif"
        write_hyperstack(base.parent / name, raw[i], exp.channel_names, strengths.tolist())
        shown.append(ShownExample(index=i, image=relative_path(rec.path, exp.images_source), condition=rec.condition, file=name))
    grid_png(f"{base}.png", raw[:n_shown], ref[:n_shown], low, high)
    animated_gif(f"{base}.gif", raw[:n_shown], low, high)
    return shown


def describe_attribute(exp: Experiment, inv: Inversions, cands_key: StageKey, cands: Candidates, table: EffectTable,
                       att: Attribute) -> tuple[Attribute, list[dict]]:
    """One attribute's traversal, files, measurements, description and coordinates."""
    cfg = exp.cfg
    strengths = np.linspace(-cfg.strength, cfg.strength, cfg.traversal_frames)
    shown, extra = traversal_images(exp, inv, table, att)
    images = table.images[shown + extra]  # shown examples first; all of them are measured
    frames = render_traversal(exp, inv, cands_key, cands, att, images, strengths)
    raw = exp.pair.raw(frames.flatten(0, 1)).numpy().reshape(*frames.shape)  # (n, F, C, H, W)
    ref = exp.pair.raw(inv.xrec[images]).numpy()
    t = exp.class_names.index(att.target)
    p_target = exp.pair.probs(frames.flatten(0, 1).to(exp.device)).numpy().reshape(*raw.shape[:2], -1)[..., t]
    trends, rows = _measure(exp, att, raw, ref, images, strengths, p_target)
    examples = _write_files(exp, att, raw, ref, images, len(shown), strengths)
    # the attribute coordinate of every usable image, in units of mean ‖h‖ (a traversal of strength s moves it by s)
    coord = att.sign * coordinates(inv.h, cands.vectors)[:, att.candidate] / inv.h_scale
    usable = inv.usable
    traversal = Traversal(strengths=strengths.tolist(), images=[relative_path(exp.records[i].path, exp.images_source) for i in images],
                          conditions=[exp.records[i].condition for i in images], p_target=p_target.tolist(), shown=examples)
    return replace(
        att, description=describe({m: vars(tr) for m, tr in trends.items()}), morphology=trends, traversal=traversal,
        coordinate={c: [round(float(v), 5) for v in coord[usable][exp.labels[usable] == exp.class_names.index(c)]] for c in exp.conditions},
        files=sorted(p.name for p in (exp.out / "traversals").glob(f"{att.id}*"))), rows


def describe_stage(exp: Experiment, inv: Inversions, cands_key: StageKey, cands: Candidates, table: EffectTable,
                   attributes: list[Attribute], progress) -> tuple[list[Attribute], list[dict]]:
    """Every attribute described (see :func:`describe_attribute`); also the rows of morphology.csv."""
    (exp.out / "traversals").mkdir(exist_ok=True)
    (exp.cache / "traversals").mkdir(exist_ok=True)
    task = progress.add_task("traversals", total=len(attributes))
    described, rows = [], []
    for att in attributes:
        a, r = describe_attribute(exp, inv, cands_key, cands, table, att)
        described.append(a)
        rows += r
        progress.advance(task)
    return described, rows
