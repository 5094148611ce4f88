"""Fields of view in, single-cell crops out (``diffex crop``).

Objects come from label images the user supplies (CellProfiler, cellpose, StarDist; matched by
file name) or from diffex's own nuclear segmentation (:mod:`diffex.data.segment`). An object is
kept when it does not touch the field's border, its area lies in ``[min_area, max_area]`` and a
``size`` x ``size`` window centred on it lies inside the field; every exclusion is counted by
reason. The output folder holds:

- ``crops/<condition>/<field>_obj<label>.ome.tif``: every channel, raw pixel type, channel names;
- ``crops.csv``: ``path,condition,plate,well,field,object,centroid_y,centroid_x,area``, a
  manifest that ``diffex explain --images OUT/crops.csv`` reads directly;
- ``summary.csv``: objects found, kept and excluded (by reason) per field;
- ``qc_<condition>.png``: a montage of kept crops per condition;
- ``crop.json``: the settings, totals and the command.

The folder is written under a temporary name and renamed when complete.

Example
-------
>>> import tempfile, pathlib
>>> from diffex.data.synthetic_fields import FieldSpec, generate_fields
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = generate_fields(d / "fov", 1, seed=0, spec=FieldSpec(size=160, cells=4, touching_pairs=0))
>>> summary = crop_fields(d / "fov", d / "crops", CropConfig(size=48), show_progress=False)
>>> summary["kept"] > 0 and (d / "crops" / "crops.csv").is_file()
True
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from diffex.data.dataset import Record, discover, relative_path, require_conditions
from diffex.data.io import IMAGE_SUFFIXES, read_image, write_ome_tiff
from diffex.data.segment import NuclearSegmentation, segment_nuclei
from diffex.errors import DiffexError, InputError
from diffex.fsutil import atomic_dir, write_json
from diffex.progress import progress

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("path", "condition", "plate", "well", "field", "object", "centroid_y", "centroid_x", "area")
REASONS = ("touches the field border", "area below min_area", "area above max_area", "crop window leaves the field")
NUCLEAR_NAMES = ("dna", "dapi", "hoechst", "nuclei", "nucleus", "h2b")
LABEL_SUFFIXES = ("", "_labels", "_label", "_masks", "_mask", "_cp_masks", "_seg")


@dataclass(frozen=True)
class CropConfig:
    """Settings of ``diffex crop``; areas in pixels (default: 0.25x and 3x a disc of the nucleus diameter)."""

    size: int = 64
    nuclear_channel: str | None = None  # a channel name or a 0-based index; default: a channel named like DNA/DAPI
    labels: Path | None = None  # folder of label images; default: segment the nuclear channel
    min_area: float | None = None
    max_area: float | None = None
    segmentation: NuclearSegmentation = field(default_factory=NuclearSegmentation)
    montage: int = 64  # crops per condition in the QC montage

    def __post_init__(self):
        if self.size < 8:
            raise DiffexError(f"crop size must be >= 8 px, got {self.size}")

    def area_range(self) -> tuple[float, float]:
        disc = math.pi * (self.segmentation.diameter / 2) ** 2
        return (self.min_area if self.min_area is not None else 0.25 * disc,
                self.max_area if self.max_area is not None else 3.0 * disc)


def nuclear_channel_index(names: tuple[str, ...] | None, n_channels: int, choice: str | None, path: Path) -> int:
    """The index of the nuclear channel: ``choice`` as a name or index, else a channel named like DNA, else the only one."""
    names = names or tuple(f"ch{i}" for i in range(n_channels))
    if choice is not None:
        if choice in names:
            return names.index(choice)
        if choice.isdigit() and int(choice) < n_channels:
            return int(choice)
        raise InputError(path, f"no channel {choice!r}; channels are {list(names)} (or give a 0-based index)")
    found = [i for i, n in enumerate(names) if n.lower() in NUCLEAR_NAMES]
    if len(found) == 1:
        return found[0]
    if n_channels == 1:
        return 0
    raise InputError(path, f"which channel shows nuclei? channels are {list(names)}; pass --nuclear-channel")


def _stem(path: Path) -> str:
    """The file name without its image suffixes (``a.ome.tif`` -> ``a``)."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def find_labels(folder: Path, field_path: Path) -> Path:
    """The label image for a field: same stem, optionally ``_labels``/``_masks``/``_cp_masks``..., any image suffix."""
    stem = _stem(field_path)
    wanted = {f"{stem}{s}".lower() for s in LABEL_SUFFIXES}
    hits = [p for p in folder.rglob("*") if p.is_file() and _stem(p).lower() in wanted and p.suffix.lower() in IMAGE_SUFFIXES
            and p.resolve() != field_path.resolve()]  # masks may lie beside the fields: never the field itself
    if len(hits) > 1:  # the same field name in several conditions: the label image in the field's own subfolder
        same = [p for p in hits if p.parent.name == field_path.parent.name]
        hits = same or hits
    if not hits:
        raise InputError(field_path, f"no label image in {folder} (looked for {stem}{{{','.join(LABEL_SUFFIXES[1:])}}}.tif/.png)")
    if len(hits) > 1:
        raise InputError(field_path, f"several label images match in {folder}: {sorted(str(h) for h in hits)}")
    return hits[0]


