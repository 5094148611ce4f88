"""Smoke runs of the benchmark scripts at tiny size, so that they cannot rot."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import torch
from conftest import REPO


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


def test_speed_benchmark_smoke(tiny_classifier, tiny_diffusion, cells):
    from diffex.explain import ExplainConfig

    speed = _load("speed")
    cfg = ExplainConfig(steps=3, t_end=999, screen_top=2, batch_size=4, gradient_images=6, rank_images=4)
    res = speed.run(tiny_classifier[0], tiny_diffusion[0], cells, n=6, k=3, m=2, device="cpu", cfg=cfg)
    assert res["n"] == 6 and res["diffex"]["rendered"] == 2 and res["rank_images"] == 4
    assert res["diffex"]["unet_image_evaluations"] > 0 and res["reference"]["unet_image_evaluations"] > 0
    assert res["diffex"]["cpu_s"] > 0 and res["cpu_ratio"] > 0
    assert 0.0 <= res["top_m_agreement"] <= 1.0 and len(res["diffex"]["shortlist"]) == 2
    assert res["reference_picks_in_shortlist"] >= round(res["top_m_agreement"] * len(res["reference"]["selection"][:2]))
    full = speed.run(tiny_classifier[0], tiny_diffusion[0], cells, n=6, k=3, m=2, device="cpu", cfg=cfg, all_images=True)
    # the effect table on 2 more images: 2 images x 2 candidates x 2 signs x 3 steps x 2 passes (asymmetric)
    assert full["diffex"]["unet_image_evaluations"] - res["diffex"]["unet_image_evaluations"] == 48
    assert full["reference"]["unet_image_evaluations"] == res["reference"]["unet_image_evaluations"]


def test_reference_attfind_recounts_every_round(tiny_classifier, tiny_diffusion):
    from diffex.explain.reference import reference_attfind
    from diffex.models.bridge import ModelPair
    from diffex.models.hooks import EvaluationCounter, h_shape
    from diffex.models.sampler import SamplerSpec

    pair = ModelPair(tiny_classifier[1], tiny_diffusion[1])
    torch.manual_seed(0)
    x0 = torch.rand(3, 2, 16, 16) * 2 - 1
    dirs = torch.nn.functional.normalize(torch.randn(2, *h_shape(pair.dm)).flatten(1), dim=1).view(2, *h_shape(pair.dm))
    with EvaluationCounter(pair.dm.unet) as n:
        sel = reference_attfind(pair, x0, np.array([1, 0, 1]), dirs, 5.0, 2, invert_spec=SamplerSpec(steps=4),
                                render_spec=SamplerSpec(steps=2))
    assert len(sel) <= 2
    # the first round alone: 3 images x (4 inversion + 2 reconstruction + 2 directions x 2 signs x 2 steps)
    assert n.predictions >= 3 * (4 + 2 + 2 * 2 * 2)


def test_validity_scoring_smoke(tiny_classifier, tiny_diffusion, cells, tmp_path):
    from test_explain import TINY

    from diffex.explain import explain

    validity = _load("validity")
    res = explain(tiny_classifier[0], cells, tmp_path / "exp", tiny_diffusion[0], TINY, device="cpu", show_progress=False)
    row = validity.score(res.out, cells, cells.parent / "cells_factors.csv", ("nucleus_radius", "actin_level"))
    top = [a for a in res.attributes if a.rank == 1]
    assert row["attributes"] == len(res.attributes)
    assert row["flip_rate"] == np.mean([a.flip_rate for a in top])
    assert 0 <= row["l1"] and -1 <= row["ssim"] <= 1
    # nuclear area measured on the real images follows the true nucleus radius
    assert row["proxy_r_nucleus_radius"] > 0.5
    md = validity.table([{"configuration": "tiny", "method": "gradient", "differs": ["nucleus_radius"], **row}])
    assert md.count("\n") == 2 and "(not a factor)" in md


def test_validity_run_smoke(tiny_classifier, tiny_diffusion, cells, tmp_path, monkeypatch):
    """The benchmark's run loop end to end (explain through the CLI, scoring, table) on tiny models."""
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
    assert all(r["diffusion_gate_passed"] in (True, False) and r["attributes"] >= 0 for r in rows)
    assert validity.table(rows).count("\n") == 3
