"""Validity scoring's "renders inside the data" criterion (benchmarks/validity_score.py), on hand-made experiment folders.

The folders and helpers are test_validity_scoring's: 10 random-sample images per attribute, 2 full-strength renders each.
"""

from __future__ import annotations

import pytest
from test_validity_scoring import ACTIN, COLUMNS, DNA, INSIDE, REAL, SIZE, X, attribute, morphology_rows, score, validity


@pytest.mark.parametrize("column, n_outside, share, matched", [
    (DNA, 0, 0.0, True), (DNA, 1, 0.1, True),  # 10 % of the full-strength renders outside: still in the data
    (DNA, 2, 0.2, False), (SIZE, 3, 0.3, False), (X, 10, 1.0, False),  # the factor's or a nuisance measurement leaves it
    (ACTIN, 10, 0.0, True),  # the other factor's measurement is not checked
])
def test_full_strength_renders_must_stay_in_the_data(tmp_path, column, n_outside, share, matched):
    rows = morphology_rows("a1", INSIDE, {column: n_outside})
    row = score(tmp_path, [attribute("a1", r_dna=0.9)], ("nucleus_radius",), rows=rows)
    f = row["factors"]["nucleus_radius"]
    assert (f["attribute"] == "a1", f["passed"]) == (matched, matched)
    if matched:
        assert f["outside_share"] == share and f["criteria"]["in_data"]
    else:
        assert f["rejected"]["a1"] == f"leaves the data ({share:.0%} of full-strength renders outside the real {column})"


def test_rendered_values_below_the_data_and_missing_values_are_outside(tmp_path):
    rows = morphology_rows("a1", INSIDE, at_full={DNA: 1.0})  # every full-strength render has a tiny nucleus
    rows += [{**r, "attribute": "a2", SIZE: float("nan") if r["Strength"] else r[SIZE]}
             for r in morphology_rows("a2", INSIDE)]  # no cell found at full strength
    row = score(tmp_path, [attribute("a1", r_dna=0.9), attribute("a2", rank=2, r_dna=0.9)], ("nucleus_radius",), rows=rows)
    f = row["factors"]["nucleus_radius"]
    assert f["attribute"] is None and set(f["rejected"]) == {"a1", "a2"} and f["rejected"]["a2"].endswith(f"real {SIZE})")


@pytest.mark.parametrize("recon, outside, share, worst, left_out", [
    ({DNA: 2}, {}, 0.0, None, 4),  # 2 images reconstructed outside and left there: not counted, so 0 of 16 renders outside
    ({DNA: 2}, {DNA: 4}, 0.25, DNA, 4),  # and the edit takes 2 more images out: 4 of the 16 counted renders
    ({DNA: 1}, {SIZE: 2}, 0.2, SIZE, 2),  # an image reconstructed outside in DNA area still counts for cell size: 4 of 20
    ({}, {DNA: 2}, 0.2, DNA, 0),  # nothing reconstructed outside: every render counts
])
def test_renders_of_images_reconstructed_outside_the_data_are_not_counted(tmp_path, recon, outside, share, worst, left_out):
    rows = morphology_rows("a1", INSIDE, outside, reconstructed_outside=recon)
    f = score(tmp_path, [attribute("a1", r_dna=0.9)], ("nucleus_radius",), rows=rows)["factors"]["nucleus_radius"]
    fig = f if f["attribute"] else validity.figures(attribute("a1", r_dna=0.9), "nucleus_radius", 1, validity.random_rows(rows),
                                                   validity.data_ranges(REAL, COLUMNS))
    assert (fig["outside_share"], fig["outside_worst"], fig["outside_left_out"], fig["n_full_strength"]) == (share, worst, left_out, 20)
    assert (f["attribute"] == "a1") == (share <= 0.1)


@pytest.mark.parametrize("recon, render, counted", [
    (111.0, 1000.0, True),  # reconstructed just above the range (60.4-109.6), rendered far above: the edit's doing
    (111.0, 112.0, False),  # 1 further out, under 5 % of the range's width (2.46): left where it was
    (111.0, 30.0, True),  # across the range, out on the other side
    (111.0, float("nan"), True),  # the edit lost the nucleus the reconstruction had
])
def test_an_image_reconstructed_outside_counts_when_the_edit_takes_it_further_out(tmp_path, recon, render, counted):
    rows = morphology_rows("a1", INSIDE)
    for r in rows:
        if r["ImageName"] == "control/c0.tif" and r["Role"] == "random sample":
            r[DNA] = recon if r["Strength"] == 0 else render if abs(r["Strength"]) == 1 else r[DNA]
    f = validity.figures(attribute("a1", r_dna=0.9), "nucleus_radius", 1, validity.random_rows(rows), validity.data_ranges(REAL, COLUMNS))
    assert (f["outside_share"], f["outside_left_out"]) == ((0.1, 0) if counted else (0.0, 2))


def test_a_measurement_mostly_reconstructed_outside_is_checked_on_every_render(tmp_path):
    """Left out for 6 of 10 images, the nuclear area would be judged on 4; instead all 20 renders count, 12 of them outside."""
    rows = morphology_rows("a1", INSIDE, reconstructed_outside={DNA: 6})
    f = score(tmp_path, [attribute("a1", r_dna=0.9)], ("nucleus_radius",), rows=rows)["factors"]["nucleus_radius"]
    assert f["attribute"] is None and f["rejected"]["a1"] == f"leaves the data (60% of full-strength renders outside the real {DNA})"
    rows = morphology_rows("a1", INSIDE, reconstructed_outside={DNA: 5})  # half counted: the rule holds
    f = score(tmp_path / "half", [attribute("a1", r_dna=0.9)], ("nucleus_radius",), rows=rows)["factors"]["nucleus_radius"]
    assert (f["attribute"], f["outside_share"], f["outside_left_out"]) == ("a1", 0.0, 10)


def test_the_reconstruction_is_found_at_a_strength_of_rounding_size(tmp_path):
    rows = [{**r, "Strength": -1.1e-16 if r["Strength"] == 0 else r["Strength"]}
            for r in morphology_rows("a1", INSIDE, reconstructed_outside={DNA: 2})]
    assert set(validity.zero_strength(validity.random_rows(rows), "a1")) == {f"control/c{i}.tif" for i in range(10)}


def test_table_counts_the_renders_left_out(tmp_path):
    rows = morphology_rows("a1", INSIDE, reconstructed_outside={DNA: 2})
    row = score(tmp_path, [attribute("a1", r_dna=0.9)], ("nucleus_radius",), rows=rows)
    md = validity.table([{"configuration": "single", "method": "pca", "differs": ["nucleus_radius"], **row}])
    head, _, line = md.split("\n")
    cells = dict(zip([h.strip() for h in head.strip("|").split("|")], [c.strip() for c in line.strip("|").split("|")]))
    assert cells["renders outside data ≤ 10% (not counted: reconstruction outside)"] == "0% ✓ (4 of 20) / n/a"
