"""The validity table per method, and the default it supports (benchmarks/validity.py).

A method's score on a configuration is, per true factor, how many of the eight criteria
(``validity_score.CRITERIA``) its match meets; a factor without a match meets none. Methods are
ranked by the factor scores they pass, then by the criteria they meet, summed over every
configuration. The best default is the first method of that ranking other than the contrastive
baseline, and only when every method was scored on every configuration asked for and no other
method ties with it: a partial or tied table names what is missing instead of a method.

Example
-------
>>> crit = dict.fromkeys(CRITERIA, True)
>>> def row(method, met):  # one configuration, one factor meeting the first `met` criteria
...     c = {k: i < met for i, k in enumerate(CRITERIA)}
...     return {"configuration": "single", "method": method, "differs": ["nucleus_radius"],
...             "factors": {"nucleus_radius": {"attribute": "a1" if met else None, "criteria": c, "passed": met == 8}}}
>>> rows = [row("gradient", 6), row("pca", 0), row("contrastive", 7)]
>>> [(m, s.passed, s.met) for m, s in ranking(rows)]
[('contrastive', 0, 7), ('gradient', 0, 6), ('pca', 0, 0)]
>>> best_default(rows, ["single"])
('gradient', 'most criteria met of the methods (6 of 8), no factor score passed')
>>> best_default(rows, ["single", "subtle"])[0] is None
True
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from validity_score import CRITERIA

BASELINE = "contrastive"


@dataclass
class MethodScore:
    """One method over the configurations it was scored on."""

    passed: int = 0  # factor scores passed
    met: int = 0  # criteria met, summed over factors and configurations
    possible: int = 0  # criteria checked, 8 per factor
    per_configuration: dict[str, list[int]] = field(default_factory=dict)  # configuration -> criteria met per factor


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
    """Per method: factor scores passed, criteria met, and the criteria met per configuration and factor."""
    out: dict[str, MethodScore] = {}
    for (cfg, method), r in _index(rows).items():
        s = out.setdefault(method, MethodScore())
        met = [criteria_met(r["factors"][f]) for f in r["differs"]]
        s.per_configuration[cfg] = met
        s.met += sum(met)
        s.possible += len(CRITERIA) * len(met)
        s.passed += sum(bool(r["factors"][f]["passed"]) for f in r["differs"])
    return out


def ranking(rows: list[dict]) -> list[tuple[str, MethodScore]]:
    """Methods, most factor scores passed first, then most criteria met; ties keep the name order."""
    scores = method_scores(rows)
    return sorted(scores.items(), key=lambda kv: (-kv[1].passed, -kv[1].met, kv[0]))


def best_default(rows: list[dict], configurations: list[str]) -> tuple[str | None, str]:
    """The method the table supports as the default, with the reason; (None, what is missing) if it supports none."""
    scores = method_scores(rows)
    missing = {c: sorted(m for m, s in scores.items() if c not in s.per_configuration) for c in configurations}
    missing = {c: ms for c, ms in missing.items() if ms}
    if missing:
        said = [f"{c} ({'every method' if len(ms) == len(scores) else ', '.join(ms)})" for c, ms in missing.items()]
        return None, f"not every method was scored on every configuration; not scored: {'; '.join(said)}"
    extra = sorted({c for s in scores.values() for c in s.per_configuration} - set(configurations))
    if extra:
        return None, f"rows of configurations not asked for: {', '.join(extra)}"
    ranked = [(m, s) for m, s in ranking(rows) if m != BASELINE]
    if not ranked:
        return None, "no method other than the baseline was scored"
    (top, s), rest = ranked[0], ranked[1:]
    ties = [m for m, o in rest if (o.passed, o.met) == (s.passed, s.met)]
    if ties:
        return None, f"{top} ties with {', '.join(ties)} ({s.passed} factor scores passed, {s.met} of {s.possible} criteria met)"
    passed = f"{s.passed} factor score(s) passed" if s.passed else "no factor score passed"
    return top, f"most criteria met of the methods ({s.met} of {s.possible}), {passed}"


def summary(rows: list[dict], configurations: list[str]) -> str:
    """Markdown: per method, the criteria met per configuration and factor, against the baseline, and the best default."""
    scores = method_scores(rows)
    base = scores.get(BASELINE)
    heads = ["method", *configurations, "factor scores passed", "criteria met", "meets more criteria than the baseline on"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for method, s in ranking(rows):
        cells = [" / ".join(map(str, s.per_configuration[c])) if c in s.per_configuration else "not run" for c in configurations]
        if method == BASELINE or base is None:
            beats = "–"
        else:
            won = [c for c in configurations if c in s.per_configuration and c in base.per_configuration
                   and sum(s.per_configuration[c]) > sum(base.per_configuration[c])]
            beats = ", ".join(won) or "none"
        name = method + (" (baseline)" if method == BASELINE else "")
        lines.append("| " + " | ".join([name, *cells, str(s.passed), f"{s.met} of {s.possible}", beats]) + " |")
    top, why = best_default(rows, configurations)
    lines += ["", f"Per configuration: the criteria met (of {len(CRITERIA)}) by each true factor's match, in the table's factor "
                  "order (nuclear size / cytoplasm; CT: diameter / solid share); 0 without a match.",
              "", f"Best default: **{top}** ({why})." if top else f"Best default: none yet ({why})."]
    return "\n".join(lines)


def read_rows(path: Path) -> list[dict]:
    """The scored rows in a file that ``validity.py run`` or ``rescore`` printed (a JSON list on its own lines,
    text before or after it allowed)."""
    text = path.read_text()
    start = next((i for i, line in enumerate(text.splitlines(keepends=True)) if line.strip() == "["), None)
    if start is None:
        raise SystemExit(f"{path}: no JSON list of scored rows (a line holding only '[')")
    offset = sum(len(line) for line in text.splitlines(keepends=True)[:start])
    try:
        rows, _ = json.JSONDecoder().raw_decode(text, offset)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path}: the scored rows are not valid JSON ({e})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"configuration", "method", "factors"} <= r.keys()
                                             for r in rows):
        raise SystemExit(f"{path}: the JSON list does not hold scored rows (configuration, method, factors)")
    return rows
