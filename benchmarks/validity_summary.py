"""The validity table per method, and the default it supports (benchmarks/validity.py).

A method's score on a configuration is, per true factor, how many of the eight criteria
(``validity_score.CRITERIA``) its match meets; a factor without a match meets none. A match has
the right sign and stays in the data by definition (``validity_score.match_factor``: an attribute
with more than 10 % of its full-strength renders outside the data is rejected, whatever else it
does), so a match meets at least those two. Each true factor counts once, so a configuration where
the conditions differ in two factors weighs twice one where they differ in one.

Methods are ranked by, in this order: factor scores passed; factors matched by a *specific*
attribute (|r| with the other factor <= 0.3: one factor per attribute, the point of issue 14; one
direction that mixes both factors can match both, and would otherwise earn their criteria twice);
criteria met, summed over every configuration. The best default is the first method of that
ranking other than the contrastive baseline, and only when every expected method, the baseline
among them, was scored on every configuration asked for and no other method ties with it on all
three counts. The counts are exact, from one explain run per cell: there is no margin, and a lead
of one criterion decides.

Example
-------
>>> def row(method, met):  # one configuration, one factor whose match meets the criteria named in `met`
...     c = {k: k in met.split() for k in CRITERIA}
...     return {"configuration": "single", "method": method, "differs": ["nucleus_radius"],
...             "factors": {"nucleus_radius": {"attribute": "a1" if met else None, "criteria": c, "passed": all(c.values())}}}
>>> rows = [row("gradient", "top3 sign r separation in_data flips"), row("hold", "sign r specific in_data"),
...         row("contrastive", "top3 sign r in_data")]
>>> [(m, s.passed, s.specific, s.met) for m, s in ranking(rows)]
[('hold', 0, 1, 4), ('gradient', 0, 0, 6), ('contrastive', 0, 0, 4)]
>>> best_default(rows, ["single"], ["contrastive", "gradient", "hold"])[0]
'hold'
>>> best_default(rows, ["single", "subtle"], ["contrastive", "gradient", "hold"])[0] is None
True
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from validity_score import CRITERIA, MEASURE, MEASURE_CT

BASELINE = "contrastive"


@dataclass
class MethodScore:
    """One method over the configurations it was scored on."""

    passed: int = 0  # factor scores passed
    specific: int = 0  # factors matched by an attribute that meets `specific`
    met: int = 0  # criteria met, summed over factors and configurations
    possible: int = 0  # criteria checked, 8 per factor
    per_configuration: dict[str, dict[str, int]] = field(default_factory=dict)  # configuration -> factor -> criteria met

    def key(self) -> tuple[int, int, int]:
        """What the ranking compares, most important first."""
        return self.passed, self.specific, self.met

    def said(self) -> str:
        return f"{self.passed} factor scores passed, {self.specific} specific matches, {self.met} of {self.possible} criteria met"


def criteria_met(factor_score: dict) -> int:
    """Criteria a factor's match meets (0 without a match)."""
    return sum(bool(v) for v in factor_score["criteria"].values()) if factor_score["attribute"] else 0


def _index(rows: list[dict]) -> dict[tuple[str, str], dict]:
    by_key = {}
    for r in rows:
        key = (r["configuration"], r["method"])
        if key in by_key:
            raise ValueError(f"two scored rows for {key[0]}/{key[1]}: give each configuration x method once")
        by_key[key] = r
    return by_key


def method_scores(rows: list[dict]) -> dict[str, MethodScore]:
    """Per method: factor scores passed, specific matches, criteria met, and the criteria met per configuration and factor."""
    out: dict[str, MethodScore] = {}
    for (cfg, method), r in _index(rows).items():
        s = out.setdefault(method, MethodScore())
        fs = {f: r["factors"][f] for f in r["differs"]}
        s.per_configuration[cfg] = {f: criteria_met(v) for f, v in fs.items()}
        s.met += sum(s.per_configuration[cfg].values())
        s.possible += len(CRITERIA) * len(fs)
        s.passed += sum(bool(v["passed"]) for v in fs.values())
        s.specific += sum(bool(v["attribute"] and v["criteria"]["specific"]) for v in fs.values())
    return out


def ranking(rows: list[dict]) -> list[tuple[str, MethodScore]]:
    """Methods, best first (factor scores passed, then specific matches, then criteria met); ties keep the name order."""
    return _ordered(method_scores(rows))


def _ordered(scores: dict[str, MethodScore]) -> list[tuple[str, MethodScore]]:
    return sorted(scores.items(), key=lambda kv: (tuple(-k for k in kv[1].key()), kv[0]))


