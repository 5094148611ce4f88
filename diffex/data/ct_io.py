"""Reading CT into Hounsfield units with its voxel spacing in millimetres.

Three sources, one result (:class:`CTVolume`: HU as float32 (Z, Y, X) and spacing (z, y, x) in mm):

- DICOM (pydicom), a single file or a series folder: HU = stored value x RescaleSlope +
  RescaleIntercept; PixelSpacing and SliceThickness (or, for a series, the distance between slice
  positions along the slice normal) give the spacing. Pixels equal to a declared PixelPaddingValue
  (outside the scanner's field of view) become air, -1000 HU.
- NIfTI (nibabel), 2-D or 3-D: the header's scaling is applied, the volume is brought to the closest
  canonical orientation and shown like DICOM axial slices (rows anterior to posterior, columns
  patient right to left).
- 16-bit TIFF with a declared HU offset: HU = stored value - offset, spacing given by the caller.

Every problem is an :class:`~diffex.errors.InputError` naming the file: no pixel data, a compressed
transfer syntax without a decoder (the message names the package to add), a modality that is not
CT (MR is read only when asked for, without HU), a series with mixed spacing or orientation, a 4-D
or oblique NIfTI, missing rescale values, and HU outside [-2000, 4000].

Example
-------
>>> from pydicom.data import get_testdata_file
>>> ct = read_ct(get_testdata_file("CT_small.dcm"))
>>> ct.hu.shape, [round(s, 3) for s in ct.spacing], ct.modality
((1, 128, 128), [5.0, 0.661, 0.661], 'CT')
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffex.errors import InputError

log = logging.getLogger(__name__)

HU_RANGE = (-2000.0, 4000.0)
AIR_HU = -1000.0
MODALITIES = ("ct", "mr")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Largest obliquity (radians) of a NIfTI affine still read as axis-aligned.
MAX_OBLIQUITY = 1e-3
DECODER_HINT = ("pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (JPEG, JPEG-LS, JPEG 2000) "
                "or pip install python-gdcm")


@dataclass(frozen=True)
class CTVolume:
    """A CT (or MR) volume.

    Attributes
    ----------
    hu : ndarray, shape (Z, Y, X), float32
        Hounsfield units for CT; the scaled stored values for MR.
    spacing : tuple of float
        Voxel size (z, y, x) in mm; z is NaN for a single slice without a slice thickness.
    source : Path
    modality : str
        ``"CT"`` or ``"MR"``.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    source: Path
    modality: str = "CT"


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def fill_undeclared_padding(hu: np.ndarray, path: Path) -> np.ndarray:
    """Scanners often fill pixels outside the field of view with one constant far below air (-2048, -3024)
    without declaring it; when every value below -2000 HU is that one constant, it becomes air (logged)."""
    low = hu < HU_RANGE[0]
    if low.any() and np.unique(hu[low]).size == 1:
        log.info("%s: %d pixels of the constant %g HU (outside the field of view) set to air", path, int(low.sum()), float(hu[low][0]))
        hu = np.where(low, np.float32(AIR_HU), hu)
    return hu


def check_hu_range(hu: np.ndarray, path: Path) -> None:
    """Refuse values outside :data:`HU_RANGE` (a wrong rescale or offset, or not CT at all)."""
    lo, hi = float(np.min(hu)), float(np.max(hu))
    if lo < HU_RANGE[0] or hi > HU_RANGE[1]:
        raise InputError(path, f"HU values span [{lo:g}, {hi:g}], outside [{HU_RANGE[0]:g}, {HU_RANGE[1]:g}]: "
                               "check RescaleSlope/RescaleIntercept or the declared HU offset")


def _check_modality(ds, path: Path, modality: str) -> str:
    found = str(ds.get("Modality", "") or "").upper()
    if modality not in MODALITIES:
        raise InputError(path, f"modality must be one of {MODALITIES}, got {modality!r}")
    if found != modality.upper():
        hint = " (pass --modality mr with explicit windows to read MR)" if found == "MR" else ""
        raise InputError(path, f"modality is {found or 'missing'}, not {modality.upper()}{hint}")
    return found


def _pixels(ds, path: Path) -> np.ndarray:
    """The stored values, decoded; a missing decoder is named."""
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises RuntimeError/NotImplementedError/ValueError by plugin
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        name = getattr(syntax, "name", str(syntax))
        if syntax is not None and getattr(syntax, "is_compressed", False):
            raise InputError(path, f"pixel data are compressed ({name}) and no installed decoder can read them; "
                                   f"{DECODER_HINT}") from exc
        raise InputError(path, f"cannot decode pixel data ({name}): {exc}") from exc


