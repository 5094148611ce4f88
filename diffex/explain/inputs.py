"""Opening an experiment: the two models, the images and the output folder, which every stage reads.

:func:`open_experiment` checks everything that can be checked before computing (models that do
not fit together, conditions the classifier does not know, channels that disagree, an output
folder holding a finished or differently configured run) and returns an :class:`Experiment`.

Example
-------
>>> exp = open_experiment("clf", "cells", "out", "dm", ExplainConfig())   # doctest: +SKIP
>>> exp.labels.shape                                                       # doctest: +SKIP
(200,)
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from diffex.config import to_dict
from diffex.data.ct_load import CTGeometry
from diffex.data.dataset import Record, image_name, require_conditions, stratified_indices
from diffex.data.source import file_digest, find_records, load_records, record_digest
from diffex.errors import DiffexError, InputError
from diffex.explain.cache import digest, model_digest
from diffex.explain.config import ExplainConfig
from diffex.fsutil import atomic_file, write_json
from diffex.models.bridge import ModelPair, check_models
from diffex.models.classifier import load_classifier
from diffex.models.diffusion import DiffusionModel
from diffex.models.hooks import EvaluationCounter
from diffex.runtime import resolve_device

log = logging.getLogger(__name__)

OUTPUTS = ("results.json", "attributes.csv", "morphology.csv", "report.html", "provenance.json", "traversals")


@dataclass
class Experiment:
    """The inputs of one explain run, loaded and checked; ``evaluations`` counts UNet predictions per stage."""

    cfg: ExplainConfig
    out: Path
    pair: ModelPair
    device: torch.device
    classifier_path: Path
    diffusion_path: Path
    images_source: Path
    class_names: list[str]
    conditions: list[str]
    records: list[Record]
    raw: np.ndarray  # (N, C, H, W) raw intensities at the diffusion model's size
    labels: np.ndarray  # (N,) index of each image's condition in class_names
    channel_names: list[str]
    file_sha: list[str]  # per image: SHA-256 of its file (for CT with its slice/centre: the cache key of its content)
    classifier_digest: str
    diffusion_digest: str
    n_available: int  # images found before subsampling to max_images
    bootstrap_unit: str  # "image" or the manifest column whose values are the resampling units
    groups: np.ndarray | None  # (N,) unit of each image (None: each image its own unit)
    command: str | None = None
    geometry: CTGeometry | None = None  # CT/MR: spacing and windows both models were trained with
    source_sha: list[str] = field(default_factory=list)  # per image: SHA-256 of its file (tree digest of a series folder)
    evaluations: dict[str, int] = field(default_factory=dict)
    subsampling: list[str] = field(default_factory=list)  # notes, logged and shown in the report

    def note_subsample(self, text: str) -> None:
        """Log a subsampling and keep it for the report."""
        log.info("%s", text)
        self.subsampling.append(text)

    def image_name(self, i: int) -> str:
        """Image ``i``'s name in results: its path relative to the images' folder, ``#z..`` for part of a volume."""
        return image_name(self.records[i], self.images_source)

    @property
    def cache(self) -> Path:
        return self.out / "cache"

    @property
    def inversion_keys(self) -> list[str]:
        """Per image: digest of the file, the diffusion model and the inversion settings."""
        cfg, info = self.cfg, self.pair.dm.info
        parts = (self.diffusion_digest, cfg.steps, cfg.t_end, info.image_size, info.resize_mode)
        parts += () if cfg.precision == "fp32" else (cfg.precision,)
        return [digest(s, *parts) for s in self.file_sha]

    @contextlib.contextmanager
    def counted(self, stage: str):
        """Count the UNet's noise predictions made inside the block under ``stage``."""
        with EvaluationCounter(self.pair.dm.unet) as counter:
            yield
        self.evaluations[stage] = self.evaluations.get(stage, 0) + counter.predictions


SAMPLES = {"microscopy": "", "ct": "ct"}  # modality -> sample folder under sample_data/


