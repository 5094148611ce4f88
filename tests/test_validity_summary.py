"""The validity table per method and the best default (benchmarks/validity_summary.py), on hand-made scored rows with
known counts, and on a row the scorer made (its criteria counted against the table's marks)."""

from __future__ import annotations

import doctest
import json
import sys

import pytest
from test_validity_scoring import BOTH, PASSED, attribute, score, validity

import validity_summary as vs  # noqa: E402 - on the path once test_validity_scoring loaded the benchmark

CRITERIA = vs.CRITERIA
OTHERS = [c for c in CRITERIA if c != "specific"]  # the seven criteria besides `specific`
METHODS = ["gradient", "hold", "pca", "steer"]  # the expected methods besides the baseline


def factor(met: int, specific: bool = False, matched: bool = True) -> dict:
    """A factor score whose match meets the first ``met`` of the other criteria, and `specific` if asked; passed when all
    eight are met."""
    crit = {k: k in OTHERS[:met] or (k == "specific" and specific) for k in CRITERIA}
    return {"attribute": "a1" if matched else None, "criteria": crit, "passed": matched and all(crit.values())}


def row(configuration: str, method: str, *factors: dict) -> dict:
    differs = {"sample": ["nucleus_radius", "actin_level"], "single": ["nucleus_radius"], "ct": ["diameter_mm", "solid_fraction"]}
    names = differs[configuration]
    assert len(names) == len(factors)
    return {"configuration": configuration, "method": method, "differs": names, "factors": dict(zip(names, factors)),
            "modality": "ct" if configuration == "ct" else "microscopy"}


ROWS = [  # passed, specific matches, criteria met
    row("sample", "gradient", factor(5), factor(6)), row("single", "gradient", factor(3)),                        # 0, 0, 14
    row("sample", "hold", factor(7, specific=True), factor(0, matched=False)), row("single", "hold", factor(2)),  # 1, 1, 10
    row("sample", "pca", factor(7, specific=True, matched=False), factor(7)), row("single", "pca", factor(7)),                   # 0, 0, 14
    row("sample", "steer", factor(4, specific=True), factor(1)), row("single", "steer", factor(4)),               # 0, 1, 10
    row("sample", "contrastive", factor(7, specific=True), factor(7, specific=True)),
    row("single", "contrastive", factor(4)),                                                                      # 2, 2, 20
]
BOTH_CFG = ["sample", "single"]


def test_counts_and_ranking_are_the_hand_counted_ones():
    got = {m: (s.passed, s.specific, s.met, s.possible, s.per_configuration) for m, s in vs.method_scores(ROWS).items()}
    assert got == {
        "gradient": (0, 0, 14, 24, {"sample": {"nucleus_radius": 5, "actin_level": 6}, "single": {"nucleus_radius": 3}}),
        "hold": (1, 1, 10, 24, {"sample": {"nucleus_radius": 8, "actin_level": 0}, "single": {"nucleus_radius": 2}}),
        "pca": (0, 0, 14, 24, {"sample": {"nucleus_radius": 0, "actin_level": 7}, "single": {"nucleus_radius": 7}}),  # unmatched: 0
        "steer": (0, 1, 10, 24, {"sample": {"nucleus_radius": 5, "actin_level": 1}, "single": {"nucleus_radius": 4}}),
        "contrastive": (2, 2, 20, 24, {"sample": {"nucleus_radius": 8, "actin_level": 8}, "single": {"nucleus_radius": 4}})}
    # passed outranks specific matches, which outrank criteria met; equal scores keep the name order
    assert [m for m, _ in vs.ranking(ROWS)] == ["contrastive", "hold", "steer", "gradient", "pca"]


def test_the_default_is_the_first_method_other_than_the_baseline():
    assert vs.best_default(ROWS, BOTH_CFG, METHODS) == (
        "hold", "first of the methods other than the baseline: 1 factor scores passed, 1 specific matches, 10 of 24 criteria "
        "met; not above the baseline (2 factor scores passed, 2 specific matches, 20 of 24 criteria met); next: steer "
        "(0 factor scores passed, 1 specific matches, 10 of 24 criteria met)")
    # a specific match outranks four more criteria met
    no_hold = [r for r in ROWS if r["method"] != "hold"]
    assert vs.best_default(no_hold, BOTH_CFG, ["gradient", "pca", "steer"])[0] == "steer"
    # equal on all three counts: no default
    tied = [r for r in no_hold if r["method"] != "steer"]
    assert vs.best_default(tied, BOTH_CFG, ["gradient", "pca"]) == (
        None, "gradient ties with pca (0 factor scores passed, 0 specific matches, 14 of 24 criteria met)")
    only = [r for r in ROWS if r["method"] in ("gradient", "contrastive")]
    top, why = vs.best_default(only, BOTH_CFG, ["gradient"])
    assert top == "gradient" and "not above the baseline" in why and "next" not in why
    assert vs.best_default([r for r in ROWS if r["method"] == "contrastive"], BOTH_CFG, []) == (
        None, "no method other than the baseline was expected")


