"""Adapter around the user's image classifier, and diffex's classifier model folder.

A classifier, to diffex, is ``logits = f(x)`` for normalized float ``x`` (B, C, H, W) plus
metadata: class names, channel names, image size, normalization. Three sources load into that:

- a **model folder** written by ``diffex train-classifier`` (``config.json`` + ``model.safetensors``
  + ``checksums.json``; a timm architecture);
- a **torch.export program** (``model.pt2``, from ``torch.export.save``) or a **TorchScript file**
  (``model.pt``, deprecated in PyTorch) with a JSON sidecar (``model.json``) giving ``class_names``,
  ``normalization`` and optionally ``channel_names``, ``image_size``, ``resize_mode``;
- a **pickled nn.Module** with the same sidecar, only with ``trust_checkpoint=True`` (unpickling
  runs arbitrary code).

Example
-------
>>> clf = load_classifier("sample_data/models/classifier")     # doctest: +SKIP
>>> clf.info.class_names                                       # doctest: +SKIP
('control', 'treated')
>>> probs = clf.predict_proba_raw(raw_images)                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffex.data.normalize import Normalization
from diffex.errors import DiffexError
from diffex.fsutil import (
    atomic_dir,
    read_json,
    verify_checksums,
    write_checksums,
    write_json,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "diffex-classifier"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ClassifierInfo:
    """Everything about a classifier except its weights."""

    class_names: tuple[str, ...]
    in_channels: int
    image_size: int | None
    normalization: Normalization
    channel_names: tuple[str, ...] | None = None
    resize_mode: str = "resize"
    arch: str | None = None
    source: str = ""
    kind: str = "folder"  # folder | export | torchscript | pickle
    training: dict = field(default_factory=dict)
    ct: dict | None = None  # CT/MR: modality, spacing_mm, windows (diffex.data.ct_load.CTGeometry.to_dict)

    def __post_init__(self):
        if len(self.class_names) < 2:
            raise DiffexError(f"{self.source}: a classifier needs at least 2 class names, got {list(self.class_names)}")
        if len(set(self.class_names)) != len(self.class_names):
            raise DiffexError(f"{self.source}: class names repeat: {list(self.class_names)}")
        if self.normalization.n_channels != self.in_channels:
            raise DiffexError(
                f"{self.source}: normalization is for {self.normalization.n_channels} channels, the model takes {self.in_channels}"
            )
        if self.channel_names is not None and len(self.channel_names) != self.in_channels:
            raise DiffexError(f"{self.source}: {len(self.channel_names)} channel names for {self.in_channels} channels")

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "arch": self.arch,
            "in_channels": self.in_channels,
            "num_classes": len(self.class_names),
            "image_size": self.image_size,
            "class_names": list(self.class_names),
            "channel_names": list(self.channel_names) if self.channel_names else None,
            "normalization": self.normalization.to_dict(),
            "resize_mode": self.resize_mode,
            **({"ct": self.ct} if self.ct else {}),
            "training": self.training,
        }


class Classifier:
    """A loaded classifier: ``clf(x)`` gives logits (B, K) for normalized x (B, C, H, W)."""

    def __init__(self, module: torch.nn.Module, info: ClassifierInfo):
        self.module = module.eval()
        self.info = info

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    @property
    def device(self) -> torch.device:
        try:
            return next(self.module.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def to(self, device: str | torch.device) -> Classifier:
        self.module.to(device)
        return self

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw intensities (B, C, H, W) -> this classifier's input space."""
        return self.info.normalization.forward(raw)

    @torch.no_grad()
    def predict_proba_raw(self, raw: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N, K) for raw images (N, C, H, W) already at the model's size."""
        x = torch.as_tensor(np.asarray(raw, dtype=np.float32) if not isinstance(raw, torch.Tensor) else raw)
        out = []
        for chunk in x.split(batch_size):
            logits = self(self.normalize(chunk.to(self.device, torch.float32)))
            out.append(torch.softmax(logits.float(), dim=1).cpu())
        return torch.cat(out).numpy()

    def save(self, folder: str | Path, force: bool = False) -> Path:
        """Write a model folder (timm classifiers only)."""
        from safetensors.torch import save_file

        if self.info.arch is None:
            raise DiffexError("only classifiers built from a timm architecture can be saved as a model folder")
        with atomic_dir(folder, force=force) as tmp:
            state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
            save_file(state, tmp / WEIGHTS_FILE, metadata={"format": FORMAT})
            write_json(tmp / CONFIG_FILE, self.info.to_dict())
            write_checksums(tmp)
        return Path(folder)


