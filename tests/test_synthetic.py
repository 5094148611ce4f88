"""The ground-truth generator: deterministic, and the conditions differ only where documented."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from diffex.data.io import read_image
from diffex.data.synthetic import (
    CHANNEL_NAMES,
    DIFFERENTIATING_FACTORS,
    FACTOR_COLUMNS,
    SyntheticSpec,
    generate_dataset,
    render_cell,
    spec_from_dict,
)
from diffex.errors import DiffexError


def test_same_seed_same_bytes(tmp_path):
    a = generate_dataset(tmp_path / "a", 3, seed=7)
    b = generate_dataset(tmp_path / "b", 3, seed=7)
    files = sorted((tmp_path / "a").rglob("*.tif"))
    assert len(files) == 6
    for p in files:
        q = tmp_path / "b" / p.relative_to(tmp_path / "a")
        assert p.read_bytes() == q.read_bytes(), p  # OME UUID included
    assert a.read_text() == b.read_text()
    generate_dataset(tmp_path / "c", 3, seed=8)
    assert (tmp_path / "c" / files[0].relative_to(tmp_path / "a")).read_bytes() != files[0].read_bytes()


def test_files_and_ground_truth(tmp_path):
    gt = generate_dataset(tmp_path / "cells", 4, seed=0)
    rows = list(csv.DictReader(open(gt)))
    assert len(rows) == 8 and set(rows[0]) == {"path", "condition", *FACTOR_COLUMNS}
    img = read_image(tmp_path / "cells" / rows[0]["path"])
    assert img.channel_names == CHANNEL_NAMES and img.dtype == "uint16" and img.data.shape == (2, 64, 64)


def test_only_documented_factors_differ():
    spec = SyntheticSpec()
    rng = np.random.default_rng(0)
    f = {c: [render_cell(rng, c, spec)[1] for _ in range(300)] for c in spec.conditions}

    def d_prime(name):
        a = np.array([x[name] for x in f["control"]])
        b = np.array([x[name] for x in f["treated"]])
        return abs(a.mean() - b.mean()) / np.sqrt((a.var() + b.var()) / 2)

    for name in FACTOR_COLUMNS:
        if name in DIFFERENTIATING_FACTORS or name == "nucleus_area_px":
            assert d_prime(name) > 1.5, name  # separated ...
        else:
            assert d_prime(name) < 0.3, name  # ... nuisance is not
    # ... but overlapping: neither factor alone separates the conditions perfectly
    for name in DIFFERENTIATING_FACTORS:
        a = np.array([x[name] for x in f["control"]])
        b = np.array([x[name] for x in f["treated"]])
        assert a.max() > b.min()


def test_bad_spec_and_condition():
    with pytest.raises(DiffexError, match="unknown keys"):
        spec_from_dict({"nuclei": 3})
    with pytest.raises(DiffexError, match="unknown condition"):
        render_cell(np.random.default_rng(0), "mutant", SyntheticSpec())


def test_refuses_to_overwrite(tmp_path):
    generate_dataset(tmp_path / "c", 1, seed=0)
    with pytest.raises(DiffexError, match="--force"):
        generate_dataset(tmp_path / "c", 1, seed=0)
    generate_dataset(tmp_path / "c", 2, seed=0, force=True)
    assert len(list((tmp_path / "c").rglob("*.tif"))) == 4


def test_default_factor_separation_sets_a_96_percent_ceiling():
    """d' = 2.5 per factor; the Bayes-optimal rule on both true factors scores Phi(sqrt(2 * 2.5^2) / 2)."""
    from scipy.stats import norm

    spec = SyntheticSpec()
    d = {}
    for name, sd in (("nucleus_radius", spec.nucleus_radius_sd), ("actin_level", spec.actin_level_sd)):
        means = [getattr(spec.conditions[c], f"{name}_mean") for c in ("control", "treated")]
        d[name] = (means[1] - means[0]) / sd
    assert d["nucleus_radius"] == pytest.approx(2.5) and d["actin_level"] == pytest.approx(2.5)
    ceiling = norm.cdf(np.hypot(*d.values()) / 2)
    assert ceiling == pytest.approx(0.9611, abs=5e-4)
    # The same ceiling from rendered cells: the midpoint rule on the standardized factor sum.
    rng = np.random.default_rng(3)
    rows = [(c, render_cell(rng, c, spec)[1]) for c in ("control", "treated") for _ in range(1500)]
    z = np.array([(f["nucleus_radius"] - 8.8) / spec.nucleus_radius_sd + (f["actin_level"] - 0.46) / spec.actin_level_sd
                  for _, f in rows])
    correct = np.array([(zz > 0) == (c == "treated") for (c, _), zz in zip(rows, z)])
    assert correct.mean() == pytest.approx(ceiling, abs=0.012)  # binomial SE 0.0035 for 3000 cells
