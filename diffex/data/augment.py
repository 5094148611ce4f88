"""Random geometric augmentation of image batches.

Cells in a field of view have no preferred orientation, so the eight symmetries of the square
(``"dihedral"``) are label-preserving; ``"flips"`` is for data with a preferred rotation but no
handedness; ``"none"`` for data like CT slices whose anatomy has a fixed orientation.

Example
-------
>>> import torch
>>> x = torch.arange(8.0).reshape(2, 1, 2, 2)
>>> augment(x, "dihedral", torch.Generator().manual_seed(0)).shape
torch.Size([2, 1, 2, 2])
"""

from __future__ import annotations

import torch

AUGMENTATIONS = ("dihedral", "flips", "none")


def augment(x: torch.Tensor, kind: str, g: torch.Generator) -> torch.Tensor:
    """Random per-image dihedral transform (or flips only) of x (B, C, H, W)."""
    if kind == "none":
        return x
    b = x.shape[0]
    flip = torch.rand(b, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None].to(x.device), x.flip(-1), x)
    if kind == "flips":
        vflip = torch.rand(b, generator=g) < 0.5
        return torch.where(vflip[:, None, None, None].to(x.device), x.flip(-2), x)
    k = torch.randint(0, 4, (b,), generator=g).to(x.device)
    out = x
    for r in (1, 2, 3):
        out = torch.where((k == r)[:, None, None, None], torch.rot90(x, r, (-2, -1)), out)
    return out
