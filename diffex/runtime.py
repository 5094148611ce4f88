"""Device selection and software versions (for provenance)."""

from __future__ import annotations

import platform
from importlib import metadata

import torch

from diffex.errors import DiffexError

_PACKAGES = ("diffex", "torch", "torchvision", "diffusers", "timm", "numpy", "scikit-image", "tifffile", "safetensors")


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; an unavailable explicit device is an error.

    Example
    -------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise DiffexError(f"--device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DiffexError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return dev


def software_versions() -> dict[str, str]:
    """Versions of Python and the packages diffex results depend on."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def describe_device(dev: torch.device) -> str:
    """E.g. 'NVIDIA H100 80GB HBM3' or 'cpu (2 threads, x86_64)'."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"
