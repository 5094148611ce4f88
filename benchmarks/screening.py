"""Screening benchmark: does the first-order screen keep what rendering every candidate would select?

On N images and K candidate directions (gradient, pca, jacobian, contrastive):

1. render the full effect table (every image x candidate x sign, explain's sampler and strength)
   and run AttFind on it, per target condition, with the reference rule (stop when no positive
   mean effect) and with explain's rule (stop when the bootstrap lower bound is not above 0);
2. for each screen -- gradients through the symmetric or the asymmetric sampler, scored by the
   first-order change of log p or of p -- keep the top K' candidates and run AttFind on their
   columns of the same table;
3. report the recall (share of the full table's picks that survive the screen), whether the
   selections agree, and how well each screen's first-order prediction ranks the rendered mean
   Δp of every candidate x sign (Spearman, per target).

Usage::

    python benchmarks/screening.py --n 48 --k 16 --top 4 --device cpu     # sample data, about 10 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from common import REPO, calibrated, candidates, full_scales, full_table, gradients, invert_all, load_setup  # noqa: E402

from diffex.explain.config import ExplainConfig  # noqa: E402
from diffex.explain.effects import effect_table  # noqa: E402
from diffex.explain.rank import attfind  # noqa: E402
from diffex.explain.sensitivity import first_order_effects, screen  # noqa: E402

METHODS = ["gradient", "pca", "jacobian", "contrastive"]


def selections(table: np.ndarray, probs_rec: np.ndarray, labels: np.ndarray, columns: np.ndarray, m: int, cfg, confidence):
    """AttFind per target condition over the table's ``columns``: {target: [(candidate, sign), ...]}."""
    out = {}
    for t in np.unique(labels):
        moved = labels != t
        effect, flipped, eligible = effect_table(table[moved][:, columns], probs_rec[moved], np.full(int(moved.sum()), t))
        picks = attfind(effect, flipped, m, eligible=eligible, n_boot=cfg.bootstrap, seed=cfg.seed, confidence=confidence)
        out[int(t)] = [(int(columns[p.direction]), p.sign) for p in picks]
    return out


def first_order_accuracy(grads, vectors, table, probs_rec, labels, scales: np.ndarray) -> dict[int, float]:
    """Per target: Spearman between predicted first-order mean Δp and rendered mean Δp over every candidate x sign.

    ``scales`` (N, K*2): each image's signed full-strength offset per candidate and sign (:func:`common.full_scales`).
    """
    fo = first_order_effects(grads, vectors).numpy()  # (N, K) Δ log p per image per unit of Δh
    fo = fo[:, :, None] * scales.reshape(len(fo), -1, 2)  # (N, K, 2) at each image's full strength, both signs
    out = {}
    for t in np.unique(labels):
        moved = labels != t
        effect, _, eligible = effect_table(table[moved], probs_rec[moved], np.full(int(moved.sum()), t))
        w = probs_rec[moved, t] * eligible  # first-order Δp = p · Δ log p; images already at t weigh 0
        pred = (w[:, None, None] * fo[moved]).mean(0)  # (K, 2)
        out[int(t)] = float(spearmanr(pred.ravel(), effect[eligible].mean(0).ravel())[0])
    return out


def run(classifier, diffusion, images, n: int, k: int, top: int, m: int, device: str, cfg: ExplainConfig) -> dict:
    t0 = time.perf_counter()
    s = load_setup(classifier, diffusion, images, n, cfg, device)
    inv = invert_all(s)
    idx = np.arange(n)
    grads = {"symmetric": gradients(s, inv, idx, cfg.gradient_sampler), "asymmetric": gradients(s, inv, idx, cfg.sampler)}
    vectors, names = candidates(s, inv, grads["symmetric"], idx, METHODS, k)
    cal = calibrated(s, inv, vectors)
    table = full_table(s, inv, vectors, idx, cal)  # (N, K, 2, classes)
    all_cols = np.arange(len(vectors))
    out = {"n": n, "k": len(vectors), "top": top, "m": m, "candidates": names, "sampler": str(cfg.sampler),
           "strength": cfg.strength, "strength_unit": cfg.strength_unit, "precision": cfg.precision, "full_table": {}}
    for rule, conf in (("reference rule", None), ("explain rule", cfg.selection_confidence)):
        out["full_table"][rule] = selections(table, inv.probs_rec, s.labels, all_cols, m, cfg, conf)
    tgt = inv.targets
    weights = inv.probs_rec[idx, tgt] * (inv.probs_rec.argmax(1) != tgt)
    out["screens"] = []
    for variant, g in grads.items():
        acc = first_order_accuracy(g, vectors, table, inv.probs_rec, s.labels, full_scales(cal, idx, len(vectors)))
        for score, w in (("dlogp", None), ("dp", weights)):
            order, _ = screen(g, tgt, vectors, top, weights=w)
            row = {"gradients": variant, "score": score, "shortlist": order.tolist(), "spearman_first_order_vs_rendered": acc}
            for rule, conf in (("reference rule", None), ("explain rule", cfg.selection_confidence)):
                full = [c for picks in out["full_table"][rule].values() for c in picks]
                got = selections(table, inv.probs_rec, s.labels, np.sort(order), m, cfg, conf)
                row[rule] = {"selection": got, "recall": sum(c in set(order.tolist()) for c, _ in full) / max(1, len(full)),
                             "same_selection": got == out["full_table"][rule]}
            out["screens"].append(row)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def table_md(res: dict) -> str:
    lines = ["| gradients through | screen score | recall (reference rule) | same picks | recall (explain rule) | same picks | "
             "Spearman first-order vs rendered, per target |", "|---|---|---|---|---|---|---|"]
    for r in res["screens"]:
        a, b = r["reference rule"], r["explain rule"]
        sp = ", ".join(f"{v:.2f}" for v in r["spearman_first_order_vs_rendered"].values())
        lines.append(f"| {r['gradients']} sampler | {'Δp' if r['score'] == 'dp' else 'Δ log p'} | {a['recall']:.0%} | "
                     f"{'yes' if a['same_selection'] else 'no'} | {b['recall']:.0%} | {'yes' if b['same_selection'] else 'no'} | {sp} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classifier", default=str(REPO / "sample_data/models/classifier"))
    ap.add_argument("--diffusion", default=str(REPO / "sample_data/models/diffusion"))
    ap.add_argument("--images", default=str(REPO / "sample_data/heldout"))
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--top", type=int, default=4)
    ap.add_argument("--m", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    a = ap.parse_args(argv)
    res = run(a.classifier, a.diffusion, a.images, a.n, a.k, a.top, a.m, a.device, ExplainConfig(precision=a.precision))
    print(json.dumps(res, indent=1))
    print(table_md(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
