"""Validity scoring (benchmarks/validity.py, benchmarks/explain_acceptance.py) on hand-made experiment folders.

Each folder is written through the results schema, with a morphology.csv and traversal hyperstacks,
and scored against known real measurements and ground truth: every score is shown passing and failing.
"""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from diffex.explain.write import write_morphology_csv
from diffex.report.results import (
    Attribute,
    CandidateSummary,
    DiffusionSummary,
    InversionSummary,
    Results,
    ShownExample,
    Statistics,
    Traversal,
    Trend,
    write_results,
)
from diffex.report.traversal import write_hyperstack


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


validity = _load("validity")
DNA, ACTIN = validity.MEASURE["nucleus_radius"], validity.MEASURE["actin_level"]
SIZE, X, Y, ELONG = (validity.NUISANCE[k] for k in ("cell size", "cell x", "cell y", "cell elongation"))
COLUMNS = (DNA, ACTIN, SIZE, X, Y, ELONG)
CHANNELS = ["DNA", "Actin"]
STRENGTHS = [-1.0, 0.0, 1.0]
BOTH = ("nucleus_radius", "actin_level")
PASSED = "passed (nuclear size / cytoplasm; CT: diameter / solid share)"

# the real images: 10 per condition; treated has larger nuclei and brighter cytoplasm
PATHS = [f"control/c{i}.tif" for i in range(10)] + [f"treated/t{i}.tif" for i in range(10)]
REAL = {DNA: np.r_[np.linspace(60, 80, 10), np.linspace(90, 110, 10)],
        ACTIN: np.r_[np.linspace(4000, 5000, 10), np.linspace(5500, 6500, 10)],
        SIZE: np.linspace(250, 330, 20), X: np.linspace(28, 36, 20), Y: np.linspace(36, 28, 20), ELONG: np.linspace(0.3, 0.7, 20)}
INSIDE = {c: float(np.mean(v)) for c, v in REAL.items()}  # a render value well inside the real range
OUTSIDE = {c: float(10 * np.max(v)) for c, v in REAL.items()}


# ------------------------------------------------------------------------------ fake folders
def attribute(id: str, target: str = "treated", rank: int = 1, r_dna: float = 0.0, r_actin: float = 0.0, drift: float = 0.0,
              auc: float = 0.9, p: float = 0.001, flip: float = 0.85) -> Attribute:
    """An attribute whose traversal moves the nuclear area with Spearman r_dna, the cytoplasm with r_actin, cell size by drift."""
    morph = {c: Trend(0.0, 0.0, 0.0) for c in COLUMNS}
    morph.update({DNA: Trend(r_dna, 0.2 * r_dna, -0.2 * r_dna), ACTIN: Trend(r_actin, 0.2 * r_actin, -0.2 * r_actin),
                  SIZE: Trend(0.0, drift, -0.5 * drift)})
    shown = [ShownExample(index=0, image="control/c0.tif", condition="control", file=f"{id}_c0.tif", role="random sample")]
    trav = Traversal(strengths=STRENGTHS, images=["control/c0.tif"], conditions=["control"], measured=[True],
                     p_target=[[0.1, 0.5, 0.9]], shown=shown)
    return Attribute(
        id=id, target=target, rank=rank, name="gradient:sv1", candidate=0, sign=1, strength=1.0, merged=[], screening_score=0.1,
        selection_mean_delta_p=0.2, selection_lower_bound=0.1, n_images=10, n_eligible=9, baseline_at_target=0.1,
        mean_delta_p=0.3, mean_abs_delta_p=0.3, delta_p_ci95=[0.2, 0.4], flip_rate=flip, coverage=flip, cumulative_flip_rate=flip,
        separation_auc=auc, separation_cohens_d=1.0, separation_p_value=p / 2, separation_p_adjusted=p,
        separation_n={"control": 10, "treated": 10}, morphology=morph, traversal=trav)


