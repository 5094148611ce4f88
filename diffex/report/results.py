"""The typed schema of an experiment's ``results.json``: written by explain, read by the report and benchmarks.

Every reader and writer goes through :func:`read_results` and :func:`write_results`, so a field
has one name and one meaning everywhere. Unknown keys, missing keys and another ``format`` are
errors that name the file.

Example
-------
>>> t = Trend(spearman_r=0.9, change_at_max=0.2, change_at_min=-0.1)
>>> from_plain(Trend, to_plain(t)) == t
True
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from diffex.errors import DiffexError
from diffex.fsutil import read_json, write_json

FORMAT = "diffex-explain"
FORMAT_VERSION = 3  # 3: calibrated strengths (2026-11-28)
T = TypeVar("T")


@dataclass
class Trend:
    """How one measurement moves along an attribute's traversals (see :func:`diffex.report.morphology.trend`)."""

    spearman_r: float
    change_at_max: float
    change_at_min: float


@dataclass
class ShownExample:
    """One example image whose traversal is shown in the report (and saved as a hyperstack)."""

    index: int  # row in Traversal.p_target
    image: str  # path relative to the image folder or manifest
    condition: str
    file: str  # hyperstack file name in traversals/
    role: str  # "random sample" (one of the measured images) or "most affected" (largest |Δp|; not measured)


@dataclass
class Traversal:
    """Renders of an attribute at several strengths, for the images that were rendered."""

    strengths: list[float]  # frames as fractions of full strength, -1 ... +1, ascending
    images: list[str]
    conditions: list[str]
    measured: list[bool]  # per image: part of the seeded random sample the trends are computed on
    p_target: list[list[float]]  # (images, strengths) classifier probability of the target
    shown: list[ShownExample]
    shift_sd: list[list[float]] = field(default_factory=list)  # (images, strengths) each render's shift along the attribute, SD units


@dataclass
class Attribute:
    """One selected attribute: a direction and sign in h-space, with its statistics and traversal.

    Selection (AttFind) ran on the selection images; every statistic below is computed on the
    evaluation images, which were used neither for the directions nor for the selection.
    """

    id: str
    target: str  # the condition images are moved towards
    rank: int
    name: str  # candidate direction's name, e.g. 'gradient:sv1'
    candidate: int  # index into Results.candidates
    sign: int  # +1 or -1
    strength: float  # full traversal strength, in strength_unit
    merged: list[str]
    screening_score: float
    selection_mean_delta_p: float  # on the selection images not yet explained when AttFind picked it
    selection_lower_bound: float  # its one-sided 95 % bootstrap lower bound (the stopping rule's figure)
    n_images: int  # evaluation images of the other condition(s), moved towards the target: Δp is over these
    n_eligible: int  # of those, not already classified as the target: flip rates are over these
    baseline_at_target: float  # share of the n_images already classified as the target before the edit
    mean_delta_p: float
    mean_abs_delta_p: float
    delta_p_ci95: list[float]
    flip_rate: float  # flipped / n_eligible
    coverage: float  # flipped by this attribute and by no higher-ranked one / n_eligible
    cumulative_flip_rate: float  # flipped by this or a higher-ranked attribute / n_eligible
    separation_auc: float  # on the evaluation images of all conditions
    separation_cohens_d: float
    separation_p_value: float  # two-sided Mann-Whitney U
    separation_p_adjusted: float  # Holm-adjusted over every reported attribute
    separation_n: dict[str, int]  # evaluation images per condition behind the separation
    description: str = ""
    morphology: dict[str, Trend] = field(default_factory=dict)  # on the measured (random) images only
    traversal: Traversal | None = None
    coordinate: dict[str, list[float]] = field(default_factory=dict)  # per condition, SD of the real images along the attribute
    files: list[str] = field(default_factory=list)
    # calibration (diffex.explain.calibrate); results written before 2026-11-28 have the defaults: h_norm, unknown spread
    strength_unit: str = "h_norm"  # "sd": SDs of the real images along the attribute, stopped at the data's edges; "h_norm": × mean ‖h‖
    sd_h: float = float("nan")  # SD of the real (selection) images' coordinates along the attribute, h units
    sd_per_h_scale: float = float("nan")  # the same, as a share of the mean ‖h‖
    data_edges_sd: list[float] = field(default_factory=list)  # the real data's edges along the attribute (low, high), SD units
    mean_shift_sd: float = float("nan")  # mean shift of the moved evaluation images at full strength, SD units
    ends_in_data: float = float("nan")  # share of the moved evaluation images whose full-strength end lies inside the edges
    consistency: float = float("nan")  # share of the measured images whose main change has the median's sign and size (within 2x)
    consistency_measure: str = ""  # that main change's morphology column ("" when nothing changes consistently)
    # a direction named for a readout (readout, steer, hold): its morphology column, and the way the name says it moves along
    # the traversal towards the target (+1 higher, -1 lower; 0 and "" for an unnamed direction)
    named_measure: str = ""
    named_direction: int = 0


