"""Training a pixel-space DDPM (diffusers ``UNet2DModel``) on an experiment's images.

Epsilon-prediction DDPM objective, AdamW with linear warm-up, EMA weights with warm-up (the
exported model), dihedral augmentation (cells have no preferred orientation), bf16 autocast on a
GPU. Training state is checkpointed to ``<out>.training/state.pt`` every ``checkpoint_every``
steps; rerunning the same command resumes from it and yields the same weights as an
uninterrupted run. At the end the EMA model is written to ``out`` (diffusers layout) together with
the normalization and the quality gate (:mod:`diffex.quality`).

Example
-------
>>> cfg = DiffusionTrainConfig(size=16, steps=2, batch_size=4, gate_samples=4)   # doctest: +SKIP
>>> model, gate = train_diffusion("cells/", "dm/", cfg)                          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffex.config import from_dict, to_dict
from diffex.data.augment import AUGMENTATIONS, augment
from diffex.data.dataset import discover, load_images, relative_path, split_heldout
from diffex.data.normalize import DEFAULT_PERCENTILES, Normalization, describe_geometry
from diffex.errors import DiffexError
from diffex.fsutil import atomic_file, refuse_overwrite
from diffex.models.diffusion import DiffusionInfo, DiffusionModel
from diffex.models.quality import quality_gate
from diffex.models.sampler import DEFAULT_STEPS
from diffex.models.unet import (
    UNetSpec,
    build_unet,
    count_parameters,
    default_scheduler_config,
)
from diffex.progress import make_progress
from diffex.runtime import describe_device, resolve_device, software_versions

log = logging.getLogger(__name__)


TRAINED_PREDICTIONS = ("epsilon", "v_prediction")
LOSS_WEIGHTINGS = ("none", "min_snr")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# settings added after states were first saved: a state without them was made with these values
FINGERPRINT_DEFAULTS = {"prediction_type": "epsilon", "loss_weighting": "none", "min_snr_gamma": 5.0}


def loss_weights(acp_t: torch.Tensor, prediction_type: str, weighting: str, gamma: float) -> torch.Tensor:
    """Per-sample loss weights from alpha-bar at the sampled timesteps, shape (B,).

    Min-SNR weighting (Hang et al. 2023) with SNR = acp / (1 - acp): ``min(SNR, gamma) / SNR`` for
    epsilon targets and ``min(SNR, gamma) / (SNR + 1)`` for v targets; ones without weighting.

    Example
    -------
    >>> acp = torch.tensor([0.5, 10 / 11])          # SNR 1 and 10
    >>> [round(w, 4) for w in loss_weights(acp, "epsilon", "min_snr", 5.0).tolist()]
    [1.0, 0.5]
    >>> [round(w, 4) for w in loss_weights(acp, "v_prediction", "min_snr", 5.0).tolist()]
    [0.5, 0.4545]
    """
    if weighting == "none":
        return torch.ones_like(acp_t)
    snr = acp_t / (1 - acp_t)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1)


def training_target(x0: torch.Tensor, noise: torch.Tensor, acp_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """What the UNet learns to predict at x_t = sqrt(a) x0 + sqrt(1 - a) noise: the noise, or v = sqrt(a) noise - sqrt(1 - a) x0."""
    if prediction_type == "epsilon":
        return noise
    a = acp_t[:, None, None, None]
    return a.sqrt() * noise - (1 - a).sqrt() * x0


@dataclass(frozen=True)
class DiffusionTrainConfig:
    """Settings of ``diffex train-diffusion``; unknown keys in a YAML config are errors."""

    size: int = 32
    resize_mode: str = "resize"
    steps: int = 6000
    batch_size: int = 32
    lr: float = 2e-4
    warmup_steps: int = 200
    ema_max_decay: float = 0.999
    unet: UNetSpec = field(default_factory=UNetSpec)
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # or "squaredcos_cap_v2" (cosine)
    prediction_type: str = "epsilon"  # or "v_prediction"
    loss_weighting: str = "none"  # or "min_snr": min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v
    min_snr_gamma: float = 5.0
    augment: str = "dihedral"
    heldout_fraction: float = 0.1
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    seed: int = 0
    checkpoint_every: int = 250
    gate_samples: int = 256
    gate_sample_steps: int = 50
    roundtrip_steps: int = DEFAULT_STEPS

    def __post_init__(self):
        if self.augment not in AUGMENTATIONS:
            raise DiffexError(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        for name, allowed in (("prediction_type", TRAINED_PREDICTIONS), ("loss_weighting", LOSS_WEIGHTINGS),
                              ("beta_schedule", BETA_SCHEDULES)):
            if getattr(self, name) not in allowed:
                raise DiffexError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not self.min_snr_gamma > 0:
            raise DiffexError(f"min_snr_gamma must be > 0, got {self.min_snr_gamma}")
        for name in ("size", "steps", "batch_size", "checkpoint_every", "gate_samples"):
            if getattr(self, name) < 1:
                raise DiffexError(f"{name} must be >= 1, got {getattr(self, name)}")


def _ema_decay(step: int, max_decay: float) -> float:
    """EMA warm-up: averages over ~step/10 recent steps early, ``max_decay`` later."""
    return min(max_decay, (1 + step) / (10 + step))


def _lr_factor(step: int, warmup: int) -> float:
    """Linear learning-rate warm-up over ``warmup`` steps, then 1."""
    return min(1.0, (step + 1) / max(1, warmup))


def _work_dir(out: Path) -> Path:
    """The folder of the resumable training state, ``<out>.training``."""
    return out.with_name(out.name + ".training")


def _config_fingerprint(cfg: DiffusionTrainConfig) -> dict:
    """Settings that must match for a resume (steps and gate settings may change)."""
    d = to_dict(cfg)
    for k in ("steps", "checkpoint_every", "gate_samples", "gate_sample_steps", "roundtrip_steps"):
        d.pop(k)
    return d


@dataclass
class _Run:
    """The state of one training run: models, optimizer, random generator, progress."""

    unet: torch.nn.Module
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    g: torch.Generator
    norm: Normalization
    step: int = 0
    elapsed: float = 0.0
    loss_avg: float = float("nan")
    data: str = ""  # digest of the training images: a state made on other images is not resumed


def _start(cfg: DiffusionTrainConfig, in_channels: int, train_raw, dev: torch.device, state_path: Path) -> _Run:
    """Fresh models, optimizer and generator (seeded), or the saved state when the settings match."""
    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg.unet, in_channels, cfg.size).to(dev)
    ema = build_unet(cfg.unet, in_channels, cfg.size).to(dev)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    run = _Run(unet, ema, opt, torch.Generator().manual_seed(cfg.seed), Normalization.fit(train_raw, cfg.percentiles),
               data=hashlib.sha256(np.ascontiguousarray(train_raw).tobytes()).hexdigest()[:24])
    if not state_path.exists():
        return run
    state = torch.load(state_path, map_location=dev, weights_only=True)
    saved = {**FINGERPRINT_DEFAULTS, "training images": run.data, **json.loads(state["fingerprint"])}
    now = {**_config_fingerprint(cfg), "training images": run.data}
    if saved != now:
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise DiffexError(f"{state_path}: training state was made with other settings ({', '.join(diff)}); "
                          f"use another --out or delete {state_path.parent}")
    unet.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["optimizer"])
    run.g.set_state(state["generator"])
    run.step, run.elapsed, run.loss_avg = int(state["step"]), float(state["elapsed_s"]), float(state["loss_avg"])
    run.norm = Normalization.from_dict(json.loads(state["normalization"]))
    log.info("resuming from step %d of %d (%s)", run.step, cfg.steps, state_path)
    return run


def _save_state(run: _Run, cfg: DiffusionTrainConfig, state_path: Path) -> None:
    """Write the resumable training state (models, optimizer, generator, progress) atomically to ``state_path``."""
    state = {"step": run.step, "elapsed_s": run.elapsed, "loss_avg": run.loss_avg, "model": run.unet.state_dict(),
             "ema": run.ema.state_dict(), "optimizer": run.opt.state_dict(), "generator": run.g.get_state(),
             "fingerprint": json.dumps({**_config_fingerprint(cfg), "training images": run.data}), "normalization": json.dumps(run.norm.to_dict())}
    with atomic_file(state_path, "wb") as fh:
        torch.save(state, fh)


def _train_step(run: _Run, cfg: DiffusionTrainConfig, x_train: torch.Tensor, acp: torch.Tensor, dev: torch.device) -> float:
    """One optimizer step of the (weighted) epsilon- or v-prediction loss; EMA update; returns the loss."""
    g = run.g
    idx = torch.randint(0, len(x_train), (cfg.batch_size,), generator=g)
    x0 = augment(x_train[idx.to(dev)], cfg.augment, g)  # (B, C, H, W)
    noise = torch.randn(x0.shape, generator=g).to(dev)
    t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), generator=g).to(dev)
    a = acp[t][:, None, None, None]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    for group in run.opt.param_groups:
        group["lr"] = cfg.lr * _lr_factor(run.step, cfg.warmup_steps)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        pred = run.unet(xt, t).sample
    target = training_target(x0, noise, acp[t], cfg.prediction_type)
    per_sample = F.mse_loss(pred.float(), target, reduction="none").mean(dim=(1, 2, 3))  # (B,)
    loss = (loss_weights(acp[t], cfg.prediction_type, cfg.loss_weighting, cfg.min_snr_gamma) * per_sample).mean()
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    params = list(run.unet.parameters())
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    run.opt.step()
    with torch.no_grad():
        torch._foreach_lerp_(list(run.ema.parameters()), params, 1 - _ema_decay(run.step, cfg.ema_max_decay))
    return loss.item()


def _train_loop(run: _Run, cfg: DiffusionTrainConfig, x_train: torch.Tensor, acp: torch.Tensor, dev: torch.device,
                state_path: Path, show_progress: bool) -> None:
    """Steps until ``cfg.steps``, checkpointing every ``checkpoint_every`` steps and at the end."""
    with make_progress(show_progress) as bar:
        task = bar.add_task("training diffusion model", total=cfg.steps, completed=run.step, status="")
        t_last = time.perf_counter()
        while run.step < cfg.steps:
            lv = _train_step(run, cfg, x_train, acp, dev)
            run.loss_avg = lv if math.isnan(run.loss_avg) else 0.98 * run.loss_avg + 0.02 * lv
            run.step += 1
            now = time.perf_counter()
            run.elapsed += now - t_last
            t_last = now
            bar.update(task, completed=run.step, status=f"loss {run.loss_avg:.4f}")
            if run.step % cfg.checkpoint_every == 0 or run.step == cfg.steps:
                _save_state(run, cfg, state_path)


def _training_record(cfg: DiffusionTrainConfig, run: _Run, data, images, train_idx, held_idx, dev, command: str) -> dict:
    """The ``training`` record written into ``diffex.json`` (split, size, final loss, timing, software)."""
    return {
        "command": command, "config": to_dict(cfg), "images": str(images), "n_train": int(len(train_idx)),
        "n_heldout": int(len(held_idx)), "heldout": [relative_path(data.records[i].path, images) for i in held_idx],
        "geometry": describe_geometry(cfg.resize_mode, cfg.size), "original_shape": list(data.original_shape),
        "parameters": count_parameters(run.unet), "final_loss": run.loss_avg, "duration_s": round(run.elapsed, 1),
        "device": str(dev), "device_name": describe_device(dev), "software": software_versions(),
    }


def _load_split(images, cfg: DiffusionTrainConfig, axes: str | None, show_progress: bool):
    """The images at the model size and a stratified (train, held-out) split of them."""
    data = load_images(discover(images), cfg.size, cfg.resize_mode, axes=axes, show_progress=show_progress)
    labels = data.labels()
    if len(labels) < 10:
        raise DiffexError(f"{images}: {len(labels)} image(s) are too few to train a diffusion model")
    train_idx, held_idx = split_heldout(labels, cfg.heldout_fraction, cfg.seed)
    return data, train_idx, held_idx


def train_diffusion(
    images: str | Path,
    out: str | Path,
    config: DiffusionTrainConfig | None = None,
    axes: str | None = None,
    device: str = "auto",
    force: bool = False,
    command: str = "",
    show_progress: bool = True,
) -> tuple[DiffusionModel, dict]:
    """Train (or resume training) a diffusion model on ``images`` and write it to ``out``.

    Parameters
    ----------
    images : str or Path
        Folder with one subfolder per condition, or a CSV manifest.
    out : str or Path
        Model folder to write. ``<out>.training/`` holds the resumable training state.
    config : DiffusionTrainConfig
    axes : str, optional
        Axis order for files whose metadata cannot tell.
    device : str
        ``"auto"`` (GPU when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
    force : bool
        Overwrite a finished model at ``out``; a compatible training state continues.
    command : str
        The command line, recorded in the model folder.

    Returns
    -------
    model : DiffusionModel
        The EMA model as written.
    gate : dict
        The quality gate (:func:`diffex.models.quality.quality_gate`).
    """
    cfg = config or DiffusionTrainConfig()
    out = Path(out)
    refuse_overwrite(out, force, "diffusion model")
    dev = resolve_device(device)
    state_path = _work_dir(out) / "state.pt"
    state_path.parent.mkdir(parents=True, exist_ok=True)
    data, train_idx, held_idx = _load_split(images, cfg, axes, show_progress)
    train_raw, held_raw = data.raw[train_idx], data.raw[held_idx]
    run = _start(cfg, data.raw.shape[1], train_raw, dev, state_path)
    info = DiffusionInfo(in_channels=data.raw.shape[1], image_size=cfg.size, channel_names=data.channel_names,
                         normalization=run.norm, resize_mode=cfg.resize_mode, source=str(out))
    model = DiffusionModel(run.unet, default_scheduler_config(cfg.num_train_timesteps, cfg.beta_schedule, cfg.prediction_type), info)
    model.unet.train()
    x_train = model.to_model_space(torch.from_numpy(train_raw)).to(dev)  # (N, C, H, W) in [-1, 1]
    log.info("training a %.2f M-parameter UNet on %d images (%d held out) at %dx%d on %s",
             count_parameters(run.unet) / 1e6, len(train_idx), len(held_idx), cfg.size, cfg.size, dev)
    _train_loop(run, cfg, x_train, model.alphas_cumprod.to(dev, torch.float32), dev, state_path, show_progress)
    ema_model = DiffusionModel(run.ema.eval(), model.scheduler_config, info)
    log.info("quality gate: %d samples, DDIM round trip on %d held-out images", cfg.gate_samples, len(held_idx))
    gate = quality_gate(ema_model, train_raw, held_raw, cfg.gate_samples, cfg.gate_sample_steps, cfg.roundtrip_steps, seed=cfg.seed)
    training = _training_record(cfg, run, data, images, train_idx, held_idx, dev, command)
    final = DiffusionModel(ema_model.unet, model.scheduler_config, replace(info, training=training, quality_gate=gate))
    final.save(out, force=True)
    log.info("quality gate %s; model written to %s", "passed" if gate["passed"] else "FAILED", out)
    return final, gate


def config_from_yaml_dict(d: dict) -> DiffusionTrainConfig:
    """Build a config from a YAML mapping (unknown keys are errors)."""
    return from_dict(DiffusionTrainConfig, d, "train-diffusion config")
