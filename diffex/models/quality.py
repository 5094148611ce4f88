"""Quality gate of a diffusion model: are its samples like the data, and does inversion round-trip?

Three checks, printed at the end of ``diffex train-diffusion`` and stored in the model folder:

1. per-channel mean intensity of unconditional samples vs the training images (means within
   ``mean_tol``, spreads within ``spread_tol``, relative);
2. per-channel Otsu-mask object area (largest connected object) likewise;
3. DDIM inversion -> render round-trip PSNR on held-out images at ``explain``'s own settings (20
   steps up to t_end = 699): mean >= 28 dB. The round trip from t = T - 1 (full inversion to
   noise) is measured and reported beside it; explain never inverts that far, so it does not gate.

With the gate come a montage PNG of real images above samples (``gate_montage.png`` in the model
folder, for a person to look at) and, when a classifier is given, the KID of the samples on its
penultimate features, beside the KID of the held-out real images as the floor that sampling noise
alone gives (:mod:`diffex.models.kid`; reported, not gating).

Example
-------
>>> import numpy as np
>>> x = np.random.default_rng(0).uniform(0, 1, (4, 2, 16, 16)).astype(np.float32)
>>> stats = image_statistics(x)
>>> sorted(stats[0])
['mean_intensity', 'object_area']
"""

from __future__ import annotations

import io

import numpy as np
import torch
from skimage.filters import threshold_otsu
from skimage.measure import label

