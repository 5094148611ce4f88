"""``diffex inspect``: what a classifier, a diffusion model and an image set are, and whether they fit.

Problems (refuse to go on): channel counts or image sizes that disagree, conditions that are not
among the classifier's classes, channel names that disagree. Notes (fine, but worth knowing): the
two models use different normalizations (each gets its own; renders are mapped back to raw
intensities between them), classes without images, a diffusion model without a quality gate or
one that failed it.

Example
-------
>>> report = inspect_setup(classifier="sample_data/models/classifier",
...                        images="sample_data/heldout")          # doctest: +SKIP
>>> report["compatible"]                                          # doctest: +SKIP
True
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from diffex.data.ct_load import CTGeometry
from diffex.data.dataset import ImageSet, conditions_of
from diffex.data.source import find_records, load_records
from diffex.models.bridge import check_pair
from diffex.models.classifier import Classifier, load_classifier
from diffex.models.classifier_train import evaluate
from diffex.models.diffusion import DiffusionModel


def _classifier_summary(clf: Classifier) -> dict:
    i = clf.info
    return {
        "source": i.source,
        "kind": i.kind,
        "arch": i.arch,
        "class_names": list(i.class_names),
        "in_channels": i.in_channels,
        "channel_names": list(i.channel_names) if i.channel_names else None,
        "image_size": i.image_size,
        "normalization": i.normalization.to_dict(),
        "ct": i.ct,
        "heldout_accuracy": i.training.get("heldout_accuracy"),
    }


def _diffusion_summary(dm: DiffusionModel) -> dict:
    i = dm.info
    gate = i.quality_gate or {}
    return {
        "source": i.source,
        "in_channels": i.in_channels,
        "image_size": i.image_size,
        "channel_names": list(i.channel_names) if i.channel_names else None,
        "normalization": i.normalization.to_dict() if i.normalization else None,
        "ct": i.ct,
        "parameters": int(sum(p.numel() for p in dm.unet.parameters())),
        "train_timesteps": dm.num_train_timesteps,
        "quality_gate_passed": gate.get("passed"),
        "roundtrip_psnr_db": (gate.get("roundtrip") or {}).get("psnr_mean_db"),
        "roundtrip_explain": gate.get("roundtrip_explain"),
        "kid": gate.get("kid"),
        "montage": str(Path(i.source) / gate["montage"]) if gate.get("montage") and i.source and (Path(i.source) / gate["montage"]).is_file() else None,
    }


def _images_summary(images: ImageSet, source) -> dict:
    counts = Counter(r.condition for r in images.records)
    return {
        "source": str(source),
        "n_images": len(images.records),
        "per_condition": dict(sorted(counts.items())),
        "channels": images.raw.shape[1],
        "channel_names": list(images.channel_names),
        "file_size": list(images.original_shape),
    }


def check_images(images: ImageSet, clf: Classifier | None, dm: DiffusionModel | None) -> tuple[list[str], list[str]]:
    """Problems and notes for an image set against the models."""
    problems, notes = [], []
    conds = conditions_of(images.records)
    n_ch = images.raw.shape[1]
    for name, model_ch, model_names in (
        ("classifier", clf.info.in_channels if clf else None, clf.info.channel_names if clf else None),
        ("diffusion model", dm.info.in_channels if dm else None, dm.info.channel_names if dm else None),
    ):
        if model_ch is not None and model_ch != n_ch:
            problems.append(f"the images have {n_ch} channel(s), the {name} takes {model_ch}")
        elif model_names and images.channel_names and not all(c.startswith("ch") for c in images.channel_names):
            if tuple(model_names) != tuple(images.channel_names):
                problems.append(f"image channels {list(images.channel_names)} differ from the {name}'s {list(model_names)}")
    if clf is not None:
        missing = [c for c in conds if c not in clf.info.class_names]
        if missing:
            problems.append(f"conditions {missing} are not classes of the classifier {list(clf.info.class_names)}")
        unused = [c for c in clf.info.class_names if c not in conds]
        if unused:
            notes.append(f"classes without images: {unused}")
    return problems, notes


def inspect_setup(
    classifier: str | Path | None = None,
    diffusion: str | Path | None = None,
    images: str | Path | None = None,
    axes: str | None = None,
    trust_checkpoint: bool = False,
    show_progress: bool = False,
    diffusion_normalization: str | Path | None = None,
) -> dict:
    """Load what is given, summarize it and check that the parts fit together.

    Returns
    -------
    dict
        ``classifier``, ``diffusion``, ``images`` summaries (for what was given), ``problems``,
        ``notes``, ``compatible`` and, when classifier and images fit, ``accuracy_on_images``.
    """
    clf = load_classifier(classifier, trust_checkpoint=trust_checkpoint) if classifier else None
    dm = DiffusionModel.load(diffusion, normalization=diffusion_normalization, strict=False) if diffusion else None
    report: dict = {}
    if clf:
        report["classifier"] = _classifier_summary(clf)
    if dm:
        report["diffusion"] = _diffusion_summary(dm)
    problems, notes = check_pair(clf, dm)
    if images:
        size = clf.info.image_size if clf and clf.info.image_size else dm.info.image_size if dm else None
        mode = clf.info.resize_mode if clf else dm.info.resize_mode if dm else "resize"
        ct = (clf.info.ct if clf else None) or (dm.info.ct if dm else None)
        geometry = CTGeometry.from_dict(ct, size) if ct else None  # CT/MR: read as both models were trained
        imgs = load_records(find_records(images, geometry), size, mode, geometry, axes=axes, show_progress=show_progress)
        report["images"] = _images_summary(imgs, images)
        p, n = check_images(imgs, clf, dm)
        problems += p
        notes += n
        if clf is not None and not p and clf.info.image_size in (None, imgs.raw.shape[-1]):
            report["accuracy_on_images"] = evaluate(clf, imgs.raw, imgs.labels(list(clf.info.class_names)))
    report["problems"] = problems
    report["notes"] = notes
    report["compatible"] = not problems
    return report


def _ct_line(ct: dict | None) -> list[str]:
    if not ct:
        return []
    wins = ", ".join(f"{w['name']} [{w['low']:g}, {w['high']:g}]" for w in ct["windows"])
    return [f"             {ct['modality'].upper()}: resampled to {ct['spacing_mm']:g} mm, window(s) {wins}"]


def format_report(report: dict) -> str:
    """Human-readable summary of :func:`inspect_setup`'s result."""
    lines = []
    if c := report.get("classifier"):
        acc = f", held-out accuracy {c['heldout_accuracy']:.1%}" if c.get("heldout_accuracy") is not None else ""
        lines.append(f"classifier   {c['source']} ({c['kind']}, {c['arch'] or 'unknown arch'}{acc})")
        lines.append(f"             classes {c['class_names']}; {c['in_channels']} channel(s) {c['channel_names'] or ''}; {c['image_size']} px")
        lines += _ct_line(c.get("ct"))
    if d := report.get("diffusion"):
        gate = {True: "passed", False: "FAILED", None: "not recorded"}[d["quality_gate_passed"]]
        psnr = f", round trip {d['roundtrip_psnr_db']:.1f} dB from T" if d.get("roundtrip_psnr_db") is not None else ""
        if rt := d.get("roundtrip_explain"):
            psnr += f", {rt['psnr_mean_db']:.1f} dB at explain's {rt['steps']} steps to t = {rt['t_end']}"
        lines.append(f"diffusion    {d['source']} ({d['parameters'] / 1e6:.2f} M parameters, quality gate {gate}{psnr})")
        lines.append(f"             {d['in_channels']} channel(s) {d['channel_names'] or ''}; {d['image_size']} px")
        lines += _ct_line(d.get("ct"))
        if (k := d.get("kid")) and k.get("computed"):
            lines.append(f"             KID x1000 on the classifier's features: samples {1e3 * k['samples']['mean']:.2f}, "
                         f"held-out real images {1e3 * k['heldout_real']['mean']:.2f}")
        if d.get("montage"):
            lines.append(f"             samples beside real images: {d['montage']}")
    if i := report.get("images"):
        per = ", ".join(f"{k}: {v}" for k, v in i["per_condition"].items())
        lines.append(f"images       {i['source']}: {i['n_images']} ({per})")
        lines.append(f"             {i['channels']} channel(s) {i['channel_names']}; files {i['file_size'][0]}x{i['file_size'][1]} px")
    if a := report.get("accuracy_on_images"):
        lines.append(f"accuracy     {a['accuracy']:.1%} on these images (balanced {a['balanced_accuracy']:.1%}); confusion {a['confusion_matrix']}")
    for n in report["notes"]:
        lines.append(f"note         {n}")
    for p in report["problems"]:
        lines.append(f"PROBLEM      {p}")
    lines.append("compatible   " + ("yes" if report["compatible"] else "NO"))
    return "\n".join(lines)