def sample_data_dir(modality: str = "microscopy") -> Path:
    """The repository's sample folder of a modality: ``sample_data/`` (cells) or ``sample_data/ct/`` (lung nodules).

    Each holds ``models/classifier``, ``models/diffusion`` and the independent ``heldout`` images
    (diffex installed from a checkout, as README says).
    """
    if modality not in SAMPLES:
        raise DiffexError(f"no sample data for modality {modality!r}; there is one for {', '.join(SAMPLES)}")
    root = Path(__file__).resolve().parents[2] / "sample_data" / SAMPLES[modality]
    if not (root / "models" / "classifier").is_dir():
        raise DiffexError(f"{root}: the sample data is not here; `diffex demo` needs diffex installed from a repository checkout")
    return root


def resolve_diffusion(diffusion, cfg: ExplainConfig, clf) -> Path:
    """--diffusion, else the config's ``diffusion``, else the model recorded with the classifier."""
    for cand in (diffusion, cfg.diffusion, (clf.info.training or {}).get("diffusion_model")):
        if cand:
            p = Path(cand)
            if not p.is_absolute() and not p.exists() and clf.info.kind == "folder":
                p = Path(clf.info.source) / p
            return p
    raise DiffexError(
        f"{clf.info.source}: no diffusion model given and none recorded with the classifier; pass --diffusion DIR, "
        "or train one on your images with `diffex train-diffusion --images DIR --out MODEL_DIR` (see docs/training.md)"
    )


def _diffusion_digest(path: Path, dm: DiffusionModel) -> str:
    """The model folder's digest, with the normalization when it does not come from the folder's diffex.json."""
    info = dm.info
    if info.normalization_source == "diffex.json":
        return model_digest(path)
    return digest(model_digest(path), json.dumps(info.normalization.to_dict()) if info.normalization else "identity")


def default_out(images) -> Path:
    """The experiment folder when none is given: ``diffex-<images name>``."""
    return Path(f"diffex-{Path(images).stem}")


def prepare_out(out: Path, cfg_dict: dict, force: bool) -> None:
    """Refuse a finished experiment (without ``force``) or an unfinished one with other settings; write the config."""
    resolved = out / "config.resolved.json"
    if (out / "results.json").exists() and not force:
        raise DiffexError(f"{out}: a finished experiment is here; pass --force to recompute it, or choose another --out")
    if resolved.exists() and not force:
        old = json.loads(resolved.read_text())
        if old != cfg_dict:
            diff = sorted(k for k in set(old) | set(cfg_dict) if old.get(k) != cfg_dict.get(k))
            raise DiffexError(f"{out}: holds an unfinished run with other settings ({', '.join(diff)}); pass --force to start over "
                              "or choose another --out")
    if force:
        for name in OUTPUTS:
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        for p in (out / "cache").glob("*.safetensors"):
            p.unlink()
        shutil.rmtree(out / "cache" / "traversals", ignore_errors=True)
    (out / "cache" / "inversions").mkdir(parents=True, exist_ok=True)
    write_json(resolved, cfg_dict)
    import yaml

    with atomic_file(out / "config.resolved.yaml") as fh:
        yaml.safe_dump(cfg_dict, fh, sort_keys=False)


def _records(images, class_names: list[str], cfg: ExplainConfig, geometry: CTGeometry | None) -> tuple[list[Record], list[str], int]:
    """The images' records (sorted by path, stratified down to ``max_images``), their conditions, the count found."""
    records = sorted(find_records(images, geometry), key=lambda r: (str(r.path), r.locator))
    conds = require_conditions(records, images)
    missing = [c for c in conds if c not in class_names]
    if missing:
        raise DiffexError(f"{images}: conditions {missing} are not classes of the classifier {class_names}")
    few = {c: n for c in conds if (n := sum(r.condition == c for r in records)) < 2}
    if few:
        raise InputError(images, "; ".join(f"condition {c!r} has {n} image" for c, n in few.items())
                         + ": explain needs at least 2 images per condition (one to select on, one to evaluate)")
    labels = np.array([class_names.index(r.condition) for r in records])
    kept = stratified_indices(labels, cfg.max_images, cfg.seed)
    return [records[i] for i in kept], conds, len(records)