def _rescale(ds, stored: np.ndarray, path: Path, modality: str) -> np.ndarray:
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if modality == "ct" and (slope is None or intercept is None):
        missing = [n for n, v in (("RescaleSlope", slope), ("RescaleIntercept", intercept)) if v is None]
        raise InputError(path, f"{' and '.join(missing)} missing: cannot convert stored values to HU")
    values = stored.astype(np.float64) * float(1.0 if slope is None else slope) + float(0.0 if intercept is None else intercept)
    padding, limit = ds.get("PixelPaddingValue"), ds.get("PixelPaddingRangeLimit")
    if padding is not None and modality == "ct":
        lo, hi = sorted((padding, padding if limit is None else limit))
        values[(stored >= lo) & (stored <= hi)] = AIR_HU
    values = values.astype(np.float32)
    return fill_undeclared_padding(values, path) if modality == "ct" else values


def _read_dataset(path: Path, modality: str):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise InputError(path, f"not a readable DICOM file: {exc}") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InputError(path, f"DICOM without pixel data (SOP class {ds.get('SOPClassUID', 'unknown')})")
    _check_modality(ds, path, modality)
    return ds


def _pixel_spacing(ds, path: Path) -> tuple[float, float]:
    ps = ds.get("PixelSpacing")
    if ps is None or len(ps) != 2 or not all(float(v) > 0 for v in ps):
        raise InputError(path, "PixelSpacing missing or invalid: sizes in mm cannot be known")
    return float(ps[0]), float(ps[1])


def read_dicom(path: str | Path, modality: str = "ct") -> CTVolume:
    """One DICOM file (a single slice, or a multi-frame image) as a :class:`CTVolume`."""
    path = Path(path)
    ds = _read_dataset(path, modality)
    values = _rescale(ds, _pixels(ds, path), path, modality)
    hu = values[None] if values.ndim == 2 else values  # (Z, Y, X)
    if modality == "ct":
        check_hu_range(hu, path)
    thickness = ds.get("SliceThickness")
    dz = float(thickness) if thickness not in (None, "") else float("nan")
    return CTVolume(hu, (dz, *_pixel_spacing(ds, path)), path, modality.upper())


def _slice_geometry(ds, path: Path) -> tuple[np.ndarray, np.ndarray]:
    iop, ipp = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    if iop is None or ipp is None:
        raise InputError(path, "ImageOrientationPatient or ImagePositionPatient missing: slices cannot be ordered")
    return np.asarray([float(v) for v in iop]), np.asarray([float(v) for v in ipp])


def read_dicom_series(folder: str | Path, modality: str = "ct") -> CTVolume:
    """All DICOM slices of a folder, ordered along the slice normal, as one volume.

    Raises for mixed pixel spacing, orientation or image size, and for uneven slice gaps.
    """
    from pydicom.misc import is_dicom

    folder = Path(folder)
    files = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR":
            if is_dicom(p):
                files.append(p)
            else:
                log.info("skipping %s: not a DICOM file", p)
    if not files:
        raise InputError(folder, "no DICOM files in this series folder")
    slices = []
    for p in files:
        ds = _read_dataset(p, modality)
        iop, ipp = _slice_geometry(ds, p)
        slices.append((p, ds, iop, ipp, _pixel_spacing(ds, p)))
    p0, ds0, iop0, _, ps0 = slices[0]
    for p, ds, iop, _, ps in slices[1:]:
        if not np.allclose(iop, iop0, atol=1e-4):
            raise InputError(p, f"orientation {iop.round(4).tolist()} differs from {p0.name}'s {iop0.round(4).tolist()}: mixed orientation in one series")
        if not np.allclose(ps, ps0, rtol=1e-4):
            raise InputError(p, f"pixel spacing {ps} differs from {p0.name}'s {ps0}: mixed spacing in one series")
        if (ds.Rows, ds.Columns) != (ds0.Rows, ds0.Columns):
            raise InputError(p, f"image size {ds.Rows}x{ds.Columns} differs from {p0.name}'s {ds0.Rows}x{ds0.Columns}")
    normal = np.cross(iop0[:3], iop0[3:])
    slices.sort(key=lambda s: float(np.dot(s[3], normal)))
    pos = np.array([float(np.dot(s[3], normal)) for s in slices])
    gaps = np.diff(pos)
    if len(gaps) and (np.any(gaps <= 0) or np.ptp(gaps) > 0.01 * np.median(gaps) + 1e-3):
        raise InputError(folder, f"uneven or repeated slice positions (gaps {np.round(gaps, 3).tolist()} mm): mixed spacing in one series")
    hu = np.stack([_rescale(ds, _pixels(ds, p), p, modality) for p, ds, *_ in slices])  # (Z, Y, X)
    if modality == "ct":
        check_hu_range(hu, folder)
    dz = float(np.median(gaps)) if len(gaps) else float(ds0.get("SliceThickness") or "nan")
    return CTVolume(hu, (dz, *ps0), folder, modality.upper())


