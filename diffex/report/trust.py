"""What to trust about an attribute: the checks it fails, each as a sentence the report shows beside it.

An attribute picked on the selection images can fail to move the classifier on the evaluation images, or
move the classifier without being what differs between the conditions, or be
rendered outside the range of the real images, or change different images differently. Each of
these gets a marker and a sentence saying why (issue 14: "the report says what to trust"). So does a
direction named for a readout (``readout``, ``steer``, ``hold``: "towards treated: DNA area higher")
whose renders do not move that readout the named way: its name would tell the reader what it does not do.

Example
-------
>>> from types import SimpleNamespace as NS
>>> a = NS(separation_auc=0.52, separation_p_adjusted=0.8, target="treated", strength_unit="sd", ends_in_data=1.0,
...        consistency=0.9, consistency_measure="DNA_AreaShape_Area", coordinate={})
>>> warnings(a, ["control", "treated"], "cells")[0]
'The classifier reacts to this change, but real treated and control cells do not differ along it (AUC 0.52, Holm-adjusted p 0.8; trusted from AUC 0.7 and p < 0.01).'
"""

from __future__ import annotations

import numpy as np

from diffex.report.morphology import measurement_label

MIN_AUC, MAX_P = 0.7, 0.01  # the separation a trusted attribute shows (validity benchmark's bar)
WEAK_AUC, WEAK_P = 0.6, 0.05  # below the bar but above these: "differ only weakly"
MIN_IN_DATA = 0.9  # share of moved images whose full-strength end lies inside the real data
MAX_SD = 3.0  # h_norm results: full strength beyond this many SD of the real images leaves the data
MIN_CONSISTENCY = 0.5
MIN_NAMED_R = 0.5  # a direction named for a readout must move it the named way: median Spearman r with the strength


def _others(conditions: list[str], target: str) -> str:
    return " and ".join(c for c in conditions if c != target) or "the other"


def warnings(att, conditions: list[str], objects: str = "cells") -> list[str]:
    """The sentences of every trust check ``att`` fails (empty: none fails)."""
    out = _reaction(att)
    auc, p = att.separation_auc, att.separation_p_adjusted
    if not (np.isfinite(auc) and auc >= MIN_AUC and np.isfinite(p) and p < MAX_P):
        weak = np.isfinite(auc) and auc >= WEAK_AUC and np.isfinite(p) and p < WEAK_P
        how = "differ only weakly" if weak else "do not differ"
        lead = "Real" if out else "The classifier reacts to this change, but real"  # out: it does not react (said above)
        out.append(f"{lead} {att.target} and {_others(conditions, att.target)} {objects} {how} "
                   f"along it (AUC {auc:.2f}, Holm-adjusted p {p:.2g}; trusted from AUC {MIN_AUC} and p < {MAX_P}).")
    if att.strength_unit == "sd":
        if np.isfinite(att.ends_in_data) and att.ends_in_data < MIN_IN_DATA:
            out.append(f"Only {att.ends_in_data:.0%} of the moved images end inside the range of the real data at full strength.")
    else:
        vals = [v for vs in att.coordinate.values() for v in vs]
        sd = float(np.std(vals)) if vals else 0.0
        if sd > 0 and att.strength / sd > MAX_SD:  # coordinates in units of mean ‖h‖; full strength is att.strength of them
            out.append("Rendered beyond the real data: full strength is more than 3 standard deviations of the real images along this axis.")
    if np.isfinite(att.consistency) and att.consistency < MIN_CONSISTENCY:
        out.append(f"The change is not consistent across images: only {att.consistency:.0%} of the measured images change "
                   "its main measurement in the same direction by a similar amount.")
    elif not att.consistency_measure:
        out.append("No morphology measurement changes consistently along it: what it changes is not described.")
    out += _named(att)
    return out


def _reaction(att) -> list[str]:
    """A sentence when the classifier's reaction on the evaluation images is not distinguishable from zero: the 95 %
    CI of Δp reaches 0 (AttFind picked it on the selection images, where its lower bound was above 0)."""
    ci = getattr(att, "delta_p_ci95", None)
    if not ci or not all(np.isfinite(ci)) or ci[0] > 0:
        return []
    return [f"On the evaluation images the classifier's reaction to this change is not distinguishable from zero "
            f"(Δp {att.mean_delta_p:+.3f}, 95 % CI [{ci[0]:+.3f}, {ci[1]:+.3f}]; trusted when the interval is above 0)."]


def _named(att) -> list[str]:
    """A sentence when the readout a direction is named for does not move the named way in its renders."""
    trend = att.morphology.get(getattr(att, "named_measure", "")) if getattr(att, "named_direction", 0) else None
    if trend is None or not np.isfinite(trend.spearman_r) or att.named_direction * trend.spearman_r >= MIN_NAMED_R:
        return []
    label, way = measurement_label(att.named_measure), "higher" if att.named_direction > 0 else "lower"
    named_way = "higher" if att.named_direction * att.sign > 0 else "lower"  # the word in the direction's name
    said = f"Its name says {label} {named_way}"
    said += "" if att.sign > 0 else f"; it was selected in the opposite direction, so {label} should go {way} towards {att.target}"
    need = f"≥ {MIN_NAMED_R}" if att.named_direction > 0 else f"≤ −{MIN_NAMED_R}"
    return [f"{said}, but its renders do not consistently move {label} {way} towards {att.target} (median Spearman r with "
            f"the strength {trend.spearman_r:+.2f}; trusted from r {need})."]
