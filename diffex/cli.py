"""The ``diffex`` command line: a thin typer layer over the Python API.

Logs and progress go to stderr, machine-readable output (``--json``) to stdout. A
:class:`~diffex.errors.DiffexError` becomes one ``error:`` line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from diffex.errors import DiffexError
from diffex.progress import setup_logging

app = typer.Typer(
    name="diffex",
    help="Explain what an image classifier learned about biological conditions, with diffusion counterfactuals.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("diffex")

ImagesOpt = Annotated[Path, typer.Option("--images", help="Folder with one subfolder per condition, or a CSV manifest (path,condition,...).")]
AxesOpt = Annotated[Optional[str], typer.Option("--axes", help="Axis order of files whose metadata cannot tell, e.g. CYX or YXC.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (GPU when available), cpu, cuda, cuda:1 ...")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite a finished result.")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML file with settings; unknown keys are errors. Flags override it.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr; no progress bars.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]
SizeOpt = Annotated[Optional[int], typer.Option("--size", help="Side of the square the images are brought to (model input size).")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.")]
TrustOpt = Annotated[bool, typer.Option("--trust-checkpoint", help="Allow a pickled classifier (runs code from the file).")]
DiffusionNormOpt = Annotated[Optional[Path], typer.Option(
    "--diffusion-normalization", help="JSON with the raw intensity that maps to -1 and +1 per channel ({\"low\": [...], \"high\": [...]}), "
    "for a diffusion model folder without diffex.json (docs/formats.md).")]
PrecisionOpt = Annotated[Optional[str], typer.Option(
    "--precision", help="Diffusion-model arithmetic: fp32 (default) or bf16 (autocast; faster on GPUs and bf16-capable CPUs).")]
ModalityOpt = Annotated[Optional[str], typer.Option(
    "--modality", help="microscopy (default), ct or mr. CT/MR images come from a CT manifest (path,condition[,patient_id,"
    "slice,center_y,center_x]) and need --window and --spacing (docs/ct.md).")]
WindowOpt = Annotated[Optional[str], typer.Option(
    "--window", help="CT/MR: window(s) as channels: presets lung, mediastinum, soft_tissue, bone (comma-separated), or LOW,HIGH.")]
SpacingOpt = Annotated[Optional[float], typer.Option("--spacing", help="CT/MR: pixel spacing in mm every slice is resampled to.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Seed of the split, initialization and sampling.")]


def _command_line() -> str:
    return shlex.join(["diffex", *sys.argv[1:]])


def _setup(quiet: bool, verbose: bool) -> bool:
    setup_logging(-1 if quiet else 1 if verbose else 0)
    return not quiet


def _run(fn):
    """Call fn(); turn DiffexError into a one-line error and exit code 2."""
    try:
        return fn()
    except DiffexError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:  # a file system failure outside diffex's own checks: name the file, no traceback
        typer.echo(f"error: {exc.filename or 'file system'}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; finished results are kept and a rerun resumes", err=True)
        raise typer.Exit(130) from None


def _config(build, yaml_path: Path | None, **flags):
    """A config from a YAML file (if given) with the flags that were given (not None) on top."""
    from diffex.config import load_yaml

    base = load_yaml(yaml_path) if yaml_path else {}
    base.update({k: v for k, v in flags.items() if v is not None})
    try:
        return build(base)
    except DiffexError as exc:
        if yaml_path is None:
            raise
        raise DiffexError(f"{yaml_path} (or the flags): {exc}") from exc


@app.command("synthetic")
def synthetic_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder to create with one subfolder per condition.")],
    n_per_condition: Annotated[int, typer.Option("--n", help="Images per condition.")] = 400,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    ground_truth: Annotated[Optional[Path], typer.Option("--ground-truth", help="Factor CSV (default: OUT_factors.csv beside OUT).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML of generator parameters (SyntheticSpec; default: the sample data's).")] = None,
    fields: Annotated[bool, typer.Option("--fields", help="Fields of view with many cells (and true nucleus labels) instead of single cells; --n fields per condition.")] = False,
    field_size: Annotated[int, typer.Option("--field-size", help="With --fields: side of a field in px.")] = 256,
    modality: Annotated[str, typer.Option("--modality", help="microscopy (single cells) or ct (lung nodule patches in HU, DICOM; needs the ct extra).")] = "microscopy",
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
):
    """Generate two-condition synthetic cells with known differentiating factors (ground truth)."""
    _setup(quiet, verbose)
    from diffex.data.synthetic import SyntheticSpec, generate_dataset, spec_from_dict

    def go():
        from diffex.config import load_yaml

        if modality not in ("microscopy", "ct"):
            raise DiffexError(f"--modality must be microscopy or ct, got {modality!r}")
        if modality == "ct":
            from diffex.data.synthetic_ct import generate_ct_dataset

            if config or fields:
                raise DiffexError("--modality ct takes neither --config nor --fields")
            return generate_ct_dataset(out, n_per_condition, seed, ground_truth=ground_truth, force=force)
        spec = spec_from_dict(load_yaml(config)) if config else None
        if fields:
            from diffex.data.synthetic_fields import FieldSpec, generate_fields

            area = (field_size / 256) ** 2  # 12 cells and 2 touching pairs per 256 x 256 px
            fspec = FieldSpec(size=field_size, cells=max(1, round(12 * area)), touching_pairs=round(2 * area), cell=spec or SyntheticSpec())
            return generate_fields(out, n_per_condition, seed, fspec, force=force)
        return generate_dataset(out, n_per_condition, seed, spec=spec, ground_truth=ground_truth, force=force)

    gt = _run(go)
    typer.echo(str(gt))


@app.command("crop")
def crop_cmd(
    images: Annotated[Path, typer.Option("--images", help="Fields of view: one subfolder per condition, or a CSV manifest (path,condition,plate,well,field).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write: crops/, crops.csv (a manifest for explain), summary.csv, QC montages.")],
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Folder of label images (CellProfiler, cellpose, StarDist), matched by file name; default: segment nuclei.")] = None,
    nuclear_channel: Annotated[Optional[str], typer.Option("--nuclear-channel", help="Channel name or 0-based index of the nuclei (default: a channel named DNA, DAPI, Hoechst ...).")] = None,
    size: Annotated[int, typer.Option("--size", help="Crop side in px.")] = 64,
    diameter: Annotated[float, typer.Option("--diameter", help="Typical nucleus diameter in px (segmentation and default area range).")] = 18.0,
    min_area: Annotated[Optional[float], typer.Option("--min-area", help="Smallest object area in px (default 0.25 x a disc of --diameter).")] = None,
    max_area: Annotated[Optional[float], typer.Option("--max-area", help="Largest object area in px (default 3 x a disc of --diameter).")] = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
):
    """Segment fields of view and cut single-cell crops, with a manifest that explain reads directly."""
    show = _setup(quiet, verbose)
    from diffex.data.crop import CropConfig, crop_fields
    from diffex.data.segment import NuclearSegmentation

    def go():
        cfg = CropConfig(size=size, nuclear_channel=nuclear_channel, labels=labels, min_area=min_area, max_area=max_area,
                         segmentation=NuclearSegmentation(diameter=diameter))
        return crop_fields(images, out, cfg, force=force, show_progress=show, command=_command_line())

    totals = _run(go)
    log.info("kept %d of %d objects", totals["kept"], totals["found"])
    typer.echo(str(out / "crops.csv"))


@app.command("train-diffusion")
def train_diffusion_cmd(
    images: ImagesOpt,
    out: Annotated[Path, typer.Option("--out", help="Model folder to write (diffusers layout).")],
    size: SizeOpt = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Optimizer steps.")] = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    modality: ModalityOpt = None,
    window: WindowOpt = None,
    spacing: SpacingOpt = None,
    config: ConfigOpt = None,
    axes: AxesOpt = None,
    device: DeviceOpt = "auto",
    classifier: Annotated[Optional[Path], typer.Option("--classifier", help="With it, the gate reports KID on its penultimate features.")] = None,
    trust_checkpoint: TrustOpt = False,
    require_gate: Annotated[bool, typer.Option("--require-gate", help="Exit with code 3 when the quality gate fails.")] = False,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
):
    """Train a diffusion model (diffusers UNet2DModel, DDPM, EMA); resumes an interrupted run."""
    show = _setup(quiet, verbose)
    from diffex.models.diffusion_train import config_from_yaml_dict, train_diffusion
    from diffex.models.quality import format_gate

    def go():
        from diffex.models.classifier import load_classifier

        cfg = _config(config_from_yaml_dict, config, size=size, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                      modality=modality, windows=window, spacing_mm=spacing)
        clf = load_classifier(classifier, trust_checkpoint) if classifier else None
        return train_diffusion(images, out, cfg, axes=axes, device=device, force=force, command=_command_line(),
                               show_progress=show, classifier=clf)

    _, gate = _run(go)
    typer.echo(format_gate(gate))
    if require_gate and not gate["passed"]:
        raise typer.Exit(3)


@app.command("train-classifier")
def train_classifier_cmd(
    images: ImagesOpt,
    out: Annotated[Path, typer.Option("--out", help="Model folder to write.")],
    arch: Annotated[Optional[str], typer.Option("--arch", help="timm architecture, e.g. resnet18, regnetx_002.")] = None,
    size: SizeOpt = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs")] = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    modality: ModalityOpt = None,
    window: WindowOpt = None,
    spacing: SpacingOpt = None,
    config: ConfigOpt = None,
    axes: AxesOpt = None,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
):
    """Train a timm classifier with a held-out split; writes a model folder with its accuracy."""
    show = _setup(quiet, verbose)
    from diffex.models.classifier_train import config_from_yaml_dict, train_classifier

    def go():
        cfg = _config(config_from_yaml_dict, config, arch=arch, size=size, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                      modality=modality, windows=window, spacing_mm=spacing)
        return train_classifier(images, out, cfg, axes=axes, device=device, force=force, command=_command_line(), show_progress=show)

    _, metrics = _run(go)
    typer.echo(
        f"held-out accuracy {metrics['heldout_accuracy']:.1%} (balanced {metrics['heldout_balanced_accuracy']:.1%}) "
        f"on {metrics['n_heldout']} images; classes {metrics['class_names']}; confusion matrix {metrics['confusion_matrix']}"
    )


@app.command("inspect")
def inspect_cmd(
    classifier: Annotated[Optional[Path], typer.Option("--classifier", help="Classifier model folder or TorchScript file.")] = None,
    diffusion: Annotated[Optional[Path], typer.Option("--diffusion", help="Local diffusers UNet2DModel folder.")] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="Image folder or CSV manifest.")] = None,
    axes: AxesOpt = None,
    trust_checkpoint: TrustOpt = False,
    diffusion_normalization: DiffusionNormOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
):
    """Summarize a classifier, a diffusion model and images, and check that they fit together."""
    show = _setup(quiet, verbose)
    from diffex.inspect import format_report, inspect_setup

    if not (classifier or diffusion or images):
        typer.echo("error: give at least one of --classifier, --diffusion, --images", err=True)
        raise typer.Exit(2)
    report = _run(lambda: inspect_setup(classifier, diffusion, images, axes, trust_checkpoint, show_progress=show,
                                        diffusion_normalization=diffusion_normalization))
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    if not report["compatible"]:
        raise typer.Exit(2)


@app.command("explain")
def explain_cmd(
    classifier: Annotated[Path, typer.Option("--classifier", help="Classifier model folder or TorchScript file.")],
    images: ImagesOpt,
    diffusion: Annotated[Optional[Path], typer.Option("--diffusion", help="Diffusion model folder (default: from --config or recorded with the classifier).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Experiment folder (default: diffex-IMAGES).")] = None,
    config: ConfigOpt = None,
    method: Annotated[Optional[list[str]], typer.Option("--method", help="Direction method; repeat for a union (gradient, pca, discriminative, gradspan, sparse, readout, steer, hold, learned, jacobian, contrastive).")] = None,
    seed: SeedOpt = None,
    precision: PrecisionOpt = None,
    axes: AxesOpt = None,
    device: DeviceOpt = "auto",
    trust_checkpoint: TrustOpt = False,
    diffusion_normalization: DiffusionNormOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
):
    """Find and rank the h-space attributes that change the classifier's decision, with counterfactual traversals."""
    show = _setup(quiet, verbose)
    from diffex.explain import config_from_dict, explain

    def go():
        cfg = _config(config_from_dict, config, methods=tuple(method) if method else None, seed=seed, precision=precision)
        return explain(classifier, images, out, diffusion, cfg, device=device, axes=axes, trust_checkpoint=trust_checkpoint,
                       force=force, command=_command_line(), show_progress=show, diffusion_normalization=diffusion_normalization)

    res = _run(go)
    for a in res.attributes:
        lo, hi = a.delta_p_ci95
        typer.echo(f"towards {a.target} #{a.rank}: {a.name} ({'+' if a.sign > 0 else '-'}) "
                   f"dp {a.mean_delta_p:+.3f} [{lo:+.3f}, {hi:+.3f}], flips {a.flip_rate:.0%}, "
                   f"AUC {a.separation_auc:.2f}; {a.description}")
    typer.echo(str(res.report))


