"""A diffusion model's gate statistics under two samplers: the deterministic DDIM ODE and stochastic DDIM.

The quality gate (:mod:`diffex.models.quality`) draws its samples along the deterministic DDIM ODE
(eta = 0), the sampler explain renders with. This benchmark draws the same number of samples from
the same seed with other ``eta`` (1 = ancestral sampling, fresh noise at every step) and compares
each set with the model's own training images, exactly as the gate does (mean intensity and
largest Otsu object per channel; means within 10 %, spreads within 25 %). It tells a model whose
learned distribution is right but whose ODE samples lose detail from one that has not learned the
data. It gates nothing: the gate stays on eta = 0.

For a CT model it also compares the lesion readouts explain reports (:mod:`diffex.report.ct_morphology`:
nodule diameter and area, mean density, solid share, and the share of patches where a lesion is found) and
the share of each patch above the gate's Otsu threshold (nodule and vessels: what the gate's object area grows with) of
the samples with the training patches', as differences in the readouts' own units.

The training images and the held-out split come from the model's own record (``diffex.json``):
the images folder must be the one it was trained on, or the script stops.

Usage:

    python benchmarks/gate_samplers.py --model sample_data/ct/models/diffusion \\
        --images sample_data/ct/lesions --etas 0,1 --steps 50 --out /tmp/gate_samplers.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage.filters import threshold_otsu

from diffex.data.dataset import image_name
from diffex.errors import DiffexError
from diffex.models.diffusion import DiffusionModel
from diffex.models.diffusion_train import config_from_yaml_dict, load_split
from diffex.models.quality import compare_statistics, image_statistics
from diffex.models.sampler import sample
from diffex.report.ct_morphology import hu_channel, measure_many_ct

LESION_COLUMNS = ("Lesion_Found", "Lesion_Diameter_mm", "Lesion_Area_mm2", "Lesion_MeanHU", "Lesion_SolidShare", "Otsu_ForegroundShare")


def foreground_share(images: np.ndarray) -> np.ndarray:
    """Per 2-D image (N, H, W): the share of its pixels above its Otsu threshold (the gate's mask; 0 for a flat image)."""
    return np.array([float((im > threshold_otsu(im)).mean()) if im.max() > im.min() else 0.0 for im in images])


def training_images(model: DiffusionModel, images: str | Path, axes: str | None = None):
    """The raw training images (N, C, H, W) of ``model``, split as its training split them."""
    training = model.info.training or {}
    if "config" not in training or "heldout" not in training:
        raise DiffexError(f"{model.info.source}: the model records no training config or split; it was not trained by diffex")
    cfg = config_from_yaml_dict({k: v for k, v in training["config"].items() if k != "init_from"})
    data, train_idx, held_idx = load_split(images, cfg, axes, False)
    held = [image_name(data.records[i], images) for i in held_idx]
    if held != training["heldout"] or len(train_idx) != training.get("n_train"):
        raise DiffexError(f"{images}: these images do not split as the model's training images did; give the folder it was trained on")
    return data.raw[train_idx]


def lesion_readouts(model: DiffusionModel, images) -> dict | None:
    """Lesion readouts of HU images (N, C, H, W) at the model's spacing; None for a model that is not CT."""
    ct = model.info.ct
    channel = hu_channel(ct["modality"], [(w["low"], w["high"]) for w in ct["windows"]]) if ct else None
    if channel is None:
        return None
    return {**measure_many_ct(images, ct["spacing_mm"], channel), "Otsu_ForegroundShare": foreground_share(images[:, channel])}


def lesion_rows(model: DiffusionModel, ref, samples, data: dict | None = None) -> list[dict]:
    """Lesion readouts of samples against the training patches ``ref`` (``data``: their readouts, if measured already)."""
    data = data if data is not None else lesion_readouts(model, ref)
    if data is None:
        return []
    made = lesion_readouts(model, samples)
    rows = []
    for col in LESION_COLUMNS:
        d, m = data[col], made[col]
        if col.startswith("Lesion_") and col != "Lesion_Found":  # readouts of patches where a lesion was found
            d, m = d[data["Lesion_Found"] > 0], m[made["Lesion_Found"] > 0]
        rows.append({"measure": col, "data_mean": float(d.mean()), "sample_mean": float(m.mean()),
                     "data_sd": float(d.std()), "sample_sd": float(m.std()), "mean_diff": float(m.mean() - d.mean())})
    return rows


def compare_samplers(model: DiffusionModel, train_raw, etas: list[float], n: int, steps: int,
                     seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Gate-statistics rows per eta, channel and measure (with the seconds the sampling took), and lesion rows per eta."""
    ref = model.from_model_space(model.to_model_space(torch.from_numpy(train_raw))).numpy()
    ref_stats, ref_lesions = image_statistics(ref), lesion_readouts(model, ref)  # measured once for every eta
    names = model.info.channel_names or tuple(f"ch{i}" for i in range(model.info.in_channels))
    rows, lesions = [], []
    for eta in etas:
        t0 = time.perf_counter()
        samples = model.from_model_space(sample(model, n, steps, seed, eta=eta).cpu()).numpy()
        seconds = time.perf_counter() - t0  # the first eta's includes warm-up
        for row in compare_statistics(ref_stats, image_statistics(samples), names):
            rows.append({"eta": eta, "steps": steps, "n_samples": n, "seconds": round(seconds, 1), **row})
        if ref_lesions is not None:
            lesions += [{"eta": eta, **row} for row in lesion_rows(model, ref, samples, ref_lesions)]
    return rows, lesions


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'eta':>4} {'steps':>5} {'channel':10} {'measure':15} {'data mean':>10} {'sample':>10} {'diff':>7} "
             f"{'data sd':>8} {'sample sd':>9} {'diff':>7}  ok"]
    for r in rows:
        lines.append(f"{r['eta']:>4g} {r['steps']:>5d} {r['channel']:10} {r['measure']:15} {r['data_mean']:>10.1f} "
                     f"{r['sample_mean']:>10.1f} {r['rel_mean_diff']:>+7.1%} {r['data_sd']:>8.1f} {r['sample_sd']:>9.1f} "
                     f"{r['rel_sd_diff']:>+7.1%}  {'yes' if r['passed'] else 'NO'}")
    return "\n".join(lines)


def format_lesions(rows: list[dict]) -> str:
    lines = [f"{'eta':>4} {'lesion readout':20} {'data mean':>10} {'sample':>10} {'diff':>8} {'data sd':>8} {'sample sd':>9}"]
    for r in rows:
        lines.append(f"{r['eta']:>4g} {r['measure']:20} {r['data_mean']:>10.3f} {r['sample_mean']:>10.3f} {r['mean_diff']:>+8.3f} "
                     f"{r['data_sd']:>8.3f} {r['sample_sd']:>9.3f}")
    return "\n".join(lines)


def _json_rows(rows: list[dict]) -> list[dict]:
    """JSON-safe: non-finite floats (no lesion found in any sample, a zero data mean) become null."""
    return [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()} for r in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", required=True, help="the folder or manifest the model was trained on")
    ap.add_argument("--etas", default="0,1", help="comma-separated eta values (0 = the gate's sampler)")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the gate's)")
    ap.add_argument("--n", type=int, default=None, help="samples per eta (default: the gate's)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--axes", default=None, help="axis order, as given to the model's training")
    ap.add_argument("--device", default="cpu", help="the gate's own samples are reproduced exactly on the device it ran on")
    args = ap.parse_args(argv)
    try:
        etas = [float(e) for e in args.etas.split(",")]
    except ValueError:
        ap.error(f"--etas: {args.etas!r} is not a comma-separated list of numbers")
    if any(not 0 <= e <= 1 for e in etas):
        ap.error("--etas: every eta must be between 0 and 1")
    try:
        model = DiffusionModel.load(args.model, device=args.device)
        gate = model.info.quality_gate or {}
        n = args.n or int(gate.get("n_samples", 256))
        steps = args.steps or int(gate.get("sample_steps", 50))
        seed = int((model.info.training or {}).get("config", {}).get("seed", 0))
        rows, lesions = compare_samplers(model, training_images(model, args.images, args.axes), etas, n, steps, seed)
    except DiffexError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_rows(rows))
    if lesions:
        print(format_lesions(lesions))
    if args.out:
        record = {"model": args.model, "rows": _json_rows(rows), "lesions": _json_rows(lesions)}
        Path(args.out).write_text(json.dumps(record, indent=1, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
