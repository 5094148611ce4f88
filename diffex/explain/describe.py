"""Stage 8, traversals and describe: render each attribute along its strengths, measure the renders.

Per attribute, evaluation images are rendered at ``traversal_frames`` fractions of full strength
from −1 to +1 (each image's own calibrated full-strength shift in either direction, see
:mod:`diffex.explain.calibrate`):
a seeded random sample of ``measure_images`` per condition (the *measured* images: the morphology
trends and the description come from these alone), and, per condition moved towards the target,
its most affected evaluation image (largest change of p(target)), shown for illustration and
labelled as such. Renders are cached per attribute under ``cache/traversals/`` (keyed by content),
written as ImageJ hyperstacks with names unique per image, a PNG grid and a GIF.

Example
-------
>>> attributes, rows = describe_stage(exp, inv, cands_key, cands, ev, attributes, progress)   # doctest: +SKIP
>>> attributes[0].description                                                              # doctest: +SKIP
'DNA area -49%, Actin object intensity -48%, Actin eccentricity +40%'
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from diffex.explain.cache import StageKey, digest, load_tensors, save_tensors
from diffex.explain.directions import Candidates
from diffex.explain.inputs import Experiment
from diffex.explain.invert import Inversions
from diffex.explain.calibrate import frame_scales
from diffex.explain.search import Calibrated
from diffex.explain.select import EvaluationTable
from diffex.models import sampler
from diffex.explain.readouts import lesion_channel, measurements
from diffex.report.ct_morphology import DESCRIBED, describe_ct
from diffex.report.morphology import consistency, describe, salient, trend
from diffex.report.results import Attribute, ShownExample, Traversal, Trend
from diffex.report.traversal import animated_gif, grid_png, safe_name, write_hyperstack

RANDOM, MOST_AFFECTED = "random sample", "most affected"
IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png", ".jpeg", ".jpg")


def display_range(exp: Experiment) -> tuple[np.ndarray, np.ndarray]:
    """Fixed per-channel display range (low, high): the diffusion model's normalization range."""
    norm, n = exp.pair.dm.info.normalization, len(exp.channel_names)
    if norm is None:
        return np.full(n, -1.0), np.ones(n)
    return np.array(norm.low), np.array(norm.high)


def measured_images(exp: Experiment, inv: Inversions) -> np.ndarray:
    """The seeded random sample of ``measure_images`` evaluation images per condition (same for every attribute)."""
    rng = np.random.default_rng(exp.cfg.seed + 5)
    out = []
    for c in exp.conditions:
        members = inv.evaluation[exp.labels[inv.evaluation] == exp.class_names.index(c)]
        out.append(rng.choice(members, size=min(exp.cfg.measure_images, len(members)), replace=False))
    return np.concatenate(out)


def _most_affected(exp: Experiment, inv: Inversions, ev: EvaluationTable, att: Attribute, condition: int) -> int | None:
    """The evaluation image of ``condition`` whose p(target) this attribute changes most (None if not moved)."""
    t = exp.class_names.index(att.target)
    if condition == t or t not in ev.probs:
        return None
    rows = np.flatnonzero(exp.labels[ev.images[t]] == condition)
    if not len(rows):
        return None
    change = np.abs(ev.probs[t][rows, att.rank - 1, t] - inv.probs_rec[ev.images[t][rows], t])  # column: the pick's rank
    return int(ev.images[t][rows[int(np.argmax(change))]])


def traversal_images(exp: Experiment, inv: Inversions, ev: EvaluationTable, att: Attribute) -> tuple[np.ndarray, list[str], list[int]]:
    """Images to render (image indices), each one's role, and the positions shown in the report.

    Per condition: its most affected evaluation image under this attribute when the condition is
    moved (role "most affected", unless it is also a measured one), then its measured random
    images; the first ``traversal_images`` of each condition are shown.
    """
    measured = measured_images(exp, inv)
    images, roles, shown = [], [], []
    for c in exp.conditions:
        k = exp.class_names.index(c)
        mine = [int(i) for i in measured if exp.labels[i] == k]
        best = _most_affected(exp, inv, ev, att, k)
        extra = [best] if best is not None and best not in mine else []
        for j, i in enumerate(extra + mine):
            if j < exp.cfg.traversal_images:
                shown.append(len(images))
            images.append(i)
            roles.append(MOST_AFFECTED if i in extra else RANDOM)
    return np.array(images), roles, shown


