"""Start diffusion training from a trained model's weights (``init_from``: fine-tuning).

A model folder written by ``diffex train-diffusion`` supplies the starting weights of both the
trained UNet and its EMA copy; the run then trains with its own settings (learning rate, schedule,
steps) on its own images. The folder must hold a UNet of the same architecture, with the same
channels, size and, for CT/MR, the same spacing and windows; anything else is an error naming the
folder. Its normalization is kept, so the weights see the intensities they were trained on.

With ``init_rescale`` the run may instead start from a model made at another patch size or pixel
spacing (same architecture, channels, modality and windows): a UNet is convolutional, so its
weights apply at any size, and the run re-learns the scale. Such a model is a new model in every
other respect; it must pass its own quality gate.

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


def _scale_free(ct: dict | None) -> dict | None:
    """A CT/MR geometry without its pixel spacing (what ``init_rescale`` lets differ)."""
    return None if ct is None else {k: v for k, v in ct.items() if k != "spacing_mm"}


def initial_model(folder: str | Path, unet: torch.nn.Module, in_channels: int, size: int, ct: dict | None,
                  rescale: bool = False) -> DiffusionModel:
    """The model in ``folder``, checked against the run about to start; its weights are loaded into ``unet``.

    ``rescale``: the model may have been made at another patch size and pixel spacing.
    """
    folder = Path(folder)
    dm = DiffusionModel.load(folder)
    info = dm.info
    if info.in_channels != in_channels or (info.image_size != size and not rescale):
        raise DiffexError(f"{folder}: init_from model takes {info.in_channels} channel(s) at {info.image_size} px; "
                          f"this run trains {in_channels} at {size} px"
                          + ("" if info.in_channels != in_channels else " (init_rescale: true starts from another size)"))
    theirs, mine = (_scale_free(info.ct), _scale_free(ct)) if rescale else (info.ct, ct)
    if theirs != mine:
        what = "another modality or windows" if rescale else "another geometry"
        raise DiffexError(f"{folder}: init_from model reads images with {what} ({info.ct}) than this run ({ct})")
    try:
        unet.load_state_dict(dm.unet.state_dict())
    except RuntimeError as exc:
        raise DiffexError(f"{folder}: init_from model has another UNet architecture than the `unet` settings of this run "
                          f"({str(exc).splitlines()[0]})"
                          + ("; at another size attention_max_res can place self-attention elsewhere" if info.image_size != size else "")
                          ) from None
    return dm
