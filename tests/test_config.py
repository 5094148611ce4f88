"""Frozen config dataclasses: unknown keys are errors, values are converted."""

from __future__ import annotations

import pytest

from diffex.config import from_dict, load_yaml, to_dict
from diffex.errors import DiffexError
from diffex.models.classifier_train import ClassifierTrainConfig
from diffex.models.classifier_train import config_from_yaml_dict as clf_cfg
from diffex.models.diffusion_train import DiffusionTrainConfig
from diffex.models.diffusion_train import config_from_yaml_dict as dm_cfg


def test_nested_round_trip():
    cfg = dm_cfg({"size": 16, "unet": {"block_out_channels": [8, 16], "norm_num_groups": 8}})
    assert cfg.unet.block_out_channels == (8, 16)
    assert from_dict(DiffusionTrainConfig, to_dict(cfg)) == cfg


def test_unknown_keys_are_errors_at_every_level():
    with pytest.raises(DiffexError, match=r"unknown key\(s\) \['epochz'\]"):
        clf_cfg({"epochz": 3})
    with pytest.raises(DiffexError, match=r"unet: unknown key\(s\) \['channels'\]"):
        dm_cfg({"unet": {"channels": [1]}})


def test_type_errors_and_validation():
    with pytest.raises(DiffexError, match="epochs: expected int"):
        clf_cfg({"epochs": "many"})
    with pytest.raises(DiffexError, match="augment must be one of"):
        ClassifierTrainConfig(augment="mixup")


def test_frozen():
    with pytest.raises(Exception):
        ClassifierTrainConfig().epochs = 3  # type: ignore[misc]


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("size: [1,\n")
    with pytest.raises(DiffexError, match="c.yaml: not valid YAML"):
        load_yaml(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(DiffexError, match="must be a mapping"):
        load_yaml(bad)
