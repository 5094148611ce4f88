"""The bad-input corpus (tests/bad_inputs/make_corpus.py): every case exits with a clear error naming the
file and the problem, and leaves no finished output changed and nothing half-written."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diffex.cli import app

sys.path.insert(0, str(Path(__file__).resolve().parent / "bad_inputs"))
from make_corpus import make_corpus  # noqa: E402

CASE_IDS = [
    "truncated-tiff", "corrupt-png", "corrupt-jpeg", "not-an-image-tiff", "nan-pixels", "inf-pixels", "constant-image",
    "z-stack", "wrong-dtype", "mixed-sizes", "wrong-channel-count", "empty-folder", "one-condition", "one-image-condition",
    "train-classifier-one-condition", "manifest-missing-column", "manifest-unknown-path", "manifest-duplicate-path",
    "manifest-escapes-folder", "manifest-not-utf8", "labels-wrong-shape", "labels-no-objects", "labels-folder-missing",
    "unknown-nuclear-channel", "corrupt-safetensors", "models-disagree", "pickle-untrusted", "yaml-unknown-key",
    "yaml-wrong-type", "yaml-not-yaml", "train-diffusion-yaml", "inspect-missing-model", "out-is-a-file",
    "finished-experiment", "read-only-out", "disk-full", "workflow-missing-experiment-input",
]
OUTPUTS = ("results.json", "attributes.csv", "report.html", "crops.csv", "diffex.json", "model.safetensors")


@pytest.fixture(scope="module")
def corpus(tiny_classifier, tiny_diffusion, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    cases = {c.id: c for c in make_corpus(root, tiny_classifier[0], tiny_diffusion[0])}
    assert sorted(cases) == sorted(CASE_IDS)
    return root, cases, str(tiny_classifier[0]), str(tiny_diffusion[0])


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or 'mount failed'}); needs root with CAP_SYS_ADMIN")


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_corpus_has_at_least_30_cases_over_every_command():
    assert len(CASE_IDS) >= 30


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_input(corpus, case_id):
    root, cases, clf, dm = corpus
    case = cases[case_id]
    where = root / case.id
    where.mkdir(exist_ok=True)
    args = [a.format(case=where, clf=clf, dm=dm) for a in case.command]
    mounted = None
    if "tmpfs-ro" in case.needs:
        mounted = where / "mnt"
        _mount_tmpfs(mounted, "ro,size=1m")
    if "tmpfs-tiny" in case.needs:
        mounted = where / "mnt"
        _mount_tmpfs(mounted, "size=64k")
    before = _snapshot(where / case.finished) if case.finished and (where / case.finished).is_dir() else None
    before_file = (where / case.finished).read_bytes() if case.finished and (where / case.finished).is_file() else None
    try:
        if case.command[0] == "workflow":
            cmd = [str(Path(sys.executable).with_name("snakemake")), "-s", str(Path(__file__).resolve().parents[1] / "pipelines" / "Snakefile"),
                   "--configfile", args[1], "--dry-run"]
            if not Path(cmd[0]).exists():
                pytest.skip("snakemake not installed (pip install -e .[test] installs it)")
            res = subprocess.run(cmd, cwd=where, capture_output=True, text=True)
            code, err = res.returncode, res.stdout + res.stderr
        else:
            res = CliRunner().invoke(app, [*args, "-q"])
            code, err = res.exit_code, res.stderr
            assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
        assert code == case.code, f"exit {code}, expected {case.code}: {err[-2000:]}"
        assert re.search(case.message, err), f"{case.message!r} not in: {err[-2000:]}"
        if case.command[0] != "workflow":
            assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err  # one line, no traceback
        # nothing half-written, no finished output changed
        leftovers = [p for p in where.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".old")]
        assert leftovers == []
        if before is not None:
            assert _snapshot(where / case.finished) == before
        elif before_file is not None:
            assert (where / case.finished).read_bytes() == before_file
        else:
            made = [p for p in where.rglob("*") if p.name in OUTPUTS and "out" in p.relative_to(where).parts[:1]]
            assert made == [], made
    finally:
        if mounted is not None:
            subprocess.run(["umount", str(mounted)], check=False)
            shutil.rmtree(mounted, ignore_errors=True)
