"""Speed benchmark: the DiffEx reference selection vs diffex's, in one process, same candidates.

(a) reference: greedy AttFind re-inverting every remaining image with 50 DDIM steps and rendering
    20 steps for every image x candidate x sign in every round (:mod:`diffex.reference`);
(b) diffex: one cached inversion, gradient screening, one batched render of the shortlist.

Both rank the same K candidates (gradient + pca + jacobian from the same images). Prints UNet
image-evaluations (counted by hooks on the UNet: one per image per pass, two for a forked Asyrp
step, whose predictions share one down path; ``unet_down_paths`` counts those), wall-clock, CPU
time, peak memory and top-M agreement.

Usage (full sizes are GPU runs; CI runs a tiny smoke version through tests/test_benchmarks.py):

    python benchmarks/speed.py --n 64 --k 16 --device cuda --precision bf16 --batch-size 512
    python benchmarks/speed.py --n 64 --k 32 --m 3 --device cpu      # CPU-sized (about 40 min on 2 cores)

At N > 200 pass more images than the 200 held-out ones, e.g. ``diffex synthetic --out /tmp/cells256
--n 128 --seed 2`` and ``--images /tmp/cells256``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffex.data.dataset import discover, load_images, stratified_indices
from diffex.errors import DiffexError
from diffex.explain.config import ExplainConfig
from diffex.explain.directions import DirectionContext, generate
from diffex.explain.effects import effect_table
from diffex.explain.invert import counterfactual_targets
from diffex.explain.rank import attfind
from diffex.explain.reference import reference_attfind
from diffex.explain.sensitivity import classifier_gradients, screen
from diffex.models import hooks
from diffex.models import sampler as engine
from diffex.models.bridge import ModelPair, check_models
from diffex.models.classifier import load_classifier
from diffex.models.diffusion import DiffusionModel
from diffex.models.sampler import SamplerSpec
from diffex.runtime import describe_device, resolve_device

REPO = Path(__file__).resolve().parents[1]


def _peak_mb(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def run(classifier, diffusion, images, n: int, k: int, m: int, device: str = "cpu", cfg: ExplainConfig | None = None,
        all_images: bool = False) -> dict:
    """Both selections on n images and k candidates; returns the figures as a dict.

    diffex's side follows ``diffex explain``: all n images are inverted once, classifier gradients
    are taken on ``cfg.gradient_images`` of them and the effect table is rendered on
    ``cfg.rank_images`` (stratified, seeded as in explain). ``all_images=True`` uses all n for both.
    The reference always renders all n images in every round.
    """
    cfg = cfg or ExplainConfig()
    dev = resolve_device(device)
    clf = load_classifier(classifier, device=dev)
    dm = DiffusionModel.load(diffusion, device=dev, precision=cfg.precision)
    check_models(clf, dm)
    pair = ModelPair(clf, dm)
    names = list(clf.info.class_names)
    recs = sorted(discover(images), key=lambda r: str(r.path))
    if len(recs) < n:
        raise DiffexError(f"{images}: {len(recs)} images, fewer than n = {n}; generate more with `diffex synthetic`")
    labels_all = np.array([names.index(r.condition) for r in recs])
    recs = [recs[i] for i in stratified_indices(labels_all, n, cfg.seed)]
    imgs = load_images(recs, dm.info.image_size, dm.info.resize_mode, show_progress=False)
    labels = imgs.labels(names)
    x0 = pair.to_model_space(imgs.raw)
    n_all = len(recs)
    gidx = np.arange(n_all) if all_images else stratified_indices(labels, cfg.gradient_images, cfg.seed + 1)
    ridx = np.arange(n_all) if all_images else stratified_indices(labels, cfg.rank_images, cfg.seed + 2)
    out: dict = {"n": n_all, "k": k, "m": m, "device": describe_device(dev), "threads": torch.get_num_threads(),
                 "precision": cfg.precision, "batch_size": cfg.batch_size,
                 "gradient_images": len(gidx), "rank_images": len(ridx)}

    # (b) diffex
    _reset_peak(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    with hooks.EvaluationCounter(dm.unet) as ev_b:
        xt = engine.ddim_invert(dm, x0, cfg.sampler, batch_size=cfg.batch_size)
        store: list = []
        with hooks.record_h(dm.unet, store):
            rec = engine.ddim_render(dm, xt, cfg.sampler, batch_size=cfg.batch_size)
        chunks = math.ceil(len(recs) / cfg.batch_size)  # the sampler evaluates chunk by chunk within each step
        h = torch.stack([torch.cat(store[s * chunks:(s + 1) * chunks]) for s in range(cfg.steps)], 1).cpu()  # (N, S, *h)
        p_rec = pair.probs(rec).numpy()
        targets = counterfactual_targets(p_rec, labels)
        grads = classifier_gradients(pair, xt[gidx].cpu(), torch.as_tensor(targets[gidx]), cfg.gradient_sampler,
                                     batch_size=min(16, cfg.batch_size))
        h_scale = float(h.flatten(2).norm(dim=2).mean())
        ts = engine.ddim_timesteps(dm.num_train_timesteps, cfg.steps, cfg.t_end)
        ctx = DirectionContext(pair, rec.cpu(), h, grads, targets[gidx], names, ts[ts >= cfg.t_edit], h_scale, seed=cfg.seed)
        per = math.ceil(k / 3)
        cands = generate(ctx, ["gradient", "pca", "jacobian"], per, merge_cos=0.9)
        vectors = cands.vectors[:k]
        top = min(cfg.screen_top, len(vectors))
        order, _ = screen(grads, targets[gidx], vectors, top)
        offsets = engine.edit_offsets(vectors[order], torch.tensor([-cfg.strength, cfg.strength]), h_scale).flatten(0, 1)
        x_edit = engine.render_edits(dm, xt[ridx], offsets, cfg.sampler, batch_size=cfg.batch_size)
        p_edit = pair.probs(x_edit.flatten(0, 1)).numpy().reshape(len(ridx), len(order), 2, -1)  # (n', K', 2, classes)
        effect, flipped, eligible = effect_table(p_edit, p_rec[ridx], targets[ridx])
        sel_b = [(int(order[s.direction]), s.sign) for s in attfind(effect, flipped, m, eligible=eligible, confidence=None)]
    wall_b, cpu_b = time.perf_counter() - t0, time.process_time() - c0
    out["diffex"] = {"unet_image_evaluations": ev_b.predictions, "unet_down_paths": ev_b.down_paths, "wall_s": wall_b, "cpu_s": cpu_b, "peak_mb": _peak_mb(dev), "selection": sel_b,
                     "candidates": len(vectors), "rendered": len(order), "shortlist": [int(i) for i in order]}

    # (a) reference
    _reset_peak(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    with hooks.EvaluationCounter(dm.unet) as ev_a:
        sels = reference_attfind(pair, x0, targets, vectors, cfg.strength * h_scale, m, batch_size=cfg.batch_size,
                                 render_spec=SamplerSpec(steps=20, mode=cfg.mode))
    wall_a, cpu_a = time.perf_counter() - t0, time.process_time() - c0
    sel_a = [(s.direction, s.sign) for s in sels]
    out["reference"] = {"unet_image_evaluations": ev_a.predictions, "unet_down_paths": ev_a.down_paths, "wall_s": wall_a, "cpu_s": cpu_a, "peak_mb": _peak_mb(dev), "selection": sel_a}
    out["evaluation_ratio"] = ev_a.predictions / max(1, ev_b.predictions)
    out["wall_ratio"] = wall_a / max(1e-9, wall_b)
    out["cpu_ratio"] = cpu_a / max(1e-9, cpu_b)
    denom = max(1, min(len(sel_a), m))
    out["top_m_agreement"] = len(set(sel_a[:m]) & set(sel_b[:m])) / denom
    # how many of the reference's picks survived diffex's gradient screening (an upper bound on agreement)
    shortlist = set(out["diffex"]["shortlist"])
    out["reference_picks_in_shortlist"] = sum(d in shortlist for d, _ in sel_a[:m])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classifier", default=str(REPO / "sample_data/models/classifier"))
    ap.add_argument("--diffusion", default=str(REPO / "sample_data/models/diffusion"))
    ap.add_argument("--images", default=str(REPO / "sample_data/heldout"))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--m", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="UNet arithmetic for both sides")
    ap.add_argument("--batch-size", type=int, default=32, help="UNet batch for both sides (on a GPU: the largest that fits)")
    ap.add_argument("--all-images", action="store_true",
                    help="diffex side: gradients and effect table on all n images instead of explain's subsets (48 each)")
    a = ap.parse_args(argv)
    cfg = ExplainConfig(precision=a.precision, batch_size=a.batch_size)
    res = run(a.classifier, a.diffusion, a.images, a.n, a.k, a.m, a.device, cfg=cfg, all_images=a.all_images)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
