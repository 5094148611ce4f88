"""Compatibility checks between a classifier, a diffusion model and images."""

from __future__ import annotations

import shutil

import numpy as np
import tifffile

from diffex.inspect import format_report, inspect_setup


def test_compatible_setup(tiny_classifier, tiny_diffusion, cells):
    report = inspect_setup(tiny_classifier[0], tiny_diffusion[0], cells)
    assert report["compatible"], report["problems"]
    assert report["images"]["per_condition"] == {"control": 12, "treated": 12}
    assert report["accuracy_on_images"]["n_images"] == 24
    assert any("different normalizations" in n for n in report["notes"])
    assert "compatible   yes" in format_report(report)


def test_size_mismatch(cells, tiny_diffusion, tmp_path):
    from diffex.models.classifier_train import ClassifierTrainConfig, train_classifier

    clf_dir = tmp_path / "clf8"
    train_classifier(cells, clf_dir, ClassifierTrainConfig(arch="test_resnet", size=8, epochs=1), show_progress=False)
    report = inspect_setup(clf_dir, tiny_diffusion[0])
    assert not report["compatible"]
    assert "the classifier works at 8 px, the diffusion model at 16 px" in report["problems"]


def test_channel_and_condition_mismatch(tiny_classifier, tmp_path):
    rng = np.random.default_rng(0)
    for cond in ("control", "mutant"):
        (tmp_path / "imgs" / cond).mkdir(parents=True)
        tifffile.imwrite(tmp_path / "imgs" / cond / "a.tif", rng.uniform(0, 1000, (3, 16, 16)).astype(np.uint16),
                         photometric="minisblack", metadata={"axes": "CYX"})
    report = inspect_setup(tiny_classifier[0], images=tmp_path / "imgs")
    assert "the images have 3 channel(s), the classifier takes 2" in report["problems"]
    assert any("conditions ['mutant'] are not classes" in p for p in report["problems"])
    assert any("classes without images: ['treated']" in n for n in report["notes"])
    assert "accuracy_on_images" not in report


def test_channel_name_mismatch(tiny_classifier, tiny_diffusion, tmp_path):
    import json

    dm = tmp_path / "dm"
    shutil.copytree(tiny_diffusion[0], dm)
    meta = json.loads((dm / "diffex.json").read_text())
    meta["channel_names"] = ["Hoechst", "Phalloidin"]
    (dm / "diffex.json").write_text(json.dumps(meta))
    (dm / "checksums.json").unlink()
    report = inspect_setup(tiny_classifier[0], dm)
    assert any("channel names differ" in p for p in report["problems"])