def results(attributes: list[Attribute], images: str = "real") -> Results:
    return Results(
        classifier="clf", diffusion="dm", images=images, class_names=["control", "treated"], conditions=["control", "treated"],
        channel_names=CHANNELS, n_images=20, per_condition={"control": 10, "treated": 10}, classifier_accuracy=0.9,
        classifier_accuracy_on_reconstructions=0.9, confusion_matrix=[[9, 1], [1, 9]],
        inversion=InversionSummary(steps=3, t_end=999, psnr_db_mean=30.0, psnr_db_min=28.0, psnr_db_median=30.0, min_psnr_db=20.0,
                                   flagged=[]),
        diffusion_model=DiffusionSummary(image_size=64, parameters=1, training_steps=1, training_images=1), config={},
        display_ranges={"DNA": [0.0, 1000.0], "Actin": [0.0, 2000.0]}, h_shape=[4, 2, 2], h_scale=1.0,
        candidates=[CandidateSummary(index=0, name="gradient:sv1", screening_score=0.1, rendered=True, merged=[])],
        statistics=Statistics(n_images_available=20, selection_images=10, evaluation_images=10, gradient_images=4, rank_images=4,
                              split="seeded", bootstrap_unit="image", bootstrap_units={"control": 5, "treated": 5},
                              bootstrap_resamples=50, p_adjust="holm", selection_rule="lower bound > 0", subsampling=[]),
        attributes=attributes, quality_gate_passed=True, elapsed_s=1.0, unet_image_evaluations_this_run={})


def morphology_rows(att_id: str, values: dict[str, float], outside: dict[str, int] | None = None, n: int = 10,
                    reconstructed_outside: dict[str, int] | None = None, at_full: dict[str, float] | None = None,
                    slope: dict[str, float] | None = None) -> list[dict]:
    """Rows of n random-sample images at every strength (values), the first outside[c] images outside the data in c at
    full strength, the first reconstructed_outside[c] images outside it in c at every strength (their reconstruction
    too), every image at the values at_full at full strength, each value c times 1 + slope[c] x strength; plus one
    "most affected" image that the edit takes far outside the data, which scoring must ignore."""
    rows, outside, recon = [], outside or {}, reconstructed_outside or {}
    for i in range(n):
        for s in STRENGTHS:
            vals = {**values, **(at_full if at_full and abs(s) == 1.0 else {})}
            vals = {c: v * (1 + (slope or {}).get(c, 0.0) * s) for c, v in vals.items()}
            vals = {c: (OUTSIDE[c] if (abs(s) == 1.0 and i < outside.get(c, 0)) or i < recon.get(c, 0) else v)
                    for c, v in vals.items()}
            rows.append({"attribute": att_id, "ImageName": PATHS[i], "Condition": "control", "Role": "random sample",
                         "Strength": s, "P_treated": 0.5, **vals})
    for s in STRENGTHS:
        rows.append({"attribute": att_id, "ImageName": PATHS[-1], "Condition": "treated", "Role": "most affected",
                     "Strength": s, "P_treated": 0.5, **(OUTSIDE if s else values)})
    return rows


def write_folder(exp: Path, atts: list[Attribute], rows: list[dict] | None = None, images: str = "real", shift: float = 0.1,
                 values: dict[str, float] | None = None) -> Path:
    """An experiment folder: results.json, morphology.csv (every attribute inside the data unless rows are given) and
    one hyperstack per attribute whose full-strength frame is the strength-0 frame plus shift x the display range."""
    exp.mkdir(parents=True)
    (exp / "traversals").mkdir()
    rng = np.random.default_rng(0)
    span = np.array([1000.0, 2000.0])[:, None, None]
    for a in atts:
        zero = rng.uniform(0, 0.5, (2, 16, 16)) * span
        write_hyperstack(exp / "traversals" / a.traversal.shown[0].file, np.stack([zero, zero, zero + shift * span]), CHANNELS,
                         STRENGTHS)
    if rows is None:
        rows = [r for a in atts for r in morphology_rows(a.id, values or INSIDE)]
    write_morphology_csv(exp / "morphology.csv", rows)
    write_results(exp / "results.json", results(atts, images))
    return exp


