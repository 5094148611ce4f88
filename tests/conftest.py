"""Shared fixtures: tiny synthetic experiments and tiny trained models, made in seconds on CPU."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"

# The tests' diffusion models keep the objective and optimizer they were written on (epsilon, linear betas,
# constant lr 2e-4, fp32), so that they do not change with the default recipe or with the CPU's bf16 support.
TINY_OBJECTIVE = {"prediction_type": "epsilon", "beta_schedule": "linear", "loss_weighting": "none", "lr": 2e-4,
                  "warmup_steps": 200, "lr_schedule": "constant", "precision": "fp32"}
TINY_UNET = {"block_out_channels": (16, 32), "norm_num_groups": 8, "attention_max_res": 8, "attention_head_dim": 8}


def pytest_collection_modifyitems(config, items):
    slow_selected = "slow" in (config.getoption("-m") or "")
    skip_slow = pytest.mark.skip(reason="slow; run with `python -m pytest -m slow`")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "slow" in item.keywords and not slow_selected:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def cells(tmp_path_factory) -> Path:
    """A two-condition synthetic experiment: 12 cells per condition, 64x64, OME-TIFF."""
    from diffex.data.synthetic import SyntheticSpec, generate_dataset

    root = tmp_path_factory.mktemp("exp")
    # The tests' cells keep the factor spreads they were written on (d' 2.1 / 2.0; the sample data now use 2.5):
    # several explain tests need the tiny untrained models to find an attribute on these 24 cells.
    generate_dataset(root / "cells", n_per_condition=12, seed=3, spec=SyntheticSpec(nucleus_radius_sd=0.75, actin_level_sd=0.06))
    return root / "cells"


@pytest.fixture(scope="session")
def tiny_classifier(cells, tmp_path_factory):
    """A test_resnet classifier trained for 2 epochs at 16 px (accuracy irrelevant)."""
    from diffex.models.classifier_train import ClassifierTrainConfig, train_classifier

    out = tmp_path_factory.mktemp("models") / "clf"
    cfg = ClassifierTrainConfig(arch="test_resnet", size=16, epochs=2, batch_size=8, heldout_fraction=0.25)
    clf, metrics = train_classifier(cells, out, cfg, device="cpu", show_progress=False)
    return out, clf, metrics


@pytest.fixture(scope="session")
def tiny_diffusion(cells, tmp_path_factory):
    """A two-level UNet trained for 4 steps at 16 px, with its quality gate on 4 samples."""
    from diffex.models.diffusion_train import DiffusionTrainConfig, train_diffusion
    from diffex.models.unet import UNetSpec

    out = tmp_path_factory.mktemp("models") / "dm"
    cfg = DiffusionTrainConfig(
        size=16, steps=4, batch_size=4, checkpoint_every=2, unet=UNetSpec(**TINY_UNET),
        gate_samples=4, gate_sample_steps=3, roundtrip_steps=3, **TINY_OBJECTIVE,  # the recipe's objective: test_diffusion_objectives.py
    )
    dm, gate = train_diffusion(cells, out, cfg, device="cpu", show_progress=False)
    return out, dm, gate


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture
def browser_page():
    """A headless Chromium page, offline, recording console problems and requests.

    Yields ``(page, record)`` with ``record = {"problems": [...], "requests": [...]}``. Skips
    without Chromium or Playwright, except on CI, where it fails (README, Setup, installs both).
    """
    chromium = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: install Debian's chromium and `pip install -e .[test]` (README, Setup)")
        pytest.skip("no Chromium or Playwright here (README, Setup, says how to install them)")
    record: dict[str, list[str]] = {"problems": [], "requests": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: record["problems"].append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda exc: record["problems"].append(f"page error: {exc}"))
            page.on("request", lambda r: record["requests"].append(r.url))
            yield page, record
        finally:
            browser.close()
