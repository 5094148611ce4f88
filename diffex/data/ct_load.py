"""CT experiments: the CT manifest, and 2-D patches in HU at one pixel spacing.

A CT manifest is a CSV with ``path,condition`` and optionally ``patient_id,series,slice,center_z,
center_y,center_x,hu_offset,spacing_mm``. ``path`` is a DICOM file, a DICOM series folder, a NIfTI
file or a 16-bit TIFF (slice or stack) whose row declares ``hu_offset`` (HU = stored value −
hu_offset) and ``spacing_mm`` (square pixels); those two columns are required on TIFF rows and
refused on others, whose files carry their own scaling; ``slice`` (or ``center_z``) picks the axial slice of a volume;
``center_y, center_x`` (voxel indices of the volume as :func:`~diffex.data.ct_io.read_ct` returns
it) centre the patch on a lesion, else the slice's centre is used. ``patient_id`` becomes the
record's ``replicate``: held-out splits and bootstraps then keep all slices of one patient on one
side.

Each patch is resampled to ``spacing_mm`` first and then cut to ``size`` x ``size`` pixels, so one
pixel is the same length in every image. Patch values stay in HU, one channel per window, each
clipped to its window (what windowing does: a render maps back to HU inside the window exactly);
the window becomes the model's normalization (:mod:`diffex.data.ct_window`).
:class:`CTGeometry` is what both model folders store (``"ct"`` in ``diffex.json``) and what
explain checks they agree on.

Example
-------
>>> import tempfile, pathlib
>>> from diffex.data.synthetic_ct import generate_ct_dataset
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = generate_ct_dataset(d / "ct", 2, seed=0)
>>> recs = read_ct_manifest(d / "ct" / "manifest.csv")
>>> s = load_ct_patches(recs, CTGeometry(spacing_mm=1.0, size=32, windows=("lung",)), show_progress=False)
>>> s.raw.shape, s.channel_names, recs[0].patient_id
((4, 1, 32, 32), ('lung',), 'ben00p0000')
>>> float(s.raw.min()) >= -1350.0 and float(s.raw.max()) <= 150.0   # clipped to the lung window
True
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from diffex.data.ct_io import MODALITIES, read_ct
from diffex.data.ct_window import HUWindow, parse_windows, resample_to_spacing, window_normalization
from diffex.data.dataset import ImageSet, Record
from diffex.errors import DiffexError, InputError
from diffex.progress import progress

log = logging.getLogger(__name__)

CT_MANIFEST_OPTIONAL = ("patient_id", "series", "slice", "center_z", "center_y", "center_x", "hu_offset", "spacing_mm")
TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class CTRecord:
    """One CT image (slice or lesion patch) of the experiment."""

    path: Path
    condition: str
    patient_id: str | None = None
    series: str | None = None
    slice: int | None = None
    center: tuple[float, float] | None = None  # (y, x) voxel indices
    hu_tiff: tuple[float, float] | None = None  # 16-bit TIFF: (HU offset, pixel spacing mm)

    def as_record(self) -> Record:
        return Record(path=self.path, condition=self.condition, replicate=self.patient_id, batch=self.series,
                      slice=self.slice, center=self.center, hu_tiff=self.hu_tiff)


def channel_name(window: HUWindow) -> str:
    """A window's channel name: the preset's name, or ``low..high`` for an explicit window."""
    return window.name if window.name != "custom" else f"{window.low:g}..{window.high:g}"


@dataclass(frozen=True)
class CTGeometry:
    """Where patches come from: ``size`` px at ``spacing_mm``, one channel per HU window, of ``modality``."""

    spacing_mm: float = 0.7
    size: int = 64
    windows: tuple = ("lung",)
    modality: str = "ct"

    def __post_init__(self):
        if not self.spacing_mm > 0 or self.size < 8:
            raise DiffexError(f"CT geometry needs spacing_mm > 0 and size >= 8, got {self.spacing_mm}, {self.size}")
        if self.modality not in MODALITIES:
            raise DiffexError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        windows = tuple(tuple(w) if isinstance(w, list) else w for w in self.windows)
        if self.modality == "mr" and any(isinstance(w, str) for w in windows):
            raise DiffexError("MR intensities are not HU: --modality mr needs explicit windows 'low,high', not presets")
        object.__setattr__(self, "windows", windows)
        parse_windows(list(windows))  # raises for an unknown window

    @property
    def hu_windows(self) -> tuple[HUWindow, ...]:
        return parse_windows(list(self.windows))

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(channel_name(w) for w in self.hu_windows)

    def normalization(self):
        """The models' normalization: window c maps to [0, 1] on channel c."""
        return window_normalization(self.hu_windows)

    def to_dict(self) -> dict:
        """What model folders store (the size is the model's own)."""
        return {"modality": self.modality, "spacing_mm": self.spacing_mm,
                "windows": [{"name": w.name, "low": w.low, "high": w.high} for w in self.hu_windows]}

    @classmethod
    def from_dict(cls, d: dict, size: int) -> CTGeometry:
        """Inverse of :meth:`to_dict`; errors name the missing or unknown key."""
        if set(d) - {"modality", "spacing_mm", "windows"}:
            raise DiffexError(f"ct: unknown keys {sorted(set(d) - {'modality', 'spacing_mm', 'windows'})}")
        try:
            windows = tuple(w["name"] if w["name"] != "custom" else (float(w["low"]), float(w["high"])) for w in d["windows"])
            geo = cls(float(d["spacing_mm"]), int(size), windows, d.get("modality", "ct"))
        except (KeyError, TypeError, ValueError) as exc:
            raise DiffexError(f"ct: missing or malformed key {exc}") from exc
        stored = [(w["low"], w["high"]) for w in d["windows"]]
        if [(w.low, w.high) for w in geo.hu_windows] != [tuple(map(float, x)) for x in stored]:
            raise DiffexError(f"ct: stored windows {stored} differ from the presets of this diffex version")
        return geo


