"""The facility workflow: config checks, a local end-to-end run of two experiments, a SIGKILL and resume,
and a dry run of the SLURM profile."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from diffex.errors import DiffexError
from diffex.workflow import cli_options, workflow_config

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"
TINY_EXPLAIN = {
    "steps": 3, "t_end": 999, "max_images": 16, "gradient_images": 6, "rank_images": 8, "directions_per_method": 2,
    "screen_top": 2, "max_attributes": 2, "traversal_frames": 3, "traversal_images": 1, "measure_images": 2,
    "bootstrap": 50, "min_psnr": -100.0, "batch_size": 8, "contrastive_iterations": 2, "selection_confidence": 0.5,
    "methods": ["gradient", "pca"],
}
TINY_DIFFUSION = {
    "size": 16, "steps": 4, "batch_size": 4, "checkpoint_every": 2, "gate_samples": 4, "gate_sample_steps": 3,
    "roundtrip_steps": 3, "unet": {"block_out_channels": [16, 32], "norm_num_groups": 8, "attention_max_res": 8,
                                   "attention_head_dim": 8},
}
snakemake_missing = shutil.which("snakemake") is None


def _bin(name: str) -> str:
    """The console script beside this interpreter (the one `pip install -e .[test]` made)."""
    return str(Path(sys.executable).with_name(name)) if Path(sys.executable).with_name(name).exists() else name


# ------------------------------------------------------------------------------------- config
def test_config_checks(tmp_path):
    for p in ("fov", "clf", "dm"):
        (tmp_path / p).mkdir()
    cfg = workflow_config({"experiments": {"e1": {"fields": "fov", "classifier": "clf", "diffusion": "dm",
                                                  "explain": {"method": ["gradient", "pca"]}}}}, tmp_path / "c.yaml")
    e = cfg.experiments["e1"]
    assert (e.images, e.needs_crop, e.diffusion, cfg.out) == (tmp_path / "fov", True, tmp_path / "dm", tmp_path / "results")
    assert cli_options(e.explain, {}) == "--method gradient --method pca"
    bad = [
        ({"experiments": {"e1": {"classifier": "clf"}}}, "give either 'fields'"),
        ({"experiments": {"e1": {"fields": "fov", "crops": "fov", "classifier": "clf"}}}, "not both"),
        ({"experiments": {"e1": {"fields": "missing", "classifier": "clf"}}}, r"experiments.e1.fields: .*missing does not exist"),
        ({"experiments": {"e1": {"fields": "fov", "classifier": "clf", "colour": 1}}}, r"unknown key\(s\) \['colour'\]"),
        ({"experiments": {"e1": {"fields": "fov", "classifier": "clf", "crop": {"sise": 64}}}}, r"crop: unknown option\(s\) \['sise'\]"),
        ({"experiments": {"a b": {"fields": "fov", "classifier": "clf"}}}, "experiment name 'a b'"),
        ({"experiments": {}}, "at least one experiment"),
        ({"experiment": {}}, r"unknown key\(s\) \['experiment'\]"),
    ]
    for data, message in bad:
        with pytest.raises(DiffexError, match=message):
            workflow_config(data, tmp_path / "c.yaml")


# ---------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def facility(tiny_classifier, tiny_diffusion, cells, tmp_path_factory):
    """A config with two experiments: one from fields of view (crop + train a diffusion model), one from crops."""
    from diffex.data.synthetic_fields import FieldSpec, generate_fields

    root = tmp_path_factory.mktemp("facility")
    generate_fields(root / "fov", 1, seed=5, spec=FieldSpec(size=192, cells=7, touching_pairs=1))
    (root / "explain.yaml").write_text(yaml.safe_dump(TINY_EXPLAIN))
    (root / "diffusion.yaml").write_text(yaml.safe_dump(TINY_DIFFUSION))
    config = {"out": "results", "threads": 1, "experiments": {
        "from_fields": {"fields": "fov", "crop": {"size": 48}, "classifier": str(tiny_classifier[0]),
                        "train_diffusion": {"config": "diffusion.yaml"}, "explain": {"config": "explain.yaml", "seed": 1}},
        "from_crops": {"crops": str(cells), "classifier": str(tiny_classifier[0]), "diffusion": str(tiny_diffusion[0]),
                       "explain": {"config": "explain.yaml"}},
    }}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def _command(root: Path, *extra: str) -> tuple[list[str], dict]:
    cmd = [_bin("snakemake"), "-s", str(PIPELINES / "Snakefile"), "--configfile", str(root / "config.yaml"),
           "--profile", str(PIPELINES / "profiles" / "local"), "--cores", "2", *extra]
    return cmd, dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def _snakemake(root: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd, env = _command(root, *extra)
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)


def _popen(root: Path) -> subprocess.Popen:
    cmd, env = _command(root)
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.mark.skipif(snakemake_missing, reason="snakemake not installed (pip install -e .[test] installs it)")
def test_workflow_end_to_end_and_resume_after_sigkill(facility, tmp_path):
    res = _snakemake(facility)
    assert res.returncode == 0, res.stderr[-4000:]
    out = facility / "results"
    for name in ("from_fields", "from_crops"):
        assert (out / name / "experiment" / "attributes.csv").is_file()
        assert (out / "reports" / f"{name}.html").is_file()
        assert (out / "logs" / name / "explain.log").is_file() and (out / "benchmarks" / name / "explain.tsv").is_file()
    assert (out / "from_fields" / "crops" / "crops.csv").is_file() and (out / "from_fields" / "diffusion" / "diffex.json").is_file()
    index = (out / "index.html").read_text()
    assert 'href="from_fields/experiment/report.html"' in index and 'href="from_crops/experiment/report.html"' in index
    reference = {n: (out / n / "experiment" / "attributes.csv").read_bytes() for n in ("from_fields", "from_crops")}

    # a second call finds everything finished: nothing is recomputed
    again = _snakemake(facility)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # a fresh copy of the inputs, killed (SIGKILL, whole process group) while explain runs, then run again
    fresh = tmp_path / "facility"
    shutil.copytree(facility, fresh, ignore=shutil.ignore_patterns("results", ".snakemake"))
    proc = _popen(fresh)
    inversions = fresh / "results" / "from_crops" / "experiment" / "cache" / "inversions"
    deadline = time.time() + 600
    while time.time() < deadline and not (inversions.is_dir() and any(inversions.iterdir())):
        assert proc.poll() is None, "the workflow ended before it could be interrupted"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (fresh / "results" / "index.html").exists()
    unlock = _snakemake(fresh, "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    res = _snakemake(fresh)
    assert res.returncode == 0, res.stderr[-4000:]
    for name, data in reference.items():
        assert (fresh / "results" / name / "experiment" / "attributes.csv").read_bytes() == data, name


@pytest.mark.skipif(snakemake_missing, reason="snakemake not installed (pip install -e .[test] installs it)")
def test_a_failed_experiment_does_not_stop_the_others(facility, tmp_path):
    root = tmp_path / "facility"
    shutil.copytree(facility, root, ignore=shutil.ignore_patterns("results", ".snakemake"))
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["experiments"]["from_crops"]["explain"]["method"] = ["no-such-method"]
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    res = _snakemake(root)
    assert res.returncode != 0
    assert "unknown direction method" in (root / "results" / "logs" / "from_crops" / "explain.log").read_text().lower()
    assert (root / "results" / "from_fields" / "experiment" / "attributes.csv").is_file()  # kept going
    index = (root / "results" / "index.html").read_text()  # made by the onerror handler
    assert "from_fields/experiment/report.html" in index and "from_crops" not in index


@pytest.mark.skipif(snakemake_missing or shutil.which("sbatch") is not None, reason="snakemake missing, or a real SLURM here")
def test_slurm_profile_dry_run(facility):
    config = yaml.safe_load((facility / "config.yaml").read_text())
    config.update(gpu=1, slurm={"account": "lab42", "partition": "cpu", "gpu_partition": "gpu"})
    path = facility / "slurm.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [_bin("snakemake"), "-s", str(PIPELINES / "Snakefile"), "--configfile", str(path), "--profile",
           str(PIPELINES / "profiles" / "slurm"), "--dry-run", "--forceall"]
    res = subprocess.run(cmd, cwd=facility, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    text = res.stdout + res.stderr
    assert "slurm_account=lab42" in text and "slurm_partition=gpu" in text and "gpu=1" in text
    assert "rule crop:" in text and "rule train_diffusion:" in text and "rule index:" in text
