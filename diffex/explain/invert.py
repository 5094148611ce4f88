"""Stage 1, invert: every image to x at ``t_end`` and back, cached per image, and what follows from it.

Per image ``cache/inversions/<key>.safetensors`` holds x_T, the reconstruction, the input in
model space, h at every rendering step and the round-trip PSNR; the key is the digest of the image
file, the diffusion model and the inversion settings (:attr:`Experiment.inversion_keys`).
:func:`invert_stage` also evaluates the classifier on the images and their reconstructions and
chooses each image's target condition.

Example
-------
>>> inv = invert_stage(exp, progress)          # doctest: +SKIP
>>> inv.h.shape                                # doctest: +SKIP
torch.Size([200, 20, 128, 4, 4])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffex.data.dataset import split_indices, stratified_indices
from diffex.errors import DiffexError
from diffex.explain.cache import load_tensors, save_tensors
from diffex.explain.inputs import Experiment
from diffex.models import hooks, sampler

FIELDS = ("xt", "xrec", "x0", "h", "psnr")


@dataclass
class Inversions:
    """Stage 1's result for the N images of the experiment (tensors on the CPU)."""

    xt: torch.Tensor  # (N, C, H, W) x at t_end
    xrec: torch.Tensor  # (N, C, H, W) reconstructions, model space
    x0: torch.Tensor  # (N, C, H, W) inputs, model space
    h: torch.Tensor  # (N, S, *h) h at each rendering step, from t_end down
    psnr: np.ndarray  # (N,) round-trip PSNR, dB
    probs_orig: np.ndarray  # (N, classes) classifier on the images
    probs_rec: np.ndarray  # (N, classes) classifier on the reconstructions
    usable: np.ndarray  # indices of images whose round trip reaches min_psnr
    targets: np.ndarray  # (N,) target class of each image
    selection: np.ndarray  # usable images the directions and the selection are made on
    evaluation: np.ndarray  # disjoint usable images every reported statistic is computed on

    @property
    def h_scale(self) -> float:
        """Mean ‖h‖ over images and steps: the unit of relative strengths."""
        return float(self.h.flatten(2).norm(dim=2).mean())


def counterfactual_targets(probs_rec: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Target class per image: the most probable class other than its own condition.

    Example
    -------
    >>> counterfactual_targets(np.array([[0.5, 0.2, 0.3]]), np.array([0])).tolist()
    [2]
    """
    p = probs_rec.copy()
    p[np.arange(len(labels)), labels] = -1
    return p.argmax(1)


def invert_cached(pair, raw: np.ndarray, keys: list[str], cache: Path, spec: sampler.SamplerSpec, batch_size: int,
                  progress=None) -> dict[str, torch.Tensor]:
    """x_T, reconstruction, input, h trajectory and round-trip PSNR per image, from cache or computed.

    Images are processed in fixed chunks of ``batch_size`` (in input order), and a chunk is
    recomputed unless all its images are cached, so a resumed run computes exactly what a fresh run
    would.
    """
    dm, n = pair.dm, len(keys)
    task = progress.add_task("inverting images", total=n) if progress else None
    for start in range(0, n, batch_size):
        chunk = slice(start, min(n, start + batch_size))
        if not all((cache / f"{k}.safetensors").exists() for k in keys[chunk]):
            x0 = pair.to_model_space(raw[chunk])  # (b, C, H, W)
            xt = sampler.ddim_invert(dm, x0, spec)
            store: list = []
            with hooks.record_h(dm.unet, store):
                xr = sampler.ddim_render(dm, xt, spec)
            h = torch.stack(store, 1).cpu()  # (b, S, *h), S from t_end down to the last step
            err = sampler.psnr(xr, x0).cpu()
            for j, key in enumerate(keys[chunk]):
                save_tensors(cache / f"{key}.safetensors",
                             {"xt": xt[j].cpu(), "xrec": xr[j].cpu(), "x0": x0[j].cpu(), "h": h[j], "psnr": err[j : j + 1]})
        if progress:
            progress.advance(task, chunk.stop - chunk.start)
    loaded = [load_tensors(cache / f"{k}.safetensors")[0] for k in keys]
    return {name: torch.stack([t[name] for t in loaded]) for name in FIELDS}


def invert_stage(exp: Experiment, progress=None) -> Inversions:
    """Invert (or load) every image, classify images and reconstructions, choose targets."""
    cfg = exp.cfg
    with exp.counted("inversion"):
        inv = invert_cached(exp.pair, exp.raw, exp.inversion_keys, exp.cache / "inversions", cfg.sampler, cfg.batch_size, progress)
    psnr = inv["psnr"][:, 0].numpy()
    probs_orig = exp.pair.probs(inv["x0"].to(exp.device)).numpy()
    probs_rec = exp.pair.probs(inv["xrec"].to(exp.device)).numpy()
    usable = np.flatnonzero(psnr >= cfg.min_psnr)
    if len(np.unique(exp.labels[usable])) < 2:
        raise DiffexError(
            f"{exp.images_source}: fewer than two conditions have images that invert well (round-trip PSNR >= {cfg.min_psnr} dB); "
            f"median PSNR {np.median(psnr):.1f} dB. The diffusion model does not fit these images")
    selection, evaluation = split_sets(exp, usable)
    return Inversions(xt=inv["xt"], xrec=inv["xrec"], x0=inv["x0"], h=inv["h"].float(), psnr=psnr, probs_orig=probs_orig,
                      probs_rec=probs_rec, usable=usable, targets=counterfactual_targets(probs_rec, exp.labels),
                      selection=selection, evaluation=evaluation)


def split_sets(exp: Experiment, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Selection and evaluation images: disjoint, stratified by condition, whole bootstrap units on one side."""
    cfg, labels = exp.cfg, exp.labels
    selection, evaluation = split_indices(labels, cfg.evaluation_fraction, cfg.seed + 3, exp.groups, usable)
    for name, part in (("selection", selection), ("evaluation", evaluation)):
        if len(np.unique(labels[part])) < 2:
            unit = "images" if exp.groups is None else f"{exp.bootstrap_unit}s"
            raise DiffexError(f"{exp.images_source}: too few usable {unit} to hold out evaluation images: the {name} images "
                              f"hold {len(np.unique(labels[part]))} condition(s); every condition needs at least two {unit}")
    if len(evaluation) > cfg.evaluation_images:
        exp.note_subsample(f"statistics on {cfg.evaluation_images} of the {len(evaluation)} evaluation images (evaluation_images, "
                           f"drawn at random in proportion to each condition, seed {cfg.seed + 4})")
        evaluation = stratified_indices(labels, cfg.evaluation_images, cfg.seed + 4, evaluation)
    return selection, evaluation
