"""Classifier model folders, TorchScript and pickle loading, and training on tiny data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from diffex.errors import DiffexError
from diffex.models.classifier import load_classifier
from diffex.models.classifier_train import confusion_matrix


def _x(n=3, c=2, s=16, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, c, s, s)).astype(np.float32))


def test_training_writes_a_complete_folder(tiny_classifier):
    out, clf, metrics = tiny_classifier
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "checksums.json"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["arch"] == "test_resnet" and cfg["class_names"] == ["control", "treated"]
    assert cfg["channel_names"] == ["DNA", "Actin"] and cfg["image_size"] == 16
    t = cfg["training"]
    assert t["seed"] == 0 and t["n_heldout"] == 6 and len(t["heldout"]) == 6
    assert np.array(t["confusion_matrix"]).sum() == 6
    cm = np.array(t["confusion_matrix"])
    assert metrics["heldout_accuracy"] == t["heldout_accuracy"] == cm.trace() / cm.sum()  # accuracy is the confusion matrix's


def test_save_load_identical_outputs(tiny_classifier):
    out, clf, _ = tiny_classifier
    again = load_classifier(out)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(again(x), clf(x), rtol=0, atol=0)
    assert again.info.normalization == clf.info.normalization


def test_checksum_mismatch_is_detected(tiny_classifier, tmp_path):
    out, _, _ = tiny_classifier
    bad = tmp_path / "clf"
    shutil.copytree(out, bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(DiffexError, match="model.safetensors: checksum differs"):
        load_classifier(bad)


def test_torchscript_with_sidecar(tiny_classifier, tmp_path):
    out, clf, _ = tiny_classifier
    scripted = torch.jit.trace(clf.module, _x(1))
    scripted.save(str(tmp_path / "model.pt"))
    meta = {"class_names": ["control", "treated"], "normalization": clf.info.normalization.to_dict(), "image_size": 16}
    (tmp_path / "model.json").write_text(json.dumps(meta))
    ts = load_classifier(tmp_path / "model.pt")
    assert ts.info.kind == "torchscript" and ts.info.in_channels == 2
    with torch.no_grad():
        torch.testing.assert_close(ts(_x()), clf(_x()), rtol=1e-5, atol=1e-5)


def test_torchscript_without_sidecar(tiny_classifier, tmp_path):
    _, clf, _ = tiny_classifier
    torch.jit.trace(clf.module, _x(1)).save(str(tmp_path / "model.pt"))
    with pytest.raises(DiffexError, match="model.pt: no sidecar model.json"):
        load_classifier(tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(json.dumps({"class_names": ["a", "b"]}))
    with pytest.raises(DiffexError, match="model.json: missing key 'normalization'"):
        load_classifier(tmp_path / "model.pt")


def test_pickle_only_when_trusted(tiny_classifier, tmp_path):
    _, clf, _ = tiny_classifier
    torch.save(clf.module, tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(
        json.dumps({"class_names": ["control", "treated"], "normalization": clf.info.normalization.to_dict()})
    )
    with pytest.raises(DiffexError, match="--trust-checkpoint"):
        load_classifier(tmp_path / "model.pt")
    trusted = load_classifier(tmp_path / "model.pt", trust_checkpoint=True)
    assert trusted.info.kind == "pickle"
    with torch.no_grad():
        torch.testing.assert_close(trusted(_x()), clf(_x()))


def test_bare_weights_and_bad_config(tiny_classifier, tmp_path):
    out, _, _ = tiny_classifier
    with pytest.raises(DiffexError, match="bare weights"):
        load_classifier(out / "model.safetensors")
    bad = tmp_path / "clf"
    shutil.copytree(out, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["arch"] = "no_such_net"
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "checksums.json").unlink()
    with pytest.raises(DiffexError, match="unknown timm architecture 'no_such_net'"):
        load_classifier(bad)
    (bad / "config.json").write_text("{")
    with pytest.raises(DiffexError, match="config.json: not valid JSON"):
        load_classifier(bad)


def test_refuses_to_overwrite(cells, tiny_classifier):
    from diffex.models.classifier_train import ClassifierTrainConfig, train_classifier

    out, _, _ = tiny_classifier
    with pytest.raises(DiffexError, match="pass --force"):
        train_classifier(cells, out, ClassifierTrainConfig(arch="test_resnet", size=16, epochs=1), show_progress=False)


def test_confusion_matrix():
    cm = confusion_matrix(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
