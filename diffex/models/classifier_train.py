"""Training a timm classifier on an experiment's images (``diffex train-classifier``).

A stratified held-out split is set aside before anything is fitted; the percentile
normalization is computed on the training part only; the model trains with AdamW, cosine decay
and dihedral augmentation; held-out accuracy and the confusion matrix are recorded in the model
folder.

Example
-------
>>> cfg = ClassifierTrainConfig(arch="test_resnet", size=16, epochs=1)   # doctest: +SKIP
>>> clf, metrics = train_classifier("cells/", "clf/", cfg)               # doctest: +SKIP
>>> metrics["heldout_accuracy"]                                           # doctest: +SKIP
0.93
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffex.config import from_dict, to_dict
from diffex.data.augment import AUGMENTATIONS, augment
from diffex.data.dataset import image_name, require_conditions
from diffex.data.normalize import DEFAULT_PERCENTILES
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
from diffex.fsutil import refuse_overwrite
from diffex.models.classifier import Classifier, ClassifierInfo, build_timm
from diffex.progress import make_progress
from diffex.runtime import describe_device, resolve_device, software_versions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """Settings of ``diffex train-classifier``; unknown keys in a YAML config are errors."""

    arch: str = "resnet18"
    size: int = 32
    resize_mode: str = "resize"
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    augment: str = "dihedral"
    heldout_fraction: float = 0.2
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES  # microscopy only
    modality: str = "microscopy"  # or "ct", "mr": images from a CT manifest, resampled, windowed (diffex.data.source)
    spacing_mm: float | None = None  # CT/MR: pixel spacing every slice is resampled to
    windows: tuple = ()  # CT/MR: preset names or (low, high), one channel each
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "windows", canonical_windows(self.windows))
        geometry_for(self.modality, self.size, self.spacing_mm, self.windows)  # raises for a missing or stray setting
        if self.augment not in AUGMENTATIONS:
            raise DiffexError(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.size < 8:
            raise DiffexError("epochs and batch_size must be >= 1 and size >= 8")

    @property
    def geometry(self):
        """The CT/MR input geometry (:class:`~diffex.data.ct_load.CTGeometry`), None for microscopy."""
        return geometry_for(self.modality, self.size, self.spacing_mm, self.windows)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """Counts (K, K): rows are true classes, columns predicted ones.

    Example
    -------
    >>> confusion_matrix(np.array([0, 0, 1]), np.array([0, 1, 1]), 2).tolist()
    [[1, 1], [0, 1]]
    """
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def evaluate(clf: Classifier, raw: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, balanced accuracy and confusion matrix of ``clf`` on raw images (N, C, H, W)."""
    probs = clf.predict_proba_raw(raw)
    pred = probs.argmax(1)
    k = len(clf.info.class_names)
    cm = confusion_matrix(labels, pred, k)
    per_class = cm.diagonal() / np.maximum(cm.sum(1), 1)
    return {
        "accuracy": float((pred == labels).mean()),
        "balanced_accuracy": float(per_class.mean()),
        "confusion_matrix": cm.tolist(),
        "n_images": int(len(labels)),
    }