def write_truth(path: Path, flipped: bool = False) -> Path:
    """Ground truth of the real images: treated has the larger nuclei and more actin (control, when flipped)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "condition", "nucleus_radius", "actin_level"])
        for i, p in enumerate(PATHS):
            cond = p.split("/")[0]
            high = (cond == "treated") != flipped
            w.writerow([p, cond, (9.6 if high else 8.0) + 0.01 * i, 0.52 if high else 0.40])
    return path


def score(tmp_path: Path, atts: list[Attribute], differs=BOTH, flipped: bool = False, **kw) -> dict:
    exp = write_folder(tmp_path / "exp", atts, **kw)
    return validity.score(exp, None, write_truth(tmp_path / "truth.csv", flipped), differs, real=(PATHS, REAL))


# ------------------------------------------------------------------------------ tests
def test_a_specific_in_data_top_attribute_passes_every_criterion(tmp_path):
    row = score(tmp_path, [attribute("a1", r_dna=0.9, drift=0.02), attribute("a2", rank=2, r_actin=0.85)])
    dna, actin = row["factors"]["nucleus_radius"], row["factors"]["actin_level"]
    assert (dna["attribute"], dna["rank"], dna["expected_sign"], actin["attribute"]) == ("a1", 1, 1, "a2")
    assert dna["criteria"] == dict.fromkeys(validity.CRITERIA, True) and dna["passed"] and actin["passed"] and row["passed"]
    assert (dna["flip_rate"], dna["baseline_at_target"], dna["auc"], dna["p_adjusted"]) == (0.85, 0.1, 0.9, 0.001)
    assert (dna["nuisance_drift"], dna["nuisance_worst"], dna["outside_share"], dna["rejected"]) == (0.02, "cell size", 0.0, {})
    assert row["proxy_r_nucleus_radius"] == pytest.approx(1.0)  # nuclear area follows the true radius exactly on the real images
    assert row["realism_median_abs_z"] == pytest.approx(0.0, abs=1e-9) and row["realism_share_any_z_over_4"] == 0.0


@pytest.mark.parametrize("target, r, flipped, matched", [
    ("treated", 0.9, False, True), ("treated", -0.9, False, False),  # treated has the larger nuclei: towards it, area grows
    ("control", -0.9, False, True), ("control", 0.9, False, False),
    ("treated", 0.9, True, False), ("treated", -0.9, True, True),  # ground truth flipped: control has the larger nuclei
])
def test_the_sign_of_the_change_must_follow_the_ground_truth(tmp_path, target, r, flipped, matched):
    row = score(tmp_path, [attribute("a1", target=target, r_dna=r)], ("nucleus_radius",), flipped=flipped)
    f = row["factors"]["nucleus_radius"]
    assert (f["attribute"] == "a1") == matched and f["passed"] == matched and f["criteria"]["sign"] == matched
    assert (f["rejected"] == {}) == matched
    if not matched:
        assert f["rejected"]["a1"].startswith("wrong sign") and f["nuisance_drift"] is None and f["rank"] is None


def test_a_wrong_sign_at_rank_1_leaves_the_match_to_rank_2(tmp_path):
    row = score(tmp_path, [attribute("a1", r_dna=-0.95), attribute("a2", rank=2, r_dna=0.85)], ("nucleus_radius",))
    f = row["factors"]["nucleus_radius"]
    assert (f["attribute"], f["rank"], f["r"], f["passed"]) == ("a2", 2, 0.85, True)
    assert list(f["rejected"]) == ["a1"] and f["rejected"]["a1"].startswith("wrong sign")


def test_a_mixing_attribute_is_not_specific_unless_a_specific_one_matches(tmp_path):
    mixing = attribute("a1", r_dna=0.9, r_actin=0.75)
    row = score(tmp_path / "mixing", [mixing], ("nucleus_radius",))
    f = row["factors"]["nucleus_radius"]
    assert (f["attribute"], f["other_r"], f["criteria"]["specific"], f["passed"]) == ("a1", 0.75, False, False)
    row = score(tmp_path / "both", [mixing, attribute("a2", rank=2, r_dna=0.82, r_actin=0.3)], ("nucleus_radius",))
    f = row["factors"]["nucleus_radius"]
    assert (f["attribute"], f["other_r"], f["criteria"]["specific"], f["passed"]) == ("a2", 0.3, True, True)


def test_nuisance_drift_is_measured_on_each_factors_match(tmp_path):
    """Rank 1 (cytoplasm) drifts 50 % in cell size; the nuclear-size match (rank 2) drifts 2 %: only the first fails."""
    row = score(tmp_path, [attribute("a1", r_actin=0.9, drift=0.5), attribute("a2", rank=2, r_dna=0.9, drift=0.02)])
    dna, actin = row["factors"]["nucleus_radius"], row["factors"]["actin_level"]
    assert (dna["attribute"], dna["nuisance_drift"], dna["criteria"]["nuisance"], dna["passed"]) == ("a2", 0.02, True, True)
    assert (actin["attribute"], actin["nuisance_drift"], actin["criteria"]["nuisance"], actin["passed"]) == ("a1", 0.5, False, False)
    assert not row["passed"]


@pytest.mark.parametrize("rank, top3", [(3, True), (4, False)])
def test_the_match_must_be_among_the_top_3(tmp_path, rank, top3):
    atts = [attribute(f"a{k}", rank=k, r_actin=0.9 if k == 1 else 0.0) for k in range(1, rank)]
    row = score(tmp_path, [*atts, attribute(f"a{rank}", rank=rank, r_dna=0.9)], ("nucleus_radius",))
    f = row["factors"]["nucleus_radius"]
    assert (f["attribute"], f["rank"], f["criteria"]["top3"], f["passed"]) == (f"a{rank}", rank, top3, top3)


@pytest.mark.parametrize("r_dna, auc, p, failed", [
    (0.9, 0.9, 0.001, []), (0.75, 0.9, 0.001, ["r"]),  # tracks the factor (>= 0.7) but not strongly enough (< 0.8)
    (0.9, 0.65, 0.001, ["separation"]), (0.9, 0.9, 0.02, ["separation"]), (0.9, float("nan"), float("nan"), ["separation"]),
])
def test_strength_of_the_match_and_separation(tmp_path, r_dna, auc, p, failed):
    row = score(tmp_path, [attribute("a1", r_dna=r_dna, auc=auc, p=p)], ("nucleus_radius",))
    f = row["factors"]["nucleus_radius"]
    assert f["attribute"] == "a1" and [k for k, ok in f["criteria"].items() if not ok] == failed and f["passed"] == (not failed)


def test_no_attribute_tracks_the_factor(tmp_path):
    row = score(tmp_path, [attribute("a1", r_dna=0.6, r_actin=0.9)], ("nucleus_radius",))
    f = row["factors"]["nucleus_radius"]
    assert f["attribute"] is None and f["rejected"] == {} and not f["passed"] and not any(f["criteria"].values())


def test_scoring_reads_only_random_sample_rows(tmp_path):
    """Without a Role column every row counts, and then the far-out 'most affected' rows take the match away."""
    rows = morphology_rows("a1", INSIDE, n=5)
    row = score(tmp_path / "role", [attribute("a1", r_dna=0.9)], ("nucleus_radius",), rows=rows)
    assert row["factors"]["nucleus_radius"]["attribute"] == "a1" and row["realism_share_any_z_over_4"] == 0.0
    rows = [{k: v for k, v in r.items() if k != "Role"} for r in rows]
    row = score(tmp_path / "no-role", [attribute("a1", r_dna=0.9)], ("nucleus_radius",), rows=rows)
    assert row["factors"]["nucleus_radius"]["rejected"]["a1"].startswith("leaves the data (17%")
    assert row["realism_share_any_z_over_4"] == 2 / 12  # the two full-strength renders of the 'most affected' image


@pytest.mark.parametrize("shift, l1", [(0.0, 0.0), (0.1, 0.1)])
def test_proximity_of_full_strength_to_the_reconstruction(tmp_path, shift, l1):
    row = score(tmp_path, [attribute("a1", r_dna=0.9)], ("nucleus_radius",), shift=shift)
    assert row["l1"] == pytest.approx(l1, abs=1e-6)
    assert (row["ssim"] == pytest.approx(1.0)) == (shift == 0.0)


def test_table_marks_each_criterion(tmp_path):
    row = score(tmp_path, [attribute("a1", r_dna=0.9, drift=0.5), attribute("a2", target="control", r_actin=0.9)])
    md = validity.table([{"configuration": "sample", "method": "contrastive", "differs": list(BOTH), **row,
                          "diffusion_gate_passed": False}])
    head, _, line = md.split("\n")
    cells = dict(zip([h.strip() for h in head.strip("|").split("|")], [c.strip() for c in line.strip("|").split("|")]))
    assert cells["method"] == "contrastive (baseline)" and cells[PASSED] == "✗ / ✗" and cells["match"] == "a1 / none (a2 wrong sign)"
    assert cells["rank ≤ 3"] == "1 ✓ / –" and cells["r (right sign, abs ≥ 0.8; decoded (readout))"] == "+0.90 ✓ / –"
    assert cells["nuisance drift < 10%; decoded (readout)"] == "50% ✗ / –" and cells["AUC ≥ 0.7, p adj < 0.01"] == "0.90, p 0.001 ✓ / –"
    assert cells["flip rate (baseline)"] == "85% (10%) / –" and cells["diffusion gate"] == "✗"
    # on the real images the nuclear area follows the radius exactly (the actin level is constant within a condition: no r);
    # the actin measurement rises through the images, so it splits the two actin levels (r = sqrt(3)/2 · sqrt(400/399)) and
    # within a condition follows the radius exactly: no specific cytoplasm attribute could be seen on these readouts
    assert cells["measurement on real images: r own factor, abs r other (within condition)"] == "+1.00, – / +0.87, 1.00"
    single = validity.table([{"configuration": "single", "method": "pca", "differs": ["nucleus_radius"], **row,
                              "factors": {"nucleus_radius": row["factors"]["nucleus_radius"]}}])
    assert "| ✗ / n/a |" in single


# ------------------------------------------------------------------------------ real images, acceptance script
@pytest.fixture(scope="module")
def real_cells(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """4 generated cells per condition (and their factors CSV beside them), and a value inside their range per measurement."""
    from diffex.data.synthetic import generate_dataset

    cells = tmp_path_factory.mktemp("real") / "cells"
    generate_dataset(cells, n_per_condition=4, seed=7)
    _, meas = validity._real_measurements(cells, 64, CHANNELS)
    ranges = validity.data_ranges(meas, meas)  # every measurement, so that realism sees full rows
    return cells, {c: (lo + hi) / 2 for c, (lo, hi) in ranges.items()}


def test_real_images_are_measured_from_the_images_folder(tmp_path, real_cells):
    cells, inside = real_cells
    atts = [attribute("a1", r_dna=0.9), attribute("a2", rank=2, r_actin=0.9)]
    ok = write_folder(tmp_path / "ok", atts, values=inside)
    row = validity.score(ok, cells, cells.parent / "cells_factors.csv", BOTH)
    assert row["passed"] and row["realism_share_any_z_over_4"] == 0.0
    rows = [r for a in atts for r in morphology_rows(a.id, inside, at_full={DNA: 10 * inside[DNA]})]
    out = write_folder(tmp_path / "out", atts, rows=rows)
    row = validity.score(out, cells, cells.parent / "cells_factors.csv", BOTH)
    dna, actin = row["factors"]["nucleus_radius"], row["factors"]["actin_level"]
    assert dna["attribute"] is None and dna["rejected"]["a1"].startswith("leaves the data (100%")
    assert actin["attribute"] == "a2" and actin["passed"]  # the nuclear area is not checked for the cytoplasm's match


def test_rescore_scores_finished_folders_with_the_gate_they_recorded(tmp_path, real_cells, monkeypatch):
    import shutil

    cells, inside = real_cells
    # the decoder rescore fits per configuration (validity_oracle.py, checked in test_validity_decode.py) is replaced by one
    # with a known response: the nuclear area rises 5 % per unit of nuclear size, nothing else responds
    resp = np.zeros((6, 2))
    resp[0, 0], resp[1, 1] = 0.05, 0.05
    dec = validity.Decoder(("nucleus_radius", "actin_level"), (DNA, ACTIN), (SIZE, X, Y, ELONG), resp, np.zeros((4, 2)), True, 64.0)
    monkeypatch.setattr(validity, "decoder_for", lambda cfg, size: dec)
    heldout = tmp_path / "root" / "single_factor" / "heldout"  # the single configuration's images under --root
    shutil.copytree(cells, heldout)
    shutil.copy(cells.parent / "cells_factors.csv", heldout.parent / "heldout_factors.csv")
    rows = morphology_rows("a1", inside, slope={DNA: 0.05})  # the nuclear area +-5 % at the traversal's ends: nuclear size +-1
    exp = write_folder(tmp_path / "runs" / "single" / "pca", [attribute("a1", r_dna=0.9)], rows=rows, images=str(heldout))
    (tmp_path / "runs" / "single" / "inversions").mkdir()  # shared inversion cache: skipped
    rows = validity.rescore(tmp_path / "root", [exp, tmp_path / "runs" / "single" / "inversions"])
    expected = validity.score(exp, heldout, heldout.parent / "heldout_factors.csv", ("nucleus_radius",), decoder=dec)
    assert [(r["configuration"], r["method"], r["diffusion_gate_passed"]) for r in rows] == [("single", "pca", True)]
    assert rows[0]["factors"] == expected["factors"] and rows[0]["decoder"] == dec.to_dict()
    nuc = rows[0]["factors"]["nucleus_radius"]
    assert nuc["passed"] and nuc["measured_on"] == "decoded factors" and nuc["r"] == 1.0 and nuc["other_r"] == 0.0
    assert nuc["r_readout"] == 0.9  # the folder's trends, as scored before the decoder
    other = tmp_path / "other"  # a folder explained from other images than the configuration's under --root
    (other / "control").mkdir(parents=True)
    (other / "control" / "c0.tif").write_bytes(b"not the same image")
    write_folder(tmp_path / "runs2" / "single" / "pca", [attribute("a1", r_dna=0.9)], values=inside, images=str(other))
    with pytest.raises(SystemExit, match="differs there"):
        validity.rescore(tmp_path / "root", [tmp_path / "runs2" / "single" / "pca"])
    with pytest.raises(SystemExit, match="CONFIGURATION one of"):
        validity.rescore(tmp_path / "root", [tmp_path / "runs" / "nowhere" / "pca"])
    with pytest.raises(SystemExit, match="no finished experiment folder"):
        validity.rescore(tmp_path / "root", [tmp_path / "runs" / "single" / "inversions"])


@pytest.mark.parametrize("name", ["validity_score", "validity_figures", "validity_decode", "validity_oracle"])
def test_the_scoring_modules_doctests(name):
    import doctest

    import validity_oracle  # noqa: F401 - imported by the benchmark only when it decodes

    result = doctest.testmod(sys.modules[name])
    assert result.failed == 0 and result.attempted >= 1


def test_acceptance_exit_code(tmp_path, real_cells, capsys):
    cells, inside = real_cells
    acceptance = _load("explain_acceptance")
    good = [attribute("a1", r_dna=0.9), attribute("a2", target="control", r_actin=-0.9)]  # the folders' trends: raw readouts
    assert acceptance.main(write_folder(tmp_path / "good", good, images=str(cells), values=inside), decode=False) == 0
    assert "acceptance: PASSED" in capsys.readouterr().out
    bad = [attribute("a1", r_dna=0.9), attribute("a2", target="control", r_actin=0.9)]  # cytoplasm: wrong sign
    assert acceptance.main(write_folder(tmp_path / "bad", bad, images=str(cells), values=inside), decode=False) == 1
    out = capsys.readouterr().out
    assert "acceptance: FAILED" in out and "actin_level: NOT matched\n  not a match: a2 wrong sign" in out


def test_the_targets_top_three_must_flip_eighty_percent_cumulatively(tmp_path):
    low = score(tmp_path / "low", [attribute("a1", r_dna=0.9, flip=0.5), attribute("a2", rank=2, r_actin=0.85, flip=0.79)])
    dna = low["factors"]["nucleus_radius"]
    assert dna["top_flips"] == 0.79 and not dna["criteria"]["flips"] and not dna["passed"]
    assert all(v for k, v in dna["criteria"].items() if k != "flips")
    high = score(tmp_path / "high", [attribute("a1", r_dna=0.9, flip=0.5), attribute("a2", rank=2, r_actin=0.85, flip=0.8)])
    assert high["factors"]["nucleus_radius"]["criteria"]["flips"] and high["factors"]["nucleus_radius"]["passed"]


def test_ct_readouts_score_diameter_and_solid_share_with_drift_relative_to_the_patch():
    """CT trends are absolute (mm, HU, shares): nuisance drift is divided by the patch width (positions) or the real median."""
    from diffex.report.results import ImagingSummary

    diam, solid, cx = validity.MEASURE_CT["diameter_mm"], validity.MEASURE_CT["solid_fraction"], validity.NUISANCE_CT["nodule x"]
    real = {diam: np.linspace(6, 12, 20), solid: np.linspace(0.2, 0.8, 20), cx: np.linspace(-4, 4, 20),
            validity.NUISANCE_CT["parenchyma density"]: np.full(20, -850.0), validity.NUISANCE_CT["margin irregularity"]: np.full(20, 0.05)}
    res = results([])
    res.diffusion_model.image_size = 32
    res.imaging = ImagingSummary(modality="ct", spacing_mm=0.8, windows=[{"name": "lung", "low": -1350.0, "high": 150.0}], input="")
    ro = validity.readouts_of(res, real)
    assert ro.measure == validity.MEASURE_CT and ro.drift_scale[cx] == pytest.approx(25.6)
    assert ro.drift_scale[validity.NUISANCE_CT["parenchyma density"]] == 850.0
    att = attribute("a1")
    att.morphology = {diam: Trend(0.9, 2.0, -2.0), solid: Trend(0.1, 0.01, 0.0), cx: Trend(0.2, 1.28, -0.5),
                      validity.NUISANCE_CT["parenchyma density"]: Trend(0.0, 17.0, 0.0)}
    drift, worst = validity.nuisance_drift(att, ro.nuisance, ro.drift_scale)
    assert (drift, worst) == (pytest.approx(0.05), "nodule x")  # 1.28 mm of 25.6 mm; parenchyma 17 of 850 HU = 2 %
    md = validity.table([{"configuration": "ct", "modality": "ct", "method": "gradient", "differs": ["diameter_mm"],
                          "factors": {"diameter_mm": {"attribute": None, "rejected": {}, "passed": False,
                                                      "criteria": dict.fromkeys(validity.CRITERIA, False)}},
                          "l1": None, "ssim": None, "realism_median_abs_z": None, "realism_share_any_z_over_4": None}])
    assert "| ct (nodule diameter) | gradient | ✗ / n/a | none / n/a |" in md



def ct_folder(tmp_path: Path) -> tuple[Path, Path, tuple]:
    """A CT experiment folder whose one attribute tracks the lesion diameter (r 0.9) and nothing else, with the ground
    truth (malignant lesions larger and more solid) and the real images' readouts, every one between 1 and 2."""
    from diffex.report.results import ImagingSummary, read_results

    diam = validity.MEASURE_CT["diameter_mm"]
    cols = [*validity.MEASURE_CT.values(), *validity.NUISANCE_CT.values()]
    ct = attribute("c1")
    ct.morphology = {c: Trend(0.0, 0.0, 0.0) for c in cols} | {diam: Trend(0.9, 0.2, -0.2)}
    exp = write_folder(tmp_path / "ct", [ct], rows=morphology_rows("c1", dict.fromkeys(cols, 1.5)))
    res = read_results(exp / "results.json")
    res.imaging = ImagingSummary(modality="ct", spacing_mm=0.5, windows=[{"name": "lung", "low": -1350.0, "high": 150.0}], input="")
    write_results(exp / "results.json", res)
    truth = tmp_path / "ct_truth.csv"
    truth.write_text("path,condition,diameter_mm,solid_fraction\n"
                     + "".join(f"{p},{p.split('/')[0]},{8 + 4 * p.startswith('t')},{0.3 + 0.4 * p.startswith('t')}\n" for p in PATHS))
    return exp, truth, (PATHS, {c: np.linspace(1.0, 2.0, 20) for c in cols})