from diffex.models.kid import kid, penultimate_features
from diffex.models.sampler import (
    DEFAULT_STEPS,
    DEFAULT_T_END,
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


def roundtrip_psnr(dm, raw: np.ndarray, steps: int = DEFAULT_STEPS, batch_size: int = 64, t_end: int | None = None) -> np.ndarray:
    """PSNR (dB, model space, range 2) of DDIM invert -> render for raw images (N, C, H, W), inverting up to
    ``t_end`` (default T - 1)."""
    out = []
    spec = SamplerSpec(steps=steps, t_end=t_end)
    for chunk in torch.from_numpy(raw).split(batch_size):
        x0 = dm.to_model_space(chunk.to(dm.device))
        rec = ddim_render(dm, ddim_invert(dm, x0, spec), spec)
        out.append(psnr(rec, x0).cpu())
    return torch.cat(out).numpy()


def _roundtrip_summary(p: np.ndarray, steps: int, t_end: int, psnr_min: float | None) -> dict:
    d = {"steps": steps, "t_end": t_end, "n_images": int(len(p)), "psnr_mean_db": float(np.mean(p)),
         "psnr_min_db": float(np.min(p)), "psnr_p10_db": float(np.percentile(p, 10)), "gates": psnr_min is not None}
    if psnr_min is not None:
        d["passed"] = bool(np.mean(p) >= psnr_min)
    return d


MONTAGE_FILE = "gate_montage.png"


def gate_montage_png(real: np.ndarray, samples: np.ndarray, n: int = 16, columns: int = 8, scale: int = 3) -> bytes:
    """PNG bytes: ``n`` real images (top rows) above ``n`` samples (bottom rows), separated by a white band,
    in one display range (nuclear channel blue, the second channel orange)."""
    from PIL import Image

    from diffex.data.crop import montage

    columns = min(columns, n, len(real), len(samples))
    n = min(n, len(real), len(samples)) // columns * columns  # whole rows: samples start on a row of their own
    grid = montage([*real[:n], *samples[:n]], columns=columns, scale=scale)  # (rows * cell, columns * cell, 3)
    cut = n // columns * (real.shape[-1] + 2) * scale
    band = np.full((2 * scale, grid.shape[1], 3), 255, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.concatenate([grid[:cut], band, grid[cut:]])).save(buf, format="PNG")
    return buf.getvalue()


def kid_summary(clf, train_raw: np.ndarray, heldout_raw: np.ndarray, samples_raw: np.ndarray, seed: int = 0) -> dict:
    """KID of the samples and, as the floor, of the held-out real images, both against the training images,
    on the classifier's penultimate features (images already at the classifier's size)."""
    if clf.info.image_size != train_raw.shape[-1] or clf.info.in_channels != train_raw.shape[1]:
        return {"computed": False, "reason": f"the classifier takes {clf.info.in_channels} channel(s) at "
                f"{clf.info.image_size} px, the diffusion model makes {train_raw.shape[1]} at {train_raw.shape[-1]} px"}
    feats = [penultimate_features(clf, x) for x in (train_raw, heldout_raw, samples_raw)]
    if feats[0] is None:
        return {"computed": False, "reason": "the classifier has no linear head to take features from"}
    size = min(100, len(heldout_raw), len(samples_raw))
    if size < 2:
        return {"computed": False, "reason": f"too few images for KID ({len(heldout_raw)} held out, {len(samples_raw)} samples)"}
    return {"computed": True, "features": int(feats[0].shape[1]), "subset_size": size,
            "samples": kid(feats[0], feats[2], subset_size=size, seed=seed),
            "heldout_real": kid(feats[0], feats[1], subset_size=size, seed=seed)}


def quality_gate(
    dm,
    train_raw: np.ndarray,
    heldout_raw: np.ndarray,
    n_samples: int = 256,
    sample_steps: int = 50,
    roundtrip_steps: int = DEFAULT_STEPS,
    psnr_min: float = PSNR_MIN,
    seed: int = 0,
    t_end: int = DEFAULT_T_END,
    classifier=None,
) -> tuple[dict, np.ndarray]:
    """Run the checks; return a JSON-ready summary with ``passed``, and the samples (raw, (N, C, H, W)).

    ``roundtrip_steps`` and ``t_end`` are explain's settings; the round trip from T - 1 uses the same steps.
    """
    was_training = dm.unet.training
    dm.unet.eval()
    names = dm.info.channel_names or tuple(f"ch{i}" for i in range(dm.info.in_channels))
    # Compare with the data as the model sees it (clipped to the normalization range).
    ref = dm.from_model_space(dm.to_model_space(torch.from_numpy(train_raw))).numpy()
    samples = dm.from_model_space(sample(dm, n_samples, sample_steps, seed).cpu()).numpy()
    rows = compare_statistics(image_statistics(ref), image_statistics(samples), names)
    full = _roundtrip_summary(roundtrip_psnr(dm, heldout_raw, roundtrip_steps), roundtrip_steps, dm.num_train_timesteps - 1, None)
    explain = _roundtrip_summary(roundtrip_psnr(dm, heldout_raw, roundtrip_steps, t_end=t_end), roundtrip_steps, t_end, psnr_min)
    dm.unet.train(was_training)
    gate = {
        "passed": bool(all(r["passed"] for r in rows) and explain["passed"]),
        "tolerances": {"mean": MEAN_TOL, "spread": SPREAD_TOL, "psnr_min_db": psnr_min},
        "n_samples": n_samples,
        "sample_steps": sample_steps,
        "n_train_images": int(len(train_raw)),
        "statistics": rows,
        "roundtrip": full,
        "roundtrip_explain": explain,
    }
    if classifier is not None:
        held = dm.from_model_space(dm.to_model_space(torch.from_numpy(heldout_raw))).numpy()
        gate["kid"] = kid_summary(classifier, ref, held, samples, seed)
    return gate, samples


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
    for key in ("roundtrip_explain", "roundtrip"):
        rt = gate.get(key)
        if rt is None:
            continue
        where = f"{rt['steps']} steps to t = {rt['t_end']}" if "t_end" in rt else f"{rt['steps']} steps from T"
        rule = (f"needs >= {gate['tolerances']['psnr_min_db']:.0f}  {'yes' if rt['passed'] else 'NO'}"
                if rt.get("gates", True) else "reported, not gating")
        lines.append(f"DDIM round trip ({where}, {rt['n_images']} held-out images): mean PSNR {rt['psnr_mean_db']:.1f} dB "
                     f"(min {rt['psnr_min_db']:.1f}, 10th pct {rt['psnr_p10_db']:.1f}); {rule}")
    k = gate.get("kid")
    if k is not None:
        lines.append(f"KID on the classifier's {k['features']} penultimate features (x1000): samples "
                     f"{1e3 * k['samples']['mean']:.2f} +- {1e3 * k['samples']['sd']:.2f}, held-out real images "
                     f"{1e3 * k['heldout_real']['mean']:.2f} +- {1e3 * k['heldout_real']['sd']:.2f} (reported, not gating)"
                     if k["computed"] else f"KID not computed: {k['reason']}")
    if gate.get("montage"):
        lines.append(f"montage of real images (top) and samples (bottom): {gate['montage']} in the model folder")
    lines.append(f"quality gate: {'PASSED' if gate['passed'] else 'FAILED'}")
    return "\n".join(lines)