@app.command("report")
def report_cmd(
    experiment: Annotated[Path, typer.Argument(help="Experiment folder written by `diffex explain`.")],
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
):
    """Re-render EXPERIMENT/report.html from its results, without recomputing anything."""
    _setup(quiet, verbose)
    from diffex.report.html import write_report

    typer.echo(str(_run(lambda: write_report(experiment))))


@app.command("index")
def index_cmd(
    root: Annotated[Path, typer.Argument(help="Folder whose experiment folders (any depth) to list.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Page to write (default: ROOT/index.html).")] = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
):
    """Write one offline HTML page over every experiment folder under ROOT, with links to their reports."""
    _setup(quiet, verbose)
    from diffex.report.index import write_index

    typer.echo(str(_run(lambda: write_index(root, out))))


@app.command("demo")
def demo_cmd(
    out: Annotated[Path | None, typer.Option("--out", help="Experiment folder to write (default diffex-demo, or diffex-demo-ct).")] = None,
    modality: Annotated[str, typer.Option("--modality", help="microscopy (cells, sample_data/) or ct (lung nodules in HU, "
                                                               "sample_data/ct/).")] = "microscopy",
    precision: PrecisionOpt = None,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
):
    """Explain a shipped sample classifier on its shipped held-out images (cells, or CT nodules with --modality ct; about 4 min for cells, 14 min for CT on 2 CPU cores)."""
    show = _setup(quiet, verbose)
    from diffex.explain import ExplainConfig, explain, sample_data_dir

    out = out or Path("diffex-demo" if modality == "microscopy" else f"diffex-demo-{modality}")

    def go():
        root = sample_data_dir(modality)
        return explain(root / "models" / "classifier", root / "heldout", out, root / "models" / "diffusion", ExplainConfig(precision=precision or "fp32"),
                       device=device, force=force, command=_command_line(), show_progress=show)

    res = _run(go)
    typer.echo(str(res.report))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