def test_a_partial_table_names_what_is_missing_instead_of_a_method():
    partial = [r for r in ROWS if not (r["method"] == "pca" and r["configuration"] == "single")]
    assert vs.best_default(partial, BOTH_CFG, METHODS) == (
        None, "not every method was scored on every configuration; not scored: single (pca)")
    assert vs.best_default(ROWS, [*BOTH_CFG, "ct"], METHODS) == (
        None, "not every method was scored on every configuration; not scored: ct (every method)")
    assert vs.best_default(ROWS, BOTH_CFG, [*METHODS, "jacobian"]) == (  # a method with no row at all
        None, "not every method was scored on every configuration; not scored: sample (jacobian); single (jacobian)")
    no_baseline = [r for r in ROWS if r["method"] != "contrastive"]
    assert vs.best_default(no_baseline, BOTH_CFG, METHODS) == (
        None, "not every method was scored on every configuration; not scored: sample (contrastive); single (contrastive)")
    assert vs.best_default(ROWS, BOTH_CFG, ["gradient", "hold", "steer"]) == (None, "rows of methods not expected: pca")
    assert vs.best_default(ROWS, ["sample"], METHODS) == (None, "rows of configurations not asked for: single")
    with pytest.raises(ValueError, match="two scored rows for sample/hold"):
        vs.method_scores(ROWS + [row("sample", "hold", factor(1), factor(1))])


def test_summary_markdown():
    md = vs.summary(ROWS, [*BOTH_CFG, "ct"], METHODS)
    lines = md.splitlines()
    assert lines[0] == ("| method | sample | single | ct | factor scores passed | specific matches | criteria met "
                        "| meets more criteria than the baseline on |")
    # steer meets as many criteria as the baseline on single (4 and 4): not more
    assert lines[2:7] == ["| contrastive (baseline) | 8 / 8 | 4 / n/a | not run | 2 | 2 | 20 of 24 | – |",
                          "| hold | 8 / 0 | 2 / n/a | not run | 1 | 1 | 10 of 24 | none |",
                          "| steer | 5 / 1 | 4 / n/a | not run | 0 | 1 | 10 of 24 | none |",
                          "| gradient | 5 / 6 | 3 / n/a | not run | 0 | 0 | 14 of 24 | none |",
                          "| pca | 0 / 7 | 7 / n/a | not run | 0 | 0 | 14 of 24 | single |"]
    assert lines[-1] == "Best default: none yet (not every method was scored on every configuration; not scored: ct (every method))."
    # rows of configurations not asked for are not counted
    ct = [row("ct", m, factor(7, specific=True), factor(7, specific=True)) for m in ("gradient", "contrastive")]
    assert vs.summary(ROWS + ct, BOTH_CFG, METHODS) == vs.summary(ROWS, BOTH_CFG, METHODS)
    assert "| gradient | 5 / 6 | 3 / n/a | 8 / 8 | 2 | 2 | 30 of 40 |" in vs.summary(ROWS + ct, [*BOTH_CFG, "ct"], METHODS)


def test_criteria_met_counts_the_marks_of_a_scored_row(tmp_path):
    """The scorer's own row: the summary's count per factor equals the ✓ marks the table gives that factor."""
    row_ = score(tmp_path, [attribute("a1", r_dna=0.9, drift=0.5), attribute("a2", target="control", r_actin=0.9)])
    scored = {"configuration": "sample", "method": "gradient", "differs": list(BOTH), **row_}
    md = validity.table([scored])
    head, _, line = md.split("\n")
    cells = dict(zip([h.strip() for h in head.strip("|").split("|")], [c.strip() for c in line.strip("|").split("|")]))
    sign_r = "r (right sign, abs ≥ 0.8; decoded (readout))"
    marks = [0, 0]
    for h, c in cells.items():
        if h in (PASSED, "match", sign_r) or " / " not in c:
            continue
        for i, part in enumerate(c.split(" / ")):
            marks[i] += "✓" in part
    # the table marks sign and r in one cell, the criteria count them apart
    crit = [scored["factors"][f]["criteria"] for f in BOTH]
    expected = [n + c["sign"] + c["r"] for n, c in zip(marks, crit)]
    assert [vs.criteria_met(scored["factors"][f]) for f in BOTH] == expected
    assert expected == [7, 0]  # nucleus: all but the nuisance drift (50 %); cytoplasm: no match (a2 has the wrong sign)
    assert vs.method_scores([scored])["gradient"].per_configuration == {"sample": dict(zip(BOTH, expected))}


def test_rows_are_read_from_what_run_printed(tmp_path, capsys):
    printed = tmp_path / "run.txt"
    first, second = ROWS[:4], ROWS[4:]
    printed.write_text("towards control #1: dp +0.775 [+0.649, +0.890], flips 89%\n" + json.dumps(first, indent=1)
                       + "\n| configuration | method |\n  [indented, not a start]\n" + json.dumps(second, indent=1) + "\n")
    assert vs.read_rows(printed) == ROWS  # both lists, as two runs appended to one file
    assert validity.main(["summary", str(printed), "--configuration", "sample", "--configuration", "single"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (  # against every registered method
        "Best default: none yet (not every method was scored on every configuration; not scored: sample (discriminative, "
        "gradspan, jacobian, learned, readout, sparse); single (discriminative, gradspan, jacobian, learned, readout, sparse)).")
    for text, why in (("no rows here [1, 2]\n", "no scored rows"), ("[\n]\n", "no scored rows"),
                      ("[\n{\"a\": 1,\n", "not valid JSON"), ("[\n 1\n]\n", "does not hold")):
        printed.write_text(text)
        with pytest.raises(SystemExit, match=f"{printed}: .*{why}"):
            vs.read_rows(printed)
    printed.write_text(json.dumps(ROWS + ROWS[:1], indent=1) + "\n")
    with pytest.raises(SystemExit, match="two scored rows for sample/gradient"):
        validity.main(["summary", str(printed)])


def test_doctests():
    result = doctest.testmod(sys.modules["validity_summary"])
    assert result.failed == 0 and result.attempted >= 1
