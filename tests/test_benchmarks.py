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
    (tmp_path / "tiny.yaml").write_text("size: 64\n")  # the generator's spec: the sample data's (the decoder's traversals)
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
    assert all(r["decoder"]["factors"] == ["nucleus_radius", "actin_level"] and r["decoder"]["image_size"] == 16 for r in rows)
    # an explain setting over the benchmark's own (--set): written to the runs' config; a run without attributes gets dashes
    gated = validity.run(root, tmp_path / "gated", "cpu", methods=["gradient"], settings={"selection_min_auc": 0.999})
    assert "selection_min_auc: 0.999" in (tmp_path / "gated" / "tiny" / "explain.yaml").read_text()
    assert gated[0]["attributes"] == 0 and gated[0]["strength_unit"] is None
    g = gated[0]
    proxy = f"{g['proxy_r_nucleus_radius']:+.2f}, {g['proxy_other_r_nucleus_radius']:.2f} / n/a"  # the real images' readout
    assert validity.table(gated).splitlines()[-1].endswith(f"| – / n/a | – | – | – | – | – | {proxy} | " + ("✓" if gate else "✗") + " |")


def test_gate_samplers_reproduces_the_gate_at_eta_zero(tiny_diffusion, cells, tmp_path):
    """At eta = 0 the benchmark draws the gate's own samples: its rows equal the recorded gate's; other images are refused."""
    import json
    import shutil

    from diffex.errors import DiffexError
    from diffex.models.diffusion import DiffusionModel

    bench = _load("gate_samplers")
    out = tmp_path / "rows.json"
    assert bench.main(["--model", str(tiny_diffusion[0]), "--images", str(cells), "--etas", "0,1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    gate_rows = tiny_diffusion[2]["statistics"]
    at_zero = [r for r in rows if r["eta"] == 0]
    assert len(at_zero) == len(gate_rows) == len(rows) // 2
    for ours, gate in zip(at_zero, gate_rows):
        assert (ours["channel"], ours["measure"]) == (gate["channel"], gate["measure"])
        np.testing.assert_allclose([ours["sample_mean"], ours["sample_sd"], ours["data_mean"]],
                                   [gate["sample_mean"], gate["sample_sd"], gate["data_mean"]], rtol=1e-5)
    assert any(r["sample_mean"] != g["sample_mean"] for r, g in zip([r for r in rows if r["eta"] == 1], gate_rows))
    fewer = tmp_path / "fewer"
    shutil.copytree(cells, fewer)
    for f in sorted(p for p in fewer.rglob("*.tif*"))[:3]:
        f.unlink()
    try:
        bench.training_images(DiffusionModel.load(tiny_diffusion[0]), fewer)
    except DiffexError as e:
        assert "do not split as the model's training images did" in str(e)
    else:
        raise AssertionError("a different images folder was accepted")


def test_gate_samplers_lesion_rows_on_disks_of_known_size():
    """Disks of 8 mm (real) against 10 mm (samples) at 0.8 mm in the shipped CT model's window: the rows are the readouts' mean differences."""
    from dataclasses import replace
    from types import SimpleNamespace

    from diffex.models.diffusion import DiffusionModel
    from diffex.report.ct_morphology import measure_lesion

    bench = _load("gate_samplers")
    info = DiffusionModel.load(REPO / "sample_data" / "ct" / "models" / "diffusion").info
    model = SimpleNamespace(info=replace(info, ct={**info.ct, "spacing_mm": 0.8}))
    yy, xx = np.mgrid[:32, :32] * 0.8 - 15.5 * 0.8  # mm from the centre

    def disks(diameter_mm, hu, n=4):
        one = np.where(yy**2 + xx**2 <= (diameter_mm / 2) ** 2, hu, -850.0).astype(np.float32)
        return np.repeat(one[None, None], n, axis=0)  # (n, 1, 32, 32)

    rows = {r["measure"]: r for r in bench.lesion_rows(model, disks(8.0, 40.0), disks(10.0, -100.0))}
    assert rows["Lesion_Found"]["data_mean"] == rows["Lesion_Found"]["sample_mean"] == 1.0
    # brute force: one patch of each, measured directly (the readout's opening shaves the 10 mm pixel disk to 9.55 mm)
    one = {d: measure_lesion(disks(d, hu, 1)[0, 0], (0.8, 0.8)) for d, hu in ((8.0, 40.0), (10.0, -100.0))}
    assert rows["Lesion_Diameter_mm"]["mean_diff"] == one[10.0]["Lesion_Diameter_mm"] - one[8.0]["Lesion_Diameter_mm"]
    assert abs(rows["Lesion_Diameter_mm"]["data_mean"] - 2 * np.sqrt(80 * 0.64 / np.pi)) < 1e-9  # the 80-pixel disk: 8.07 mm
    assert abs(rows["Lesion_MeanHU"]["mean_diff"] - (-140.0)) < 1e-3
    assert rows["Lesion_SolidShare"]["data_mean"] == rows["Lesion_SolidShare"]["sample_mean"] == 1.0
    assert rows["Lesion_Area_mm2"]["mean_diff"] == one[10.0]["Lesion_Area_mm2"] - one[8.0]["Lesion_Area_mm2"]
    # a two-level image's Otsu mask is its bright disk: 80 of 1,024 pixels for 8 mm, 120 for 10 mm (pixel centres inside)
    assert rows["Otsu_ForegroundShare"]["data_mean"] == 80 / 1024 and rows["Otsu_ForegroundShare"]["sample_mean"] == 120 / 1024
    assert bench.lesion_rows(SimpleNamespace(info=SimpleNamespace(ct=None)), disks(8, 40), disks(8, 40)) == []