def test_without_differs_each_modality_scores_its_own_two_factors(tmp_path, monkeypatch, capsys):
    """differs=None: microscopy scores nuclear size and cytoplasm as when both are named; CT its lesion diameter and solid
    share, in the scorer, in `validity.py score` and in the acceptance script (which prints the CT readouts)."""
    atts = [attribute("a1", r_dna=0.9, drift=0.02), attribute("a2", rank=2, r_actin=0.85)]
    named, default = score(tmp_path / "named", atts), score(tmp_path / "default", atts, differs=None)
    assert tuple(default["factors"]) == BOTH and default["passed"] and named["passed"]
    for f in BOTH:
        assert (default["factors"][f]["attribute"], default["factors"][f]["r"]) == (named["factors"][f]["attribute"], named["factors"][f]["r"])
    exp, truth, real = ct_folder(tmp_path)
    row = validity.score(exp, None, truth, None, real=real)
    assert tuple(row["factors"]) == ("diameter_mm", "solid_fraction")
    assert row["factors"]["diameter_mm"]["attribute"] == "c1" and row["factors"]["diameter_mm"]["r"] == 0.9
    assert row["factors"]["solid_fraction"]["attribute"] is None
    with pytest.raises(SystemExit, match=r"cannot score \['nucleus_radius'\]; this experiment's readouts measure"):
        validity.score(exp, None, truth, ("nucleus_radius",), real=real)
    monkeypatch.setitem(validity.score.__globals__, "_real_measurements", lambda *a, **k: real)  # the scorer's own module
    assert validity.main(["score", str(exp), "--images", "x", "--factors", str(truth)]) == 0
    assert '"diameter_mm": {\n   "attribute": "c1"' in capsys.readouterr().out
    acceptance = _load("explain_acceptance")
    monkeypatch.setattr(acceptance._validity(), "_real_measurements", lambda *a, **k: real)  # the module it reads
    assert acceptance.main(exp, images=tmp_path, factors=truth, decode=False) == 1
    out = capsys.readouterr().out
    assert "readout r diameter_mm" in out and "readout r solid_fraction" in out and "nucleus" not in out
    assert "diameter_mm: matched by c1" in out and "solid_fraction: NOT matched" in out
