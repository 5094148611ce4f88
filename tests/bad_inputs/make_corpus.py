"""The bad-input corpus: every case is generated here, none is stored as a binary blob.

Each case is a directory with the inputs one diffex command must refuse, and an entry in
``cases.json``: the command line (with ``{case}``, ``{clf}``, ``{dm}`` placeholders), the exit
code, a regular expression the error must match (it names the file and the problem), and
optionally a finished output that must stay byte-identical. ``tests/test_bad_inputs.py`` runs them.

    python tests/bad_inputs/make_corpus.py OUT_DIR --classifier CLF --diffusion DM
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

CLI = ("crop", "explain", "train-classifier", "train-diffusion", "inspect", "workflow")


@dataclass
class Case:
    id: str
    command: list[str]  # argv after `diffex` (or `snakemake` for "workflow"); placeholders {case} {clf} {dm}
    message: str  # regex over the error output; it names the offending file
    code: int = 2
    finished: str | None = None  # a finished output (relative to the case) that must not change
    needs: list[str] = field(default_factory=list)  # "tmpfs" when the case mounts a tmpfs


def _cell(rng: np.random.Generator, size: int = 64, channels: int = 2, dtype=np.uint16) -> np.ndarray:
    """A plausible (C, Y, X) image: a bright disc on noise."""
    yy, xx = np.mgrid[0:size, 0:size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2) * 3000.0
    return (disc[None] + rng.normal(500, 50, (channels, size, size))).clip(0, 60000).astype(dtype)


def _good_set(root: Path, rng, n: int = 4, size: int = 64, channels: int = 2) -> Path:
    for cond in ("control", "treated"):
        (root / cond).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            tifffile.imwrite(root / cond / f"{cond}_{i}.tif", _cell(rng, size, channels), photometric="minisblack")
    return root


def _manifest(path: Path, rows: list[list[str]], header=("path", "condition"), encoding="utf-8") -> None:
    with open(path, "w", newline="", encoding=encoding) as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _image_cases(root: Path, rng) -> list[Case]:
    """Broken image files, each inside an otherwise good set, for explain and crop."""
    cases = []
    good = _cell(rng)
    buf = root / "_good.tif"
    tifffile.imwrite(buf, good)
    png = root / "_good.png"
    Image.fromarray((good[0] // 256).astype(np.uint8)).save(png)
    jpg = root / "_good.jpg"
    Image.fromarray((good[0] // 256).astype(np.uint8)).save(jpg)
    broken = {
        "truncated-tiff": ("bad.tif", buf.read_bytes()[: len(buf.read_bytes()) // 3], "cannot|truncated|corrupt"),
        "corrupt-png": ("bad.png", png.read_bytes()[:40] + b"\x00" * 64, "cannot|corrupt|truncated"),
        "corrupt-jpeg": ("bad.jpg", jpg.read_bytes()[:30], "cannot|corrupt|truncated"),
        "not-an-image-tiff": ("bad.tif", b"this is text, not a TIFF", "cannot|not a TIFF|corrupt"),
    }
    for name, (fname, data, msg) in broken.items():
        d = _good_set(root / name / "images", rng)
        (d / "treated" / fname).write_bytes(data)
        cases.append(Case(name, ["explain", "--classifier", "{clf}", "--diffusion", "{dm}", "--images", "{case}/images",
                                 "--out", "{case}/out", "--device", "cpu"], rf"bad\.(tif|png|jpg): .*({msg})"))
    arrays = {
        "nan-pixels": (np.full((2, 64, 64), np.nan, np.float32), "NaN or infinite"),
        "inf-pixels": (np.where(np.eye(64, dtype=bool), np.inf, 1.0).astype(np.float32)[None].repeat(2, 0), "NaN or infinite"),
        "constant-image": (np.full((2, 64, 64), 700, np.uint16), "constant image"),
        "z-stack": (rng.integers(0, 4000, (5, 6, 64, 64)).astype(np.uint16), "Z|T|dimension|3-D|4-D"),
        "wrong-dtype": (rng.integers(0, 4000, (2, 64, 64)).astype(np.int32), "unsupported pixel type int32"),
    }
    for name, (arr, msg) in arrays.items():
        d = _good_set(root / name / "images", rng)
        tifffile.imwrite(d / "treated" / "bad.tif", arr)
        cases.append(Case(name, ["explain", "--classifier", "{clf}", "--diffusion", "{dm}", "--images", "{case}/images",
                                 "--out", "{case}/out", "--device", "cpu"], rf"bad\.tif: .*({msg})"))
    d = _good_set(root / "mixed-sizes" / "images", rng)
    tifffile.imwrite(d / "treated" / "big.tif", _cell(rng, size=80))
    cases.append(Case("mixed-sizes", ["explain", "--classifier", "{clf}", "--diffusion", "{dm}", "--images", "{case}/images",
                                      "--out", "{case}/out", "--device", "cpu"], r"big\.tif: .*(80|size)"))
    d = _good_set(root / "wrong-channel-count" / "images", rng, channels=3)
    cases.append(Case("wrong-channel-count", ["explain", "--classifier", "{clf}", "--diffusion", "{dm}", "--images",
                                              "{case}/images", "--out", "{case}/out", "--device", "cpu"], r"images.*: .*channel"))
    return cases


def _folder_cases(root: Path, rng) -> list[Case]:
    """Empty folders, a single condition, a condition with one image."""
    (root / "empty-folder" / "images").mkdir(parents=True)
    one = _good_set(root / "one-condition" / "images", rng)
    shutil.rmtree(one / "treated")
    single = _good_set(root / "one-image-condition" / "images", rng)
    for p in sorted((single / "treated").iterdir())[1:]:
        p.unlink()
    explain = ["explain", "--classifier", "{clf}", "--diffusion", "{dm}", "--images", "{case}/images", "--out", "{case}/out", "--device", "cpu"]
    return [
        Case("empty-folder", explain, r"empty-folder/images: no condition subfolders"),
        Case("one-condition", explain, r"one-condition/images: .*(one condition|at least 2|two conditions)"),
        Case("one-image-condition", explain, r"one-image-condition/images: .*treated.*(1 image|one image|at least)"),
        Case("train-classifier-one-condition", ["train-classifier", "--images", "{case}/../one-condition/images", "--out",
                                                "{case}/out", "--arch", "test_resnet", "--epochs", "1", "--size", "16"],
             r"one-condition/images: .*(one condition|at least 2|two conditions)"),
    ]


def _manifest_cases(root: Path, rng) -> list[Case]:
    cases = []
    explain = ["explain", "--classifier", "{clf}", "--diffusion", "{dm}", "--images", "{case}/m.csv", "--out", "{case}/out", "--device", "cpu"]
    specs = {
        "manifest-missing-column": (lambda d: _manifest(d / "m.csv", [["control/control_0.tif"]], header=("path",)), r"m\.csv: manifest lacks column"),
        "manifest-unknown-path": (lambda d: _manifest(d / "m.csv", [["control/control_0.tif", "control"], ["nope.tif", "treated"]]),
                                  r"m\.csv: line 3: image .*nope\.tif does not exist"),
        "manifest-duplicate-path": (lambda d: _manifest(d / "m.csv", [["control/control_0.tif", "control"], ["control/control_0.tif", "treated"]]),
                                    r"m\.csv: line 3: .*control_0\.tif.*(twice|duplicate|already)"),
        "manifest-escapes-folder": (lambda d: _manifest(d / "m.csv", [["control/control_0.tif", "control"], ["../outside.tif", "treated"]]),
                                    r"m\.csv: line 3: .*outside\.tif.*(outside|escapes)"),
        "manifest-not-utf8": (lambda d: _manifest(d / "m.csv", [["control/contrôle_0.tif", "control"]], encoding="latin-1"),
                              r"m\.csv: .*(UTF-8|utf-8|decode)"),
    }
    for name, (build, msg) in specs.items():
        d = _good_set(root / name, rng)
        tifffile.imwrite(root / "outside.tif", _cell(rng))
        build(d)
        cases.append(Case(name, explain, msg))
    return cases


def _label_cases(root: Path, rng) -> list[Case]:
    cases = []
    for name, labels, msg in (("labels-wrong-shape", np.ones((10, 10), np.uint16), r"labels/control_0\.tif: label image is 10 x 10 px"),
                              ("labels-no-objects", np.zeros((64, 64), np.uint16), r"labels/control_0\.tif: label image has no objects")):
        d = _good_set(root / name / "fields", rng, n=1)
        (root / name / "labels").mkdir()
        for cond in ("control", "treated"):
            tifffile.imwrite(root / name / "labels" / f"{cond}_0.tif", labels)
        cases.append(Case(name, ["crop", "--images", str(d), "--out", "{case}/out", "--labels", "{case}/labels",
                                 "--nuclear-channel", "0"], msg))
    d = _good_set(root / "labels-folder-missing" / "fields", rng, n=1)
    cases.append(Case("labels-folder-missing", ["crop", "--images", str(d), "--out", "{case}/out", "--labels", "{case}/nope"],
                      r"labels-folder-missing/nope: label folder does not exist"))
    d = _good_set(root / "unknown-nuclear-channel" / "fields", rng, n=1)
    cases.append(Case("unknown-nuclear-channel", ["crop", "--images", str(d), "--out", "{case}/out", "--nuclear-channel", "GFP"],
                      r"control_0\.tif: no channel 'GFP'"))
    return cases


def _model_cases(root: Path, rng, clf: Path, dm: Path) -> list[Case]:
    """Corrupted or mismatched models, pickles, configs."""
    import torch

    cases = []
    images = _good_set(root / "_cells", rng)
    explain_with = lambda c, d: ["explain", "--classifier", c, "--diffusion", d, "--images", str(images), "--out", "{case}/out", "--device", "cpu"]  # noqa: E731
    bad = root / "corrupt-safetensors" / "clf"
    shutil.copytree(clf, bad)
    blob = bytearray((bad / "model.safetensors").read_bytes())
    blob[-10] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(blob))
    cases.append(Case("corrupt-safetensors", explain_with("{case}/clf", "{dm}"), r"model\.safetensors: .*(checksum|differs)"))
    mism = root / "models-disagree" / "dm"
    shutil.copytree(dm, mism)
    info = json.loads((mism / "diffex.json").read_text())
    info["channel_names"] = ["GFP", "RFP"]
    (mism / "diffex.json").write_text(json.dumps(info))
    (mism / "checksums.json").unlink()  # a hand-edited folder without a checksum list: nothing to verify
    cases.append(Case("models-disagree", explain_with("{clf}", "{case}/dm"), r"(dm|clf).*(channel|GFP)"))
    pick = root / "pickle-untrusted"
    pick.mkdir()
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(2)), pick / "model.pt")
    (pick / "model.json").write_text(json.dumps({"class_names": ["control", "treated"], "normalization": {"low": [0, 0], "high": [4000, 4000]}}))
    cases.append(Case("pickle-untrusted", explain_with("{case}/model.pt", "{dm}"), r"model\.pt: .*--trust-checkpoint"))
    for name, text, msg in (("yaml-unknown-key", "steps: 3\ncolour: blue\n", r"exp\.yaml.*unknown key\(s\) \['colour'\]"),
                            ("yaml-wrong-type", "steps: many\n", r"exp\.yaml.*steps"),
                            ("yaml-not-yaml", "steps: [3\n", r"exp\.yaml: not valid YAML")):
        (root / name).mkdir()
        (root / name / "exp.yaml").write_text(text)
        cases.append(Case(name, explain_with("{clf}", "{dm}") + ["--config", "{case}/exp.yaml"], msg))
    (root / "train-diffusion-yaml").mkdir()
    (root / "train-diffusion-yaml" / "t.yaml").write_text("steps: 2\nlearning_rate: 1\n")
    cases.append(Case("train-diffusion-yaml", ["train-diffusion", "--images", str(images), "--out", "{case}/out", "--config",
                                               "{case}/t.yaml"], r"t\.yaml.*unknown key\(s\) \['learning_rate'\]"))
    (root / "inspect-missing-model").mkdir()
    cases.append(Case("inspect-missing-model", ["inspect", "--classifier", "{case}/nothing", "--images", str(images)],
                      r"inspect-missing-model/nothing: .*(no such|does not exist|not found)"))
    return cases


def _output_cases(root: Path, rng) -> list[Case]:
    images = root / "_cells"
    explain = ["explain", "--classifier", "{clf}", "--diffusion", "{dm}", "--images", str(images), "--device", "cpu"]
    (root / "out-is-a-file").mkdir()
    (root / "out-is-a-file" / "out").write_text("a file")
    fin = root / "finished-experiment" / "out"
    fin.mkdir(parents=True)
    (fin / "results.json").write_text('{"finished": true}')
    ro, full = root / "read-only-out", root / "disk-full"
    ro.mkdir()
    full.mkdir()
    return [
        Case("out-is-a-file", [*explain, "--out", "{case}/out"], r"out-is-a-file/out: is a file, not a folder", finished="out"),
        Case("finished-experiment", [*explain, "--out", "{case}/out"], r"finished-experiment/out: .*--force", finished="out/results.json"),
        Case("read-only-out", ["crop", "--images", str(root / "labels-folder-missing" / "fields"), "--out", "{case}/mnt/out",
                               "--nuclear-channel", "0"], r"read-only-out/mnt.*(read-only|Read-only|cannot write|Permission)",
             needs=["tmpfs-ro"]),
        Case("disk-full", ["synthetic", "--out", "{case}/mnt/cells", "--n", "200"], r"disk-full/mnt.*(No space|disk is full|full)",
             needs=["tmpfs-tiny"]),
    ]


def _workflow_cases(root: Path, clf: Path) -> list[Case]:
    d = root / "workflow-missing-experiment-input"
    d.mkdir()
    (d / "config.yaml").write_text(json.dumps({"experiments": {"e1": {"crops": "no-such-folder", "classifier": str(clf)}}}))
    return [Case("workflow-missing-experiment-input", ["workflow", "{case}/config.yaml"],
                 r"config\.yaml: experiments\.e1\.crops: .*no-such-folder does not exist", code=1)]


def make_corpus(root: str | Path, clf: str | Path, dm: str | Path) -> list[Case]:
    """Write every case under ``root``; returns the cases (also written to ``root/cases.json``)."""
    root, clf, dm = Path(root), Path(clf), Path(dm)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    cases = (_image_cases(root, rng) + _folder_cases(root, rng) + _manifest_cases(root, rng) + _label_cases(root, rng)
             + _model_cases(root, rng, clf, dm) + _output_cases(root, rng) + _workflow_cases(root, clf))
    assert len({c.id for c in cases}) == len(cases)
    (root / "cases.json").write_text(json.dumps([asdict(c) for c in cases], indent=1))
    return cases


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--diffusion", required=True)
    a = ap.parse_args()
    print(f"{len(make_corpus(a.out, a.classifier, a.diffusion))} cases in {a.out}", file=sys.stderr)
