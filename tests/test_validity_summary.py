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


def factor(met: int | list[str], matched: bool = True) -> dict:
    """A factor score meeting the first ``met`` criteria (or the named ones); passed when all eight are met."""
    names = CRITERIA[:met] if isinstance(met, int) else met
    crit = {k: k in names for k in CRITERIA}
    return {"attribute": "a1" if matched else None, "criteria": crit, "passed": matched and all(crit.values())}


def row(configuration: str, method: str, *factors: dict) -> dict:
    differs = {"sample": ["nucleus_radius", "actin_level"], "single": ["nucleus_radius"], "ct": ["diameter_mm", "solid_fraction"]}
    names = differs[configuration]
    assert len(names) == len(factors)
    return {"configuration": configuration, "method": method, "differs": names, "factors": dict(zip(names, factors))}


ROWS = [
    row("sample", "gradient", factor(5), factor(6)), row("single", "gradient", factor(3)),             # 0 passed, 14 met
    row("sample", "hold", factor(8), factor(0)), row("single", "hold", factor(2)),                     # 1 passed, 10 met
    row("sample", "pca", factor(7, matched=False), factor(7)), row("single", "pca", factor(7)),        # 0 passed, 14 met
    row("sample", "contrastive", factor(8), factor(8)), row("single", "contrastive", factor(4)),        # 2 passed, 20 met
]


def test_counts_and_ranking_are_the_hand_counted_ones():
    scores = vs.method_scores(ROWS)
    got = {m: (s.passed, s.met, s.possible, s.per_configuration) for m, s in scores.items()}
    assert got == {"gradient": (0, 14, 24, {"sample": [5, 6], "single": [3]}),
                   "hold": (1, 10, 24, {"sample": [8, 0], "single": [2]}),
                   "pca": (0, 7 + 7, 24, {"sample": [0, 7], "single": [7]}),  # an unmatched factor meets nothing
                   "contrastive": (2, 20, 24, {"sample": [8, 8], "single": [4]})}
    # a passed factor score outranks criteria met; equal scores keep the name order
    assert [m for m, _ in vs.ranking(ROWS)] == ["contrastive", "hold", "gradient", "pca"]


def test_the_default_is_the_best_method_other_than_the_baseline():
    assert vs.best_default(ROWS, ["sample", "single"]) == (
        "hold", "most criteria met of the methods (10 of 24), 1 factor score(s) passed")
    without_hold = [r for r in ROWS if r["method"] != "hold"]
    top, why = vs.best_default(without_hold, ["sample", "single"])
    assert top is None and why == "gradient ties with pca (0 factor scores passed, 14 of 24 criteria met)"
    only_gradient = [r for r in ROWS if r["method"] in ("gradient", "contrastive")]
    assert vs.best_default(only_gradient, ["sample", "single"])[0] == "gradient"
    assert vs.best_default([r for r in ROWS if r["method"] == "contrastive"], ["sample", "single"]) == (
        None, "no method other than the baseline was scored")


def test_a_partial_table_names_what_is_missing_instead_of_a_method():
    partial = [r for r in ROWS if not (r["method"] == "pca" and r["configuration"] == "single")]
    assert vs.best_default(partial, ["sample", "single"]) == (
        None, "not every method was scored on every configuration; not scored: single (pca)")
    assert vs.best_default(ROWS, ["sample", "single", "ct"]) == (
        None, "not every method was scored on every configuration; not scored: ct (every method)")
    assert vs.best_default(ROWS, ["sample"]) == (None, "rows of configurations not asked for: single")
    with pytest.raises(ValueError, match="two scored rows for sample/hold"):
        vs.method_scores(ROWS + [row("sample", "hold", factor(1), factor(1))])


def test_summary_markdown():
    md = vs.summary(ROWS, ["sample", "single", "ct"])
    lines = md.splitlines()
    assert lines[0] == ("| method | sample | single | ct | factor scores passed | criteria met "
                        "| meets more criteria than the baseline on |")
    assert lines[2:6] == ["| contrastive (baseline) | 8 / 8 | 4 | not run | 2 | 20 of 24 | – |",
                          "| hold | 8 / 0 | 2 | not run | 1 | 10 of 24 | none |",
                          "| gradient | 5 / 6 | 3 | not run | 0 | 14 of 24 | none |",
                          "| pca | 0 / 7 | 7 | not run | 0 | 14 of 24 | single |"]
    assert lines[-1] == "Best default: none yet (not every method was scored on every configuration; not scored: ct (every method))."


def test_criteria_met_counts_the_marks_of_a_scored_row(tmp_path):
    """The scorer's own row: the summary's count per factor equals the ✓ marks the table gives that factor."""
    row_ = score(tmp_path, [attribute("a1", r_dna=0.9, drift=0.5), attribute("a2", target="control", r_actin=0.9)])
    scored = {"configuration": "sample", "method": "gradient", "differs": list(BOTH), **row_}
    md = validity.table([scored])
    head, _, line = md.split("\n")
    cells = dict(zip([h.strip() for h in head.strip("|").split("|")], [c.strip() for c in line.strip("|").split("|")]))
    per_factor = [0, 0]
    for h, c in cells.items():
        if h in (PASSED, "match") or " / " not in c:
            continue
        for i, part in enumerate(c.split(" / ")):
            per_factor[i] += part.endswith("✓") and not part.startswith("–")
    # the table marks 'sign and r' in one cell: count it twice where both hold, as the criteria do
    both = [scored["factors"][f]["criteria"]["sign"] and scored["factors"][f]["criteria"]["r"] for f in BOTH]
    expected = [n + int(b) for n, b in zip(per_factor, both)]
    assert [vs.criteria_met(scored["factors"][f]) for f in BOTH] == expected
    assert expected == [7, 0]  # nucleus: all but the nuisance drift (50 %); cytoplasm: no match (a2 has the wrong sign)
    assert vs.method_scores([scored])["gradient"].per_configuration == {"sample": expected}


def test_rows_are_read_from_what_run_printed(tmp_path, capsys):
    printed = tmp_path / "run.txt"
    printed.write_text("towards control #1: ...\n" + json.dumps(ROWS, indent=1) + "\n| configuration | method |\n")
    assert vs.read_rows(printed) == ROWS
    assert validity.main(["summary", str(printed), "--configuration", "sample", "--configuration", "single"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "Best default: **hold** (most criteria met of the methods (10 of 24), 1 factor score(s) passed).")
    for text, why in (("no rows here\n", "no JSON list"), ("[\n{\"a\": 1,\n", "not valid JSON"), ("[\n 1\n]\n", "does not hold")):
        printed.write_text(text)
        with pytest.raises(SystemExit, match=f"{printed}: .*{why}"):
            vs.read_rows(printed)


def test_doctests():
    result = doctest.testmod(sys.modules["validity_summary"])
    assert result.failed == 0 and result.attempted >= 1
