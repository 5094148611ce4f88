"""An experiment's images as model inputs, for every modality: which files, how read, how normalized.

Microscopy images are found by :func:`~diffex.data.dataset.discover` (condition folders or a
manifest), fitted to the model size and normalized by percentiles fitted on the training images.
CT (and MR) images come from a CT manifest (:func:`~diffex.data.ct_load.ct_records`), are
resampled to one pixel spacing, cut to patches and normalized by fixed windows
(:class:`~diffex.data.ct_load.CTGeometry`), never by percentiles of the data. Training commands
and explain go through these functions, so a modality is handled in one place.

Example
-------
>>> geometry_for("microscopy", 32) is None
True
>>> geometry_for("ct", 32, spacing_mm=0.7, windows=("lung",)).channel_names
('lung',)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from diffex.data.ct_load import CTGeometry, ct_records, load_ct_patches
from diffex.data.dataset import ImageSet, Record, discover, load_images, split_heldout, split_indices
from diffex.data.normalize import DEFAULT_PERCENTILES, Normalization, describe_geometry
from diffex.errors import DiffexError
from diffex.fsutil import sha256_file

MODALITIES = ("microscopy", "ct", "mr")


def geometry_for(modality: str, size: int, spacing_mm: float | None = None, windows=()) -> CTGeometry | None:
    """The CT/MR geometry of a training config (None for microscopy); errors say which setting is missing."""
    if modality not in MODALITIES:
        raise DiffexError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if modality == "microscopy":
        if spacing_mm or windows:
            raise DiffexError("spacing_mm and windows are settings of --modality ct or mr, not of microscopy")
        return None
    if not windows:
        raise DiffexError(f"--modality {modality} needs windows: --window lung (presets lung, mediastinum, soft_tissue, "
                          "bone, comma-separated for several channels) or --window LOW,HIGH")
    if not spacing_mm:
        raise DiffexError(f"--modality {modality} needs the pixel spacing in mm that every image is resampled to (--spacing)")
    return CTGeometry(spacing_mm=float(spacing_mm), size=size, windows=tuple(windows), modality=modality)


def canonical_windows(spec) -> tuple:
    """Windows as a config holds them: preset names, and (low, high) for explicit windows.

    Example
    -------
    >>> canonical_windows("lung,bone"), canonical_windows("-1000,400"), canonical_windows([[-160, 240]])
    (('lung', 'bone'), ((-1000.0, 400.0),), ((-160.0, 240.0),))
    """
    from diffex.data.ct_window import parse_windows

    if spec is None or (not isinstance(spec, str) and len(spec) == 0):
        return ()
    return tuple(w.name if w.name != "custom" else (w.low, w.high) for w in parse_windows(spec if isinstance(spec, str) else list(spec)))


def find_records(source: str | Path, geometry: CTGeometry | None) -> list[Record]:
    """The experiment's records: a CT manifest for CT/MR, else folders or a manifest of microscopy images."""
    return ct_records(source) if geometry is not None else discover(source)


def load_records(records: list[Record], size: int, resize_mode: str, geometry: CTGeometry | None, axes: str | None = None,
                 expect_channels: int | None = None, show_progress: bool = True) -> ImageSet:
    """Raw images (N, C, size, size): microscopy intensities, or HU patches clipped per window."""
    if geometry is None:
        return load_images(records, size, resize_mode, axes=axes, expect_channels=expect_channels, show_progress=show_progress)
    if geometry.size != size:
        raise DiffexError(f"CT patches of {geometry.size} px requested for a {size} px model")
    return load_ct_patches(records, geometry, show_progress=show_progress)


def model_normalization(geometry: CTGeometry | None, train_raw: np.ndarray,
                        percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> Normalization:
    """The window(s) for CT/MR; percentiles of the training images for microscopy."""
    return geometry.normalization() if geometry is not None else Normalization.fit(train_raw, percentiles)


def split_train_heldout(data: ImageSet, labels: np.ndarray, fraction: float, seed: int,
                        geometry: CTGeometry | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices, stratified by condition. For CT/MR whole patients (the records' replicate:
    ``patient_id``, else the file) go to one side; microscopy splits images, as before CT existed."""
    if geometry is None:
        return split_heldout(labels, fraction, seed)
    if not 0 < fraction < 1:
        raise DiffexError(f"held-out fraction must be between 0 and 1, got {fraction}")
    reps = np.array([r.replicate for r in data.records])
    train, held = split_indices(labels, fraction, seed, groups=reps)
    if not len(train) or not len(held) or set(labels[train]) != set(labels) or set(labels[held]) != set(labels):
        raise DiffexError(f"{len(set(reps))} patient(s) are too few for a held-out split that keeps every condition on both sides")
    return train, held


def describe_input(geometry: CTGeometry | None, resize_mode: str, size: int) -> str:
    """How images became model inputs, for the training record and the report's methods."""
    if geometry is None:
        return describe_geometry(resize_mode, size)
    wins = "; ".join(w.describe() for w in geometry.hu_windows)
    unit = "HU" if geometry.modality == "ct" else "scanner units"
    return (f"{geometry.modality.upper()}: each slice resampled to {geometry.spacing_mm:g} mm pixels (linear, Gaussian "
            f"anti-aliasing when shrinking), a {size} x {size} px patch ({size * geometry.spacing_mm:g} mm) cut around the "
            f"manifest's centre; values in {unit} (stored value x RescaleSlope + RescaleIntercept), one channel per window, "
            f"clipped to it and mapped to [0, 1]: {wins}")


def file_digest(path: Path) -> str:
    """SHA-256 of a file, or of a series folder (every file's relative path and SHA-256, sorted)."""
    if not path.is_dir():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(p.relative_to(path).as_posix().encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


def record_digest(record: Record, file_sha: str | None = None) -> str:
    """The cache key of a record's content: its file's digest, with its locator (slice, centre) inside the file
    and, for an HU TIFF, the offset and spacing the manifest declares (another offset is another image)."""
    base = file_sha or file_digest(record.path)
    where = record.locator + ("" if record.hu_tiff is None else f";hu_tiff={record.hu_tiff[0]:g},{record.hu_tiff[1]:g}")
    return base if not where else hashlib.sha256(f"{base}#{where}".encode()).hexdigest()


def config_record(cfg_dict: dict) -> dict:
    """A training config as recorded: without the CT keys for microscopy (records as before CT existed)."""
    if cfg_dict.get("modality", "microscopy") != "microscopy":
        return cfg_dict
    return {k: v for k, v in cfg_dict.items() if k not in ("modality", "spacing_mm", "windows")}
