"""Seeded synthetic CT: axial lung patches with one nodule each, in HU, with known factors.

Each patch is 64 x 64 pixels at 0.7 mm (a 44.8 mm field): lung parenchyma around -850 HU with a
smooth texture, a few vessels (tubes of blood density, about +40 HU), a nodule, then a blur like a
slice thickness and noise whose level varies like the dose. The two conditions (``benign`` and
``malignant``) differ in exactly two documented factors, drawn from overlapping normal
distributions:

- ``diameter_mm`` (nodule diameter): benign 8.0, malignant 10.5, sd 1.0 -> d' = 2.5
- ``solid_fraction`` (share of the nodule's radius that is solid; the rest is ground glass around
  -550 HU): benign 0.85, malignant 0.60, sd 0.10 -> d' = 2.5

so that the Bayes-optimal accuracy from both is about 96 %, and a classifier should reach about
90-95 %. Nuisance factors vary identically in both: nodule position (+-6 px), margin irregularity
(radial harmonics), vessel count, noise sd (dose), blur sd (slice thickness) and the parenchyma
level. Patches come in patients: the patches of one patient share its noise level and parenchyma
level, which is what a patient-grouped split must respect.

Example
-------
>>> import numpy as np
>>> spec = CTSpec()
>>> hu, f = render_patch(np.random.default_rng(0), "malignant", spec, noise_sd=30.0, parenchyma=-850.0)
>>> hu.shape, hu.dtype, sorted(f)[:3]
((64, 64), dtype('float32'), ['blur_sd_px', 'center_x', 'center_y'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from diffex.errors import DiffexError

CT_FACTORS = ("diameter_mm", "solid_fraction")
CT_NUISANCE = ("center_y", "center_x", "irregularity", "margin_cv", "vessels", "noise_sd", "blur_sd_px", "parenchyma_hu")
SOLID_HU, GROUND_GLASS_HU, VESSEL_HU = 30.0, -550.0, 40.0


@dataclass(frozen=True)
class CTConditionFactors:
    """Means of the two differentiating factors for one condition."""

    diameter_mm_mean: float
    solid_fraction_mean: float


@dataclass(frozen=True)
class CTSpec:
    """Parameters of the CT generator; the defaults define the CT sample data."""

    size: int = 64
    spacing_mm: float = 0.7
    conditions: dict[str, CTConditionFactors] = field(
        default_factory=lambda: {
            "benign": CTConditionFactors(diameter_mm_mean=8.0, solid_fraction_mean=0.85),
            "malignant": CTConditionFactors(diameter_mm_mean=10.5, solid_fraction_mean=0.60),
        }
    )
    diameter_mm_sd: float = 1.0
    solid_fraction_sd: float = 0.10
    position_jitter_px: float = 6.0
    irregularity_range: tuple[float, float] = (0.0, 0.15)
    vessels_range: tuple[int, int] = (2, 6)
    noise_sd_range: tuple[float, float] = (15.0, 45.0)  # HU, per patient (dose)
    blur_sd_range: tuple[float, float] = (0.3, 1.0)  # px (slice thickness)
    parenchyma_range: tuple[float, float] = (-880.0, -820.0)  # HU, per patient
    patches_per_patient: int = 2


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth parenchymal texture, sd about 1."""
    t = gaussian_filter(rng.normal(size=(size, size)), 2.0, mode="wrap")
    return t / t.std()