@dataclass
class FlaggedImage:
    image: str
    psnr_db: float


@dataclass
class InversionSummary:
    steps: int
    t_end: int
    psnr_db_mean: float
    psnr_db_min: float
    psnr_db_median: float
    min_psnr_db: float
    flagged: list[FlaggedImage]


@dataclass
class DiffusionSummary:
    image_size: int
    parameters: int
    training_steps: int | None
    training_images: int | None
    normalization_source: str = ""  # where its intensity normalization came from (diffex.json, a sidecar, the option)


@dataclass
class CandidateSummary:
    index: int
    name: str
    screening_score: float
    rendered: bool
    merged: list[str]


@dataclass
class Statistics:
    """How the statistics were made: the image sets, the resampling unit, the corrections, the rules."""

    n_images_available: int  # images found before subsampling
    selection_images: int  # usable images the directions and the selection were made on
    evaluation_images: int  # usable images every reported statistic is computed on
    gradient_images: int  # of the selection images: classifier gradients
    rank_images: int  # of the selection images: the effect table AttFind selects from
    split: str  # how selection and evaluation images were separated
    bootstrap_unit: str  # "image", or the manifest column whose values are resampled ("replicate", ...)
    bootstrap_units: dict[str, int]  # per condition: distinct units among the evaluation images
    bootstrap_resamples: int
    p_adjust: str  # multiple-comparison correction of the separation p-values
    selection_rule: str  # when AttFind stops
    subsampling: list[str]  # plain-language notes on every subsampling that happened


@dataclass
class ImagingSummary:
    """CT/MR only: how the images became model inputs (spacing, windows; values in HU for CT)."""

    modality: str  # "ct" or "mr"
    spacing_mm: float  # pixel spacing every slice was resampled to
    windows: list[dict[str, Any]]  # per channel: name, low, high (HU for CT)
    input: str  # the sentence the methods paragraph shows


@dataclass
class Results:
    """Everything ``diffex explain`` found, as stored in ``results.json``."""

    classifier: str
    diffusion: str
    images: str
    class_names: list[str]
    conditions: list[str]
    channel_names: list[str]
    n_images: int
    per_condition: dict[str, int]
    classifier_accuracy: float
    classifier_accuracy_on_reconstructions: float
    confusion_matrix: list[list[int]]
    inversion: InversionSummary
    diffusion_model: DiffusionSummary
    config: dict[str, Any]
    display_ranges: dict[str, list[float]]
    h_shape: list[int]
    h_scale: float
    candidates: list[CandidateSummary]
    statistics: Statistics
    attributes: list[Attribute]
    quality_gate_passed: bool
    elapsed_s: float
    unet_image_evaluations_this_run: dict[str, int]  # noise predictions per stage; 0 for stages served from the cache
    imaging: ImagingSummary | None = None  # CT/MR; None for microscopy
    direction_training: dict[str, Any] = field(default_factory=dict)  # by method: how trained methods (learned) were trained
    format: str = FORMAT
    format_version: int = FORMAT_VERSION


# ------------------------------------------------------------------------------- conversion
def to_plain(obj) -> Any:
    """Dataclasses to dicts (field order kept), recursively; other values as they are."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def from_plain(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from plain JSON data; unknown or missing keys raise DiffexError naming ``where``."""
    return _convert(cls, data, where or cls.__name__)


def _convert(hint, value, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise DiffexError(f"{where}: expected a mapping for {hint.__name__}, got {type(value).__name__}")
        hints = typing.get_type_hints(hint)
        names = {f.name for f in dataclasses.fields(hint)}
        required = {f.name for f in dataclasses.fields(hint)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        unknown, missing = sorted(set(value) - names), sorted(required - set(value))
        if unknown or missing:
            raise DiffexError(f"{where}: {hint.__name__} has unknown key(s) {unknown} and missing key(s) {missing}")
        return hint(**{k: _convert(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, where)
    if origin is list:
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        return {k: _convert(args[1], v, f"{where}.{k}") for k, v in value.items()} if args else dict(value)
    return value


# ------------------------------------------------------------------------------------ files
def write_results(path: str | Path, results: Results) -> None:
    """Write ``results.json`` atomically."""
    data = to_plain(results)
    if data.get("imaging") is None:  # microscopy: results.json as before CT existed
        data.pop("imaging", None)
    write_json(path, data)


def read_results(path: str | Path) -> Results:
    """Read ``results.json``; another format or an older version is an error naming the file."""
    path = Path(path)
    if not path.exists():
        raise DiffexError(f"{path.parent}: no results.json; not a finished diffex experiment folder")
    data = read_json(path)
    if data.get("format") != FORMAT:
        raise DiffexError(f"{path}: not a diffex explain result (format {data.get('format')!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise DiffexError(f"{path}: results format version {data.get('format_version')}, this diffex reads version "
                          f"{FORMAT_VERSION}; re-run `diffex explain ... --force` to remake the experiment")
    return from_plain(Results, data, str(path))
