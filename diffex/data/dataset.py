"""An experiment's images: discovery (folder per condition, or CSV manifest) and loading.

Two layouts are accepted:

- a folder with one subfolder per condition (``images/control/*.tif``, ``images/treated/*.tif``);
  nested folders inside a condition are searched too;
- a CSV manifest with columns ``path,condition`` and optional ``plate,well,field,replicate,batch``;
  relative paths are resolved against the manifest's folder.

Example
-------
>>> import tempfile, pathlib
>>> from diffex.data.synthetic import generate_dataset
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = generate_dataset(d / "cells", n_per_condition=3, seed=0)
>>> records = discover(d / "cells")
>>> len(records), sorted({r.condition for r in records})
(6, ['control', 'treated'])
>>> images = load_images(records, size=32)
>>> images.raw.shape, images.channel_names
((6, 2, 32, 32), ('DNA', 'Actin'))
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffex.data.io import is_image_file, read_image
from diffex.data.normalize import fit_to_size
from diffex.errors import DiffexError, InputError
from diffex.progress import progress

log = logging.getLogger(__name__)

MANIFEST_REQUIRED = ("path", "condition")
MANIFEST_OPTIONAL = ("plate", "well", "field", "replicate", "batch")


@dataclass(frozen=True)
class Record:
    """One image of the experiment and its metadata."""

    path: Path
    condition: str
    plate: str | None = None
    well: str | None = None
    field: str | None = None
    replicate: str | None = None
    batch: str | None = None
    slice: int | None = None  # CT: the axial slice of a volume (None: a single-slice file)
    center: tuple[float, float] | None = None  # CT: (y, x) voxel indices the patch is centred on
    hu_tiff: tuple[float, float] | None = None  # CT 16-bit TIFF: (HU offset, pixel spacing in mm) the manifest declares

    @property
    def locator(self) -> str:
        """Where in its file the image lies ('' for a whole file), e.g. ``z12`` or ``z12,y30.5,x40``."""
        parts = [] if self.slice is None else [f"z{self.slice}"]
        parts += [] if self.center is None else [f"y{self.center[0]:g}", f"x{self.center[1]:g}"]
        return ",".join(parts)


def discover(source: str | Path) -> list[Record]:
    """List the images of an experiment from a folder or a ``.csv`` manifest.

    Non-image files are skipped with a logged reason. Raises for a missing or empty source, a
    condition without images, or a malformed manifest.
    """
    source = Path(source)
    if not source.exists():
        raise InputError(source, "no such file or folder")
    records = _from_manifest(source) if source.is_file() else _from_folder(source)
    if not records:
        raise InputError(source, "no images found")
    return records


def _from_folder(root: Path) -> list[Record]:
    records: list[Record] = []
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for p in sorted(root.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            log.info("skipping %s: not inside a condition subfolder", p)
    if not subfolders:
        raise InputError(root, "no condition subfolders; expected one subfolder per condition (or a CSV manifest)")
    for sub in subfolders:
        found = []
        for p in sorted(sub.rglob("*")):
            if not p.is_file():
                continue
            if any(part.startswith(".") for part in p.relative_to(root).parts):
                continue
            if not is_image_file(p):
                log.info("skipping %s: not an image file (suffix %r)", p, p.suffix)
                continue
            found.append(Record(path=p, condition=sub.name))
        if not found:
            raise InputError(sub, f"condition {sub.name!r} has no images")
        records.extend(found)
    return records


def _from_manifest(manifest: Path) -> list[Record]:
    if manifest.suffix.lower() != ".csv":
        raise InputError(manifest, "expected a folder of condition subfolders or a .csv manifest")
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(manifest, f"cannot read manifest: {exc}") from exc
    missing = [c for c in MANIFEST_REQUIRED if c not in header]
    if missing:
        raise InputError(manifest, f"manifest lacks column(s) {missing}; it needs {list(MANIFEST_REQUIRED)}")
    extra = [c for c in header if c not in MANIFEST_REQUIRED + MANIFEST_OPTIONAL]
    if extra:
        log.info("%s: ignoring manifest columns %s", manifest, extra)
    records, seen = [], {}
    base = manifest.parent.resolve()
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if not row.get("path") or not row.get("condition"):
            raise InputError(manifest, f"line {line}: empty path or condition")
        p = Path(row["path"])
        if not p.is_absolute() and not (base / p).resolve().is_relative_to(base):
            raise InputError(manifest, f"line {line}: {row['path']} lies outside the manifest's folder {base}; "
                                       "move the manifest up or give an absolute path")
        p = p if p.is_absolute() else manifest.parent / p
        key = p.resolve()
        if key in seen:
            raise InputError(manifest, f"line {line}: {p} is listed twice (also on line {seen[key]})")
        seen[key] = line
        if not p.is_file():
            raise InputError(manifest, f"line {line}: image {p} does not exist")
        if not is_image_file(p):
            log.info("skipping %s (manifest line %d): not an image file", p, line)
            continue
        meta = {k: (row.get(k) or None) for k in MANIFEST_OPTIONAL}
        records.append(Record(path=p, condition=row["condition"], **meta))
    return records


def conditions_of(records: list[Record]) -> list[str]:
    """The sorted distinct conditions (this order defines class indices)."""
    return sorted({r.condition for r in records})


def require_conditions(records: list[Record], source: str | Path, minimum: int = 2) -> list[str]:
    """Return the conditions, raising when there are fewer than ``minimum``."""
    conds = conditions_of(records)
    if len(conds) < minimum:
        raise InputError(source, f"found {len(conds)} condition(s) {conds}; at least {minimum} are needed")
    return conds


@dataclass(frozen=True)
class ImageSet:
    """Loaded images, all at one size.

    Attributes
    ----------
    records : list of Record
    raw : ndarray, shape (N, C, size, size), float32
        Raw intensities after :func:`~diffex.data.normalize.fit_to_size`.
    channel_names : tuple of str
    original_shape : tuple of int
        (Y, X) of the files before fitting.
    """

    records: list[Record]
    raw: np.ndarray
    channel_names: tuple[str, ...]
    original_shape: tuple[int, int]

    @property
    def conditions(self) -> list[str]:
        return conditions_of(self.records)

    def labels(self, class_names: list[str] | None = None) -> np.ndarray:
        """Integer label per image: index of its condition in ``class_names`` (default: sorted)."""
        names = list(class_names or self.conditions)
        unknown = sorted({r.condition for r in self.records} - set(names))
        if unknown:
            raise DiffexError(f"conditions {unknown} are not among the classes {names}")
        return np.array([names.index(r.condition) for r in self.records], dtype=np.int64)

    def subset(self, idx: np.ndarray) -> ImageSet:
        return ImageSet([self.records[i] for i in idx], self.raw[idx], self.channel_names, self.original_shape)


def load_images(
    records: list[Record],
    size: int | None = None,
    resize_mode: str = "resize",
    axes: str | None = None,
    expect_channels: int | None = None,
    show_progress: bool = True,
) -> ImageSet:
    """Read every record, check that all agree in size and channels, fit them to ``size``.

    Parameters
    ----------
    records : list of Record
    size : int, optional
        Side of the square the images are brought to (default: keep the files' size, which then
        must be square).
    resize_mode : {"resize", "crop"}
    axes : str, optional
        Axis order for files whose metadata cannot tell (see :func:`diffex.data.io.read_image`).
    expect_channels : int, optional
        Channel count a model needs; a file with another count is an error.
    """
    if not records:
        raise DiffexError("no images to load")
    first = None
    arrays = []
    names: tuple[str, ...] | None = None
    for rec in progress(records, "reading images", enabled=show_progress):
        img = read_image(rec.path, axes=axes)
        c, h, w = img.data.shape
        if first is None:
            first = (rec.path, img.data.shape)
            if expect_channels is not None and c != expect_channels:
                raise InputError(rec.path, f"has {c} channel(s) but the model expects {expect_channels}")
            names = img.channel_names
        else:
            fpath, fshape = first
            if c != fshape[0]:
                raise InputError(rec.path, f"has {c} channel(s) but {fpath} has {fshape[0]}; wrong channel count")
            if (h, w) != fshape[1:]:
                raise InputError(
                    rec.path,
                    f"is {h}x{w} but {fpath} is {fshape[1]}x{fshape[2]}; mixed image sizes in one experiment",
                )
            if img.channel_names is not None and names is not None and img.channel_names != names:
                raise InputError(rec.path, f"channel names {img.channel_names} differ from {names} in {fpath}")
        target = size if size is not None else min(h, w)
        if size is None and h != w:
            raise InputError(rec.path, f"is {h}x{w}, not square; give a model size to crop/resize to")
        arrays.append(fit_to_size(img.data, target, resize_mode))
    assert first is not None
    n_channels = first[1][0]
    channel_names = names or tuple(f"ch{i}" for i in range(n_channels))
    return ImageSet(list(records), np.stack(arrays), channel_names, tuple(first[1][1:]))


def split_heldout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: (train indices, held-out indices), at least one held-out per class.

    Example
    -------
    >>> tr, ho = split_heldout(np.array([0] * 10 + [1] * 10), 0.2, seed=0)
    >>> len(tr), len(ho)
    (16, 4)
    """
    if not 0 < fraction < 1:
        raise DiffexError(f"held-out fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    train, held = [], []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        rng.shuffle(idx)
        n_held = max(1, int(round(fraction * len(idx))))
        if n_held >= len(idx):
            raise DiffexError(f"class {k} has {len(idx)} image(s): too few for a held-out split")
        held.extend(idx[:n_held])
        train.extend(idx[n_held:])
    return np.sort(np.array(train)), np.sort(np.array(held))


def stratified_indices(labels: np.ndarray, n: int, seed: int, pool: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of up to n items drawn from ``pool`` (default: all), proportionally from each label, seeded.

    Example
    -------
    >>> stratified_indices(np.array([0, 0, 0, 0, 1, 1, 1, 1]), 4, seed=0).tolist()
    [2, 3, 4, 5]
    """
    pool = np.arange(len(labels)) if pool is None else np.asarray(pool)
    if len(pool) <= n:
        return np.sort(pool)
    rng = np.random.default_rng(seed)
    out = []
    for lab in np.unique(labels[pool]):
        members = pool[labels[pool] == lab]
        take = max(1, round(n * len(members) / len(pool)))
        out.append(rng.choice(members, size=min(take, len(members)), replace=False))
    return np.sort(np.concatenate(out))[: max(n, len(np.unique(labels[pool])))]


def split_indices(labels: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None,
                  pool: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split ``pool`` (default: all) into (first, second) with about ``fraction`` of each label in the second.

    With ``groups``, whole groups go to one side (images of one replicate never sit on both
    sides); groups are drawn per label when every group holds one label, else over all labels.
    Each side keeps at least one image of every label that has two or more (group-wise: two or
    more groups).

    Example
    -------
    >>> a, b = split_indices(np.array([0] * 6 + [1] * 6), 0.5, seed=0)
    >>> len(a), len(b), sorted(set(np.r_[a, b])) == list(range(12))
    (6, 6, True)
    >>> g = np.repeat(np.arange(6), 2)                     # 6 replicates of 2 images
    >>> a, b = split_indices(np.array([0] * 6 + [1] * 6), 0.5, 0, groups=g)
    >>> set(g[a]) & set(g[b])
    set()
    """
    pool = np.arange(len(labels)) if pool is None else np.asarray(pool)
    groups = (np.arange(len(labels)) if groups is None else np.asarray(groups)).astype(str)[pool]
    rng = np.random.default_rng(seed)
    labs = np.asarray(labels)[pool]
    nested = all(len(set(labs[groups == g])) == 1 for g in np.unique(groups))
    strata = [labs == lab for lab in np.unique(labs)] if nested else [np.ones(len(pool), bool)]
    second = np.zeros(len(pool), dtype=bool)
    for members in strata:
        units = np.unique(groups[members])
        rng.shuffle(units)
        n_second = int(round(fraction * len(units)))
        if len(units) > 1:  # both sides keep at least one unit
            n_second = min(max(n_second, 1), len(units) - 1)
        second |= members & np.isin(groups, units[:n_second])
    return np.sort(pool[~second]), np.sort(pool[second])


def image_name(record: Record, source: str | Path) -> str:
    """The record's name in results: its path relative to ``source``, with ``#locator`` for part of a volume.

    Example
    -------
    >>> image_name(Record(Path("/d/ct/vol.nii.gz"), "benign", slice=12), "/d/ct")
    'vol.nii.gz#z12'
    """
    rel = relative_path(record.path, source)
    return f"{rel}#{record.locator}" if record.locator else rel


def relative_path(path: Path, source: str | Path) -> str:
    """``path`` relative to the image folder (or the manifest's folder) when inside it, for records.

    Example
    -------
    >>> relative_path(Path("/data/exp/ctrl/a.tif"), "/data/exp")
    'ctrl/a.tif'
    """
    root = Path(source)
    root = root.parent if root.is_file() else root
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)
