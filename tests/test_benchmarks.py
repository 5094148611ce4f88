"""Smoke runs of the benchmark scripts at tiny size, so that they cannot rot."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
from conftest import REPO


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


def test_speed_benchmark_counts_equal_work(tiny_classifier, tiny_diffusion, cells):
    """Known counts: every side ranks the same 6 images and 3 candidates."""
    from diffex.explain import ExplainConfig

    speed = _load("speed")
    cfg = ExplainConfig(steps=3, t_end=999, screen_top=2, batch_size=4, strength=1.0, strength_unit="h_norm")
    res = speed.run(tiny_classifier[0], tiny_diffusion[0], cells, n=6, k=3, m=1, device="cpu", cfg=cfg)
    n, k, kk, steps = 6, len(res["candidates"]["names"]), 2, 3
    # diffex: inversion + reconstruction, gradients (forward + checkpoint recomputation per step, one dry pass for
    # h's shape), the shortlist table (asymmetric: two predictions per step)
    assert res["diffex"]["unet_image_evaluations"] == n * 2 * steps + (n * 2 * steps + 1) + n * kk * 2 * steps * 2
    assert len(res["diffex"]["shortlist"]) == kk
    # one round of the reference: inversion (50 steps), reconstruction (20), every candidate and sign (20 steps x 2)
    one_round = n * (50 + 20 + k * 2 * 20 * 2)
    assert res["reference"]["unet_image_evaluations"] == res["reference_cached"]["unet_image_evaluations"] == one_round
    assert res["reference"]["ratios"]["evaluations"] == one_round / res["diffex"]["unet_image_evaluations"]
    assert res["reference"]["selection"] == res["reference_cached"]["selection"]
    assert res["full_table_picks_in_shortlist"] == sum(c in res["diffex"]["shortlist"] for c, _ in res["full_table"]["selection"])


def test_validity_scoring_smoke(tiny_classifier, tiny_diffusion, cells, tmp_path):
    from test_explain import TINY

    from diffex.explain import explain

    validity = _load("validity")
    res = explain(tiny_classifier[0], cells, tmp_path / "exp", tiny_diffusion[0], TINY, device="cpu", show_progress=False)
    row = validity.score(res.out, cells, cells.parent / "cells_factors.csv", ("nucleus_radius", "actin_level"))
    assert row["attributes"] == len(res.attributes)
    assert set(row["factors"]) == {"nucleus_radius", "actin_level"}
    by_id = {a.id: a for a in res.attributes}
    for name, f in row["factors"].items():  # a match's figures are its attribute's
        if f["attribute"] is not None:
            a = by_id[f["attribute"]]
            assert (f["rank"], f["flip_rate"], f["auc"]) == (a.rank, a.flip_rate, a.separation_auc)
            assert np.isclose(f["r"], a.morphology[validity.MEASURE[name]].spearman_r) and np.sign(f["r"]) == f["expected_sign"]
        assert f["passed"] == (f["attribute"] is not None and all(f["criteria"].values()))
    assert row["passed"] == all(f["passed"] for f in row["factors"].values())
    # nuclear area measured on the real images follows the true nucleus radius
    assert row["proxy_r_nucleus_radius"] > 0.5
    md = validity.table([{"configuration": "tiny", "method": "gradient", "differs": ["nucleus_radius"], **row,
                          "factors": {"nucleus_radius": row["factors"]["nucleus_radius"]}}])
    assert md.count("\n") == 2 and "/ n/a |" in md


def test_validity_run_smoke(tiny_classifier, tiny_diffusion, cells, tmp_path, monkeypatch):
    """The benchmark's run loop end to end (explain through the CLI, scoring, table) on tiny models."""
    import json
    import shutil

    validity = _load("validity")
    root = tmp_path / "root"
    (root / "tiny").mkdir(parents=True)
    shutil.copytree(cells, root / "tiny" / "heldout")
    shutil.copy(cells.parent / "cells_factors.csv", root / "tiny" / "heldout_factors.csv")
    shutil.copytree(tiny_classifier[0], root / "tiny" / "classifier")
    shutil.copytree(tiny_diffusion[0], root / "tiny" / "diffusion")
    monkeypatch.setattr(validity, "CONFIGURATIONS", (validity.Configuration("tiny", ("nucleus_radius",), tmp_path / "tiny.yaml"),))
    monkeypatch.setattr(validity, "EXPLAIN", {"steps": 3, "t_end": 999, "min_psnr": -100.0, "max_images": 12, "gradient_images": 4,
                                              "rank_images": 6, "max_attributes": 1, "directions_per_method": 2, "screen_top": 2,
                                              "traversal_frames": 3, "traversal_images": 1, "measure_images": 1, "bootstrap": 20})
    rows = validity.run(root, tmp_path / "out", "cpu", methods=["gradient", "pca"])
    assert [r["method"] for r in rows] == ["gradient", "pca"]
    assert (tmp_path / "out" / "tiny" / "inversions").is_dir()  # shared by the second method
    gate = json.loads((root / "tiny" / "diffusion" / "diffex.json").read_text())["quality_gate"]["passed"]
    assert gate == tiny_diffusion[2]["passed"]
    assert [r["diffusion_gate_passed"] for r in rows] == [gate, gate]
    assert all(set(r["factors"]) == {"nucleus_radius"} for r in rows)
    assert validity.table(rows).count("\n") == 3
