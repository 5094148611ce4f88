"""The validity benchmark's markdown table (benchmarks/validity.py): one row per configuration x method.

Per-factor cells read 'nuclear size / cytoplasm' for microscopy rows and 'diameter / solid share' for CT rows.
"""

from __future__ import annotations

import validity as vb


def _mark(ok: bool) -> str:
    return " ✓" if ok else " ✗"


def _match_cell(v: dict, c: dict) -> str:
    if v["attribute"]:
        return v["attribute"]
    why = "; ".join(f"{k} {reason.split(' (')[0]}" for k, reason in v["rejected"].items())
    return "none" + (f" ({why})" if why else "")


def _outside_cell(v: dict, c: dict) -> str:
    left = v.get("outside_left_out") or 0  # absent in scores made before it was counted
    return f"{v['outside_share']:.0%}{_mark(c['in_data'])}" + (f" ({left} of {v['n_full_strength']})" if left else "")


def _decoded(v: dict, key: str, fmt) -> str:
    """The decoded figure, and in brackets the raw readouts' where the score was decoded (validity_decode.py)."""
    raw = v.get(f"{key}_readout")
    return fmt(v[key]) + (f" ({fmt(raw)})" if v.get("measured_on") == "decoded factors" and raw is not None else "")


# per-factor columns of the table: header -> cell of one factor's score v with its criteria c; the columns after
# the first two only for a matched factor
TOP_RANK, MIN_R, MAX_OTHER_R, MIN_AUC, MAX_P_ADJUSTED = vb.TOP_RANK, vb.MIN_R, vb.MAX_OTHER_R, vb.MIN_AUC, vb.MAX_P_ADJUSTED
MIN_TOP_FLIPS, MAX_DRIFT, MAX_OUTSIDE_SHARE = vb.MIN_TOP_FLIPS, vb.MAX_DRIFT, vb.MAX_OUTSIDE_SHARE
PASSED = "passed (nuclear size / cytoplasm; CT: diameter / solid share)"
FACTOR_COLUMNS = {
    PASSED: lambda v, c: "✓" if v["passed"] else "✗",
    "match": _match_cell,
    f"rank ≤ {TOP_RANK}": lambda v, c: f"{v['rank']}{_mark(c['top3'])}",
    f"r (right sign, abs ≥ {MIN_R}; decoded (readout))":
        lambda v, c: _decoded(v, "r", lambda x: f"{x:+.2f}") + _mark(c["sign"] and c["r"]),
    f"abs r other factor ≤ {MAX_OTHER_R}; decoded (readout)": lambda v, c: _decoded(v, "other_r", lambda x: f"{x:.2f}") + _mark(c["specific"]),
    "decoded change first to last render: own, other factor (x Δ)":
        lambda v, c: "–" if v.get("own_change") is None else f"{v['own_change']:+.2f}, " + _fmt_signed(v.get("other_change")),
    f"AUC ≥ {MIN_AUC}, p adj < {MAX_P_ADJUSTED}": lambda v, c: f"{v['auc']:.2f}, p {v['p_adjusted']:.2g}{_mark(c['separation'])}",
    "flip rate (baseline)": lambda v, c: f"{v['flip_rate']:.0%} ({v['baseline_at_target']:.0%})",
    f"top-{TOP_RANK} flips ≥ {MIN_TOP_FLIPS:.0%}": lambda v, c: f"{v['top_flips']:.0%}{_mark(c['flips'])}",
    f"nuisance drift < {MAX_DRIFT:.0%}; decoded (readout)":
        lambda v, c: _decoded(v, "nuisance_drift", lambda x: f"{x:.0%}") + _mark(c["nuisance"]),
    f"renders outside data ≤ {MAX_OUTSIDE_SHARE:.0%} (not counted: reconstruction outside)": _outside_cell,
    "consistency": lambda v, c: f"{v['consistency']:.0%}" if v.get("consistency") is not None and v["consistency"] == v["consistency"] else "–",
}
FACTOR_NAMES = {"nucleus_radius": "nuclear size", "actin_level": "cytoplasm", "diameter_mm": "nodule diameter",
                "solid_fraction": "solid share"}


def _factor_cell(row: dict, header: str) -> str:
    """One column's cells of every factor, 'nuclear size / cytoplasm'; n/a for a factor that does not differ."""
    cells = []
    for f in (vb.MEASURE_CT if row.get("modality") == "ct" else vb.MEASURE):
        sc = row["factors"].get(f)
        if sc is None:
            cells.append("n/a")
        elif sc["attribute"] is None and header not in (PASSED, "match"):
            cells.append("–")
        else:
            cells.append(FACTOR_COLUMNS[header](sc, sc["criteria"]))
    return " / ".join(cells)


def _fmt_signed(v) -> str:
    return "–" if v is None else f"{v:+.2f}"


def _fmt(v, pct=False) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "✓" if v else "✗"
    if isinstance(v, float):
        return f"{v:.0%}" if pct else f"{v:.2f}"
    return str(v)


def _proxy_cell(row: dict) -> str:
    """Per factor: on the real images, r of its measurement with it, and the largest |r| with another factor within a condition."""
    cells = []
    for f in (vb.MEASURE_CT if row.get("modality") == "ct" else vb.MEASURE):
        own, other = row.get(f"proxy_r_{f}"), row.get(f"proxy_other_r_{f}")
        cells.append("n/a" if f not in row["differs"] else f"{'–' if own is None else f'{own:+.2f}'}, {_fmt(other)}")
    return " / ".join(cells)


def table(rows: list[dict]) -> str:
    """Markdown table of the scored runs: one row per configuration x method; per-factor cells 'nuclear size / cytoplasm'."""
    heads = ["configuration (differs in)", "method", *FACTOR_COLUMNS, "shift (SD), ends in data (rank 1)", "L1 (rank 1)", "SSIM (rank 1)",
             "realism median abs z", "renders with abs z > 4", "measurement on real images: r own factor, abs r other (within condition)",
             "diffusion gate"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        diff = ", ".join(FACTOR_NAMES[f] for f in r["differs"])
        method = r["method"] + (" (baseline)" if r["method"] == "contrastive" else "")
        unit = r.get("strength_unit")
        shift = (f"{_fmt(r.get('mean_shift_sd'))}, {_fmt(r.get('ends_in_data'), True)}" if unit == "sd"
                 else "× mean ‖h‖" if unit == "h_norm" else "–")  # None: no rank-1 attribute
        cells = [f"{r['configuration']} ({diff})", method, *(_factor_cell(r, h) for h in FACTOR_COLUMNS), shift,
                 _fmt(r["l1"]), _fmt(r["ssim"]), _fmt(r["realism_median_abs_z"]), _fmt(r["realism_share_any_z_over_4"], True),
                 _proxy_cell(r), _fmt(r.get("diffusion_gate_passed"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


