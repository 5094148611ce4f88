"""Adapter around a diffusers ``UNet2DModel`` and its noise schedule, and its model folder.

A diffusion model folder is diffusers' own ``save_pretrained`` layout, so that
``UNet2DModel.from_pretrained(folder)`` opens it::

    folder/
      config.json                          # UNet2DModel config (diffusers)
      diffusion_pytorch_model.safetensors  # EMA weights
      scheduler_config.json                # DDPMScheduler config (diffusers)
      diffex.json                          # channels, normalization, training record, quality gate
      checksums.json                       # SHA-256 of the files above

Any local diffusers UNet2DModel folder loads, also a pipeline layout with ``unet/`` and
``scheduler/`` subfolders, trained to predict the noise, v or the clean image (converted to the
noise here). Without ``diffex.json`` its normalization must be given (:func:`resolve_normalization`:
an option or a ``diffex-normalization.json`` sidecar); it is never guessed. Hub names are never
accepted: nothing is downloaded.

Example
-------
>>> import tempfile
>>> model = tiny_model(in_channels=2, size=16)
>>> folder = model.save(tempfile.mkdtemp() + "/dm")
>>> DiffusionModel.load(folder).info.image_size
16
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub, even by accident

import torch

from diffex.data.normalize import Normalization
from diffex.errors import DiffexError
from diffex.fsutil import atomic_dir, verify_checksums, write_checksums, write_json
from diffex.models.unet import UNetSpec, build_unet, default_scheduler_config

log = logging.getLogger(__name__)

METADATA_FILE = "diffex.json"
FORMAT = "diffex-diffusion"
FORMAT_VERSION = 1


PRECISIONS = ("fp32", "bf16")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SIDECAR = "diffex-normalization.json"


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`, else raise a DiffexError."""
    if precision not in PRECISIONS:
        raise DiffexError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


@dataclass(frozen=True)
class DiffusionInfo:
    """What diffex knows about a diffusion model besides its weights."""

    in_channels: int
    image_size: int
    channel_names: tuple[str, ...] | None = None
    normalization: Normalization | None = None
    resize_mode: str = "resize"
    source: str = ""
    training: dict = field(default_factory=dict)
    quality_gate: dict = field(default_factory=dict)
    normalization_source: str = ""  # "diffex.json", "sidecar FILE", "option FILE" or "identity (declared in FILE)"
    ct: dict | None = None  # CT/MR: modality, spacing_mm, windows (diffex.data.ct_load.CTGeometry.to_dict)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "channel_names": list(self.channel_names) if self.channel_names else None,
            "normalization": self.normalization.to_dict() if self.normalization else None,
            "resize_mode": self.resize_mode,
            **({"ct": self.ct} if self.ct else {}),
            "model_space": "normalized intensities clipped to [0, 1], then mapped to [-1, 1]",
            "training": self.training,
            "quality_gate": self.quality_gate,
        }


