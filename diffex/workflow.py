"""The configuration of the facility workflow (``pipelines/Snakefile``), checked before anything runs.

A workflow config lists experiments; each names its images, either fields of view (cropped
first, with ``diffex crop``) or single-cell crops, a classifier, and optionally a diffusion
model (trained with ``diffex train-diffusion`` when absent). Unknown keys, missing files and an
experiment with both or neither image source are errors naming the config file and the entry.
Relative paths are relative to the config file's folder.

Example
-------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> for p in ("fov", "clf"):
...     (d / p).mkdir()
>>> cfg = workflow_config({"out": "results", "experiments": {"e1": {"fields": "fov", "classifier": "clf"}}}, d / "config.yaml")
>>> cfg.experiments["e1"].needs_crop, cfg.experiments["e1"].diffusion is None
(True, True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffex.errors import DiffexError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
EXPERIMENT_KEYS = {"fields", "crops", "classifier", "diffusion", "crop", "train_diffusion", "explain"}
TOP_KEYS = {"out", "threads", "gpu", "slurm", "experiments"}
CROP_OPTIONS = {"size", "nuclear_channel", "diameter", "min_area", "max_area", "labels"}
TRAIN_OPTIONS = {"size", "steps", "batch_size", "lr", "seed", "config"}
EXPLAIN_OPTIONS = {"config", "method", "seed", "precision", "device"}


@dataclass(frozen=True)
class ExperimentSpec:
    """One experiment of the workflow, paths resolved."""

    name: str
    images: Path  # fields of view (needs_crop) or crops
    needs_crop: bool
    classifier: Path
    diffusion: Path | None
    crop: dict[str, Any] = field(default_factory=dict)
    train_diffusion: dict[str, Any] = field(default_factory=dict)
    explain: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkflowConfig:
    """The whole workflow: where results go, threads per job, GPUs per GPU job, SLURM account and partitions."""

    out: Path
    threads: int
    gpu: int
    slurm: dict[str, str]
    experiments: dict[str, ExperimentSpec]


def _path(value: Any, base: Path, where: str, must_exist: bool = True) -> Path:
    if not isinstance(value, str) or not value:
        raise DiffexError(f"{where}: expected a path, got {value!r}")
    p = Path(value)
    p = p if p.is_absolute() else base / p
    if must_exist and not p.exists():
        raise DiffexError(f"{where}: {p} does not exist")
    return p


def _options(value: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DiffexError(f"{where}: expected a mapping of options, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise DiffexError(f"{where}: unknown option(s) {unknown}; known: {sorted(allowed)}")
    return dict(value)


def _experiment(name: str, entry: Any, base: Path, where: str) -> ExperimentSpec:
    if not NAME.match(str(name)):
        raise DiffexError(f"{where}: experiment name {name!r} must be letters, digits, '.', '_' or '-'")
    if not isinstance(entry, dict):
        raise DiffexError(f"{where}: expected a mapping, got {type(entry).__name__}")
    unknown = sorted(set(entry) - EXPERIMENT_KEYS)
    if unknown:
        raise DiffexError(f"{where}: unknown key(s) {unknown}; known: {sorted(EXPERIMENT_KEYS)}")
    if ("fields" in entry) == ("crops" in entry):
        raise DiffexError(f"{where}: give either 'fields' (fields of view, cropped first) or 'crops' (single cells), not "
                          f"{'both' if 'fields' in entry else 'neither'}")
    if "classifier" not in entry:
        raise DiffexError(f"{where}: 'classifier' is missing")
    source = "fields" if "fields" in entry else "crops"
    crop = _options(entry.get("crop"), CROP_OPTIONS, f"{where}.crop")
    if "labels" in crop:
        crop["labels"] = str(_path(crop["labels"], base, f"{where}.crop.labels"))
    train = _options(entry.get("train_diffusion"), TRAIN_OPTIONS, f"{where}.train_diffusion")
    if "config" in train:
        train["config"] = str(_path(train["config"], base, f"{where}.train_diffusion.config"))
    explain = _options(entry.get("explain"), EXPLAIN_OPTIONS, f"{where}.explain")
    if "config" in explain:
        explain["config"] = str(_path(explain["config"], base, f"{where}.explain.config"))
    return ExperimentSpec(
        name=str(name), images=_path(entry[source], base, f"{where}.{source}"), needs_crop=source == "fields",
        classifier=_path(entry["classifier"], base, f"{where}.classifier"),
        diffusion=_path(entry["diffusion"], base, f"{where}.diffusion") if entry.get("diffusion") else None,
        crop=crop, train_diffusion=train, explain=explain)


def workflow_config(data: Any, path: str | Path) -> WorkflowConfig:
    """Check and resolve a workflow config (the parsed YAML of ``path``)."""
    path = Path(path)
    where = str(path)
    if not isinstance(data, dict):
        raise DiffexError(f"{where}: expected a mapping with 'experiments', got {type(data).__name__}")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise DiffexError(f"{where}: unknown key(s) {unknown}; known: {sorted(TOP_KEYS)}")
    entries = data.get("experiments")
    if not isinstance(entries, dict) or not entries:
        raise DiffexError(f"{where}: 'experiments' must name at least one experiment")
    base = path.parent
    experiments = {str(k): _experiment(k, v, base, f"{where}: experiments.{k}") for k, v in entries.items()}
    slurm = _options(data.get("slurm"), {"account", "partition", "gpu_partition", "runtime_min", "mem_mb"}, f"{where}: slurm")
    counts = {}
    for key, default in (("threads", 2), ("gpu", 0)):
        value = data.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DiffexError(f"{where}: {key} must be a whole number >= 0, got {value!r}")
        counts[key] = value
    return WorkflowConfig(out=_path(data.get("out", "results"), base, f"{where}: out", must_exist=False),
                          threads=max(1, counts["threads"]), gpu=counts["gpu"], slurm=slurm, experiments=experiments)


def cli_options(options: dict[str, Any], flags: dict[str, str]) -> str:
    """Options as a shell-quoted command-line fragment (``{"size": 64}`` -> ``--size 64``); lists repeat the flag."""
    import shlex

    parts: list[str] = []
    for key, value in options.items():
        flag = flags.get(key, "--" + key.replace("_", "-"))
        for v in value if isinstance(value, list) else [value]:
            parts += [flag, str(v)]
    return shlex.join(parts)
