"""CT through the whole product: train-classifier, train-diffusion and explain on synthetic CT DICOM.

Tiny models at 32 px (1.4 mm pixels over the synthetic patches' 44.8 mm field); the checks are on
what CT changes: windows and spacing stored in both model folders and checked against each other,
patients kept on one side of every split, renders mapped back to HU inside the window, lesion
readouts in mm and HU in morphology.csv and the description, the report in CT terms.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from diffex.data.ct_load import CTGeometry, read_ct_manifest
from diffex.data.source import canonical_windows, geometry_for, record_digest, split_train_heldout
from diffex.errors import DiffexError
from diffex.explain import ExplainConfig, explain
from diffex.models.classifier_train import ClassifierTrainConfig, train_classifier
from diffex.models.diffusion_train import DiffusionTrainConfig, train_diffusion
from diffex.models.unet import UNetSpec
from diffex.report.ct_morphology import describe_ct, measure_lesion
from diffex.report.folder import read_hyperstack
from tests.conftest import TINY_OBJECTIVE, TINY_UNET

pytest.importorskip("pydicom")

CT = {"modality": "ct", "spacing_mm": 1.4, "windows": ("lung",)}
TINY_EXPLAIN = ExplainConfig(
    steps=3, t_end=999, max_images=16, gradient_images=6, rank_images=8, directions_per_method=2, screen_top=2,
    max_attributes=2, traversal_frames=3, traversal_images=1, measure_images=2, bootstrap=50, min_psnr=-100.0,
    batch_size=8, contrastive_iterations=2, selection_confidence=0.5, methods=("gradient", "pca"),
)


@pytest.fixture(scope="module")
def ct_data(tmp_path_factory) -> Path:
    from diffex.data.synthetic_ct import generate_ct_dataset

    root = tmp_path_factory.mktemp("ct")
    generate_ct_dataset(root / "ct", 12, seed=0)
    return root / "ct"


@pytest.fixture(scope="module")
def ct_models(ct_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ct_models")
    clf, metrics = train_classifier(ct_data, out / "clf", ClassifierTrainConfig(arch="test_resnet", size=32, epochs=6, batch_size=8,
                                                                               heldout_fraction=0.25, **CT), device="cpu", show_progress=False)
    dcfg = DiffusionTrainConfig(size=32, steps=4, batch_size=4, checkpoint_every=2, unet=UNetSpec(**TINY_UNET), gate_samples=4,
                                gate_sample_steps=3, roundtrip_steps=3, heldout_fraction=0.25, **TINY_OBJECTIVE, **CT)
    dm, _ = train_diffusion(ct_data, out / "dm", dcfg, device="cpu", show_progress=False)
    return out / "clf", out / "dm", clf, dm, metrics


def test_config_needs_windows_and_spacing_for_ct_and_none_for_microscopy():
    with pytest.raises(DiffexError, match="needs windows"):
        ClassifierTrainConfig(modality="ct", spacing_mm=0.7)
    with pytest.raises(DiffexError, match="pixel spacing"):
        DiffusionTrainConfig(modality="ct", windows=("lung",))
    with pytest.raises(DiffexError, match="not of microscopy"):
        ClassifierTrainConfig(windows=("lung",))
    with pytest.raises(DiffexError, match="explicit windows"):
        geometry_for("mr", 32, 1.0, ("lung",))
    assert geometry_for("mr", 32, 1.0, ((0.0, 800.0),)).channel_names == ("0..800",)
    assert ClassifierTrainConfig(modality="ct", spacing_mm=0.7, windows="lung,-160,240".split(",")[:1]).windows == ("lung",)
    assert canonical_windows("mediastinum") == ("mediastinum",)


def test_geometry_round_trips_through_its_dict():
    geo = CTGeometry(0.7, 32, ("lung", (-160.0, 240.0)))
    back = CTGeometry.from_dict(json.loads(json.dumps(geo.to_dict())), 32)
    assert back == geo and back.normalization() == geo.normalization()
    assert geo.normalization().low == (-1350.0, -160.0) and geo.normalization().high == (150.0, 240.0)
    with pytest.raises(DiffexError, match="unknown keys"):
        CTGeometry.from_dict({**geo.to_dict(), "level": 3}, 32)


def test_split_keeps_each_patient_on_one_side(ct_data):
    from diffex.data.dataset import ImageSet

    recs = [r.as_record() for r in read_ct_manifest(ct_data / "manifest.csv")]
    data = ImageSet(recs, np.zeros((len(recs), 1, 2, 2), np.float32), ("lung",), (2, 2))
    labels = data.labels()
    train, held = split_train_heldout(data, labels, 0.25, seed=0, geometry=CTGeometry(1.4, 32))
    pat = np.array([r.replicate for r in recs])
    assert set(pat[train]).isdisjoint(pat[held])
    assert sorted(np.r_[train, held].tolist()) == list(range(len(recs)))
    assert set(labels[held]) == {0, 1}


def test_record_digest_tells_slices_of_one_file_apart(ct_data):
    rec = read_ct_manifest(ct_data / "manifest.csv")[0].as_record()
    a, b = replace(rec, slice=0), replace(rec, slice=1)
    assert record_digest(a) != record_digest(b) != record_digest(rec)
    assert record_digest(a) == record_digest(replace(rec, slice=0))


def test_models_store_the_geometry_and_use_the_window(ct_models):
    clf_dir, dm_dir, clf, dm, metrics = ct_models
    for d in (clf_dir, dm_dir):
        meta = json.loads((d / ("config.json" if d == clf_dir else "diffex.json")).read_text())
        assert meta["ct"] == {"modality": "ct", "spacing_mm": 1.4, "windows": [{"name": "lung", "low": -1350.0, "high": 150.0}]}
    assert clf.info.normalization.low == (-1350.0,) and dm.info.normalization.high == (150.0,)
    # the held-out images of both models are whole patients
    for training in (clf.info.training, dm.info.training):
        held = {name.split("/")[1].rsplit("_", 1)[0] for name in training["heldout"]}
        train_pat = {r.patient_id for r in read_ct_manifest(Path(training["images"]) / "manifest.csv")} - held
        assert held and train_pat and held.isdisjoint(train_pat)
    # renders map back to HU inside the window: model-space -1 and +1 are the window's ends
    raw = dm.from_model_space(torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 32, 32)).numpy()
    assert raw[0].max() == pytest.approx(-1350.0) and raw[1].min() == pytest.approx(150.0)


def test_explain_on_ct_reports_lesions_in_mm_and_hu(ct_models, ct_data, tmp_path):
    clf_dir, dm_dir, *_ = ct_models
    res = explain(clf_dir, ct_data, tmp_path / "exp", dm_dir, TINY_EXPLAIN, device="cpu", show_progress=False).results
    assert res.imaging is not None and res.imaging.spacing_mm == 1.4 and res.imaging.windows[0]["low"] == -1350.0
    assert "1.4 mm" in res.imaging.input and "lung window W 1500 / L -600 HU" in res.imaging.input
    assert res.display_ranges == {"lung": [-1350.0, 150.0]}
    assert res.statistics.bootstrap_unit == "replicate"  # patient_id
    with open(tmp_path / "exp" / "morphology.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {"Lesion_Diameter_mm", "Lesion_MeanHU", "Lesion_SolidShare"} <= set(rows[0])
    assert not any(k.startswith("lung_AreaShape") for k in rows[0])
    assert res.attributes, "the tiny models found no attribute: nothing of the describe stage was exercised"
    for a in res.attributes:
        assert a.description == describe_ct({m: vars(t) for m, t in a.morphology.items()})
        # independent check: the lesion measured again on the saved HU hyperstack equals morphology.csv's row
        ex = a.traversal.shown[0]
        stack = read_hyperstack(tmp_path / "exp" / "traversals" / ex.file, 1)  # (F, 1, H, W) in HU
        assert stack.min() >= -1350.0 - 1e-3 and stack.max() <= 150.0 + 1e-3  # renders stay in the window
        for f, s in enumerate(a.traversal.strengths):
            row = next(r for r in rows if r["attribute"] == a.id and r["ImageName"] == ex.image and float(r["Strength"]) == pytest.approx(s, abs=1e-6))
            again = measure_lesion(stack[f, 0], (1.4, 1.4))
            for k in ("Lesion_Diameter_mm", "Lesion_MeanHU"):
                assert float(row[k]) == pytest.approx(again[k], rel=1e-4, nan_ok=True)
    html = (tmp_path / "exp" / "report.html").read_text()
    assert "lung window W 1500 / L -600 HU" in html and "1.4 mm" in html
    assert "do not show that such lesions exist" in html and "cell" not in html.split("<h2 id=\"methods\">")[0].lower()


def test_models_with_other_windows_do_not_fit(ct_models):
    from diffex.models.bridge import check_models
    from diffex.models.diffusion import DiffusionModel

    *_, clf, dm, _ = ct_models
    other = dict(dm.info.ct, windows=[{"name": "mediastinum", "low": -125.0, "high": 225.0}])
    moved = DiffusionModel(dm.unet, dm.scheduler_config, replace(dm.info, ct=other))
    with pytest.raises(DiffexError, match=r"do not fit together: the classifier was trained on CT at 1.4 mm with window\(s\) "
                                          r"lung \[-1350, 150\], the diffusion model on CT at 1.4 mm with window\(s\) mediastinum"):
        check_models(clf, moved)
    check_models(clf, dm)  # the pair as trained fits


def test_microscopy_classifier_with_ct_diffusion_is_refused(ct_models, tiny_classifier, cells, tmp_path):
    _, dm_dir, *_ = ct_models
    with pytest.raises(DiffexError, match="microscopy images"):
        explain(tiny_classifier[0], cells, tmp_path / "exp", dm_dir, TINY_EXPLAIN, device="cpu", show_progress=False)


def test_cli_asks_for_the_window_and_inspect_shows_the_geometry(ct_models, ct_data, tmp_path):
    from typer.testing import CliRunner

    from diffex.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["train-classifier", "--images", str(ct_data), "--out", str(tmp_path / "c"), "--modality", "ct",
                              "--spacing", "1.4", "-q"])
    assert res.exit_code == 2 and "--modality ct needs windows" in res.output and not (tmp_path / "c").exists()
    clf_dir, dm_dir, *_ = ct_models
    res = runner.invoke(app, ["inspect", "--classifier", str(clf_dir), "--diffusion", str(dm_dir), "--images", str(ct_data)])
    assert res.exit_code == 0, res.output
    assert res.output.count("CT: resampled to 1.4 mm, window(s) lung [-1350, 150]") == 2
    assert "images       " in res.output and "24 (benign: 12, malignant: 12)" in res.output and "compatible   yes" in res.output


def test_microscopy_split_ignores_replicates_and_ct_without_patient_ids_groups_by_file(ct_data, tmp_path):
    from diffex.data.ct_load import ct_records
    from diffex.data.dataset import ImageSet, Record, split_heldout

    # microscopy: a replicate column does not change the image-wise split (as before CT existed)
    recs = [Record(Path(f"{i}.tif"), "a" if i < 10 else "b", replicate="r1") for i in range(20)]
    data = ImageSet(recs, np.zeros((20, 1, 2, 2), np.float32), ("x",), (2, 2))
    labels = data.labels()
    got = split_train_heldout(data, labels, 0.2, seed=0)
    want = split_heldout(labels, 0.2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    # CT without patient_id: each file is one patient; with it on some rows only: an error naming the manifest
    rows = (ct_data / "manifest.csv").read_text().splitlines()
    (ct_data / "no_ids.csv").write_text("\n".join(["path,condition"] + [",".join(r.split(",")[:2]) for r in rows[1:]]) + "\n")
    assert [r.replicate for r in ct_records(ct_data / "no_ids.csv")] == [str(r.path) for r in ct_records(ct_data / "no_ids.csv")]
    mixed = rows[:2] + [",".join(r.split(",")[:2]) + "," for r in rows[2:]]
    (ct_data / "mixed.csv").write_text("\n".join(mixed) + "\n")
    with pytest.raises(DiffexError, match=r"mixed.csv.*23 of 24 rows have no patient_id"):
        ct_records(ct_data / "mixed.csv")


def test_gate_classifier_must_read_images_like_the_diffusion_model(ct_models, ct_data, tmp_path):
    *_, clf, _, _ = ct_models
    cfg = DiffusionTrainConfig(size=32, steps=1, modality="ct", spacing_mm=1.4, windows=("mediastinum",))
    with pytest.raises(DiffexError, match="gate's KID does not read images as this model will: .*lung.*mediastinum"):
        train_diffusion(ct_data, tmp_path / "dm", cfg, device="cpu", show_progress=False, classifier=clf)
    assert not (tmp_path / "dm").exists()
