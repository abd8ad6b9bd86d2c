"""Saving and loading msGFM (safetensors + config.json); `msgfm embed` is tested in test_embed.py."""

from __future__ import annotations

import json

import pytest
import torch
from affine import Affine
from model_fixtures import MICRO, one_thread  # noqa: F401 (autouse fixture)

from msgfm.models import create_model
from msgfm.models.hub import load_pretrained, save_pretrained
from msgfm.sensors import get_sensor

TRANSFORM = Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5300000.0)


def test_save_load_gives_identical_outputs(saved) -> None:
    model, directory = saved
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_pretrained(directory)
    assert loaded.config == model.config and not loaded.training
    g = torch.Generator().manual_seed(1)
    images = {"s1": torch.randn(2, 2, 32, 32, generator=g), "rgb": torch.randn(2, 3, 32, 32, generator=g)}
    batch = {"images": images, "bands": {"s1": ("VV", "VH"), "rgb": ("R", "G", "B")}}
    masks = model.generate_masks(images, g)
    a, b = model(batch, masks=masks), loaded(batch, masks=masks)
    for sensor in images:
        assert torch.equal(a.pred[sensor], b.pred[sensor])
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_config_json_records_model_sensors_and_code(saved) -> None:
    model, directory = saved
    config = json.loads((directory / "config.json").read_text())
    assert config["format"] == "msgfm-pretrained" and config["model"]["depths"] == [1, 1, 2, 2]
    s2 = config["sensors"]["s2"]["bands"]
    assert [b["name"] for b in s2] == list(get_sensor("s2").band_names)
    assert s2[1]["mean"] == get_sensor("s2").band("B02").mean
    assert set(config["code_version"]) == {"msgfm", "torch", "timm"} and config["extra"] == {"run": "test"}
    assert len(config["weights_sha256"]) == 64


def test_load_errors_name_the_file(saved, tmp_path) -> None:
    _, directory = saved
    with pytest.raises(FileNotFoundError, match="not an msGFM model directory"):
        load_pretrained(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad.config\.json: not valid JSON"):
        load_pretrained(bad)
    # weights of another architecture do not load silently
    other = tmp_path / "other"
    save_pretrained(create_model("msgfm_tiny", **{**MICRO, "embed_dim": 8}), other)
    (other / "config.json").write_text((directory / "config.json").read_text())
    with pytest.raises(ValueError, match="model.safetensors: cannot load weights"):
        load_pretrained(other)
