"""Settings of ``diffex explain``: one frozen dataclass, read from YAML (unknown keys are errors).

Example
-------
>>> cfg = config_from_dict({"steps": 10, "mode": "symmetric"})
>>> cfg.sampler
SamplerSpec(steps=10, t_end=699, t_edit=0, mode='symmetric')
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from diffex.config import from_dict
from diffex.errors import DiffexError
from diffex.explain.calibrate import STRENGTH_UNITS
from diffex.explain.directions import get_method
from diffex.explain.directions.learned import SETTINGS as LEARNED_SETTINGS
from diffex.models.diffusion import check_precision
from diffex.models.sampler import DEFAULT_T_END, MODES, SamplerSpec

BOOTSTRAP_UNITS = ("auto", "image", "replicate", "batch", "plate", "well")


@dataclass(frozen=True)
class ExplainConfig:
    """Settings of ``diffex explain`` (YAML keys; unknown keys are errors).

    ``strength`` is the traversal's full strength in ``strength_unit``: ``sd`` (default), standard
    deviations of the real images' coordinates along each direction, each image stopped at the edge
    of the real data (the narrower of the 1st-99th percentile range and ±3 SD; see
    :mod:`diffex.explain.calibrate`); or ``h_norm``, × the mean ‖h‖ of the data for every
    direction and image, unclipped (diffex's behaviour until 2026-11-28, kept for comparison). ``t_end`` is where inversion stops
    (partial inversion: the shipped 32 px model round-trips 120 of the sample's held-out images at a
    median 38 dB with 20 steps to t = 699 and at 27 dB to t = 999; docs/benchmarks.md). Edits act on every step with t >= ``t_edit``. ``precision``: ``fp32``
    (default) or ``bf16`` (diffusion-model evaluations under bfloat16 autocast: faster on GPUs and
    on CPUs with AVX512-BF16/AMX; inversion and renders differ slightly from fp32, see
    docs/benchmarks.md).

    The usable images (round trip >= ``min_psnr``) are split into *selection* images (directions,
    gradients from ``gradient_images`` of them, the effect table AttFind selects from on
    ``rank_images`` of them) and *evaluation* images (``evaluation_fraction`` of them, at most
    ``evaluation_images``), on which every reported statistic is computed. With a manifest that
    gives replicates (or batch, plate, well), the split keeps each unit on one side and the
    bootstrap resamples units (``bootstrap_unit``: auto = the first of replicate, batch, plate,
    well that every image has; or image, or one of those columns). AttFind stops when the
    one-sided ``selection_confidence`` bootstrap lower bound of the next pick's mean Δp is not
    above 0. With ``selection_min_auc`` > 0 it may pick a direction and sign only if the selection
    images' coordinates along it separate the target condition from the others with at least that
    AUC (the target higher): attributes are then chosen by the classifier's reaction *and* by the
    real conditions' separation (0, the default: by the reaction alone). ``learned_setting`` sizes the ``learned`` method's training (``reduced``: 60 iterations of
    8 images; ``full``: 600 of 32; ``auto``: full on a GPU; see :mod:`diffex.explain.directions.learned`).
    """

    diffusion: str | None = None
    steps: int = 20
    t_end: int = DEFAULT_T_END
    t_edit: int = 0
    mode: str = "asymmetric"
    methods: tuple[str, ...] = ("hold",)  # the validity benchmark's best default (docs/benchmarks.md, 2026-12-08)
    directions_per_method: int = 4
    merge_cos: float = 0.9
    screen_top: int = 4
    strength: float = 3.0
    strength_unit: str = "sd"
    max_images: int = 256
    gradient_images: int = 48
    rank_images: int = 48
    max_attributes: int = 3
    traversal_frames: int = 7
    traversal_images: int = 2
    measure_images: int = 4
    min_psnr: float = 25.0
    batch_size: int = 32
    seed: int = 0
    bootstrap: int = 1000
    contrastive_iterations: int = 30
    learned_setting: str = "auto"
    precision: str = "fp32"
    evaluation_fraction: float = 0.5
    evaluation_images: int = 96
    bootstrap_unit: str = "auto"
    selection_confidence: float = 0.95
    selection_min_auc: float = 0.0

    def __post_init__(self):
        try:
            check_precision(self.precision)
        except DiffexError as exc:
            raise DiffexError(f"{exc}; bf16 runs the diffusion model under bfloat16 autocast") from None
        if self.mode not in MODES:
            raise DiffexError(f"mode must be one of {MODES}, got {self.mode!r}")
        for m in self.methods:
            get_method(m)
        if not self.methods:
            raise DiffexError("methods: give at least one direction method")
        if self.traversal_frames < 3 or self.traversal_frames % 2 == 0:
            raise DiffexError(f"traversal_frames must be odd and >= 3, got {self.traversal_frames}")
        for name in ("steps", "directions_per_method", "screen_top", "max_images", "gradient_images",
                     "rank_images", "max_attributes", "batch_size", "traversal_images", "measure_images", "evaluation_images"):
            if getattr(self, name) < 1:
                raise DiffexError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learned_setting not in LEARNED_SETTINGS:
            raise DiffexError(f"learned_setting must be one of {LEARNED_SETTINGS} (the learned method's training: auto = full on a "
                              f"GPU, reduced elsewhere), got {self.learned_setting!r}")
        if not self.strength > 0:
            raise DiffexError(f"strength must be > 0, got {self.strength}")
        if self.strength_unit not in STRENGTH_UNITS:
            raise DiffexError(f"strength_unit must be one of {STRENGTH_UNITS} (standard deviations of the real images along each "
                              f"direction, or the mean ‖h‖), got {self.strength_unit!r}")
        if not 0 < self.evaluation_fraction < 1:
            raise DiffexError(f"evaluation_fraction must be between 0 and 1, got {self.evaluation_fraction}")
        if self.bootstrap_unit not in BOOTSTRAP_UNITS:
            raise DiffexError(f"bootstrap_unit must be one of {BOOTSTRAP_UNITS}, got {self.bootstrap_unit!r}")
        if not 0.5 <= self.selection_confidence < 1:
            raise DiffexError(f"selection_confidence must be in [0.5, 1), got {self.selection_confidence}")
        if not 0 <= self.selection_min_auc < 1:
            raise DiffexError(f"selection_min_auc must be in [0, 1) (0: off), got {self.selection_min_auc}")

    @property
    def sampler(self) -> SamplerSpec:
        """The sampler that inverts, reconstructs and renders edits."""
        return SamplerSpec(steps=self.steps, t_end=self.t_end, t_edit=self.t_edit, mode=self.mode)

    @property
    def gradient_sampler(self) -> SamplerSpec:
        """The sampler differentiated for classifier gradients (symmetric; see docs/explain.md)."""
        return replace(self.sampler, mode="symmetric")


def config_from_dict(d: dict) -> ExplainConfig:
    """An :class:`ExplainConfig` from a plain mapping (a YAML file's); unknown keys are errors."""
    return from_dict(ExplainConfig, d, "explain config")
