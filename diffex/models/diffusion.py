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
``scheduler/`` subfolders; without ``diffex.json`` its normalization is unknown and the data is
assumed to be already in the model's [-1, 1] range. Hub names are never accepted: nothing is
downloaded.

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
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub, even by accident

import torch

from diffex.data.normalize import Normalization
from diffex.errors import DiffexError
from diffex.fsutil import atomic_dir, verify_checksums, write_checksums, write_json

log = logging.getLogger(__name__)

METADATA_FILE = "diffex.json"
FORMAT = "diffex-diffusion"
FORMAT_VERSION = 1


PRECISIONS = ("fp32", "bf16")


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

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "channel_names": list(self.channel_names) if self.channel_names else None,
            "normalization": self.normalization.to_dict() if self.normalization else None,
            "resize_mode": self.resize_mode,
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
        if sched.config.prediction_type != "epsilon":
            raise DiffexError(f"{info.source}: prediction_type {sched.config.prediction_type!r}; diffex needs 'epsilon'")
        self.num_train_timesteps = int(sched.config.num_train_timesteps)
        self.alphas_cumprod = sched.alphas_cumprod.to(torch.float64)  # (T,)
        self.info = info

    # ----------------------------------------------------------------------------------- data
    def to_model_space(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw intensities (B, C, H, W) -> model space [-1, 1] (normalize, clip to [0, 1], rescale)."""
        x = self.info.normalization.forward(raw) if self.info.normalization else raw
        return x.clamp(0, 1) * 2 - 1 if self.info.normalization else x

    def from_model_space(self, x: torch.Tensor) -> torch.Tensor:
        """Model space (B, C, H, W) -> raw intensities."""
        if self.info.normalization is None:
            return x
        return self.info.normalization.inverse((x + 1) / 2)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: str | torch.device) -> DiffusionModel:
        self.unet.to(device)
        return self

    def eps(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Predicted noise for x (B, C, H, W) at timestep t, float32.

        With ``precision == "bf16"`` the UNet runs under bfloat16 autocast (weights stay float32;
        convolutions and matrix products run in bfloat16) and the result is cast back to float32.
        """
        if self.precision == "fp32":
            return self.unet(x, t).sample
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            out = self.unet(x, t).sample
        return out.float()

    # ---------------------------------------------------------------------------------- files
    def save(self, folder: str | Path, force: bool = False) -> Path:
        """Write the model folder atomically (see module docstring)."""
        from diffusers import DDPMScheduler

        with atomic_dir(folder, force=force) as tmp:
            self.unet.save_pretrained(tmp, safe_serialization=True)
            DDPMScheduler.from_config(self.scheduler_config).save_pretrained(tmp)
            write_json(tmp / METADATA_FILE, self.info.to_dict())
            write_checksums(tmp)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu", precision: str = "fp32") -> DiffusionModel:
        """Open a local diffusers UNet2DModel folder (diffex's or any other); ``precision``: see :meth:`eps`."""
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
        meta = _read_metadata(folder, unet)
        return cls(unet.to(device), sched_cfg, meta, precision=precision)


def _read_metadata(folder: Path, unet) -> DiffusionInfo:
    in_ch = int(unet.config.in_channels)
    size = unet.config.sample_size
    size = int(size if isinstance(size, int) else size[0])
    path = folder / METADATA_FILE
    if not path.exists():
        log.warning("%s: no %s; normalization unknown, inputs are assumed to be in [-1, 1]", folder, METADATA_FILE)
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
    )


@dataclass(frozen=True)
class UNetSpec:
    """Architecture of a diffex-trained UNet2DModel.

    ``attention_max_res`` is the largest feature-map side that gets self-attention; the mid block
    always has it. Keep it <= 16: attention at 32x32 costs ~10x on a CPU.
    """

    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)
    layers_per_block: int = 1
    attention_max_res: int = 8
    norm_num_groups: int = 16
    attention_head_dim: int = 32
    dropout: float = 0.0


def build_unet(spec: UNetSpec, in_channels: int, size: int):
    """A fresh ``UNet2DModel`` following ``spec``.

    Example
    -------
    >>> unet = build_unet(UNetSpec(block_out_channels=(16, 32), norm_num_groups=8), 2, 16)
    >>> unet.config.sample_size
    16
    """
    from diffusers import UNet2DModel

    n_levels = len(spec.block_out_channels)
    if size % 2 ** (n_levels - 1):
        raise DiffexError(f"image size {size} is not divisible by 2^{n_levels - 1} for {n_levels} UNet levels")
    if any(c % spec.norm_num_groups for c in spec.block_out_channels):
        raise DiffexError(f"block_out_channels {spec.block_out_channels} must be multiples of norm_num_groups {spec.norm_num_groups}")
    res = [size // 2**i for i in range(n_levels)]
    down = tuple("AttnDownBlock2D" if r <= spec.attention_max_res else "DownBlock2D" for r in res)
    up = tuple("AttnUpBlock2D" if r <= spec.attention_max_res else "UpBlock2D" for r in reversed(res))
    return UNet2DModel(
        sample_size=size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=tuple(spec.block_out_channels),
        layers_per_block=spec.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=spec.norm_num_groups,
        attention_head_dim=spec.attention_head_dim,
        dropout=spec.dropout,
    )


def default_scheduler_config(num_train_timesteps: int = 1000, beta_schedule: str = "linear") -> dict:
    """DDPM schedule config as diffusers writes it (epsilon prediction, no clipping)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, prediction_type="epsilon", clip_sample=False
    )
    return dict(sched.config)


def count_parameters(module: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def tiny_model(in_channels: int = 1, size: int = 8, seed: int = 0) -> DiffusionModel:
    """An untrained two-level UNet (16 and 32 channels) with the default schedule, for examples and tests.

    Example
    -------
    >>> tiny_model(in_channels=2, size=16).info.in_channels
    2
    """
    torch.manual_seed(seed)
    unet = build_unet(UNetSpec(block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=8), in_channels, size)
    return DiffusionModel(unet, default_scheduler_config(), DiffusionInfo(in_channels=in_channels, image_size=size))