def build_timm(arch: str, in_channels: int, num_classes: int) -> torch.nn.Module:
    """``timm.create_model(arch, pretrained=False, in_chans=..., num_classes=...)`` with a clear error."""
    import timm

    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        raise DiffexError(f"unknown timm architecture {arch!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    return timm.create_model(arch, pretrained=False, in_chans=in_channels, num_classes=num_classes)


def _info_from_dict(meta: dict, source: Path, kind: str, where: Path | None = None) -> ClassifierInfo:
    """Metadata from a config or sidecar; errors name ``where`` (the JSON file)."""
    where = where or source
    try:
        class_names = tuple(str(c) for c in meta["class_names"])
        norm = Normalization.from_dict(meta["normalization"])
    except KeyError as exc:
        raise DiffexError(f"{where}: missing key {exc}; needs class_names and normalization") from exc
    except DiffexError as exc:
        raise DiffexError(f"{where}: {exc}") from exc
    return ClassifierInfo(
        class_names=class_names,
        in_channels=int(meta.get("in_channels") or norm.n_channels),
        image_size=meta.get("image_size"),
        normalization=norm,
        channel_names=tuple(meta["channel_names"]) if meta.get("channel_names") else None,
        resize_mode=meta.get("resize_mode", "resize"),
        arch=meta.get("arch"),
        source=str(source),
        kind=kind,
        training=meta.get("training") or {},
        ct=meta.get("ct") or None,
    )


def _load_folder(folder: Path) -> Classifier:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_json(folder / CONFIG_FILE)
    if meta.get("format") != FORMAT:
        raise DiffexError(f"{folder / CONFIG_FILE}: not a diffex classifier config (format {meta.get('format')!r})")
    if not meta.get("arch"):
        raise DiffexError(f"{folder / CONFIG_FILE}: no 'arch'")
    verify_checksums(folder)
    info = _info_from_dict(meta, folder, "folder", folder / CONFIG_FILE)
    module = build_timm(info.arch, info.in_channels, len(info.class_names))
    try:
        state = load_file(folder / WEIGHTS_FILE)
    except (SafetensorError, FileNotFoundError, OSError) as exc:
        raise DiffexError(f"{folder / WEIGHTS_FILE}: cannot read weights: {exc}") from exc
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise DiffexError(f"{folder / WEIGHTS_FILE}: weights do not fit {info.arch}: {str(exc).splitlines()[0]}") from exc
    return Classifier(module, info)


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or n.split("/", 1)[-1].startswith("code/") for n in zf.namelist())