def file_stem(exp: Experiment, image: int) -> str:
    """A file-name part unique per image: its relative path, sanitized, plus a short hash of that path.

    ``control/img001.tif`` and ``treated/img001.tif``, or ``2024.01.05_A01.tif`` and
    ``2024.01.05_B02.tif``, never share a name.
    """
    rel = exp.image_name(image)
    suffix = next((s for s in IMAGE_SUFFIXES if rel.lower().endswith(s)), "")
    return f"{safe_name(rel[: len(rel) - len(suffix)])}-{digest(rel)[:6]}"


def traversal_scales(cal: Calibrated, att: Attribute, images: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Signed offsets (n, F) along the attribute's direction sign·d (h units) of each image at each fraction of full strength."""
    up = cal.calibration.amounts(cal.coords[images, att.candidate], att.candidate, att.sign)  # (n,) towards the target
    down = cal.calibration.amounts(cal.coords[images, att.candidate], att.candidate, -att.sign)  # (n,) away from it
    return frame_scales(up, down, fractions)


def render_traversal(exp: Experiment, inv: Inversions, cands_key: StageKey, cands: Candidates, att: Attribute,
                     images: np.ndarray, scales: np.ndarray) -> torch.Tensor:
    """Frames (n, F, C, H, W) in model space of ``images`` along the attribute (offsets ``scales`` (n, F) × sign·d), cached by content.

    A frame whose offset is zero for every image (strength 0) is the reconstruction itself: it is
    taken from the inversion instead of being rendered again.
    """
    cfg, keys = exp.cfg, exp.inversion_keys
    tag = digest(cands_key.digest, att.candidate, att.sign, *(keys[i] for i in images), *np.round(scales, 6).ravel().tolist(),
                 cfg.sampler, cfg.batch_size, cfg.precision, "zero frames from the reconstruction")
    path = exp.cache / "traversals" / f"{att.id}-{tag}.safetensors"
    if not path.exists():
        direction = att.sign * cands.vectors[att.candidate : att.candidate + 1]  # (1, *h)
        moved = ~np.all(scales == 0, axis=0)  # (F,) frames with an offset for some image
        frames = inv.xrec[images].float()[:, None].repeat(1, scales.shape[1], 1, 1, 1)  # (n, F, C, H, W)
        with exp.counted("traversals"):
            frames[:, moved] = sampler.render_edits(exp.pair.dm, inv.xt[images], direction.expand(int(moved.sum()), *direction.shape[1:]),
                                                    cfg.sampler, batch_size=cfg.batch_size, scales=torch.as_tensor(scales[:, moved]))
        save_tensors(path, {"frames": frames})
    return load_tensors(path)[0]["frames"]


def describe_trends(exp: Experiment, trends: dict[str, Trend]) -> str:
    """The attribute's one-line description: absolute mm/HU changes for CT lesions, else relative changes."""
    d = {m: vars(tr) for m, tr in trends.items()}
    return describe(d) if lesion_channel(exp) is None else describe_ct(d)


def main_change(exp: Experiment, trends: dict[str, Trend]) -> str | None:
    """The attribute's main morphology change: the first one its description names (None: no consistent change)."""
    d = {m: vars(tr) for m, tr in trends.items()}
    if lesion_channel(exp) is None:
        top = salient(d, top=1)
        return top[0] if top else None
    moving = [k for k in DESCRIBED if k in d and abs(d[k]["spearman_r"]) >= 0.5 and np.isfinite(d[k]["change_at_max"])]
    return moving[0] if moving else None


def _measure(exp: Experiment, att: Attribute, raw: np.ndarray, ref: np.ndarray, images: np.ndarray, roles: list[str],
             strengths: np.ndarray, p_target: np.ndarray, shift_sd: np.ndarray) -> tuple[dict[str, Trend], list[dict], tuple[str, float]]:
    """Trends of every measurement along the measured (random) images' traversals, one morphology.csv row per render, and the
    main change's column with its consistency over the measured images (:func:`diffex.report.morphology.consistency`)."""
    size = exp.pair.dm.info.image_size
    meas = {m: v.reshape(raw.shape[:2]) for m, v in measurements(exp, raw.reshape(-1, *raw.shape[2:])).items()}
    meas_ref = measurements(exp, ref)
    rand = np.array([r == RANDOM for r in roles])
    svals = np.broadcast_to(strengths, raw.shape[:2])[rand]
    # microscopy: change relative to strength 0 (positions: to the image size); CT: absolute change in mm, HU, shares
    scale = {m: 1 if lesion_channel(exp) is not None else size if "Center" in m else 0 for m in meas}
    trends = {m: Trend(**trend(svals, v[rand], meas_ref[m][rand], scale[m])) for m, v in meas.items()}
    main = main_change(exp, trends)
    agree = consistency(meas[main][rand]) if main else float("nan")
    rows = []
    for i, im in enumerate(images):
        for f, s in enumerate(strengths):
            rows.append({"attribute": att.id, "ImageName": exp.image_name(im),
                         "Condition": exp.records[im].condition, "Role": roles[i], "Strength": float(s),
                         "Shift_SD": round(float(shift_sd[i, f]), 4),
                         f"P_{att.target}": float(p_target[i, f]), **{m: float(v[i, f]) for m, v in meas.items()}})
    return trends, rows, (main or "", agree)


def _write_files(exp: Experiment, att: Attribute, raw: np.ndarray, ref: np.ndarray, images: np.ndarray, roles: list[str],
                 shown: list[int], strengths: np.ndarray) -> list[ShownExample]:
    """Hyperstacks of the shown examples, the PNG grid and the GIF; returns the shown examples."""
    low, high = display_range(exp)
    base = exp.out / "traversals" / att.id
    examples = []
    for i in shown:
        rec = exp.records[images[i]]
        name = f"{base.name}_{file_stem(exp, int(images[i]))}.tif"
        write_hyperstack(base.parent / name, raw[i], exp.channel_names, strengths.tolist())
        examples.append(ShownExample(index=i, image=exp.image_name(int(images[i])), condition=rec.condition,
                                     file=name, role=roles[i]))
    grid_png(f"{base}.png", raw[shown], ref[shown], low, high)
    animated_gif(f"{base}.gif", raw[shown], low, high)
    return examples


def describe_attribute(exp: Experiment, inv: Inversions, cands_key: StageKey, cands: Candidates, cal: Calibrated,
                       ev: EvaluationTable, att: Attribute) -> tuple[Attribute, list[dict]]:
    """One attribute's traversal, files, measurements, description and coordinates."""
    cfg = exp.cfg
    strengths = np.linspace(-1.0, 1.0, cfg.traversal_frames)  # fractions of each image's full strength
    images, roles, shown = traversal_images(exp, inv, ev, att)
    scales = traversal_scales(cal, att, images, strengths)  # (n, F) h units along sign·d
    shift_sd = scales / cal.calibration.sd[att.candidate]  # (n, F)
    frames = render_traversal(exp, inv, cands_key, cands, att, images, scales)
    raw = exp.pair.raw(frames.flatten(0, 1)).numpy().reshape(*frames.shape)  # (n, F, C, H, W)
    ref = exp.pair.raw(inv.xrec[images]).numpy()
    t = exp.class_names.index(att.target)
    p_target = exp.pair.probs(frames.flatten(0, 1).to(exp.device)).numpy().reshape(*raw.shape[:2], -1)[..., t]
    trends, rows, (main, agree) = _measure(exp, att, raw, ref, images, roles, strengths, p_target, shift_sd)
    examples = _write_files(exp, att, raw, ref, images, roles, shown, strengths)
    # the attribute coordinate of every evaluation image, in SD of the real images along it (shift_sd moves it)
    coord = att.sign * np.asarray(cal.coords[:, att.candidate], float) / cal.calibration.sd[att.candidate]
    ev_idx = inv.evaluation
    traversal = Traversal(strengths=strengths.tolist(), images=[exp.image_name(i) for i in images],
                          conditions=[exp.records[i].condition for i in images], measured=[r == RANDOM for r in roles],
                          p_target=p_target.tolist(), shown=examples, shift_sd=np.round(shift_sd, 4).tolist())
    return replace(
        att, description=describe_trends(exp, trends), morphology=trends, traversal=traversal, consistency=agree, consistency_measure=main,
        coordinate={c: [round(float(v), 5) for v in coord[ev_idx][exp.labels[ev_idx] == exp.class_names.index(c)]] for c in exp.conditions},
        files=sorted([e.file for e in examples] + [f"{att.id}.gif", f"{att.id}.png"])), rows


def describe_stage(exp: Experiment, inv: Inversions, cands_key: StageKey, cands: Candidates, cal: Calibrated,
                   ev: EvaluationTable, attributes: list[Attribute], progress) -> tuple[list[Attribute], list[dict]]:
    """Every attribute described (see :func:`describe_attribute`); also the rows of morphology.csv."""
    (exp.out / "traversals").mkdir(exist_ok=True)
    (exp.cache / "traversals").mkdir(exist_ok=True)
    task = progress.add_task("traversals", total=len(attributes))
    described, rows = [], []
    for att in attributes:
        a, r = describe_attribute(exp, inv, cands_key, cands, cal, ev, att)
        described.append(a)
        rows += r
        progress.advance(task)
    return described, rows
