"""Speed benchmark at equal work: diffex's selection against the DiffEx procedure, in one process.

Every side ranks the same N images and the same K candidates (gradient + pca + jacobian, made
once beforehand from the same images; their cost is reported apart and charged to no side):

(a) ``reference``: the DiffEx procedure (:mod:`diffex.explain.reference`): every round re-inverts
    each remaining image (50 DDIM steps to t = T - 1) and renders 20 steps for every image x
    candidate x sign;
(b) ``reference_cached``: the same procedure with its deterministic inversion computed once and
    reused, the least any careful reimplementation would cost;
(c) ``diffex``: one inversion (explain's sampler), classifier gradients on the same N images,
    first-order screening to K' candidates, one render of the N x K' x 2 table, AttFind.

Selections are compared with (a) and (b), whose inversion differs from diffex's, and, for the
agreement check at the same inversion settings, with AttFind on the full table of all K
candidates rendered with explain's sampler (``full_table``; its rendering is not timed against
anything). Prints UNet noise predictions (``unet_image_evaluations``) and down paths,
wall-clock and CPU time, peak memory, and the ratios.

Usage (CI runs a tiny smoke version through tests/test_benchmarks.py):

    python benchmarks/speed.py --n 64 --k 16 --m 3 --device cpu --precision bf16
    python benchmarks/speed.py --n 256 --k 32 --m 3 --device cuda --precision bf16 --batch-size 512 --images /tmp/cells256

At N > 200 pass more images than the 200 held-out ones, e.g. ``diffex synthetic --out /tmp/cells256
--n 128 --seed 2`` and ``--images /tmp/cells256``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO,
    candidates,
    full_table,
    gradients,
    invert_all,
    load_setup,
    peak_mb,
)

from diffex.explain.config import ExplainConfig  # noqa: E402
from diffex.explain.effects import effect_table  # noqa: E402
from diffex.explain.rank import attfind  # noqa: E402
from diffex.explain.reference import reference_attfind  # noqa: E402
from diffex.explain.sensitivity import screen  # noqa: E402
from diffex.models import hooks  # noqa: E402
from diffex.models.sampler import SamplerSpec  # noqa: E402
from diffex.runtime import describe_device  # noqa: E402

METHODS = ["gradient", "pca", "jacobian"]


@contextmanager
def measured(unet, dev: torch.device, record: dict):
    """Count UNet predictions and down paths, wall-clock, CPU time and peak memory of the block into ``record``."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    with hooks.EvaluationCounter(unet) as ev:
        yield
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    record.update({"unet_image_evaluations": ev.predictions, "unet_down_paths": ev.down_paths,
                   "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "peak_mb": peak_mb(dev)})


def attfind_all(probs: np.ndarray, probs_rec: np.ndarray, targets: np.ndarray, columns: np.ndarray, m: int) -> list[tuple[int, int]]:
    """AttFind with the reference's stopping rule over the whole image set (targets per image), as candidate ids."""
    effect, flipped, eligible = effect_table(probs, probs_rec, targets)
    return [(int(columns[s.direction]), s.sign) for s in attfind(effect, flipped, m, eligible=eligible, confidence=None)]


def diffex_side(s, vectors: torch.Tensor, m: int) -> dict:
    """(c): invert once, gradients, screen, one shortlist table, AttFind; all timed."""
    cfg, rec = s.cfg, {}
    with measured(s.pair.dm.unet, s.device, rec):
        inv = invert_all(s)
        idx = np.arange(len(s.x0))
        g = gradients(s, inv, idx)
        tgt = inv.targets
        order, _ = screen(g, tgt, vectors, min(cfg.screen_top, len(vectors)), weights=inv.probs_rec[idx, tgt] * (inv.probs_rec.argmax(1) != tgt))
        table = full_table(s, inv, vectors[order], idx)
        rec["selection"] = attfind_all(table, inv.probs_rec, tgt, order, m)
    rec["shortlist"] = [int(i) for i in order]
    return rec


def reference_side(s, vectors: torch.Tensor, h_scale: float, targets: np.ndarray, m: int, cached: bool) -> dict:
    """(a) or (b): the DiffEx procedure with its own inversion settings, re-inverting every round or not."""
    cfg, rec = s.cfg, {}
    if cfg.strength_unit != "h_norm":
        raise ValueError("the DiffEx procedure renders one strength for every image: run this benchmark with strength_unit h_norm")
    with measured(s.pair.dm.unet, s.device, rec):
        sels = reference_attfind(s.pair, s.x0, targets, vectors, cfg.strength * h_scale, m, batch_size=cfg.batch_size,
                                 render_spec=SamplerSpec(steps=20, t_edit=cfg.t_edit, mode=cfg.mode), cache_inversion=cached)
    rec["selection"] = [(s_.direction, s_.sign) for s_ in sels]
    return rec


def _progress(side: str, record: dict) -> None:
    """One side's figures as a JSON line on stderr."""
    print(json.dumps({"side": side, **record}), file=sys.stderr, flush=True)


def agreement(a: list, b: list, m: int) -> float:
    """Share of the first m picks of ``a`` that ``b`` also picked (order ignored)."""
    return len(set(map(tuple, a[:m])) & set(map(tuple, b[:m]))) / max(1, min(len(a), m))


def run(classifier, diffusion, images, n: int, k: int, m: int, device: str = "cpu", cfg: ExplainConfig | None = None,
        baselines: tuple[str, ...] = ("reference", "reference_cached"), same_settings: bool = True) -> dict:
    """All sides on the same n images and k candidates; the figures as a dict (see module docstring).

    Each side's figures also go to stderr as one JSON line when it finishes, so that a long run
    stopped early keeps what it measured. ``same_settings=False`` skips the ``full_table`` check.
    """
    cfg = cfg or ExplainConfig(strength=1.0, strength_unit="h_norm")
    s = load_setup(classifier, diffusion, images, n, cfg, device)
    out: dict = {"n": n, "k": k, "m": m, "device": describe_device(s.device), "threads": torch.get_num_threads(),
                 "precision": cfg.precision, "batch_size": cfg.batch_size, "sampler": str(cfg.sampler)}
    t0 = time.perf_counter()
    inv = invert_all(s)
    idx = np.arange(n)
    vectors, names = candidates(s, inv, gradients(s, inv, idx), idx, METHODS, k)
    out["candidates"] = {"names": names, "setup_wall_s": time.perf_counter() - t0}
    if same_settings:
        t0 = time.perf_counter()
        out["full_table"] = {"selection": attfind_all(full_table(s, inv, vectors, idx), inv.probs_rec, inv.targets,
                                                      np.arange(len(vectors)), m), "wall_s": time.perf_counter() - t0}
        _progress("full_table", out["full_table"])
    out["diffex"] = diffex_side(s, vectors, m)
    _progress("diffex", out["diffex"])
    for name in baselines:
        out[name] = reference_side(s, vectors, inv.h_scale, inv.targets, m, cached=name == "reference_cached")
        d, r = out["diffex"], out[name]
        out[name]["ratios"] = {"evaluations": r["unet_image_evaluations"] / max(1, d["unet_image_evaluations"]),
                               "wall": r["wall_s"] / max(1e-9, d["wall_s"]), "cpu": r["cpu_s"] / max(1e-9, d["cpu_s"])}
        out[name]["agreement_with_diffex"] = agreement(r["selection"], d["selection"], m)
        _progress(name, out[name])
    if not same_settings:
        return out
    full = out["full_table"]["selection"]
    out["agreement_same_settings"] = agreement(full, out["diffex"]["selection"], m)  # diffex vs all K rendered, same sampler
    out["full_table_picks_in_shortlist"] = sum(c in set(out["diffex"]["shortlist"]) for c, _ in full[:m])
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
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="UNet arithmetic for every side")
    ap.add_argument("--batch-size", type=int, default=32, help="UNet batch for every side (on a GPU: the largest that fits)")
    ap.add_argument("--baseline", action="append", choices=["reference", "reference_cached"],
                    help="baselines to run (default: both)")
    ap.add_argument("--skip-same-settings", action="store_true",
                    help="skip rendering all K candidates with explain's sampler (the same-settings agreement check)")
    a = ap.parse_args(argv)
    # the DiffEx procedure has no per-image calibration: both sides render 1 x mean ‖h‖ for every image (equal work)
    cfg = ExplainConfig(precision=a.precision, batch_size=a.batch_size, strength=1.0, strength_unit="h_norm")
    res = run(a.classifier, a.diffusion, a.images, a.n, a.k, a.m, a.device, cfg=cfg,
              baselines=tuple(a.baseline or ("reference", "reference_cached")), same_settings=not a.skip_same_settings)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
