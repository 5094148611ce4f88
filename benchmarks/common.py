"""What the benchmark scripts share: load the models and N images, invert them, take gradients, make candidates.

Each step is a plain function, so that a benchmark can time exactly the steps it charges to a side.

Example
-------
>>> setup = load_setup("sample_data/models/classifier", "sample_data/models/diffusion",
...                    "sample_data/heldout", n=48, cfg=ExplainConfig())           # doctest: +SKIP
>>> inv = invert_all(setup)                                                        # doctest: +SKIP
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffex.data.dataset import discover, load_images, stratified_indices
from diffex.errors import DiffexError
from diffex.explain.calibrate import calibrate, coordinates, edit_steps
from diffex.explain.config import ExplainConfig
from diffex.explain.directions import DirectionContext, generate
from diffex.explain.invert import counterfactual_targets
from diffex.explain.search import Calibrated
from diffex.explain.sensitivity import classifier_gradients
from diffex.models import hooks, sampler
from diffex.models.bridge import ModelPair, check_models
from diffex.models.classifier import load_classifier
from diffex.models.diffusion import DiffusionModel
from diffex.runtime import resolve_device

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Setup:
    pair: ModelPair
    cfg: ExplainConfig
    device: torch.device
    class_names: list[str]
    labels: np.ndarray  # (N,)
    x0: torch.Tensor  # (N, C, H, W) model space


@dataclass
class Inverted:
    xt: torch.Tensor  # (N, C, H, W)
    xrec: torch.Tensor  # (N, C, H, W) reconstructions, model space
    h: torch.Tensor  # (N, S, *h)
    probs_rec: np.ndarray  # (N, classes)
    targets: np.ndarray  # (N,)

    @property
    def h_scale(self) -> float:
        return float(self.h.flatten(2).norm(dim=2).mean())


def load_setup(classifier, diffusion, images, n: int, cfg: ExplainConfig, device: str = "cpu") -> Setup:
    """Models and n images (sorted by path, stratified by condition, seeded as explain does)."""
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
    return Setup(pair, cfg, dev, names, imgs.labels(names), pair.to_model_space(imgs.raw))


def invert_all(s: Setup, spec: sampler.SamplerSpec | None = None) -> Inverted:
    """Invert and reconstruct every image once; h along the reconstruction; targets from the reconstructions."""
    spec = spec or s.cfg.sampler
    dm, bs = s.pair.dm, s.cfg.batch_size
    xt = sampler.ddim_invert(dm, s.x0, spec, batch_size=bs)
    store: list = []
    with hooks.record_h(dm.unet, store):
        rec = sampler.ddim_render(dm, xt, spec, batch_size=bs)
    chunks = math.ceil(len(s.x0) / bs)  # the sampler evaluates chunk by chunk within each step
    h = torch.stack([torch.cat(store[i * chunks:(i + 1) * chunks]) for i in range(spec.steps)], 1).cpu()  # (N, S, *h)
    p_rec = s.pair.probs(rec).numpy()
    return Inverted(xt, rec.cpu(), h, p_rec, counterfactual_targets(p_rec, s.labels))


def gradients(s: Setup, inv: Inverted, idx: np.ndarray, spec: sampler.SamplerSpec | None = None) -> torch.Tensor:
    """Per-image classifier gradients (len(idx), *h) through ``spec`` (default: explain's gradient sampler)."""
    spec = spec or s.cfg.gradient_sampler
    return classifier_gradients(s.pair, inv.xt[idx].cpu(), torch.as_tensor(inv.targets[idx]), spec, batch_size=min(16, s.cfg.batch_size))


def candidates(s: Setup, inv: Inverted, grads: torch.Tensor, grad_idx: np.ndarray, methods: list[str], k: int):
    """k candidate directions from ``methods`` (about k / len(methods) each), merged as explain merges them."""
    ts = s.cfg.sampler.timesteps(s.pair.dm.num_train_timesteps)
    ctx = DirectionContext(s.pair, inv.xrec, inv.h, grads, inv.targets[grad_idx], s.class_names,
                           ts[ts >= s.cfg.t_edit], inv.h_scale, seed=s.cfg.seed, contrastive_iterations=s.cfg.contrastive_iterations,
                           labels=s.labels)
    cands = generate(ctx, methods, math.ceil(k / len(methods)), merge_cos=s.cfg.merge_cos)
    return cands.vectors[:k], cands.names[:k]


def calibrated(s: Setup, inv: Inverted, vectors: torch.Tensor) -> Calibrated:
    """The candidates' calibration (explain's, :mod:`diffex.explain.calibrate`) on all the benchmark's images."""
    steps = edit_steps(s.cfg.sampler.timesteps(s.pair.dm.num_train_timesteps), s.cfg.t_edit)
    coords = coordinates(inv.h, vectors, steps)  # (N, K)
    return Calibrated(calibrate(coords, inv.h_scale, s.cfg.strength, s.cfg.strength_unit), coords)


def full_scales(cal: Calibrated, idx: np.ndarray, k: int) -> np.ndarray:
    """Signed full-strength offsets (len(idx), k*2) of every image x candidate x sign (candidate-major, sign minor)."""
    return np.stack([cal.scales(idx, j, sign) for j in range(k) for sign in (-1, 1)], 1)


def full_table(s: Setup, inv: Inverted, vectors: torch.Tensor, idx: np.ndarray, cal: Calibrated | None = None) -> np.ndarray:
    """Class probabilities (len(idx), K, 2, classes) of every image x candidate x sign at the config's (calibrated) strength.

    ``cal`` defaults to :func:`calibrated` of ``vectors``; pass the one of a larger candidate set with its rows selected
    when ``vectors`` is a subset.
    """
    cfg = s.cfg
    cal = cal or calibrated(s, inv, vectors)
    offsets = vectors.repeat_interleave(2, 0)  # (K*2, *h)
    x = sampler.render_edits(s.pair.dm, inv.xt[idx], offsets, cfg.sampler, batch_size=cfg.batch_size,
                             scales=torch.as_tensor(full_scales(cal, idx, len(vectors))))
    return s.pair.probs(x.flatten(0, 1)).numpy().reshape(len(idx), len(vectors), 2, -1)


def peak_mb(dev: torch.device) -> float:
    """Peak GPU memory (CUDA) or the process's peak RSS (Linux: KiB), in MB."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