def _number(row: dict, key: str, manifest: Path, line: int) -> float | None:
    v = (row.get(key) or "").strip()
    if not v:
        return None
    try:
        return float(v)
    except ValueError:
        raise InputError(manifest, f"line {line}: {key} {v!r} is not a number") from None


def read_ct_manifest(manifest: str | Path) -> list[CTRecord]:
    """The records of a CT manifest; errors name the manifest and the line."""
    manifest = Path(manifest)
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(manifest, f"cannot read manifest: {exc}") from exc
    if not rows or not {"path", "condition"} <= set(rows[0]):
        raise InputError(manifest, "a CT manifest needs the columns path,condition")
    out = []
    for line, row in enumerate(rows, start=2):
        if not (row.get("path") or "").strip() or not (row.get("condition") or "").strip():
            raise InputError(manifest, f"line {line}: empty path or condition")
        p = Path(row["path"].strip())
        p = p if p.is_absolute() else manifest.parent / p
        if not p.exists():
            raise InputError(manifest, f"line {line}: {p} does not exist")
        sl = _number(row, "slice", manifest, line)
        cz = _number(row, "center_z", manifest, line)
        cy, cx = _number(row, "center_y", manifest, line), _number(row, "center_x", manifest, line)
        if (cy is None) != (cx is None):
            raise InputError(manifest, f"line {line}: give both center_y and center_x, or neither")
        z = sl if sl is not None else cz
        out.append(CTRecord(p, row["condition"].strip(), (row.get("patient_id") or "").strip() or None,
                            (row.get("series") or "").strip() or None, None if z is None else int(round(z)),
                            None if cy is None else (cy, cx), _tiff_declaration(row, p, manifest, line)))
    return out


def _tiff_declaration(row: dict, path: Path, manifest: Path, line: int) -> tuple[float, float] | None:
    """(hu_offset, spacing_mm) of a TIFF row; both required for a TIFF and refused for other files."""
    off, sp = _number(row, "hu_offset", manifest, line), _number(row, "spacing_mm", manifest, line)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        if off is not None or sp is not None:
            raise InputError(manifest, f"line {line}: hu_offset and spacing_mm apply to 16-bit TIFF files only; "
                                       f"{path.name} carries its own scaling and spacing")
        return None
    if off is None or sp is None:
        raise InputError(manifest, f"line {line}: {path.name} is a TIFF, which does not say how its values map to HU: "
                                   f"give hu_offset (HU = stored value - hu_offset) and spacing_mm (pixel spacing)")
    if not sp > 0:
        raise InputError(manifest, f"line {line}: spacing_mm must be > 0, got {sp:g}")
    return off, sp