def read_nifti(path: str | Path, modality: str = "ct") -> CTVolume:
    """A 2-D or 3-D NIfTI in HU (header scaling applied), in DICOM-like display orientation."""
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError ...
        raise InputError(path, f"not a readable NIfTI file: {exc}") from exc
    shape = img.shape
    if len(shape) > 3 and any(n > 1 for n in shape[3:]):
        raise InputError(path, f"{len(shape)}-D NIfTI {shape}: diffex reads 2-D slices or 3-D volumes, not time series")
    oblique = float(np.max(nib.affines.obliquity(img.affine)))
    if oblique > MAX_OBLIQUITY:
        raise InputError(path, f"oblique affine ({np.degrees(oblique):.1f} degrees off the axes): resample it to an "
                               "axis-aligned grid first")
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape[:3])  # scaling applied; 4th axis of 1 dropped
        data = data[..., None] if data.ndim == 2 else data  # (i, j, k)
        ornt = nib.orientations.io_orientation(img.affine)  # voxel axes -> closest RAS axes, with flips
        data = nib.orientations.apply_orientation(data, ornt)  # (X, Y, Z) in RAS
    except Exception as exc:  # nibabel raises OrientationError, ValueError ...
        raise InputError(path, f"cannot bring the NIfTI to a standard orientation: {exc}") from exc
    zooms = [float(z) for z in img.header.get_zooms()[:3]] + [float("nan")] * (3 - len(shape[:3]))
    ras_zooms = [0.0, 0.0, 0.0]
    for axis, (target, _flip) in enumerate(ornt):
        ras_zooms[int(target)] = zooms[axis]
    hu = np.ascontiguousarray(data.transpose(2, 1, 0)[:, ::-1, ::-1])  # (Z, Y, X): rows A->P, columns R->L
    zooms = ras_zooms
    if modality == "ct":
        hu = fill_undeclared_padding(hu, path)
        check_hu_range(hu, path)
    return CTVolume(hu, (zooms[2], zooms[1], zooms[0]), path, modality.upper())


def read_hu_tiff(path: str | Path, offset: float, spacing: tuple[float, float]) -> CTVolume:
    """A 16-bit TIFF slice (or stack) whose stored value minus ``offset`` is HU, at ``spacing`` (y, x) mm."""
    import tifffile

    path = Path(path)
    try:
        arr = tifffile.imread(path)
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, OSError
        raise InputError(path, f"not a readable TIFF file: {exc}") from exc
    if arr.dtype not in (np.uint16, np.int16):
        raise InputError(path, f"pixel type {arr.dtype}: an HU TIFF must be 16-bit (uint16 or int16)")
    if arr.ndim not in (2, 3):
        raise InputError(path, f"shape {arr.shape}: expected a 2-D slice or a (Z, Y, X) stack")
    hu = (arr.astype(np.float32) - np.float32(offset))
    hu = hu[None] if hu.ndim == 2 else hu
    check_hu_range(hu, path)
    return CTVolume(hu, (float("nan"), float(spacing[0]), float(spacing[1])), path, "CT")


def read_ct(path: str | Path, modality: str = "ct", hu_offset: float | None = None,
            spacing: tuple[float, float] | None = None) -> CTVolume:
    """Read a DICOM file or series folder, a NIfTI file, or an HU TIFF (needs ``hu_offset`` and ``spacing``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_dir():
        return read_dicom_series(path, modality)
    if is_nifti(path):
        return read_nifti(path, modality)
    if path.suffix.lower() in (".tif", ".tiff"):
        if hu_offset is None or spacing is None:
            raise InputError(path, "a TIFF needs a declared HU offset and pixel spacing (hu_offset, spacing)")
        return read_hu_tiff(path, hu_offset, spacing)
    return read_dicom(path, modality)
