"""Training a pixel-space DDPM (diffusers ``UNet2DModel``) on an experiment's images.

Epsilon- or v-prediction DDPM objective (optionally min-SNR weighted), AdamW with linear warm-up
and optional cosine decay, EMA weights with warm-up (the exported model), dihedral augmentation
(cells have no preferred orientation), bf16 autocast on a GPU or a CPU with native bf16. Training state is checkpointed to ``<out>.training/state.pt`` every ``checkpoint_every``
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
from diffex.data.dataset import image_name
from diffex.data.normalize import DEFAULT_PERCENTILES, Normalization
from diffex.data.source import (
    canonical_windows,
    config_record,
    describe_input,
    find_records,
    geometry_for,
    load_records,
    model_normalization,
    split_train_heldout,
)
from diffex.errors import DiffexError
from diffex.fsutil import atomic_file, refuse_overwrite
from diffex.models.diffusion import DiffusionInfo, DiffusionModel
from diffex.models.diffusion_init import init_digest, initial_model
from diffex.models.diffusion_objective import (  # noqa: F401 - loss_weights, training_target: part of this module's API
    _ema_decay,
    _lr_factor,
    loss_weights,
    training_precision,
    training_target,
)
from diffex.models.quality import MONTAGE_FILE, gate_montage_png, quality_gate
from diffex.models.sampler import DEFAULT_STEPS, DEFAULT_T_END
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
LR_SCHEDULES = ("constant", "cosine")
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")
# settings added after states were first saved: a state without them was made with these values
# ("precision" is stored resolved, fp32 or bf16; states saved before it existed used bf16 only on a GPU)
FINGERPRINT_DEFAULTS = {"prediction_type": "epsilon", "loss_weighting": "none", "min_snr_gamma": 5.0,
                        "lr_schedule": "constant", "lr_min_factor": 0.1, "init_rescale": False}


@dataclass(frozen=True)
class DiffusionTrainConfig:
    """Settings of ``diffex train-diffusion``; unknown keys in a YAML config are errors."""

    size: int = 32
    resize_mode: str = "resize"
    # The defaults are the recipe measured in docs/training.md (the shipped sample model's settings).
    steps: int = 5500
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    lr_schedule: str = "cosine"  # or "constant"; cosine: from lr after warm-up down to lr * lr_min_factor at ``steps``
    lr_min_factor: float = 0.1
    ema_max_decay: float = 0.999
    unet: UNetSpec = field(default_factory=lambda: UNetSpec(block_out_channels=(32, 64, 128), attention_max_res=4))
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # (cosine) or "linear", "scaled_linear"
    prediction_type: str = "v_prediction"  # or "epsilon"
    loss_weighting: str = "min_snr"  # or "none"; min_snr: min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v
    min_snr_gamma: float = 5.0
    augment: str = "dihedral"
    precision: str = "auto"  # bf16 autocast on a GPU or a CPU with native bf16 (AMX, AVX512-BF16), else fp32
    heldout_fraction: float = 0.1
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES  # microscopy only
    modality: str = "microscopy"  # or "ct", "mr": images from a CT manifest, resampled, windowed (diffex.data.source)
    spacing_mm: float | None = None  # CT/MR: pixel spacing every slice is resampled to
    windows: tuple = ()  # CT/MR: preset names or (low, high), one channel each
    seed: int = 0
    init_from: str | None = None  # a diffex diffusion model folder whose weights start the run (fine-tuning; diffusion_init.py)
    init_rescale: bool = False  # init_from may be a model made at another patch size and pixel spacing
    checkpoint_every: int = 250
    gate_samples: int = 256
    gate_sample_steps: int = 50
    roundtrip_steps: int = DEFAULT_STEPS  # explain's steps
    roundtrip_t_end: int = DEFAULT_T_END  # explain's t_end; the round trip from T - 1 is reported too

    def __post_init__(self):
        object.__setattr__(self, "windows", canonical_windows(self.windows))
        geometry_for(self.modality, self.size, self.spacing_mm, self.windows)  # raises for a missing or stray setting
        if self.augment not in AUGMENTATIONS:
            raise DiffexError(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        for name, allowed in (("prediction_type", TRAINED_PREDICTIONS), ("loss_weighting", LOSS_WEIGHTINGS),
                              ("beta_schedule", BETA_SCHEDULES), ("lr_schedule", LR_SCHEDULES),
                              ("precision", TRAIN_PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise DiffexError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0 <= self.lr_min_factor <= 1:
            raise DiffexError(f"lr_min_factor must be in [0, 1], got {self.lr_min_factor}")
        if not self.min_snr_gamma > 0:
            raise DiffexError(f"min_snr_gamma must be > 0, got {self.min_snr_gamma}")
        for name in ("size", "steps", "batch_size", "checkpoint_every", "gate_samples"):
            if getattr(self, name) < 1:
                raise DiffexError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.roundtrip_steps <= self.roundtrip_t_end + 1 <= self.num_train_timesteps:
            raise DiffexError(f"need 1 <= roundtrip_steps <= roundtrip_t_end + 1 <= num_train_timesteps, got "
                              f"{self.roundtrip_steps}, {self.roundtrip_t_end}, {self.num_train_timesteps}")

    @property
    def geometry(self):
        """The CT/MR input geometry (:class:`~diffex.data.ct_load.CTGeometry`), None for microscopy."""
        return geometry_for(self.modality, self.size, self.spacing_mm, self.windows)


def _work_dir(out: Path) -> Path:
    """The folder of the resumable training state, ``<out>.training``."""
    return out.with_name(out.name + ".training")


def _config_fingerprint(cfg: DiffusionTrainConfig, dev: torch.device) -> dict:
    """Settings that must match for a resume: all but the gate's and checkpointing's, the precision as used,
    and ``steps`` only under the cosine schedule (whose curve depends on it)."""
    d = to_dict(cfg)
    for k in ("checkpoint_every", "gate_samples", "gate_sample_steps", "roundtrip_steps", "roundtrip_t_end"):
        d.pop(k)
    if cfg.lr_schedule != "cosine":
        d.pop("steps")
    if cfg.modality == "microscopy":  # states made before CT existed resume
        for k in ("modality", "spacing_mm", "windows"):
            d.pop(k)
    d["precision"] = training_precision(cfg.precision, dev)
    if cfg.init_from:  # the starting weights, not where they lie
        d["init_from"] = init_digest(cfg.init_from)
    else:
        d.pop("init_from")
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
    init = None
    if cfg.init_from:
        init = initial_model(cfg.init_from, unet, in_channels, cfg.size, cfg.geometry.to_dict() if cfg.geometry else None,
                             rescale=cfg.init_rescale)
        log.info("starting from the weights of %s", cfg.init_from)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    norm = init.info.normalization if init is not None and init.info.normalization else model_normalization(cfg.geometry, train_raw, cfg.percentiles)
    run = _Run(unet, ema, opt, torch.Generator().manual_seed(cfg.seed), norm,
               data=hashlib.sha256(np.ascontiguousarray(train_raw).tobytes()).hexdigest()[:24])
    if not state_path.exists():
        return run
    state = torch.load(state_path, map_location=dev, weights_only=True)
    legacy = {"precision": "bf16" if dev.type == "cuda" else "fp32"}
    saved = {**FINGERPRINT_DEFAULTS, **legacy, "training images": run.data, **json.loads(state["fingerprint"])}
    now = {**_config_fingerprint(cfg, dev), "training images": run.data}
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


def _save_state(run: _Run, cfg: DiffusionTrainConfig, state_path: Path, dev: torch.device) -> None:
    """Write the resumable training state (models, optimizer, generator, progress) atomically to ``state_path``."""
    state = {"step": run.step, "elapsed_s": run.elapsed, "loss_avg": run.loss_avg, "model": run.unet.state_dict(),
             "ema": run.ema.state_dict(), "optimizer": run.opt.state_dict(), "generator": run.g.get_state(),
             "fingerprint": json.dumps({**_config_fingerprint(cfg, dev), "training images": run.data}), "normalization": json.dumps(run.norm.to_dict())}
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
        group["lr"] = cfg.lr * _lr_factor(run.step, cfg.warmup_steps, cfg.lr_schedule, cfg.steps, cfg.lr_min_factor)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=training_precision(cfg.precision, dev) == "bf16"):
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
                _save_state(run, cfg, state_path, dev)


def _training_record(cfg: DiffusionTrainConfig, run: _Run, data, images, train_idx, held_idx, dev, command: str) -> dict:
    """The ``training`` record written into ``diffex.json`` (split, size, final loss, timing, software)."""
    return {
        "command": command, "config": config_record(to_dict(cfg)), "images": str(images), "n_train": int(len(train_idx)),
        "n_heldout": int(len(held_idx)), "heldout": [image_name(data.records[i], images) for i in held_idx],
        "geometry": describe_input(cfg.geometry, cfg.resize_mode, cfg.size), "original_shape": list(data.original_shape),
        "parameters": count_parameters(run.unet), "final_loss": run.loss_avg, "duration_s": round(run.elapsed, 1),
        "device": str(dev), "device_name": describe_device(dev),
        "precision": training_precision(cfg.precision, dev), "software": software_versions(),
    }


def load_split(images, cfg: DiffusionTrainConfig, axes: str | None, show_progress: bool):
    """The images at the model size and a stratified (train, held-out) split of them."""
    geometry = cfg.geometry
    data = load_records(find_records(images, geometry), cfg.size, cfg.resize_mode, geometry, axes=axes, show_progress=show_progress)
    labels = data.labels()
    if len(labels) < 10:
        raise DiffexError(f"{images}: {len(labels)} image(s) are too few to train a diffusion model")
    train_idx, held_idx = split_train_heldout(data, labels, cfg.heldout_fraction, cfg.seed, geometry)
    return data, train_idx, held_idx


def _check_gate_classifier(classifier, cfg: DiffusionTrainConfig) -> None:
    """Refuse, before training, a classifier whose size the gate's KID could not use."""
    if classifier is not None and classifier.info.image_size != cfg.size:
        raise DiffexError(f"the classifier for the gate's KID takes {classifier.info.image_size} px images, the diffusion "
                          f"model is trained at {cfg.size} px; give a classifier of the same size or none")
    ct = cfg.geometry.to_dict() if cfg.geometry else None
    if classifier is not None and classifier.info.ct != ct:
        from diffex.models.bridge import ct_mismatch

        raise DiffexError(f"the classifier for the gate's KID does not read images as this model will: {ct_mismatch(classifier.info.ct, ct)}")