def _fit(module: torch.nn.Module, cfg: ClassifierTrainConfig, x_train: torch.Tensor, y_train: torch.Tensor, n_classes: int,
         g: torch.Generator, dev: torch.device, show_progress: bool) -> None:
    """AdamW with cosine decay, class-balanced cross-entropy, augmentation; trains ``module`` in place."""
    # Balance classes in the loss so a skewed experiment does not just learn the prior.
    counts = np.bincount(y_train.cpu().numpy(), minlength=n_classes)
    weight = torch.tensor(len(y_train) / (n_classes * np.maximum(counts, 1)), dtype=torch.float32, device=dev)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(x_train) / cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    module.train()
    with make_progress(show_progress) as bar:
        task = bar.add_task("training classifier", total=cfg.epochs, status="")
        for _ in range(cfg.epochs):
            perm = torch.randperm(len(x_train), generator=g).to(dev)
            tot, n = 0.0, 0
            for b in range(steps_per_epoch):
                idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                if len(idx) < 2:  # batch norm needs 2+
                    continue
                loss = F.cross_entropy(module(augment(x_train[idx], cfg.augment, g)), y_train[idx], weight=weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                tot += loss.item() * len(idx)
                n += len(idx)
            bar.update(task, advance=1, status=f"loss {tot / max(n, 1):.3f}")


def _training_record(cfg: ClassifierTrainConfig, data, images, train_idx, held_idx, held: dict, train_metrics: dict,
                     duration: float, dev: torch.device, command: str) -> dict:
    """The ``training`` record written into the model folder's config (split, accuracies, timing, software)."""
    return {
        "command": command, "config": config_record(to_dict(cfg)), "images": str(images), "seed": cfg.seed, "n_train": int(len(train_idx)),
        "n_heldout": int(len(held_idx)), "heldout": [image_name(data.records[i], images) for i in held_idx],
        "geometry": describe_input(cfg.geometry, cfg.resize_mode, cfg.size), "original_shape": list(data.original_shape),
        "train_accuracy": train_metrics["accuracy"], "heldout_accuracy": held["accuracy"],
        "heldout_balanced_accuracy": held["balanced_accuracy"], "confusion_matrix": held["confusion_matrix"],
        "duration_s": round(duration, 1), "device": str(dev), "device_name": describe_device(dev), "software": software_versions(),
    }


def train_classifier(
    images: str | Path,
    out: str | Path,
    config: ClassifierTrainConfig | None = None,
    axes: str | None = None,
    device: str = "auto",
    force: bool = False,
    command: str = "",
    show_progress: bool = True,
) -> tuple[Classifier, dict]:
    """Train a timm classifier on ``images`` and write a model folder to ``out``.

    Returns
    -------
    classifier : Classifier
    metrics : dict
        ``heldout_accuracy``, ``heldout_balanced_accuracy``, ``confusion_matrix``, ``class_names``.
    """
    cfg = config or ClassifierTrainConfig()
    out = Path(out)
    refuse_overwrite(out, force, "classifier")
    dev = resolve_device(device)
    geometry = cfg.geometry
    records = find_records(images, geometry)
    class_names = require_conditions(records, images, 2)
    data = load_records(records, cfg.size, cfg.resize_mode, geometry, axes=axes, show_progress=show_progress)
    labels = data.labels(class_names)
    train_idx, held_idx = split_train_heldout(data, labels, cfg.heldout_fraction, cfg.seed, geometry)
    norm = model_normalization(geometry, data.raw[train_idx], cfg.percentiles)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    module = build_timm(cfg.arch, data.raw.shape[1], len(class_names)).to(dev)
    x_train = norm.forward(torch.from_numpy(data.raw[train_idx])).to(dev)  # (N, C, H, W)
    log.info("training %s on %d images (%d held out), classes %s, on %s", cfg.arch, len(train_idx), len(held_idx), class_names, dev)
    t0 = time.perf_counter()
    _fit(module, cfg, x_train, torch.from_numpy(labels[train_idx]).to(dev), len(class_names), g, dev, show_progress)
    duration = time.perf_counter() - t0
    info = ClassifierInfo(class_names=tuple(class_names), in_channels=data.raw.shape[1], image_size=cfg.size, normalization=norm,
                          channel_names=data.channel_names, resize_mode=cfg.resize_mode, arch=cfg.arch, source=str(out),
                          ct=geometry.to_dict() if geometry else None)
    clf = Classifier(module, info)
    held = evaluate(clf, data.raw[held_idx], labels[held_idx])
    train_metrics = evaluate(clf, data.raw[train_idx], labels[train_idx])
    training = _training_record(cfg, data, images, train_idx, held_idx, held, train_metrics, duration, dev, command)
    clf = Classifier(module.cpu().eval(), ClassifierInfo(**{**info.__dict__, "training": training}))
    clf.save(out, force=True)
    log.info("held-out accuracy %.1f %% on %d images; model written to %s", 100 * held["accuracy"], len(held_idx), out)
    return clf, {"class_names": list(class_names), "heldout_accuracy": held["accuracy"],
                 "heldout_balanced_accuracy": held["balanced_accuracy"], "confusion_matrix": held["confusion_matrix"],
                 "train_accuracy": train_metrics["accuracy"], "n_heldout": held["n_images"]}


def config_from_yaml_dict(d: dict) -> ClassifierTrainConfig:
    """Build a config from a YAML mapping (unknown keys are errors)."""
    return from_dict(ClassifierTrainConfig, d, "train-classifier config")
