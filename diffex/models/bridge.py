"""The bridge between the diffusion model's space and the classifier's input.

The two models need not share a normalization. A render x (model space, [-1, 1]) is mapped back
to raw intensities with the diffusion model's normalization and then through the classifier's own
normalization, exactly as a real image of those intensities would be. Sizes and channels must
agree (:func:`check_models` says so before any computation).

Example
-------
>>> from diffex.data.normalize import Normalization
>>> from diffex.models.classifier import Classifier, ClassifierInfo
>>> from diffex.models.diffusion import tiny_model
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
>>> clf = Classifier(net, ClassifierInfo(("a", "b"), 1, 8, Normalization((0.0,), (1.0,))))
>>> pair = ModelPair(clf, tiny_model(in_channels=1, size=8))
>>> pair.log_probs(torch.zeros(3, 1, 8, 8)).shape              # (B, classes), from renders in model space
torch.Size([3, 2])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from diffex.errors import DiffexError

if TYPE_CHECKING:
    from diffex.models.classifier import Classifier
    from diffex.models.diffusion import DiffusionModel


@dataclass
class ModelPair:
    """A classifier and a diffusion model that fit together (same channels and size)."""

    clf: object  # diffex.models.classifier.Classifier
    dm: object  # diffex.models.diffusion.DiffusionModel

    def to_model_space(self, raw: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw images (B, C, H, W) -> diffusion model space on the model's device."""
        x = torch.as_tensor(np.asarray(raw, dtype=np.float32)) if not isinstance(raw, torch.Tensor) else raw
        return self.dm.to_model_space(x.float()).to(self.dm.device)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Model space (B, C, H, W) -> raw intensities."""
        return self.dm.from_model_space(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier logits (B, K) of renders in model space; differentiable."""
        raw = self.raw(x.to(self.dm.device))
        return self.clf(self.clf.normalize(raw.to(self.clf.device)))

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Log class probabilities (B, K), at least float32 (float64 stays float64)."""
        logits = self.logits(x)
        return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1)

    @torch.no_grad()
    def probs(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Class probabilities (B, K) of renders, on the CPU."""
        return torch.cat([self.log_probs(c).exp().cpu() for c in x.split(batch_size)])


def check_models(clf, dm) -> None:
    """Raise a :class:`DiffexError` when the two models cannot work together (before computing)."""
    problems, _ = check_pair(clf, dm)
    if problems:
        raise DiffexError(
            f"{clf.info.source} and {dm.info.source} do not fit together: " + "; ".join(problems)
        )


def check_pair(clf: Classifier | None, dm: DiffusionModel | None) -> tuple[list[str], list[str]]:
    """Problems and notes for a classifier + diffusion model pair (either may be None)."""
    problems, notes = [], []
    if dm is not None:
        di = dm.info
        if di.normalization is None and not di.normalization_source.startswith("identity"):
            from diffex.models.diffusion import NO_NORMALIZATION

            problems.append(f"the diffusion model has {NO_NORMALIZATION}")
        elif di.normalization is None:
            notes.append(f"the diffusion model's inputs are taken as already in its [-1, 1] space: {di.normalization_source}")
        gate = di.quality_gate or {}
        if not gate:
            notes.append("the diffusion model has no recorded quality gate")
        elif not gate.get("passed"):
            notes.append("the diffusion model FAILED its quality gate: counterfactuals may look unlike real cells")
    if clf is None or dm is None:
        return problems, notes
    ci, di = clf.info, dm.info
    if ci.in_channels != di.in_channels:
        problems.append(f"the classifier takes {ci.in_channels} channel(s), the diffusion model {di.in_channels}")
    if ci.image_size is not None and ci.image_size != di.image_size:
        problems.append(f"the classifier works at {ci.image_size} px, the diffusion model at {di.image_size} px")
    if ci.channel_names and di.channel_names and tuple(ci.channel_names) != tuple(di.channel_names):
        problems.append(f"channel names differ: classifier {list(ci.channel_names)}, diffusion model {list(di.channel_names)}")
    if (ci.ct or di.ct) and ci.ct != di.ct:
        problems.append(ct_mismatch(ci.ct, di.ct))
    if di.normalization is not None and di.normalization != ci.normalization:
        notes.append("the models use different normalizations; renders are mapped to raw intensities and through the "
                     "classifier's own normalization (this is fine)")
    return problems, notes


def ct_mismatch(clf_ct: dict | None, dm_ct: dict | None) -> str:
    """Why two models' CT settings (modality, spacing, windows) do not fit together."""
    def text(ct):
        if not ct:
            return "microscopy images (no CT window or spacing)"
        wins = ", ".join(f"{w['name']} [{w['low']:g}, {w['high']:g}]" for w in ct["windows"])
        return f"{ct['modality'].upper()} at {ct['spacing_mm']:g} mm with window(s) {wins}"
    return f"the classifier was trained on {text(clf_ct)}, the diffusion model on {text(dm_ct)}"