def _is_export(path: Path) -> bool:
    """A ``torch.export.save`` archive (``.pt2``): a zip with a PT2 ``archive_format`` (or, before torch 2.9, serialized_exported_program.json)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith(("/archive_format", "serialized_exported_program.json")) or n == "archive_format" for n in zf.namelist())


class _Exported(torch.nn.Module):
    """A loaded ``torch.export`` program as a module: fixed train/eval behaviour, a static batch size handled in chunks.

    A program exported with a fixed batch size b runs the input in chunks of b, the last one padded
    by repeating its last image (the padding's outputs are dropped); gradients flow as usual.
    """

    def __init__(self, program, batch: int | None):
        super().__init__()
        self.program = program.module()
        self.batch = batch

    def train(self, mode: bool = True):  # the exported graph's train/eval behaviour is fixed at export
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch is None or x.shape[0] == self.batch:
            return self.program(x)
        outs = []
        for chunk in x.split(self.batch):
            pad = self.batch - chunk.shape[0]
            full = torch.cat([chunk, chunk[-1:].expand(pad, *chunk.shape[1:])]) if pad else chunk
            outs.append(self.program(full)[: chunk.shape[0]])
        return torch.cat(outs)


def _unpickled_parts(zf: zipfile.ZipFile) -> list[str]:
    """Members of a .pt2 archive that torch would unpickle: ``*.pt`` files and weights/constants stored with pickle."""
    parts = [n for n in zf.namelist() if n.endswith(".pt")]
    for cfg_name in (n for n in zf.namelist() if n.endswith(("_weights_config.json", "_constants_config.json"))):
        folder = cfg_name.rsplit("/", 1)[0]
        for entry in json.loads(zf.read(cfg_name)).get("config", {}).values():
            if entry.get("use_pickle") or not entry.get("tensor_meta"):
                parts.append(f"{folder}/{entry['path_name']}")
    return parts


def _load_export(path: Path, trust_checkpoint: bool) -> torch.nn.Module:
    """Load a ``.pt2`` program; every pickled part must hold plain tensors unless the file is trusted.

    ``torch.export.load`` unpickles some parts without restriction (and falls back to that when the
    restricted loader fails); diffex first loads every such part with ``weights_only=True``, so an
    untrusted file never reaches the unrestricted path.
    """
    import io

    with zipfile.ZipFile(path) as zf:
        for name in _unpickled_parts(zf):
            try:
                torch.load(io.BytesIO(zf.read(name)), weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any failure means: not plain tensors
                if not trust_checkpoint:
                    raise DiffexError(f"{path}: {name} holds objects that only an unrestricted unpickler can load ({str(exc).splitlines()[0]}); "
                                      "pass --trust-checkpoint only if you made this file yourself") from exc
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds here
        raise DiffexError(f"{path}: cannot load the torch.export program: {str(exc).splitlines()[0]}") from exc
    user = set(program.graph_signature.user_inputs)
    shape = next((n.meta["val"].shape for n in program.graph.nodes if n.op == "placeholder" and n.name in user and "val" in n.meta), None)
    batch = int(shape[0]) if shape is not None and isinstance(shape[0], int) else None  # an int: exported with a fixed batch
    return _Exported(program, batch)


def _load_torchscript(path: Path) -> torch.nn.Module:
    """TorchScript, with PyTorch's deprecation warning kept from the user's terminal (logged once instead)."""
    import warnings

    log.info("%s: TorchScript is deprecated in PyTorch; a torch.export program (.pt2) is preferred (docs/formats.md)", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as exc:
        raise DiffexError(f"{path}: cannot load TorchScript: {str(exc).splitlines()[0]}") from exc


def load_classifier(path: str | Path, trust_checkpoint: bool = False, device: str | torch.device = "cpu") -> Classifier:
    """Load a classifier from a model folder, a TorchScript file or (trusted) a pickled module.

    Parameters
    ----------
    path : str or Path
        Model folder, or a ``.pt``/``.pth`` file with a ``.json`` sidecar of the same stem.
    trust_checkpoint : bool
        Allow unpickling a full ``nn.Module`` (runs code from the file: only for files you made).
    device : str or torch.device

    Raises
    ------
    DiffexError
        Missing files, a bad sidecar, a checksum mismatch, or an untrusted pickle.
    """
    path = Path(path)
    if path.is_dir():
        return _load_folder(path).to(device)
    if not path.is_file():
        raise DiffexError(f"{path}: no such classifier file or folder")
    if path.suffix == ".safetensors":
        raise DiffexError(f"{path}: bare weights; pass the model folder that holds it with its config.json")
    sidecar = _sidecar(path)
    if not sidecar.exists():
        raise DiffexError(
            f"{path}: no sidecar {sidecar.name} with class_names and normalization; "
            "write one (see docs/formats.md) or use a diffex model folder"
        )
    meta = read_json(sidecar)
    if _is_export(path):
        module, kind = _load_export(path, trust_checkpoint), "export"
    elif _is_torchscript(path):
        module, kind = _load_torchscript(path), "torchscript"
    else:
        if not trust_checkpoint:
            raise DiffexError(
                f"{path}: not TorchScript; loading a pickled module runs code from the file. "
                "Pass --trust-checkpoint only if you made this file yourself"
            )
        try:
            module = torch.load(path, map_location="cpu", weights_only=False)  # trusted by the user
        except Exception as exc:
            raise DiffexError(f"{path}: cannot unpickle: {exc}") from exc
        if not isinstance(module, torch.nn.Module):
            raise DiffexError(f"{path}: holds a {type(module).__name__}, not an nn.Module (a state dict needs a model folder)")
        kind = "pickle"
    info = _info_from_dict(meta, path, kind, sidecar)
    return Classifier(module, info).to(device)
