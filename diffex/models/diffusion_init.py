"""Start diffusion training from a trained model's weights (``init_from``: fine-tuning).

A model folder written by ``diffex train-diffusion`` supplies the starting weights of both the
trained UNet and its EMA copy; the run then trains with its own settings (learning rate, schedule,
steps) on its own images. The folder must hold a UNet of the same architecture, with the same
channels, size and, for CT/MR, the same spacing and windows; anything else is an error naming the
folder. Its normalization is kept, so the weights see the intensities they were trained on.

Example
-------
>>> import tempfile
>>> init_digest(tempfile.mkdtemp())                                # doctest: +ELLIPSIS
Traceback (most recent call last):
...
diffex.errors.DiffexError: ...: init_from names no diffusion model folder with weights (*.safetensors)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from diffex.errors import DiffexError
from diffex.models.diffusion import DiffusionModel


def init_digest(folder: str | Path) -> str:
    """SHA-256 (first 24 hex digits) of the folder's weight files: a state made from other weights is not resumed."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("unet/*.safetensors"))
    if not files:
        raise DiffexError(f"{folder}: init_from names no diffusion model folder with weights (*.safetensors)")
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:24]


def initial_model(folder: str | Path, unet: torch.nn.Module, in_channels: int, size: int, ct: dict | None) -> DiffusionModel:
    """The model in ``folder``, checked against the run about to start; its weights are loaded into ``unet``."""
    folder = Path(folder)
    dm = DiffusionModel.load(folder)
    info = dm.info
    if (info.in_channels, info.image_size) != (in_channels, size):
        raise DiffexError(f"{folder}: init_from model takes {info.in_channels} channel(s) at {info.image_size} px; "
                          f"this run trains {in_channels} at {size} px")
    if info.ct != ct:
        raise DiffexError(f"{folder}: init_from model reads images with another geometry ({info.ct}) than this run ({ct})")
    try:
        unet.load_state_dict(dm.unet.state_dict())
    except RuntimeError as exc:
        raise DiffexError(f"{folder}: init_from model has another UNet architecture than the `unet` settings of this run "
                          f"({str(exc).splitlines()[0]})") from None
    return dm
