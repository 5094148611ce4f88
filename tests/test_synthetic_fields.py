"""Synthetic fields of view: deterministic, and the object table agrees with the true labels."""

from __future__ import annotations

import csv

import numpy as np
import tifffile

from diffex.data.io import read_image
from diffex.data.synthetic_fields import FieldSpec, generate_fields, render_field


def test_same_seed_same_bytes(tmp_path):
    spec = FieldSpec(size=128, cells=3, touching_pairs=1)
    generate_fields(tmp_path / "a", 1, seed=4, spec=spec)
    generate_fields(tmp_path / "b", 1, seed=4, spec=spec)
    files = sorted((tmp_path / "a").rglob("*.tif"))
    assert len(files) == 2
    for p in files:
        assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes()


def test_objects_agree_with_labels(tmp_path):
    table = generate_fields(tmp_path / "fov", 2, seed=0, spec=FieldSpec(size=192, cells=5, touching_pairs=2))
    rows = list(csv.DictReader(open(table)))
    for field in {r["field"] for r in rows}:
        labels = tifffile.imread(tmp_path / "fov_truth" / field.replace(".ome.tif", ".tif"))
        mine = [r for r in rows if r["field"] == field]
        assert sorted(int(r["label"]) for r in mine) == sorted(np.unique(labels[labels > 0]).tolist())
        for r in mine:
            mask = labels == int(r["label"])
            assert int(r["area"]) == mask.sum()
            ys, xs = np.nonzero(mask)
            assert abs(float(r["centroid_y"]) - ys.mean()) < 1e-3 and abs(float(r["centroid_x"]) - xs.mean()) < 1e-3
        assert sum(r["touching"] == "True" for r in mine) == 4  # two pairs, each nucleus touches its partner
        assert read_image(tmp_path / "fov" / field).data.shape == (2, 192, 192)


def test_conditions_differ_in_nucleus_size():
    rng = np.random.default_rng(0)
    area = {c: np.mean([o["area"] for _ in range(4) for o in render_field(rng, c, FieldSpec(touching_pairs=0))[2]
                        if not o["at_border"]]) for c in ("control", "treated")}
    # radius 8.0 vs 9.6 px: areas about pi r^2 = 201 vs 290 px (nuclei are ellipses of the same area)
    assert 180 < area["control"] < 225 and 265 < area["treated"] < 315