class DiffusionModel:
    """A noise-prediction UNet with its DDPM schedule and data mapping.

    Parameters
    ----------
    unet : diffusers.UNet2DModel
    scheduler_config : dict
        A diffusers DDPM/DDIM scheduler config (``beta_schedule``, ``num_train_timesteps`` ...).
    info : DiffusionInfo
    """

    def __init__(self, unet, scheduler_config: dict, info: DiffusionInfo, precision: str = "fp32"):
        from diffusers import DDPMScheduler

        self.unet = unet.eval()
        self.precision = check_precision(precision)
        self.scheduler_config = dict(scheduler_config)
        sched = DDPMScheduler.from_config(self.scheduler_config)
        self.prediction_type = str(sched.config.prediction_type)
        if self.prediction_type not in PREDICTION_TYPES:
            raise DiffexError(f"{info.source}: prediction_type {self.prediction_type!r}; diffex reads {PREDICTION_TYPES}")
        if self.prediction_type == "epsilon" and self.scheduler_config.get("rescale_betas_zero_snr"):
            raise DiffexError(f"{info.source}: a zero-terminal-SNR schedule (rescale_betas_zero_snr) with epsilon prediction "
                              "gives infinite values at the first step; such a model needs v_prediction")
        self.num_train_timesteps = int(sched.config.num_train_timesteps)
        self.alphas_cumprod = sched.alphas_cumprod.to(torch.float64)  # (T,)
        self.info = info

    # ----------------------------------------------------------------------------------- data
    def to_model_space(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw intensities (B, C, H, W) -> model space [-1, 1] (normalize, clip to [0, 1], rescale)."""
        x = self.info.normalization.forward(raw) if self.info.normalization else raw
        return x.clamp(0, 1) * 2 - 1 if self.info.normalization else x

    def from_model_space(self, x: torch.Tensor) -> torch.Tensor:
        """Model space (B, C, H, W) -> raw intensities; for CT/MR clipped to the window, as every input was."""
        if self.info.normalization is None:
            return x
        if self.info.ct:
            x = x.clamp(-1, 1)
        return self.info.normalization.inverse((x + 1) / 2)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: str | torch.device) -> DiffusionModel:
        self.unet.to(device)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def eps(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Predicted noise ε for x (B, C, H, W) at timestep t, in x's dtype (float32 unless the model was cast).

        A model trained to predict v or the clean sample x0 is converted to ε with ᾱ_t:
        ε = √ᾱ v + √(1−ᾱ) x_t, or ε = (x_t − √ᾱ x̂0) / √(1−ᾱ). With ``precision == "bf16"`` the UNet
        runs under bfloat16 autocast (weights stay float32) and the result is cast back first.
        """
        if self.precision == "fp32":
            out = self.unet(x, t).sample
        else:
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                out = self.unet(x, t).sample
            out = out.to(x.dtype)
        if self.prediction_type == "epsilon":
            return out
        a = self.alphas_cumprod.to(x.device)[torch.as_tensor(t, device=x.device).long()].to(x.dtype)
        k = out.shape[0] // x.shape[0]  # 2 when a mid-block fork returned (edited, unedited) for the same x
        if k > 1:
            x = x.repeat(k, *([1] * (x.dim() - 1)))  # (kB, C, H, W)
            a = a.repeat(k) if a.dim() else a
        a = a.view(-1, *([1] * (x.dim() - 1))) if a.dim() else a  # (B, 1, 1, 1) or a scalar
        if self.prediction_type == "v_prediction":
            return a.sqrt() * out + (1 - a).sqrt() * x
        return (x - a.sqrt() * out) / (1 - a).sqrt()

    # ---------------------------------------------------------------------------------- files
    def save(self, folder: str | Path, force: bool = False, extras: dict[str, bytes] | None = None) -> Path:
        """Write the model folder atomically (see module docstring); ``extras``: further files by name (e.g. the gate montage)."""
        from diffusers import DDPMScheduler

        with atomic_dir(folder, force=force) as tmp:
            self.unet.save_pretrained(tmp, safe_serialization=True)
            DDPMScheduler.from_config(self.scheduler_config).save_pretrained(tmp)
            write_json(tmp / METADATA_FILE, self.info.to_dict())
            for name, data in (extras or {}).items():
                (tmp / name).write_bytes(data)
            write_checksums(tmp)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu", precision: str = "fp32",
             normalization: Normalization | str | Path | None = None, strict: bool = True) -> DiffusionModel:
        """Open a local diffusers UNet2DModel folder (diffex's or any other); ``precision``: see :meth:`eps`.

        ``normalization`` (a :class:`Normalization` or a JSON file, see :func:`resolve_normalization`)
        is needed for a folder without ``diffex.json`` and without a ``diffex-normalization.json``
        sidecar; ``strict=False`` loads such a model anyway, without one (``diffex inspect`` reports it).
        """
        from diffusers import DDPMScheduler, UNet2DModel

        folder = Path(folder)
        if not folder.is_dir():
            raise DiffexError(
                f"{folder}: not a local folder; diffex loads diffusion models only from disk "
                "(train one with `diffex train-diffusion`)"
            )
        unet_dir = folder / "unet" if (folder / "unet" / "config.json").exists() else folder
        sched_dir = folder / "scheduler" if (folder / "scheduler").is_dir() else folder
        if not (unet_dir / "config.json").exists():
            raise DiffexError(f"{folder}: no config.json; not a diffusers UNet2DModel folder")
        if not (sched_dir / "scheduler_config.json").exists():
            raise DiffexError(f"{folder}: no scheduler_config.json; the noise schedule is unknown")
        verify_checksums(folder)
        try:
            cfg = json.loads((unet_dir / "config.json").read_text())
        except json.JSONDecodeError as exc:
            raise DiffexError(f"{unet_dir / 'config.json'}: not valid JSON ({exc})") from exc
        if cfg.get("_class_name") not in (None, "UNet2DModel"):
            raise DiffexError(f"{unet_dir}: a {cfg.get('_class_name')}, diffex needs a UNet2DModel")
        try:
            unet = UNet2DModel.from_pretrained(unet_dir, local_files_only=True, low_cpu_mem_usage=False)
        except Exception as exc:
            raise DiffexError(f"{unet_dir}: cannot load UNet2DModel: {exc}") from exc
        sched_cfg = dict(DDPMScheduler.load_config(sched_dir, local_files_only=True))
        meta = resolve_normalization(folder, _read_metadata(folder, unet), normalization, strict)
        return cls(unet.to(device), sched_cfg, meta, precision=precision)


