"""Check an explain run on the sample data against its ground truth (issue acceptance criteria).

The synthetic conditions differ in ``nucleus_radius`` (measured on renders as DNA object area) and
``actin_level`` (Actin object mean intensity); cell size, position and elongation are nuisance
factors. For each reported attribute this prints the flip rate at the reported strength, the median
within-traversal |Spearman r| of each factor's measurement with strength, and the nuisance drift at
±strength. Exit code 1 when the criteria are not met.

Usage: python benchmarks/explain_acceptance.py EXPERIMENT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FACTORS = {"nucleus_radius": "DNA_AreaShape_Area", "actin_level": "Actin_Intensity_MeanIntensity"}
NUISANCE = {"cell size": "Actin_AreaShape_Area", "cell x": "Actin_AreaShape_Center_X",
            "cell y": "Actin_AreaShape_Center_Y", "cell elongation": "Actin_AreaShape_Eccentricity"}


def main(exp: Path) -> int:
    res = json.loads((exp / "results.json").read_text())
    print(f"{'attribute':<42} {'flips':>6} " + " ".join(f"{'|r| ' + f:>20}" for f in FACTORS) + "  max nuisance drift")
    best = {f: None for f in FACTORS}
    for a in res["attributes"]:
        m = a["morphology"]
        rs = {f: abs(m[col]["spearman_r"]) for f, col in FACTORS.items()}
        drift = {n: max(abs(m[col]["change_at_max"]), abs(m[col]["change_at_min"])) for n, col in NUISANCE.items()}
        worst = max(drift, key=drift.get)
        label = f"{a['id']} {a['name']} ({'+' if a['sign'] > 0 else '-'})"
        print(f"{label[:42]:<42} {a['flip_rate']:>6.0%} " + " ".join(f"{rs[f]:>20.2f}" for f in FACTORS)
              + f"  {worst} {drift[worst]:+.0%}")
        for f in FACTORS:
            ok = rs[f] >= 0.8 and a["flip_rate"] >= 0.8 and drift[worst] < 0.10
            other = [g for g in FACTORS if g != f]
            specific = all(rs[g] < 0.5 for g in other)
            if ok and specific:
                best[f] = a["id"]
    print()
    passed = True
    for f, aid in best.items():
        print(f"{f}: " + (f"matched by {aid}" if aid else "NOT matched by a specific attribute (|r| >= 0.8 with it, < 0.5 with the other factor, flips >= 80 %, nuisance < 10 %)"))
        passed &= aid is not None
    print("acceptance:", "PASSED" if passed else "FAILED")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
