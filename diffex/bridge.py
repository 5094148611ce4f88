"""The bridge between the diffusion model's space and the classifier's input.

The two models need not share a normalization. A render x (model space, [-1, 1]) is mapped back
to raw intensities with the diffusion model's normalization and then through the classifier's own
normalization, exactly as a real image of those intensities would be. Sizes and channels must
agree (:func:`check_models` says so before any computation).

Example
-------
>>> pair = ModelPair(clf, dm)                                  # doctest: +SKIP
>>> logp = pair.log_probs(x_model)                             # (B, K)   doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffex.errors import DiffexError


@dataclass
class ModelPair:
    """A classifier and a diffusion model that fit together (same channels and size)."""

    clf: object  # diffex.classifier.Classifier
    dm: object  # diffex.diffusion.DiffusionModel

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
        return torch.log_softmax(self.logits(x).float(), dim=1)

    @torch.no_grad()
    def probs(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Class probabilities (B, K) of renders, on the CPU."""
        return torch.cat([self.log_probs(c).exp().cpu() for c in x.split(batch_size)])


def check_models(clf, dm) -> None:
    """Raise a :class:`DiffexError` when the two models cannot work together (before computing)."""
    from diffex.inspect import check_pair

    problems, _ = check_pair(clf, dm)
    if problems:
        raise DiffexError(
            f"{clf.info.source} and {dm.info.source} do not fit together: " + "; ".join(problems)
        )