def _vessels(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """(size, size) in [0, 1]: ``count`` straight tubes of 1-3 px diameter crossing the patch, each at 40-100 %
    of blood density (partial volume of a vessel running obliquely through the slice)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    out = np.zeros((size, size))
    for _ in range(count):
        angle, offset, width = rng.uniform(0, np.pi), rng.uniform(-size / 2, size / 2), rng.uniform(0.5, 1.5)
        dist = np.abs((xx - size / 2) * np.sin(angle) - (yy - size / 2) * np.cos(angle) - offset)
        out = np.maximum(out, rng.uniform(0.4, 1.0) * np.clip(width + 0.5 - dist, 0, 1))
    return out


def _nodule(size: int, cy: float, cx: float, radius_px: float, irregular: np.ndarray) -> np.ndarray:
    """(size, size) signed distance-like map: r_boundary(theta) - r, positive inside the nodule."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    r, theta = np.hypot(yy - cy, xx - cx), np.arctan2(yy - cy, xx - cx)
    k = np.arange(2, 2 + len(irregular))
    boundary = radius_px * (1 + (irregular[:, None, None] * np.cos(k[:, None, None] * theta[None] + 1.3 * k[:, None, None])).sum(0))
    return boundary - r


def render_patch(rng: np.random.Generator, condition: str, spec: CTSpec, noise_sd: float,
                 parenchyma: float, overrides: dict[str, float] | None = None) -> tuple[np.ndarray, dict]:
    """One (size, size) float32 HU patch and its factor values.

    ``overrides`` (factor -> value, e.g. ``diameter_mm``) replace drawn factors after the draw, which
    consumes the same random numbers either way: the same generator state with and without an
    override gives the same patch with only that factor changed (the validity benchmark's traversals
    with a known answer). ``margin_cv`` is derived, not drawn; overriding ``vessels`` changes the
    random numbers drawn after it.
    """
    if condition not in spec.conditions:
        raise DiffexError(f"unknown condition {condition!r}; the spec has {sorted(spec.conditions)}")
    cf, s = spec.conditions[condition], spec.size
    f = {"diameter_mm": float(max(3.0, rng.normal(cf.diameter_mm_mean, spec.diameter_mm_sd))),
         "solid_fraction": float(np.clip(rng.normal(cf.solid_fraction_mean, spec.solid_fraction_sd), 0.05, 1.0)),
         "center_y": float(s / 2 + rng.uniform(-1, 1) * spec.position_jitter_px),
         "center_x": float(s / 2 + rng.uniform(-1, 1) * spec.position_jitter_px),
         "irregularity": float(rng.uniform(*spec.irregularity_range)),
         "vessels": int(rng.integers(spec.vessels_range[0], spec.vessels_range[1] + 1)),
         "noise_sd": float(noise_sd), "blur_sd_px": float(rng.uniform(*spec.blur_sd_range)),
         "parenchyma_hu": float(parenchyma)}
    unknown = set(overrides or {}) - set(f)
    if unknown:
        raise DiffexError(f"overrides: unknown factors {sorted(unknown)}; known: {sorted(f)}")
    f.update(overrides or {})
    radius = f["diameter_mm"] / 2 / spec.spacing_mm  # px
    harmonics = f["irregularity"] * rng.dirichlet(np.ones(3))  # amplitudes of cos(2..4 theta), sum = irregularity
    f["margin_cv"] = float(np.sqrt((harmonics**2).sum() / 2))  # the boundary radius's coefficient of variation
    inside = _nodule(s, f["center_y"], f["center_x"], radius, harmonics)  # px inside the boundary
    # soft edges (0.5 px) for the whole nodule and for its solid core
    nodule = np.clip(inside + 0.5, 0, 1)
    core = np.clip(inside - (1 - f["solid_fraction"]) * radius + 0.5, 0, 1)
    hu = f["parenchyma_hu"] + 25.0 * _texture(rng, s)
    hu = hu + _vessels(rng, s, f["vessels"]) * (VESSEL_HU - hu)
    hu = hu + nodule * (GROUND_GLASS_HU - hu)
    hu = hu + core * (SOLID_HU - hu)
    hu = gaussian_filter(hu, f["blur_sd_px"]) + rng.normal(0, f["noise_sd"], (s, s))
    return np.clip(hu, -1024, 3000).astype(np.float32), f


def generate_patients(spec: CTSpec, n_per_condition: int, seed: int):
    """Yield (condition, patient_id, patch index, HU patch, factors); ``n_per_condition`` patches per condition."""
    rng = np.random.default_rng(seed)
    per = spec.patches_per_patient
    for condition in spec.conditions:
        for p in range(int(np.ceil(n_per_condition / per))):
            patient = f"{condition[:3]}{seed:02d}p{p:04d}"
            noise, paren = rng.uniform(*spec.noise_sd_range), rng.uniform(*spec.parenchyma_range)
            for i in range(min(per, n_per_condition - p * per)):
                hu, f = render_patch(rng, condition, spec, noise, paren)
                yield condition, patient, i, hu, f


def _dicom(hu: np.ndarray, spec: CTSpec, patient: str, uid_seed: str):
    """A CT DICOM dataset of one HU patch: stored = HU + 1024 (uint16), RescaleSlope 1, RescaleIntercept -1024."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, "series"])
    ds.Modality, ds.PatientID, ds.PatientName = "CT", patient, patient
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SeriesDescription = "diffex synthetic lung patch"
    ds.Rows, ds.Columns = hu.shape
    ds.PixelSpacing = [f"{spec.spacing_mm:g}", f"{spec.spacing_mm:g}"]
    ds.SliceThickness = "1"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", "-1024", "HU"
    ds.WindowCenter, ds.WindowWidth = "-600", "1500"
    ds.PixelData = np.round(hu + 1024).clip(0, 65535).astype("<u2").tobytes()
    return ds


def generate_ct_dataset(out, n_per_condition: int, seed: int, spec: CTSpec | None = None, ground_truth=None,
                        force: bool = False):
    """Write ``out/<condition>/<patient>_<i>.dcm`` (CT DICOM, HU via the rescale), ``out/manifest.csv``
    (``path,condition,patient_id``) and the ground-truth CSV; returns the latter's path.

    The same seed gives byte-identical files (UIDs are derived from the seed and names).
    """
    from diffex.data.synthetic import write_factors
    from diffex.fsutil import atomic_dir

    spec, out = spec or CTSpec(), Path(out)
    ground_truth = Path(ground_truth) if ground_truth else out.parent / f"{out.name}_factors.csv"
    if n_per_condition < 1:
        raise DiffexError(f"n_per_condition must be >= 1, got {n_per_condition}")
    rows = []
    with atomic_dir(out, force=force) as tmp:
        for condition in spec.conditions:
            (tmp / condition).mkdir()
        for condition, patient, i, hu, f in generate_patients(spec, n_per_condition, seed):
            rel = f"{condition}/{patient}_{i}.dcm"
            _dicom(hu, spec, patient, f"{seed}/{rel}").save_as(tmp / rel, enforce_file_format=True)
            rows.append({"path": rel, "condition": condition, "patient_id": patient, **f})
        write_factors(tmp / "manifest.csv", rows, ("path", "condition", "patient_id"))
    write_factors(ground_truth, rows, ("path", "condition", "patient_id", *CT_FACTORS, *CT_NUISANCE))
    return ground_truth