def _gate_and_save(ema_model: DiffusionModel, cfg: DiffusionTrainConfig, train_raw, held_raw, classifier,
                   training: dict, out: Path) -> tuple[DiffusionModel, dict]:
    """Run the quality gate on the EMA model and write the model folder with its record and montage."""
    log.info("quality gate: %d samples, DDIM round trip on %d held-out images", cfg.gate_samples, len(held_raw))
    gate, samples = quality_gate(ema_model, train_raw, held_raw, cfg.gate_samples, cfg.gate_sample_steps, cfg.roundtrip_steps,
                                 seed=cfg.seed, t_end=cfg.roundtrip_t_end, classifier=classifier)
    gate["montage"] = MONTAGE_FILE
    final = DiffusionModel(ema_model.unet, ema_model.scheduler_config, replace(ema_model.info, training=training, quality_gate=gate))
    real = ema_model.from_model_space(ema_model.to_model_space(torch.from_numpy(train_raw))).numpy()
    final.save(out, force=True, extras={MONTAGE_FILE: gate_montage_png(real, samples)})
    return final, gate


def train_diffusion(
    images: str | Path,
    out: str | Path,
    config: DiffusionTrainConfig | None = None,
    axes: str | None = None,
    device: str = "auto",
    force: bool = False,
    command: str = "",
    show_progress: bool = True,
    classifier=None,
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
    classifier : Classifier, optional
        With it, the gate reports KID on its penultimate features.

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
    _check_gate_classifier(classifier, cfg)
    dev = resolve_device(device)
    state_path = _work_dir(out) / "state.pt"
    state_path.parent.mkdir(parents=True, exist_ok=True)
    data, train_idx, held_idx = load_split(images, cfg, axes, show_progress)
    train_raw, held_raw = data.raw[train_idx], data.raw[held_idx]
    run = _start(cfg, data.raw.shape[1], train_raw, dev, state_path)
    info = DiffusionInfo(data.raw.shape[1], cfg.size, data.channel_names, run.norm, cfg.resize_mode, source=str(out),
                         ct=cfg.geometry.to_dict() if cfg.geometry else None)
    model = DiffusionModel(run.unet, default_scheduler_config(cfg.num_train_timesteps, cfg.beta_schedule, cfg.prediction_type), info)
    model.unet.train()
    x_train = model.to_model_space(torch.from_numpy(train_raw)).to(dev)  # (N, C, H, W) in [-1, 1]
    log.info("training a %.2f M-parameter UNet on %d images (%d held out) at %dx%d on %s",
             count_parameters(run.unet) / 1e6, len(train_idx), len(held_idx), cfg.size, cfg.size, dev)
    _train_loop(run, cfg, x_train, model.alphas_cumprod.to(dev, torch.float32), dev, state_path, show_progress)
    final, gate = _gate_and_save(DiffusionModel(run.ema.eval(), model.scheduler_config, info), cfg, train_raw, held_raw,
                                 classifier, _training_record(cfg, run, data, images, train_idx, held_idx, dev, command), out)
    log.info("quality gate %s; model written to %s", "passed" if gate["passed"] else "FAILED", out)
    return final, gate


def config_from_yaml_dict(d: dict) -> DiffusionTrainConfig:
    """Build a config from a YAML mapping (unknown keys are errors)."""
    return from_dict(DiffusionTrainConfig, d, "train-diffusion config")
