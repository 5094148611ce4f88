"""``diffex crop``: segmentation scored against true labels, exclusions by reason, outputs explain can read."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage
from scipy import ndimage
from typer.testing import CliRunner

from diffex.cli import app
from diffex.data.crop import REASONS, CropConfig, crop_fields, field_objects, find_labels, nuclear_channel_index
from diffex.data.dataset import discover, load_images
from diffex.data.io import read_image
from diffex.data.segment import NuclearSegmentation, foreground, segment_nuclei
from diffex.data.synthetic_fields import FieldSpec, generate_fields, render_field
from diffex.errors import DiffexError, InputError


def match(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """For each true object 1..n: True if one predicted object overlaps it with IoU >= 0.5 (at most one can)."""
    hits = np.zeros(int(truth.max()), bool)
    pairs, counts = np.unique(np.stack([truth.ravel(), pred.ravel()]), axis=1, return_counts=True)
    t_area = np.bincount(truth.ravel())
    p_area = np.bincount(pred.ravel())
    for (t, p), inter in zip(pairs.T, counts):
        if t and p and inter / (t_area[t] + p_area[p] - inter) >= 0.5:
            hits[t - 1] = True
    return hits


@pytest.fixture(scope="module")
def fields():
    rng = np.random.default_rng(11)
    return [render_field(rng, c, FieldSpec()) for c in ("control", "treated") * 3]


def test_matching_on_a_known_case():
    truth = np.zeros((10, 10), int)
    truth[:5, :5], truth[6:, 6:] = 1, 2
    pred = np.zeros_like(truth)
    pred[:5, :4] = 3  # IoU 20/25 with object 1
    pred[6:8, 6:8] = 4  # IoU 4/16 with object 2
    assert match(truth, pred).tolist() == [True, False]


def test_segmentation_recall_and_precision(fields):
    found = truth_n = pred_n = touching_found = touching_n = 0
    for img, truth, objects in fields:
        pred = segment_nuclei(img[0])
        hits = match(truth, pred)
        touching = np.array([o["touching"] for o in objects])
        found, truth_n, pred_n = found + hits.sum(), truth_n + len(hits), pred_n + int(pred.max())
        touching_found, touching_n = touching_found + hits[touching].sum(), touching_n + touching.sum()
    recall, precision = found / truth_n, found / pred_n
    print(f"segmentation on 6 synthetic fields: recall {recall:.3f} ({found}/{truth_n}), precision {precision:.3f} "
          f"({found}/{pred_n}), touching nuclei split {touching_found}/{touching_n}")
    assert truth_n == 96 and touching_n == 24
    assert recall >= 0.97 and precision >= 0.97
    assert touching_found / touching_n >= 0.9


def test_without_the_watershed_touching_nuclei_merge(fields):
    """The same score fails for connected components alone: the test can tell a splitter from none."""
    found = touching_found = touching_n = 0
    for img, truth, objects in fields:
        pred, _ = ndimage.label(foreground(img[0], NuclearSegmentation()))
        hits = match(truth, pred)
        touching = np.array([o["touching"] for o in objects])
        found, touching_found, touching_n = found + hits.sum(), touching_found + hits[touching].sum(), touching_n + touching.sum()
    assert touching_found / touching_n <= 0.5  # 9 of 24 on these fields: Otsu alone separates only pairs with a gap


def test_exclusions_by_reason():
    labels = np.zeros((100, 100), int)
    labels[0:10, 40:50] = 1  # touches the border
    labels[50:52, 50:52] = 2  # 4 px: below min_area
    labels[20:45, 20:45] = 3  # 625 px: above max_area
    labels[85:95, 80:90] = 4  # inside, but a 32 px window around it leaves the field
    labels[45:55, 60:70] = 5  # kept
    cfg = CropConfig(size=32, min_area=20, max_area=400)
    reasons = {o["object"]: o["reason"] for o in field_objects(labels, cfg)}
    assert reasons == {1: REASONS[0], 2: REASONS[1], 3: REASONS[2], 4: REASONS[3], 5: None}
    kept = next(o for o in field_objects(labels, cfg) if o["object"] == 5)
    assert (kept["centroid_y"], kept["centroid_x"], kept["area"], kept["y0"], kept["x0"]) == (49.5, 64.5, 100, 34, 49)


def test_nuclear_channel_choice(tmp_path):
    p = tmp_path / "f.tif"
    assert nuclear_channel_index(("Actin", "DAPI"), 2, None, p) == 1
    assert nuclear_channel_index(("A", "B"), 2, "B", p) == 1
    assert nuclear_channel_index(("A", "B"), 2, "0", p) == 0
    assert nuclear_channel_index(None, 1, None, p) == 0
    with pytest.raises(InputError, match="pass --nuclear-channel"):
        nuclear_channel_index(("A", "B"), 2, None, p)
    with pytest.raises(InputError, match="no channel 'C'"):
        nuclear_channel_index(("A", "B"), 2, "C", p)


@pytest.fixture(scope="module")
def fov(tmp_path_factory):
    root = tmp_path_factory.mktemp("fov")
    table = generate_fields(root / "fov", 2, seed=3, spec=FieldSpec(size=192, cells=6, touching_pairs=1))
    return root, table


def test_crop_outputs(fov, tmp_path):
    root, table = fov
    totals = crop_fields(root / "fov", tmp_path / "out", CropConfig(size=48), show_progress=False, command="test")
    out = tmp_path / "out"
    rows = list(csv.DictReader(open(out / "crops.csv")))
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert len(rows) == totals["kept"] == sum(int(s["kept"]) for s in summary) > 0
    assert sum(int(s["found"]) for s in summary) == totals["found"]
    assert totals["found"] == totals["kept"] + sum(totals["excluded"].values())
    assert json.loads((out / "crop.json").read_text())["kept"] == totals["kept"]
    # every crop is the field's raw pixels around the object, with the channel names
    r = rows[0]
    crop = read_image(out / r["path"])
    field = read_image(root / "fov" / r["field"])
    y0, x0 = math.floor(float(r["centroid_y"]) + 0.5) - 24, math.floor(float(r["centroid_x"]) + 0.5) - 24  # halves round up
    assert crop.dtype == "uint16" and crop.channel_names == ("DNA", "Actin")
    np.testing.assert_array_equal(crop.data, field.data[:, y0:y0 + 48, x0:x0 + 48])
    # explain reads the manifest directly
    records = discover(out / "crops.csv")
    assert len(records) == len(rows) and {x.condition for x in records} == {"control", "treated"}
    loaded = load_images(records, show_progress=False)
    assert loaded.raw.shape == (len(rows), 2, 48, 48) and loaded.channel_names == ("DNA", "Actin")
    for condition in ("control", "treated"):
        png = np.asarray(PILImage.open(out / f"qc_{condition}.png"))
        assert png.ndim == 3 and png.std() > 10


def test_labels_from_files(fov, tmp_path):
    root, _ = fov
    truth = root / "fov_truth"
    labels = tmp_path / "labels"
    for p in truth.rglob("*.tif"):  # cellpose-style names, as PNG
        (labels / p.parent.name).mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(tifffile.imread(p).astype(np.uint16)).save(labels / p.parent.name / (p.name[:-4] + "_cp_masks.png"))
    totals = crop_fields(root / "fov", tmp_path / "out", CropConfig(size=48, labels=labels), show_progress=False)
    expected = sum(int(tifffile.imread(p).max()) for p in truth.rglob("*.tif"))
    assert totals["found"] == expected
    field = root / "fov" / "control" / "control_field000.ome.tif"
    assert find_labels(labels, field).name == "control_field000_cp_masks.png"


def test_bad_label_images(fov, tmp_path):
    root, _ = fov
    field = root / "fov" / "control" / "control_field000.ome.tif"
    labels = tmp_path / "labels"
    labels.mkdir()
    with pytest.raises(InputError, match="control_field000.ome.tif: no label image"):
        crop_fields(root / "fov", tmp_path / "out", CropConfig(labels=labels), show_progress=False)
    tifffile.imwrite(labels / "control_field000.tif", np.ones((10, 10), np.uint16))
    with pytest.raises(InputError, match=r"control_field000.tif: label image is 10 x 10 px, its field is 192 x 192"):
        crop_fields(root / "fov", tmp_path / "out", CropConfig(labels=labels), show_progress=False)
    tifffile.imwrite(labels / "control_field000.tif", np.zeros((192, 192), np.uint16))
    with pytest.raises(InputError, match="control_field000.tif: label image has no objects"):
        crop_fields(root / "fov", tmp_path / "out", CropConfig(labels=labels), show_progress=False)
    tifffile.imwrite(labels / "control_field000_masks.tif", np.zeros((192, 192), np.uint16))
    with pytest.raises(InputError, match="several label images match"):
        find_labels(labels, field)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_no_overwrite_without_force(fov, tmp_path):
    root, _ = fov
    crop_fields(root / "fov", tmp_path / "out", CropConfig(size=48), show_progress=False)
    before = (tmp_path / "out" / "crops.csv").read_bytes()
    with pytest.raises(DiffexError, match="--force"):
        crop_fields(root / "fov", tmp_path / "out", CropConfig(size=32), show_progress=False)
    assert (tmp_path / "out" / "crops.csv").read_bytes() == before
    crop_fields(root / "fov", tmp_path / "out", CropConfig(size=32), show_progress=False, force=True)
    assert read_image(tmp_path / "out" / next(csv.DictReader(open(tmp_path / "out" / "crops.csv")))["path"]).data.shape[1:] == (32, 32)


def test_cli(fov, tmp_path):
    root, _ = fov
    runner = CliRunner()
    res = runner.invoke(app, ["crop", "--images", str(root / "fov"), "--out", str(tmp_path / "out"), "--size", "48", "-q"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(tmp_path / "out" / "crops.csv")
    res = runner.invoke(app, ["crop", "--images", str(root / "fov"), "--out", str(tmp_path / "o2"), "--nuclear-channel", "GFP", "-q"])
    assert res.exit_code == 2 and "control_field000.ome.tif: no channel 'GFP'" in res.stderr
    assert not (tmp_path / "o2").exists()