def extract_patch(hu: np.ndarray, spacing: tuple[float, float, float], rec: CTRecord, geometry: CTGeometry) -> np.ndarray:
    """(size, size) HU patch of one record from a (Z, Y, X) volume at ``spacing`` (z, y, x) mm."""
    if rec.slice is None and hu.shape[0] > 1:
        raise InputError(rec.path, f"a volume of {hu.shape[0]} slices needs a slice or center_z in the manifest")
    z = rec.slice or 0
    if not 0 <= z < hu.shape[0]:
        raise InputError(rec.path, f"slice {z} is outside the volume's {hu.shape[0]} slice(s)")
    img = resample_to_spacing(hu[z], spacing[1:], geometry.spacing_mm)  # (Y', X')
    cy, cx = rec.center if rec.center is not None else ((hu.shape[1] - 1) / 2, (hu.shape[2] - 1) / 2)
    # voxel index -> index at the new spacing (pixel centres at (i + 0.5) * spacing)
    cy, cx = ((c + 0.5) * s / geometry.spacing_mm - 0.5 for c, s in ((cy, spacing[1]), (cx, spacing[2])))
    half = geometry.size / 2
    y0, x0 = math.floor(cy - half + 1), math.floor(cx - half + 1)  # the centre falls in pixel size/2 (0-based)
    if y0 < 0 or x0 < 0 or y0 + geometry.size > img.shape[0] or x0 + geometry.size > img.shape[1]:
        raise InputError(rec.path, f"a {geometry.size} px patch at {geometry.spacing_mm} mm around ({cy:.0f}, {cx:.0f}) "
                                   f"leaves the {img.shape[0]}x{img.shape[1]} px image; choose a smaller size or spacing")
    return img[y0: y0 + geometry.size, x0: x0 + geometry.size]


def ct_records(source: str | Path) -> list[Record]:
    """The records of a CT experiment: a CT manifest, or a folder holding ``manifest.csv``."""
    source = Path(source)
    if source.is_dir():
        if not (source / "manifest.csv").is_file():
            raise InputError(source, "a CT experiment needs a manifest (path,condition[,patient_id,slice,...]): "
                                     "give the CSV, or a folder holding manifest.csv")
        source = source / "manifest.csv"
    elif not source.exists():
        raise InputError(source, "no such file or folder")
    recs = read_ct_manifest(source)
    with_id = sum(r.patient_id is not None for r in recs)
    if 0 < with_id < len(recs):
        raise InputError(source, f"{len(recs) - with_id} of {len(recs)} rows have no patient_id; give it on every row or on none")
    if with_id == 0:  # each file (volume, series) is one patient: its slices never sit on both sides of a split
        log.info("%s: no patient_id column; each file is taken as one patient", source)
        recs = [replace(r, patient_id=str(r.path)) for r in recs]
    return [r.as_record() for r in recs]


def load_ct_patches(records: list, geometry: CTGeometry, modality: str | None = None,
                    show_progress: bool = True) -> ImageSet:
    """Read, resample and cut every record (:class:`CTRecord` or :class:`Record`); raw is HU (N, windows, size, size),
    channel c clipped to window c, channels named by window."""
    if not records:
        raise DiffexError("no CT images to load")
    windows = geometry.hu_windows
    cache: dict[tuple, object] = {}
    patches = []
    for rec in progress(records, "reading CT", enabled=show_progress):
        key = (rec.path, rec.hu_tiff)
        if key not in cache:  # keep one volume: its slices are often adjacent
            tiff = {} if rec.hu_tiff is None else {"hu_offset": rec.hu_tiff[0], "spacing": (rec.hu_tiff[1], rec.hu_tiff[1])}
            cache = {key: read_ct(rec.path, modality or geometry.modality, **tiff)}
        vol = cache[key]
        patches.append(extract_patch(vol.hu, vol.spacing, rec, geometry))
    hu = np.stack(patches)[:, None].astype(np.float32)  # (N, 1, S, S)
    low = np.array([w.low for w in windows], np.float32)[None, :, None, None]
    high = np.array([w.high for w in windows], np.float32)[None, :, None, None]
    raw = np.clip(hu, low, high)  # (N, C, S, S): one window per channel
    recs = [r.as_record() if isinstance(r, CTRecord) else r for r in records]
    return ImageSet(recs, raw, geometry.channel_names, (geometry.size, geometry.size))