UNIT_COLUMNS = ("replicate", "batch", "plate", "well")


def bootstrap_groups(records: list[Record], unit: str, source) -> tuple[str, np.ndarray | None]:
    """The bootstrap's resampling unit and each image's unit id (None for single images).

    ``auto`` takes the first of replicate, batch, plate, well that every record has; a well is
    identified together with its plate. A named column that some record lacks is an error.
    """
    if unit == "image":
        return "image", None
    if unit == "auto":
        unit = next((c for c in UNIT_COLUMNS if all(getattr(r, c) for r in records)), "image")
        if unit == "image":
            return "image", None
    missing = [str(r.path) for r in records if not getattr(r, unit)]
    if missing:
        raise DiffexError(f"{source}: bootstrap_unit {unit!r}, but {len(missing)} image(s) have no {unit} in the manifest, "
                          f"e.g. {missing[0]}")
    ids = [f"{r.plate or ''}/{r.well}" if unit == "well" else str(getattr(r, unit)) for r in records]
    return unit, np.array(ids)


def _file_digests(records: list[Record]) -> list[str]:
    """SHA-256 of each record's file (a tree digest for a series folder), each file hashed once."""
    by_path: dict[Path, str] = {}
    for r in records:
        if r.path not in by_path:
            by_path[r.path] = file_digest(r.path)
    return [by_path[r.path] for r in records]


def open_experiment(classifier, images, out, diffusion, cfg: ExplainConfig, *, device: str = "auto", axes: str | None = None,
                    trust_checkpoint: bool = False, force: bool = False, command: str | None = None,
                    show_progress: bool = True, diffusion_normalization=None) -> Experiment:
    """Load and check the models and images, prepare the output folder (see module docstring)."""
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    clf = load_classifier(classifier, trust_checkpoint=trust_checkpoint, device=dev)
    dm_path = resolve_diffusion(diffusion, cfg, clf)
    dm = DiffusionModel.load(dm_path, device=dev, precision=cfg.precision, normalization=diffusion_normalization)
    check_models(clf, dm)  # before any computation
    cfg = replace(cfg, diffusion=str(dm_path))
    class_names = list(clf.info.class_names)
    geometry = CTGeometry.from_dict(dm.info.ct, dm.info.image_size) if dm.info.ct else None  # == the classifier's (checked)
    records, conds, n_available = _records(images, class_names, cfg, geometry)
    unit, groups = bootstrap_groups(records, cfg.bootstrap_unit, images)
    out = Path(out) if out else default_out(images)
    prepare_out(out, to_dict(cfg), force)
    imgs = load_records(records, dm.info.image_size, dm.info.resize_mode, geometry, axes=axes,
                        expect_channels=dm.info.in_channels, show_progress=show_progress)
    if dm.info.channel_names and not all(c.startswith("ch") for c in imgs.channel_names):
        if tuple(imgs.channel_names) != tuple(dm.info.channel_names):
            raise DiffexError(f"{images}: image channels {list(imgs.channel_names)} differ from the diffusion model's "
                              f"{list(dm.info.channel_names)}")
    source_sha = _file_digests(records)
    exp = Experiment(
        cfg=cfg, out=out, pair=ModelPair(clf, dm), device=dev, classifier_path=Path(classifier), diffusion_path=Path(dm_path),
        images_source=Path(images), class_names=class_names, conditions=conds, records=records, raw=imgs.raw,
        labels=imgs.labels(class_names), channel_names=list(dm.info.channel_names or imgs.channel_names),
        file_sha=[record_digest(r, source_sha[i]) for i, r in enumerate(records)], classifier_digest=model_digest(classifier),
        diffusion_digest=_diffusion_digest(dm_path, dm), n_available=n_available, bootstrap_unit=unit, groups=groups, command=command,
        geometry=geometry, source_sha=source_sha)
    if n_available > len(records):
        exp.note_subsample(f"{len(records)} of the {n_available} images were used (max_images {cfg.max_images}, "
                           f"drawn at random in proportion to each condition, seed {cfg.seed})")
    return exp