def _missing(scores: dict[str, MethodScore], configurations: list[str], methods: list[str]) -> str | None:
    """What keeps the rows from being a full table of ``methods`` x ``configurations`` (None: nothing)."""
    expected = sorted(set(methods) | {BASELINE})
    gaps = {c: [m for m in expected if c not in scores.get(m, MethodScore()).per_configuration] for c in configurations}
    said = [f"{c} ({'every method' if len(ms) == len(expected) else ', '.join(ms)})" for c, ms in gaps.items() if ms]
    if said:
        return f"not every method was scored on every configuration; not scored: {'; '.join(said)}"
    extra = sorted(set(scores) - set(expected))
    return f"rows of methods not expected: {', '.join(extra)}" if extra else None


def best_default(rows: list[dict], configurations: list[str], methods: list[str]) -> tuple[str | None, str]:
    """The method the table of ``methods`` (the baseline added) x ``configurations`` supports as the default, with
    the reason; (None, what is missing or tied) if it supports none. Rows of other configurations are refused."""
    extra = sorted({r["configuration"] for r in rows} - set(configurations))
    if extra:
        return None, f"rows of configurations not asked for: {', '.join(extra)}"
    scores = method_scores(rows)
    why = _missing(scores, configurations, methods)
    if why:
        return None, why
    ranked = [(m, s) for m, s in _ordered(scores) if m != BASELINE]
    if not ranked:
        return None, "no method other than the baseline was expected"
    (top, s), rest = ranked[0], ranked[1:]
    ties = [m for m, o in rest if o.key() == s.key()]
    if ties:
        return None, f"{top} ties with {', '.join(ties)} ({s.said()})"
    base = scores[BASELINE]
    versus = "above" if s.key() > base.key() else "not above"
    runner = f"; next: {rest[0][0]} ({rest[0][1].said()})" if rest else ""
    return top, f"first of the methods other than the baseline: {s.said()}; {versus} the baseline ({base.said()}){runner}"


def _cell(s: MethodScore, cfg: str, order: list[str]) -> str:
    if cfg not in s.per_configuration:
        return "not run"
    got = s.per_configuration[cfg]
    return " / ".join(str(got[f]) if f in got else "n/a" for f in order)


def summary(rows: list[dict], configurations: list[str], methods: list[str]) -> str:
    """Markdown: per method, the criteria met per configuration and factor, against the baseline, and the best default.
    Only rows of ``configurations`` are counted."""
    rows = [r for r in rows if r["configuration"] in configurations]
    scores = method_scores(rows)
    base = scores.get(BASELINE)
    order = {r["configuration"]: list(MEASURE_CT if r.get("modality") == "ct" else MEASURE) for r in rows}
    heads = ["method", *configurations, "factor scores passed", "specific matches", "criteria met",
             "meets more criteria than the baseline on"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for method, s in _ordered(scores):
        cells = [_cell(s, c, order.get(c, [])) for c in configurations]
        if method == BASELINE or base is None:
            beats = "–"
        else:
            won = [c for c in configurations if c in s.per_configuration and c in base.per_configuration
                   and sum(s.per_configuration[c].values()) > sum(base.per_configuration[c].values())]
            beats = ", ".join(won) or "none"
        name = method + (" (baseline)" if method == BASELINE else "")
        lines.append("| " + " | ".join([name, *cells, str(s.passed), str(s.specific), f"{s.met} of {s.possible}", beats]) + " |")
    top, why = best_default(rows, configurations, methods)
    lines += ["", f"Per configuration: the criteria met (of {len(CRITERIA)}) by each true factor's match, in the table's factor "
                  "order (nuclear size / cytoplasm; CT: diameter / solid share; n/a: the conditions do not differ in it); "
                  "0 without a match.",
              "", f"Best default: **{top}** ({why})." if top else f"Best default: none yet ({why})."]
    return "\n".join(lines)


def read_rows(path: Path) -> list[dict]:
    """The scored rows in a file holding what ``validity.py run`` or ``rescore`` printed: every JSON list that starts on a
    line holding only '[' (other text before, between and after allowed), concatenated."""
    text, rows, decoder = path.read_text(), [], json.JSONDecoder()
    lines = text.splitlines(keepends=True)
    offsets, end = [0, *itertools.accumulate(len(line) for line in lines)], 0
    for i, line in enumerate(lines):
        if line.rstrip("\r\n") != "[" or offsets[i] < end:
            continue
        try:
            part, end = decoder.raw_decode(text, offsets[i])
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}: the scored rows are not valid JSON ({e})") from None
        if not all(isinstance(r, dict) and {"configuration", "method", "differs", "factors"} <= r.keys() for r in part):
            raise SystemExit(f"{path}: a JSON list there does not hold scored rows (configuration, method, differs, factors)")
        rows += part
    if not rows:
        raise SystemExit(f"{path}: no scored rows (a JSON list starting on a line holding only '[', as run and rescore print)")
    return rows
