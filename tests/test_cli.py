"""The command line: exit codes, one-line errors naming the file, --force, --json on stdout."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from diffex.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_commands():
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("train-classifier", "train-diffusion", "inspect", "synthetic"):
        assert cmd in r.output


def test_inspect_json_and_exit_codes(tiny_classifier, tiny_diffusion, cells):
    r = invoke("inspect", "--classifier", tiny_classifier[0], "--diffusion", tiny_diffusion[0], "--images", cells, "--json", "-q")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["compatible"] is True


def test_missing_images_is_a_clear_error(tmp_path):
    r = invoke("train-classifier", "--images", tmp_path / "nope", "--out", tmp_path / "clf", "-q")
    assert r.exit_code == 2
    assert f"error: {tmp_path / 'nope'}: no such file or folder" in r.stderr
    assert not (tmp_path / "clf").exists()


def test_corrupt_file_named_and_nothing_written(cells, tmp_path):
    import shutil

    bad = tmp_path / "cells"
    shutil.copytree(cells, bad)
    victim = sorted((bad / "treated").glob("*.tif"))[0]
    victim.write_bytes(victim.read_bytes()[:200])
    r = invoke("train-classifier", "--images", bad, "--out", tmp_path / "clf", "--arch", "test_resnet", "--size", "16", "-q")
    assert r.exit_code == 2
    assert str(victim) in r.stderr and "truncated or corrupt" in r.stderr
    assert not (tmp_path / "clf").exists()


def test_finished_result_needs_force(tiny_classifier, cells):
    r = invoke("train-classifier", "--images", cells, "--out", tiny_classifier[0], "-q")
    assert r.exit_code == 2 and "--force" in r.stderr


def test_unknown_config_key(cells, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\nlearning_rate: 0.1\n")
    r = invoke("train-classifier", "--images", cells, "--out", tmp_path / "clf", "--config", cfg, "-q")
    assert r.exit_code == 2 and "unknown key(s) ['learning_rate']" in r.stderr


@pytest.mark.parametrize("arch", ["not_a_model"])
def test_unknown_arch(cells, tmp_path, arch):
    r = invoke("train-classifier", "--images", cells, "--out", tmp_path / "clf", "--arch", arch, "--size", "16", "-q")
    assert r.exit_code == 2 and "unknown timm architecture 'not_a_model'" in r.stderr


def test_synthetic_command(tmp_path):
    r = invoke("synthetic", "--out", tmp_path / "c", "--n", "2", "--seed", "1", "-q")
    assert r.exit_code == 0
    assert r.stdout.strip() == str(tmp_path / "c_factors.csv")
    assert len(list((tmp_path / "c").rglob("*.ome.tif"))) == 4
