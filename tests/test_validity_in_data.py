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


def test_when_every_reconstruction_is_outside_nothing_shows_the_render_in_the_data(tmp_path):
    rows = morphology_rows("a1", INSIDE, reconstructed_outside=dict.fromkeys(COLUMNS, 10))
    f = score(tmp_path, [attribute("a1", r_dna=0.9)], ("nucleus_radius",), rows=rows)["factors"]["nucleus_radius"]
    assert f["attribute"] is None and f["rejected"]["a1"].startswith("leaves the data (no full-strength renders")


def test_table_counts_the_renders_left_out(tmp_path):
    rows = morphology_rows("a1", INSIDE, reconstructed_outside={DNA: 2})
    row = score(tmp_path, [attribute("a1", r_dna=0.9)], ("nucleus_radius",), rows=rows)
    md = validity.table([{"configuration": "single", "method": "pca", "differs": ["nucleus_radius"], **row}])
    head, _, line = md.split("\n")
    cells = dict(zip([h.strip() for h in head.strip("|").split("|")], [c.strip() for c in line.strip("|").split("|")]))
    assert cells["renders outside data ≤ 10% (not counted: reconstruction outside)"] == "0% ✓ (4 of 20) / n/a"
