"""What the reported figures are computed on: disjoint image sets, random measurement samples,
replicate-aware bootstrap, content-keyed resume, unique file names."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from test_explain import TINY

from diffex.explain import explain
from diffex.explain.describe import file_stem
from diffex.report.morphology import trend


def _run(clf, dm, images, out, cfg=TINY):
    return explain(clf, images, out, dm, cfg, device="cpu", show_progress=False)


@pytest.fixture(scope="module")
def experiment(tiny_classifier, tiny_diffusion, cells, tmp_path_factory):
    res = _run(tiny_classifier[0], tiny_diffusion[0], cells, tmp_path_factory.mktemp("stats") / "exp")
    assert len(res.attributes) >= 2  # every loop over attributes below checks something
    return res


def _sets(out: Path) -> tuple[list[dict], dict[str, str]]:
    images = json.loads((out / "provenance.json").read_text())["images"]
    return images, {i["path"]: i["set"] for i in images}


def test_directions_and_selection_never_see_the_evaluation_images(experiment):
    from safetensors import safe_open

    images, sets = _sets(experiment.out)
    st = experiment.results.statistics
    assert st.selection_images == sum(s == "selection" for s in sets.values()) > 0
    assert st.evaluation_images == sum(s == "evaluation" for s in sets.values()) > 0
    for stage in ("gradients", "effects"):
        with safe_open(str(experiment.out / "cache" / f"{stage}.safetensors"), framework="pt") as fh:
            used = json.loads(fh.metadata()["json"])["meta"]["images"]
        assert used and {images[i]["set"] for i in used} == {"selection"}, stage
    for a in experiment.attributes:
        assert a.traversal.images and {sets[p] for p in a.traversal.images} == {"evaluation"}
        assert a.n_images == sum(sets[p] == "evaluation" and images[k]["condition"] != a.target
                                 for k, p in enumerate(sets))
        assert sum(a.separation_n.values()) == st.evaluation_images


def test_flip_rate_is_over_images_not_already_at_the_target(experiment):
    rows = list(csv.DictReader(open(experiment.out / "attributes.csv")))
    assert rows and {"baseline_at_target", "n_eligible", "separation_p_adjusted", "separation_n"} <= set(rows[0])
    for a in experiment.attributes:
        assert a.n_eligible == round(a.n_images * (1 - a.baseline_at_target))
        assert a.cumulative_flip_rate >= a.flip_rate - 1e-12 or a.rank > 1


def test_trends_come_from_the_random_sample_only(experiment):
    rows = list(csv.DictReader(open(experiment.out / "morphology.csv")))
    assert {r["Role"] for r in rows} <= {"random sample", "most affected"}
    col = "DNA_AreaShape_Area"
    for a in experiment.attributes:
        mine = [r for r in rows if r["attribute"] == a.id and r["Role"] == "random sample"]
        by_image: dict[str, list] = {}
        for r in mine:
            by_image.setdefault(r["ImageName"], []).append((float(r["Strength"]), float(r[col])))
        s = np.array([[v[0] for v in sorted(x)] for x in by_image.values()])
        v = np.array([[v[1] for v in sorted(x)] for x in by_image.values()])
        ref = v[:, np.argmin(np.abs(s[0]))]  # strength 0 renders the reconstruction itself
        expected = trend(s, v, ref, 0)["spearman_r"]
        assert a.morphology[col].spearman_r == pytest.approx(expected, abs=1e-12)
        assert len(by_image) == sum(a.traversal.measured)
        shown_roles = {e.role for e in a.traversal.shown}
        assert shown_roles <= {"random sample", "most affected"}


def test_manifest_replicates_drive_the_split_and_the_bootstrap(tiny_classifier, tiny_diffusion, cells, tmp_path):
    manifest = tmp_path / "manifest.csv"
    files = sorted(p for p in cells.rglob("*.ome.tif"))
    with open(manifest, "w") as fh:
        fh.write("path,condition,replicate\n")
        for i, p in enumerate(files):
            fh.write(f"{p},{p.parent.name},{p.parent.name}-r{i % 4}\n")  # 4 replicates per condition
    res = _run(tiny_classifier[0], tiny_diffusion[0], manifest, tmp_path / "exp", replace(TINY, max_images=24))
    st = res.results.statistics
    assert st.bootstrap_unit == "replicate"
    _, sets = _sets(res.out)
    replicate = {str(p): f"{p.parent.name}-r{i % 4}" for i, p in enumerate(files)}  # outside the manifest folder: absolute
    sides: dict[str, set] = {}
    for path, s in sets.items():
        sides.setdefault(replicate[path], set()).add(s)
    assert all(len(v) == 1 for v in sides.values())  # no replicate on both sides
    assert sum(st.bootstrap_units.values()) == len({r for r, v in sides.items() if v == {"evaluation"}})
    assert "replicate" in st.split and "each replicate entirely on one side" in st.split


def test_resume_with_another_classifier_recomputes_what_depends_on_it(tiny_classifier, tiny_diffusion, cells, tmp_path,
                                                                       monkeypatch, caplog):
    from diffex.models import sampler
    from diffex.models.classifier_train import ClassifierTrainConfig, train_classifier

    real = sampler.render_edits
    monkeypatch.setattr(sampler, "render_edits", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_classifier[0], tiny_diffusion[0], cells, tmp_path / "exp")
    assert (tmp_path / "exp" / "cache" / "gradients.safetensors").exists()
    monkeypatch.setattr(sampler, "render_edits", real)
    other = tmp_path / "clf2"
    train_classifier(cells, other, ClassifierTrainConfig(arch="test_resnet", size=16, epochs=1, batch_size=8, heldout_fraction=0.25,
                                                         seed=7), device="cpu", show_progress=False)
    with caplog.at_level(logging.INFO, logger="diffex.explain.cache"):
        res = _run(other, tiny_diffusion[0], cells, tmp_path / "exp")
    assert res.results.unet_image_evaluations_this_run.get("gradients", 0) > 0  # recomputed, not served from the cache
    assert res.results.unet_image_evaluations_this_run["inversion"] == 0  # does not depend on the classifier
    assert any("gradients: recomputing" in m and "classifier" in m for m in caplog.messages), caplog.messages
    ref = _run(other, tiny_diffusion[0], cells, tmp_path / "fresh")
    assert (ref.out / "attributes.csv").read_text() == (res.out / "attributes.csv").read_text()


def test_resume_with_changed_images_recomputes_everything(tiny_classifier, tiny_diffusion, cells, tmp_path, monkeypatch, caplog):
    from diffex.models import sampler

    images = tmp_path / "cells"
    shutil.copytree(cells, images)
    real = sampler.render_edits
    monkeypatch.setattr(sampler, "render_edits", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_classifier[0], tiny_diffusion[0], images, tmp_path / "exp")
    monkeypatch.setattr(sampler, "render_edits", real)
    for p in images.rglob("*.ome.tif"):  # same names, other pixels
        with tifffile.TiffFile(p) as tf:
            data, desc = tf.asarray(), tf.pages[0].description
        tifffile.imwrite(p, np.ascontiguousarray(data[..., ::-1]), description=desc, metadata=None)
    with caplog.at_level(logging.INFO, logger="diffex.explain.cache"):
        res = _run(tiny_classifier[0], tiny_diffusion[0], images, tmp_path / "exp")
    assert res.results.unet_image_evaluations_this_run["inversion"] == 16 * 3 * 2
    assert any("gradients: recomputing" in m and "images" in m for m in caplog.messages), caplog.messages
    ref = _run(tiny_classifier[0], tiny_diffusion[0], images, tmp_path / "fresh")
    assert (ref.out / "attributes.csv").read_text() == (res.out / "attributes.csv").read_text()


def test_file_names_are_unique_per_image(tmp_path):
    from diffex.data.dataset import Record, image_name

    def exp_with(*names):
        recs = [Record(tmp_path / n, "c") for n in names]
        return SimpleNamespace(records=recs, images_source=tmp_path, image_name=lambda i: image_name(recs[i], tmp_path))

    exp = exp_with("control/img001.tif", "treated/img001.tif")
    assert file_stem(exp, 0) != file_stem(exp, 1) and file_stem(exp, 0).startswith("control_img001-")
    exp = exp_with("2024.01.05_A01.tif", "2024.01.05_B02.tif")
    assert file_stem(exp, 0) != file_stem(exp, 1) and "A01" in file_stem(exp, 0)
    exp = exp_with("a/x.ome.tif")
    assert file_stem(exp, 0).startswith("a_x-")


def test_same_file_names_in_both_conditions_do_not_overwrite(tiny_classifier, tiny_diffusion, cells, tmp_path):
    images = tmp_path / "cells"
    for cond in ("control", "treated"):
        for i, p in enumerate(sorted((cells / cond).glob("*.ome.tif"))):
            (images / cond).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, images / cond / f"img{i:03d}.ome.tif")
    res = _run(tiny_classifier[0], tiny_diffusion[0], images, tmp_path / "exp", replace(TINY, traversal_images=2))
    assert res.attributes
    for a in res.attributes:
        files = [e.file for e in a.traversal.shown]
        assert len(files) == len(set(files)) == len(a.traversal.shown)
        assert all((res.out / "traversals" / f).exists() for f in files)


def test_the_strength_zero_frame_is_the_reconstruction_and_is_not_rendered_again(tiny_classifier, tiny_diffusion, cells, tmp_path, monkeypatch):
    """Traversal frames at strength 0 come from the inversion; the others are rendered, and a render with a
    zero offset (what the skipped frame would have been) equals the reconstruction up to float rounding."""
    import torch

    from diffex.explain import describe
    from diffex.models import sampler
    from diffex.models.hooks import h_shape

    calls, seen = [], []
    real_render, real_traversal = sampler.render_edits, describe.render_traversal

    def render_spy(dm, xt, offsets, spec, **kw):
        out = real_render(dm, xt, offsets, spec, **kw)
        calls.append((kw["scales"].clone(), dm, xt, spec, out))
        return out

    def traversal_spy(exp, inv, cands_key, cands, att, images, scales):
        before = len(calls)
        frames = real_traversal(exp, inv, cands_key, cands, att, images, scales)
        seen.append((frames, inv.xrec[images], scales, calls[before:]))
        return frames

    monkeypatch.setattr(sampler, "render_edits", render_spy)
    monkeypatch.setattr(describe, "render_traversal", traversal_spy)
    res = _run(tiny_classifier[0], tiny_diffusion[0], cells, tmp_path / "exp", replace(TINY, traversal_frames=3))
    assert res.attributes and len(seen) == len(res.attributes)
    for frames, xrec, scales, rendered in seen:
        assert frames.shape[1] == 3 and np.all(scales[:, 1] == 0) and np.any(scales[:, [0, 2]] != 0)
        assert torch.equal(frames[:, 1], xrec)  # taken, not rendered
        assert len(rendered) == 1 and torch.equal(rendered[0][0], torch.as_tensor(scales[:, [0, 2]]))  # only the moved frames
        assert torch.equal(frames[:, [0, 2]], rendered[0][4])  # ... and they are what the traversal holds, in their columns
    _, dm, xt, spec, _ = seen[0][3][0]
    zero = real_render(dm, xt, torch.zeros(1, *h_shape(dm)), spec, scales=torch.zeros(len(xt), 1))[:, 0]
    torch.testing.assert_close(zero, seen[0][1], atol=1e-5, rtol=0)