def _read_metadata(folder: Path, unet) -> DiffusionInfo:
    in_ch = int(unet.config.in_channels)
    size = unet.config.sample_size
    size = int(size if isinstance(size, int) else size[0])
    path = folder / METADATA_FILE
    if not path.exists():
        return DiffusionInfo(in_channels=in_ch, image_size=size, source=str(folder))
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DiffexError(f"{path}: not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise DiffexError(f"{path}: not a diffex diffusion metadata file (format {meta.get('format')!r})")
    if meta.get("in_channels") != in_ch or meta.get("image_size") != size:
        raise DiffexError(f"{path}: says {meta.get('in_channels')} channels at {meta.get('image_size')} px, the UNet has {in_ch} at {size}")
    norm = Normalization.from_dict(meta["normalization"]) if meta.get("normalization") else None
    return DiffusionInfo(
        in_channels=in_ch,
        image_size=size,
        channel_names=tuple(meta["channel_names"]) if meta.get("channel_names") else None,
        normalization=norm,
        resize_mode=meta.get("resize_mode", "resize"),
        source=str(folder),
        training=meta.get("training") or {},
        quality_gate=meta.get("quality_gate") or {},
        normalization_source=METADATA_FILE if norm else "",
        ct=meta.get("ct") or None,
    )


NO_NORMALIZATION = (
    "no normalization: the folder has no diffex.json, so diffex does not know which raw intensities map to the model's [-1, 1]. "
    "Pass --diffusion-normalization FILE or put a diffex-normalization.json in the folder, a JSON like "
    '{"low": [100.0, 80.0], "high": [4000.0, 3500.0]} (raw intensity mapped to -1 and +1, per channel), '
    'or {"identity": true} if the images are already in the model\'s [-1, 1] (see docs/formats.md)'
)


def _read_normalization(path: Path) -> Normalization | None:
    """A normalization JSON file; None for ``{"identity": true}``. Errors name the file."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DiffexError(f"{path}: cannot read the normalization ({exc})") from exc
    if not isinstance(d, dict):
        raise DiffexError(f"{path}: the normalization must be a JSON object with low and high per channel")
    if d.get("identity") is True and set(d) == {"identity"}:
        return None
    try:
        return Normalization.from_dict(d)
    except (DiffexError, KeyError, TypeError, ValueError) as exc:
        raise DiffexError(f"{path}: not a normalization ({exc}); expected {{\"low\": [...], \"high\": [...]}} per channel") from exc


def resolve_normalization(folder: Path, info: DiffusionInfo, given, strict: bool = True) -> DiffusionInfo:
    """The diffusion model's normalization: from diffex.json, else ``given`` (option), else the sidecar in the folder.

    ``given`` is a :class:`Normalization` or the path of a JSON file (``{"low": [...], "high": [...]}``
    per channel, or ``{"identity": true}``). A ``given`` that differs from diffex.json's is an
    error; without any, a DiffexError says how to supply one (``strict``) or none is set.
    """
    source, norm = None, None
    if isinstance(given, Normalization):
        source, norm = "option", given
    elif given is not None:
        source, norm = f"option {given}", _read_normalization(Path(given))
    if info.normalization_source == METADATA_FILE:
        if source and norm != info.normalization:
            raise DiffexError(f"{folder}: its {METADATA_FILE} holds a normalization that differs from the one given ({source}); "
                              "drop the option, or use the folder's")
        return info
    if source is None and (folder / SIDECAR).exists():
        source, norm = f"sidecar {folder / SIDECAR}", _read_normalization(folder / SIDECAR)
    if source is None:
        if strict:
            raise DiffexError(f"{folder}: {NO_NORMALIZATION}")
        return info
    if norm is not None and norm.n_channels != info.in_channels:
        raise DiffexError(f"{source.split(' ', 1)[-1]}: normalization for {norm.n_channels} channel(s), the UNet takes {info.in_channels}")
    label = source if norm is not None else f"identity (declared in {source})"
    return replace(info, normalization=norm, normalization_source=label)


def tiny_model(in_channels: int = 1, size: int = 8, seed: int = 0) -> DiffusionModel:
    """An untrained two-level UNet (16 and 32 channels) with the default schedule, raw intensities in [0, 1], for examples and tests.

    Example
    -------
    >>> tiny_model(in_channels=2, size=16).info.in_channels
    2
    """
    torch.manual_seed(seed)
    unet = build_unet(UNetSpec(block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=8), in_channels, size)
    norm = Normalization((0.0,) * in_channels, (1.0,) * in_channels)
    return DiffusionModel(unet, default_scheduler_config(), DiffusionInfo(in_channels=in_channels, image_size=size, normalization=norm))
