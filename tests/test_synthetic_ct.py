"""Synthetic CT with ground truth, and the lesion readouts checked against it."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from diffex.data.synthetic_ct import CT_FACTORS, CTSpec, generate_ct_dataset, generate_patients
from diffex.report.ct_morphology import describe_change, margin_irregularity, measure_lesion


def test_factors_separate_conditions_as_documented_and_nuisance_does_not():
    rows = [(c, f) for c, _, _, _, f in generate_patients(CTSpec(size=32), 300, 1)]

    def d_prime(name):
        a = np.array([f[name] for c, f in rows if c == "benign"])
        b = np.array([f[name] for c, f in rows if c == "malignant"])
        return abs(a.mean() - b.mean()) / np.sqrt((a.var() + b.var()) / 2)

    for name in CT_FACTORS:
        assert d_prime(name) == pytest.approx(2.5, abs=0.3), name
    for name in ("center_y", "center_x", "irregularity", "vessels", "noise_sd", "blur_sd_px"):
        assert d_prime(name) < 0.3, name


def test_patients_share_their_dose_and_parenchyma():
    rows = list(generate_patients(CTSpec(size=32), 6, 2))
    by_patient = {}
    for _, pid, _, _, f in rows:
        by_patient.setdefault(pid, set()).add((f["noise_sd"], f["parenchyma_hu"]))
    assert len(by_patient) == 6 and all(len(v) == 1 for v in by_patient.values())  # 2 patches per patient


def test_readouts_recover_the_planted_factors():
    """On 120 patches: diameter (mm) and solid share track the truth (solid share = solid_fraction^2 by area)."""
    truth, meas = [], []
    for _, _, _, hu, f in generate_patients(CTSpec(), 60, 5):
        m = measure_lesion(hu, (0.7, 0.7), (f["center_y"], f["center_x"]))
        truth.append([f["diameter_mm"], f["solid_fraction"] ** 2, f["margin_cv"]])
        meas.append([m["Lesion_Diameter_mm"], m["Lesion_SolidShare"], m["Lesion_MarginIrregularity"]])
    truth, meas = np.array(truth), np.array(meas)
    r = [np.corrcoef(truth[:, i], meas[:, i])[0, 1] for i in range(3)]
    assert r[0] >= 0.9 and r[1] >= 0.9, r  # measured 0.938 and 0.938 (seed 5)
    assert abs(np.mean(meas[:, 0] - truth[:, 0])) < 0.3  # diameter bias in mm (measured -0.13)
    # The margin readout does not resolve irregularity of a few percent at 0.7 mm (measured r = 0.33):
    # docs/ct.md says so; this pins the finding so that a better readout shows up here.
    assert r[2] < 0.6


def test_readouts_on_known_shapes():
    yy, xx = np.mgrid[:80, :80]
    r = np.hypot(yy - 40, xx - 40)
    theta = np.arctan2(yy - 40, xx - 40)
    hu = np.full((80, 80), -850.0)
    hu[r <= 12 * (1 + 0.2 * np.cos(3 * theta))] = -550.0  # ground glass, 3-lobed margin
    hu[r <= 6] = 40.0  # solid core
    hu[38:42, :] = np.maximum(hu[38:42, :], 40.0)  # a 4 px vessel crossing the nodule
    m = measure_lesion(hu, (0.5, 0.5))
    assert m["Lesion_Found"] == 1.0
    expected_area = 0.25 * np.sum(r <= 12 * (1 + 0.2 * np.cos(3 * theta)))
    assert m["Lesion_Area_mm2"] == pytest.approx(expected_area, rel=0.05)  # the vessel is cut off
    lesion = r <= 12 * (1 + 0.2 * np.cos(3 * theta))
    solid = lesion & (hu > -300)  # the core and the stretch of vessel inside the nodule: both solid by HU
    assert m["Lesion_SolidShare"] == pytest.approx(solid.sum() / lesion.sum(), abs=0.02)
    assert m["Lesion_MarginIrregularity"] == pytest.approx(0.2 / math.sqrt(2), abs=0.03)
    assert margin_irregularity(r <= 15, (0.5, 0.5)) < 0.02  # a digital disk
    # position and surrounding lung: a disk 6 px right of and 4 px above the centre of a 41 px patch at 0.5 mm
    yy, xx = np.mgrid[:41, :41]
    off = np.full((41, 41), -870.0)
    off[np.hypot(yy - 16, xx - 26) <= 5] = -100.0
    m = measure_lesion(off, (0.5, 0.5), search_mm=8.0)
    assert m["Lesion_CenterX_mm"] == pytest.approx(3.0, abs=1e-9) and m["Lesion_CenterY_mm"] == pytest.approx(-2.0, abs=1e-9)
    assert m["Lesion_ParenchymaHU"] == pytest.approx(-870.0)
    empty = measure_lesion(np.full((16, 16), -850.0), (1.0, 1.0))
    assert empty["Lesion_Found"] == 0.0 and math.isnan(empty["Lesion_Diameter_mm"])
    assert describe_change({"Lesion_Diameter_mm": 8.0, "Lesion_MeanHU": -300.0, "Lesion_SolidShare": 0.5},
                           {"Lesion_Diameter_mm": 10.1, "Lesion_MeanHU": -215.0, "Lesion_SolidShare": 0.38}) == \
        "nodule diameter +2.1 mm, mean density +85 HU, solid share -12.0 points"


def test_dataset_is_dicom_in_hu_with_manifest_and_is_reproducible(tmp_path):
    pytest.importorskip("pydicom")
    from diffex.data.ct_io import read_ct

    gt = generate_ct_dataset(tmp_path / "ct", 3, seed=4)
    again = generate_ct_dataset(tmp_path / "ct2", 3, seed=4)
    rows = list(csv.DictReader(open(gt)))
    assert len(rows) == 6 and {r["condition"] for r in rows} == {"benign", "malignant"}
    manifest = list(csv.DictReader(open(tmp_path / "ct" / "manifest.csv")))
    assert [m["patient_id"] for m in manifest] == [r["patient_id"] for r in rows]
    for r in rows:
        a, b = (tmp_path / d / r["path"] for d in ("ct", "ct2"))
        assert a.read_bytes() == b.read_bytes()
        ct = read_ct(a)
        assert ct.spacing[1:] == pytest.approx((0.7, 0.7)) and ct.hu.shape == (1, 64, 64)
        m = measure_lesion(ct.hu[0], ct.spacing[1:], (float(r["center_y"]), float(r["center_x"])))
        assert m["Lesion_Diameter_mm"] == pytest.approx(float(r["diameter_mm"]), abs=1.5)
    with pytest.raises(Exception, match="exists|--force"):
        generate_ct_dataset(tmp_path / "ct", 3, seed=4)


def test_cli_synthetic_ct(tmp_path):
    pytest.importorskip("pydicom")
    from typer.testing import CliRunner

    from diffex.cli import app

    res = CliRunner().invoke(app, ["synthetic", "--modality", "ct", "--out", str(tmp_path / "ct"), "--n", "2", "-q"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(tmp_path / "ct_factors.csv")
    assert sorted(p.name for p in (tmp_path / "ct" / "benign").iterdir()) == ["ben00p0000_0.dcm", "ben00p0000_1.dcm"]
    res = CliRunner().invoke(app, ["synthetic", "--modality", "ct", "--fields", "--out", str(tmp_path / "x"), "-q"])
    assert res.exit_code == 2 and "takes neither" in res.output
