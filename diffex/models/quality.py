"""Quality gate of a diffusion model: are its samples like the data, and does inversion round-trip?

Three checks, printed at the end of ``diffex train-diffusion`` and stored in the model folder:

1. per-channel mean intensity of unconditional samples vs the training images (means within
   ``mean_tol``, spreads within ``spread_tol``, relative);
2. per-channel Otsu-mask object area (largest connected object) likewise;
3. DDIM inversion -> render round-trip PSNR on held-out images at the step count ``explain`` uses.

Example
-------
>>> import numpy as np
>>> x = np.random.default_rng(0).uniform(0, 1, (4, 2, 16, 16)).astype(np.float32)
>>> stats = image_statistics(x)
>>> sorted(stats[0])
['mean_intensity', 'object_area']
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.filters import threshold_otsu
from skimage.measure import label

from diffex.models.sampler import (
    DEFAULT_STEPS,
    SamplerSpec,
    ddim_invert,
    ddim_render,
    psnr,
    sample,
)

MEAN_TOL = 0.10
SPREAD_TOL = 0.25
PSNR_MIN = 28.0


def largest_object_area(image: np.ndarray) -> int:
    """Pixel area of the largest connected component of the Otsu mask of a 2-D image."""
    if image.max() <= image.min():
        return 0
    mask = image > threshold_otsu(image)
    lab = label(mask, connectivity=2)
    if lab.max() == 0:
        return 0
    return int(np.bincount(lab.ravel())[1:].max())


def image_statistics(raw: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Per channel: each image's mean intensity and Otsu object area; raw is (N, C, H, W)."""
    out = []
    for c in range(raw.shape[1]):
        ch = raw[:, c]
        out.append(
            {
                "mean_intensity": ch.reshape(len(ch), -1).mean(1),
                "object_area": np.array([largest_object_area(im) for im in ch], dtype=np.float64),
            }
        )
    return out


def _rel(a: float, b: float) -> float:
    return float((a - b) / b) if b != 0 else float("inf") if a != 0 else 0.0


def compare_statistics(
    reference: list[dict[str, np.ndarray]],
    candidate: list[dict[str, np.ndarray]],
    channel_names: tuple[str, ...],
    mean_tol: float = MEAN_TOL,
    spread_tol: float = SPREAD_TOL,
) -> list[dict]:
    """One row per channel and measure: means, spreads (sd), relative differences, pass flag."""
    rows = []
    for c, name in enumerate(channel_names):
        for measure in ("mean_intensity", "object_area"):
            r, s = reference[c][measure], candidate[c][measure]
            rel_mean = _rel(s.mean(), r.mean())
            rel_sd = _rel(s.std(), r.std())
            rows.append(
                {
                    "channel": name,
                    "measure": measure,
                    "data_mean": float(r.mean()),
                    "sample_mean": float(s.mean()),
                    "data_sd": float(r.std()),
                    "sample_sd": float(s.std()),
                    "data_median": float(np.median(r)),
                    "sample_median": float(np.median(s)),
                    "rel_mean_diff": rel_mean,
                    "rel_sd_diff": rel_sd,
                    "passed": bool(abs(rel_mean) <= mean_tol and abs(rel_sd) <= spread_tol),
                }
            )
    return rows


def roundtrip_psnr(dm, raw: np.ndarray, steps: int = DEFAULT_STEPS, batch_size: int = 64) -> np.ndarray:
    """PSNR (dB, model space, range 2) of DDIM invert -> render for raw images (N, C, H, W)."""
    out = []
    for chunk in torch.from_numpy(raw).split(batch_size):
        x0 = dm.to_model_space(chunk.to(dm.device))
        spec = SamplerSpec(steps=steps)
        rec = ddim_render(dm, ddim_invert(dm, x0, spec), spec)
        out.append(psnr(rec, x0).cpu())
    return torch.cat(out).numpy()


def quality_gate(
    dm,
    train_raw: np.ndarray,
    heldout_raw: np.ndarray,
    n_samples: int = 256,
    sample_steps: int = 50,
    roundtrip_steps: int = DEFAULT_STEPS,
    psnr_min: float = PSNR_MIN,
    seed: int = 0,
) -> dict:
    """Run the three checks and return a JSON-ready summary with ``passed``."""
    was_training = dm.unet.training
    dm.unet.eval()
    names = dm.info.channel_names or tuple(f"ch{i}" for i in range(dm.info.in_channels))
    # Compare with the data as the model sees it (clipped to the normalization range).
    ref = dm.from_model_space(dm.to_model_space(torch.from_numpy(train_raw))).numpy()
    samples = dm.from_model_space(sample(dm, n_samples, sample_steps, seed).cpu()).numpy()
    rows = compare_statistics(image_statistics(ref), image_statistics(samples), names)
    p = roundtrip_psnr(dm, heldout_raw, roundtrip_steps)
    dm.unet.train(was_training)
    rt_pass = bool(np.mean(p) >= psnr_min)
    return {
        "passed": bool(all(r["passed"] for r in rows) and rt_pass),
        "tolerances": {"mean": MEAN_TOL, "spread": SPREAD_TOL, "psnr_min_db": psnr_min},
        "n_samples": n_samples,
        "sample_steps": sample_steps,
        "n_train_images": int(len(train_raw)),
        "statistics": rows,
        "roundtrip": {
            "steps": roundtrip_steps,
            "n_images": int(len(p)),
            "psnr_mean_db": float(np.mean(p)),
            "psnr_min_db": float(np.min(p)),
            "psnr_p10_db": float(np.percentile(p, 10)),
            "passed": rt_pass,
        },
    }


def format_gate(gate: dict) -> str:
    """The gate as a plain-text table for the terminal and the README."""
    lines = [
        f"{'channel':<10} {'measure':<15} {'data mean':>10} {'sample mean':>12} {'diff':>7} "
        f"{'data sd':>9} {'sample sd':>10} {'diff':>7} {'median diff':>12}  ok",
    ]
    for r in gate["statistics"]:
        lines.append(
            f"{r['channel']:<10} {r['measure']:<15} {r['data_mean']:>10.1f} {r['sample_mean']:>12.1f} "
            f"{r['rel_mean_diff']:>+7.1%} {r['data_sd']:>9.1f} {r['sample_sd']:>10.1f} {r['rel_sd_diff']:>+7.1%} "
            f"{_rel(r['sample_median'], r['data_median']):>+12.1%}  "
            f"{'yes' if r['passed'] else 'NO'}"
        )
    rt = gate["roundtrip"]
    lines.append(
        f"DDIM round trip ({rt['steps']} steps, {rt['n_images']} held-out images): mean PSNR "
        f"{rt['psnr_mean_db']:.1f} dB (min {rt['psnr_min_db']:.1f}, 10th pct {rt['psnr_p10_db']:.1f}); "
        f"needs >= {gate['tolerances']['psnr_min_db']:.0f}  {'yes' if rt['passed'] else 'NO'}"
    )
    lines.append(f"quality gate: {'PASSED' if gate['passed'] else 'FAILED'}")
    return "\n".join(lines)
