"""The validity scorer's measuring instrument (benchmarks/validity_decode.py, validity_oracle.py) against known answers.

The generators render one-factor edits exactly (``overrides``); the decoder must call them specific where the raw
readouts cannot, and must still call an edit of both factors mixed.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from conftest import REPO

from diffex.data.synthetic import SyntheticSpec, render_cell
from diffex.data.synthetic_ct import CTSpec, render_patch
from diffex.errors import DiffexError


def _load(name: str):
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


vd = _load("validity_decode")
oracle = _load("validity_oracle")
S = np.linspace(-1.0, 1.0, 7)


def _rows(att: str, readouts: dict[str, np.ndarray], n: int = 5) -> list[dict]:
    """morphology.csv-like rows of n images whose readout c at the strengths S is readouts[c] (S,) times (1 + image / 10)."""
    return [{"attribute": att, "ImageName": f"img{i}", "Strength": float(s), **{c: float(v[k] * (1 + i / 10)) for c, v in readouts.items()}}
            for i in range(n) for k, s in enumerate(S)]


# ------------------------------------------------------------------------------ generators
def test_overrides_change_only_the_factor():
    state = np.random.default_rng(3)
    img, f = render_cell(np.random.default_rng(3), "control", SyntheticSpec())
    same, _ = render_cell(np.random.default_rng(3), "control", SyntheticSpec(), overrides={"nucleus_radius": f["nucleus_radius"]})
    assert np.array_equal(img, same)
    bigger, g = render_cell(np.random.default_rng(3), "control", SyntheticSpec(), overrides={"nucleus_radius": f["nucleus_radius"] + 2})
    assert g["nucleus_radius"] == f["nucleus_radius"] + 2 and g["actin_level"] == f["actin_level"]
    assert (bigger[0] != img[0]).any()
    hu, h = render_patch(np.random.default_rng(4), "benign", CTSpec(), 30.0, -850.0)
    same_hu, _ = render_patch(np.random.default_rng(4), "benign", CTSpec(), 30.0, -850.0, overrides={"solid_fraction": h["solid_fraction"]})
    assert np.array_equal(hu, same_hu)
    with pytest.raises(DiffexError, match="unknown factors"):
        render_cell(state, "control", SyntheticSpec(), overrides={"nucleus_size": 3.0})
    with pytest.raises(DiffexError, match="unknown factors"):
        render_patch(state, "benign", CTSpec(), 30.0, -850.0, overrides={"diameter": 3.0})


# ------------------------------------------------------------------------------ decoder on constructed traversals
def test_fit_response_recovers_a_planted_response_and_decodes_it():
    # readout A follows factor a (+0.3 per unit), B follows b (+0.2) and drops 0.05 per unit of a; nuisance N rises with a^2
    lin = {"a": {"A": 0.3, "B": -0.05, "N": 0.0}, "b": {"A": 0.0, "B": 0.2, "N": 0.0}}
    rows = [r for f in ("a", "b") for r in _rows(f, {c: 100 * (1 + k * S + (0.04 * S**2 if c == "N" and f == "a" else 0))
                                                      for c, k in lin[f].items()})]
    dec = vd.fit_response(rows, ("a", "b"), ("A", "B"), ("N",), relative=True)
    assert np.allclose(dec.response, [[0.3, 0.0], [-0.05, 0.2], [0.0, 0.0]], atol=1e-9)
    assert np.allclose(dec.curvature, [[0.04, 0.0]], atol=1e-9)
    # a perfect edit of a: the raw readout of b falls with strength (r -1); decoded, b does not move and N is explained
    perfect = _rows("x", {"A": 100 * (1 + 0.3 * S), "B": 100 * (1 - 0.05 * S), "N": 100 * (1 + 0.04 * S**2)})
    fig = vd.decoded_figures(dec, perfect, "x", "a")  # scored as a: b's change (rounding only) is within the tie
    assert fig["r"] == {"a": pytest.approx(1.0), "b": 0.0}
    assert max(abs(v) for v in fig["drift"]["N"]) < 1e-9
    assert vd.decoded_r(np.tile(S, (5, 1)), np.array([[r["B"] for r in perfect if r["ImageName"] == f"img{i}"] for i in range(5)]),
                        tie=0.0) == pytest.approx(-1.0)
    # an edit of both: each decoded factor follows strength
    mixed = _rows("y", {"A": 100 * (1 + 0.3 * S), "B": 100 * (1 + 0.15 * S), "N": 100 * np.ones_like(S)})
    assert vd.decoded_figures(dec, mixed, "y")["r"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}
    # a decoded change within the tie is no change; just beyond it, a change
    # scored as a, b's decoded change within TIE (0.05) of a's counts as none; just beyond it, as a change; unscored, any
    assert vd.TIE == 0.05
    small = _rows("z", {"A": 100 * (1 + 0.3 * S), "B": 100 * (1 - 0.05 * S + 0.2 * 0.045 * S), "N": 100 * np.ones_like(S)})
    assert vd.decoded_figures(dec, small, "z", "a")["r"]["b"] == 0.0  # b spans 0.09, a 2
    assert vd.decoded_figures(dec, small, "z")["r"]["b"] == pytest.approx(1.0)
    beyond = _rows("w", {"A": 100 * (1 + 0.3 * S), "B": 100 * (1 - 0.05 * S + 0.2 * 0.055 * S), "N": 100 * np.ones_like(S)})
    assert vd.decoded_figures(dec, beyond, "w", "a")["r"]["b"] == pytest.approx(1.0)  # b spans 0.11
    # the tie is relative: a weak edit of a (span 0.4) may not move b by 0.09
    weak = _rows("v", {"A": 100 * (1 + 0.06 * S), "B": 100 * (1 - 0.01 * S + 0.2 * 0.045 * S), "N": 100 * np.ones_like(S)})
    assert vd.decoded_figures(dec, weak, "v", "a")["r"]["b"] == pytest.approx(1.0)


def test_images_without_enough_readouts_or_on_another_grid_are_left_out():
    dec = vd.Decoder(("a", "b"), ("A", "B"), (), np.eye(2) * 0.1, np.zeros((0, 2)), relative=False)
    rows = _rows("x", {"A": 10 * S, "B": -10 * S})  # five images: a up, b down
    for r in rows:
        if r["ImageName"] in ("img0", "img1", "img2") and r["Strength"] != 0.0:
            r["B"] = float("nan")  # three images lose b's readout: they say nothing about either factor
    rows += [{"attribute": "x", "ImageName": "odd", "Strength": s, "A": -5.0 * s, "B": 5.0 * s} for s in (-1.0, 0.0, 1.0)]
    assert vd.decoded_figures(dec, rows, "x")["r"] == {"a": pytest.approx(1.0), "b": pytest.approx(-1.0)}


def test_readouts_that_cannot_tell_the_factors_apart_are_refused():
    rows = [r for f in ("a", "b") for r in _rows(f, {"A": 100 * (1 + 0.3 * S), "B": 100 * (1 + 0.3 * S)})]
    with pytest.raises(ValueError, match="singular"):
        vd.fit_response(rows, ("a", "b"), ("A", "B"), (), relative=True)


# ------------------------------------------------------------------------------ the oracle on the real generators
def test_oracle_known_answers_microscopy(tmp_path):
    """The readouts fail the perfect nuclear-size edit (the coupling the decoder exists for); decoded, the scorer gets every
    traversal right on draws the decoder was not fitted on: one-factor edits pass r, specificity and nuisance, the mixed
    one is not specific."""
    rows = oracle.run_configuration("sample", n=32, seed=5, workdir=tmp_path, size=32)  # the scorer's decoder, checked on seed 6
    assert [r["traversal"] for r in rows] == ["nucleus_radius", "actin_level", "mixed"]
    assert all(r["as_expected"]["decoded"] for r in rows), oracle.table(rows)
    nucleus, actin, _ = rows
    assert not nucleus["as_expected"]["readout"] and nucleus["readout"]["r"]["actin_level"] == -1.0
    assert nucleus["decoded"]["r"]["actin_level"] == 0.0
    assert actin["readout"]["r"]["nucleus_radius"] == 0.0  # the DNA channel does not change: its area cannot


def test_oracle_ct_readouts_are_coupled(tmp_path):
    """CT: a perfect solid-share edit moves the measured diameter (the lesion mask takes in part of the ground glass), and
    the mixed edit is caught raw and decoded. (Whether the decoder then passes the perfect edits depends on the draws
    at this size; docs/benchmarks.md, "the scorer against known answers".)"""
    rows = {r["traversal"]: r for r in oracle.run_configuration("ct", n=4, seed=5, workdir=tmp_path)}
    assert rows["solid_fraction"]["readout"]["r"]["diameter_mm"] > 0.3 and not rows["solid_fraction"]["as_expected"]["readout"]
    assert rows["mixed"]["as_expected"]["readout"] and rows["mixed"]["as_expected"]["decoded"]