def read_labels(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A label image as int64 (Y, X); raises for the wrong shape, a non-integer type, negative values or no objects."""
    import tifffile
    from PIL import Image as PILImage

    try:
        arr = tifffile.imread(path) if path.suffix.lower() in (".tif", ".tiff") else np.asarray(PILImage.open(path))
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
        raise InputError(path, f"cannot read label image: {exc}") from exc
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise InputError(path, f"a label image must be 2-D, got shape {arr.shape}")
    if arr.shape != shape:
        raise InputError(path, f"label image is {arr.shape[0]} x {arr.shape[1]} px, its field is {shape[0]} x {shape[1]}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(path, f"label image has pixel type {arr.dtype}; labels must be integers")
    if arr.min() < 0:
        raise InputError(path, "label image has negative values")
    if arr.max() == 0:
        raise InputError(path, "label image has no objects (every pixel is 0)")
    return arr.astype(np.int64)


def window_start(centroid: float, size: int) -> int:
    """First pixel of a ``size`` window centred on ``centroid`` (halves round up, not to even).

    >>> window_start(49.5, 32), window_start(64.5, 32), window_start(10.2, 8)
    (34, 49, 6)
    """
    return math.floor(centroid + 0.5) - size // 2


def field_objects(labels: np.ndarray, cfg: CropConfig) -> list[dict]:
    """Every labelled object with centroid, area and the reason it is excluded (``None`` if kept)."""
    lo, hi = cfg.area_range()
    ny, nx = labels.shape
    out = []
    for sl, lab in zip(ndimage.find_objects(labels), range(1, int(labels.max()) + 1)):
        if sl is None:
            continue
        mask = labels[sl] == lab
        area = int(mask.sum())
        cy, cx = (float(c) + s.start for c, s in zip(ndimage.center_of_mass(mask), sl))
        y0, x0 = window_start(cy, cfg.size), window_start(cx, cfg.size)
        if sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == ny or sl[1].stop == nx:
            reason = REASONS[0]
        elif area < lo:
            reason = REASONS[1]
        elif area > hi:
            reason = REASONS[2]
        elif y0 < 0 or x0 < 0 or y0 + cfg.size > ny or x0 + cfg.size > nx:
            reason = REASONS[3]
        else:
            reason = None
        out.append({"object": lab, "centroid_y": cy, "centroid_x": cx, "area": area, "y0": y0, "x0": x0, "reason": reason})
    return out


def safe_name(text: str) -> str:
    """``text`` as one file-name-safe path component (no separators, no ``..``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip(".") or "_"


def _field_name(record: Record, source: Path) -> str:
    """A file-name-safe, unique name for a field: its path relative to the source, separators as ``__``."""
    rel = relative_path(record.path, source if source.is_dir() else source.parent)
    rel = rel[: -len(record.path.name)] + _stem(record.path)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", rel.replace("/", "__"))


def _crop_one(record: Record, source: Path, tmp: Path, cfg: CropConfig) -> tuple[list[dict], dict, list[np.ndarray]]:
    """Segment (or read labels of) one field, write its kept crops; returns manifest rows, summary row, montage crops."""
    img = read_image(record.path)
    c, ny, nx = img.data.shape  # (C, Y, X)
    nuc = nuclear_channel_index(img.channel_names, c, cfg.nuclear_channel, record.path)
    if cfg.labels is not None:
        labels = read_labels(find_labels(cfg.labels, record.path), (ny, nx))
    else:
        labels = segment_nuclei(img.data[nuc], cfg.segmentation)
    objects = field_objects(labels, cfg)
    names = img.channel_names or tuple(f"ch{i}" for i in range(c))
    name, rows, crops = _field_name(record, source), [], []
    field_id = record.field or relative_path(record.path, source if source.is_dir() else source.parent)
    for o in objects:
        if o["reason"] is not None:
            continue
        crop = img.data[:, o["y0"]: o["y0"] + cfg.size, o["x0"]: o["x0"] + cfg.size].astype(img.dtype)  # (C, size, size)
        rel = f"crops/{safe_name(record.condition)}/{name}_obj{o['object']:04d}.ome.tif"
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        write_ome_tiff(tmp / rel, crop, names)
        rows.append({"path": rel, "condition": record.condition, "plate": record.plate or "", "well": record.well or "",
                     "field": field_id, "object": o["object"], "centroid_y": f"{o['centroid_y']:.2f}",
                     "centroid_x": f"{o['centroid_x']:.2f}", "area": o["area"]})
        crops.append(crop[[nuc] + [i for i in range(c) if i != nuc][:1]])
    reasons = Counter(o["reason"] for o in objects if o["reason"] is not None)
    summary = {"field": field_id, "condition": record.condition, "found": len(objects), "kept": len(rows),
               **{r: reasons.get(r, 0) for r in REASONS}}
    return rows, summary, crops


def montage(crops: list[np.ndarray], columns: int = 8, scale: int = 2) -> np.ndarray:
    """Crops (each (C<=2, S, S), nuclear channel first) as one RGB uint8 grid: nuclei blue, the other channel orange."""
    s = crops[0].shape[-1]
    rows = math.ceil(len(crops) / columns)
    grid = np.zeros((rows * (s + 2), columns * (s + 2), 3))
    stack = np.stack([c.astype(np.float64) for c in crops])  # (N, C, S, S)
    lo = np.percentile(stack, 1, axis=(0, 2, 3))[None, :, None, None]
    hi = np.percentile(stack, 99.5, axis=(0, 2, 3))[None, :, None, None]
    stack = np.clip((stack - lo) / np.maximum(hi - lo, 1e-9), 0, 1)
    for i, c in enumerate(stack):
        other = c[1] if len(c) > 1 else np.zeros_like(c[0])
        rgb = np.stack([other, 0.55 * other + 0.25 * c[0], c[0]], axis=-1)
        y, x = (i // columns) * (s + 2) + 1, (i % columns) * (s + 2) + 1
        grid[y: y + s, x: x + s] = rgb
    grid = np.repeat(np.repeat(grid, scale, 0), scale, 1)
    return (grid * 255).round().astype(np.uint8)


def _write_tables(tmp: Path, rows: list[dict], summaries: list[dict]) -> None:
    with open(tmp / "crops.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(MANIFEST_COLUMNS))
        w.writeheader()
        w.writerows(rows)
    with open(tmp / "summary.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["field", "condition", "found", "kept", *REASONS])
        w.writeheader()
        w.writerows(summaries)


def crop_fields(source: str | Path, out: str | Path, cfg: CropConfig | None = None, force: bool = False,
                show_progress: bool = True, command: str = "") -> dict:
    """Crop every field of view under ``source`` (condition folders or a manifest) into ``out``; returns the totals.

    Raises :class:`~diffex.errors.DiffexError` when no object is kept at all, and
    :class:`~diffex.errors.InputError` naming the file for an unreadable field or label image.
    """
    from PIL import Image as PILImage

    cfg, source, out = cfg or CropConfig(), Path(source), Path(out)
    records = discover(source)
    conditions = require_conditions(records, source)
    if cfg.labels is not None and not Path(cfg.labels).is_dir():
        raise InputError(cfg.labels, "label folder does not exist")
    rows, summaries, by_condition = [], [], {c: [] for c in conditions}
    names: dict[tuple[str, str], Path] = {}
    for r in records:  # two fields whose names clean to the same string would overwrite each other's crops
        key = (safe_name(r.condition), _field_name(r, source))
        if key in names:
            raise InputError(r.path, f"its crops would have the same names as those of {names[key]}; rename one of them")
        names[key] = r.path
    with atomic_dir(out, force=force) as tmp:
        for record in progress(records, "cropping fields", enabled=show_progress):
            r, s, crops = _crop_one(record, source, tmp, cfg)
            rows += r
            summaries.append(s)
            by_condition[record.condition] += crops[: max(0, cfg.montage - len(by_condition[record.condition]))]
        if not rows:
            raise DiffexError(f"{source}: no object was kept in {len(records)} field(s); check --nuclear-channel, "
                              f"--diameter and the area range {cfg.area_range()}")
        _write_tables(tmp, rows, summaries)
        for condition, crops in by_condition.items():
            if crops:
                PILImage.fromarray(montage(crops)).save(tmp / f"qc_{safe_name(condition)}.png")
        totals = {"fields": len(records), "found": sum(s["found"] for s in summaries), "kept": len(rows),
                  "excluded": {r: sum(s[r] for s in summaries) for r in REASONS},
                  "kept_per_condition": {c: sum(r["condition"] == c for r in rows) for c in conditions}}
        write_json(tmp / "crop.json", {"command": command, "source": str(source), "config": _config_dict(cfg), **totals})
    log.info("kept %d of %d objects in %d fields; excluded %s", totals["kept"], totals["found"], totals["fields"],
             {k: v for k, v in totals["excluded"].items() if v})
    return totals


def _config_dict(cfg: CropConfig) -> dict:
    d = asdict(cfg)
    d["labels"] = str(cfg.labels) if cfg.labels is not None else None
    d["area_range"] = list(cfg.area_range())
    return d
