"""Saving and loading msGFM (safetensors + config.json) and the `msgfm embed` command on real GeoTIFFs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from model_fixtures import MICRO, one_thread  # noqa: F401 (autouse fixture)
from typer.testing import CliRunner

from msgfm.cli import app
from msgfm.geo.io import write_cog
from msgfm.models import create_model
from msgfm.models.hub import load_pretrained, save_pretrained
from msgfm.sensors import S2_L2A_BANDS, get_sensor

TRANSFORM = Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5300000.0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A micro model after one optimizer step (so no weight is at its initial value), saved to disk."""
    torch.manual_seed(0)
    model = create_model("msgfm_tiny", **MICRO)
    g = torch.Generator().manual_seed(0)
    batch = {"images": {"s2": torch.randn(2, 12, 32, 32, generator=g)}, "bands": {"s2": S2_L2A_BANDS}}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(batch, generator=g).loss.backward()
    opt.step()
    directory = tmp_path_factory.mktemp("model") / "pretrain"
    save_pretrained(model, directory, extra={"run": "test"})
    return model.eval(), directory


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


def write_s1(path, height: int = 40, width: int = 72, descriptions: bool = True) -> np.ndarray:
    """A real Sentinel-1 GeoTIFF (VV, VH in dB) with band descriptions, UTM 32N, 10 m."""
    rng = np.random.default_rng(0)
    db = rng.normal(-15, 4, size=(2, height, width)).astype(np.float32)
    names = ["VV", "VH"] if descriptions else None
    write_cog(path, db, crs="EPSG:32632", transform=TRANSFORM, band_names=names, blocksize=64)
    return db


def test_embed_geotiff_is_georeferenced_and_matches_the_encoder(saved, tmp_path) -> None:
    model, directory = saved
    src = tmp_path / "s1.tif"
    db = write_s1(src)
    out = tmp_path / "emb.tif"
    result = CliRunner().invoke(app, ["embed", str(src), str(out), "--model", str(directory), "--sensor", "s1"])
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as emb:
        assert emb.count == 128 and (emb.height, emb.width) == (2, 3)  # ceil(40/32), ceil(72/32)
        assert emb.crs.to_epsg() == 32632
        assert emb.transform == TRANSFORM @ Affine.scale(32)
        assert emb.tags()["sensor"] == "s1" and emb.tags()["bands"] == "VV,VH"
        values = emb.read()
    chip = torch.from_numpy(get_sensor("s1").normalise(db[:, :32, 32:64], ["VV", "VH"]))[None]
    with torch.inference_mode():
        expected = model.encoder({"s1": chip}, {"s1": ("VV", "VH")}).features["s1"][-1][0, :, 0, 0]
    np.testing.assert_allclose(values[:, 0, 1], expected.numpy(), rtol=1e-4, atol=1e-5)


def test_embed_npz_at_an_earlier_stage(saved, tmp_path) -> None:
    _, directory = saved
    src = tmp_path / "s1.tif"
    write_s1(src, descriptions=False)  # no descriptions: all of the sensor's bands in registry order
    out = tmp_path / "emb.npz"
    args = ["embed", str(src), str(out), "--model", str(directory), "--sensor", "s1", "--stage", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = np.load(out)
    assert data["embeddings"].shape == (16, 10, 18) and int(data["stride_px"]) == 4
    assert Affine.from_gdal(*data["transform"]) == TRANSFORM @ Affine.scale(4)
    assert "32632" in str(data["crs"]) or "UTM zone 32N" in str(data["crs"])


def test_embed_rejects_unknown_sensor_and_band_mismatch(saved, tmp_path) -> None:
    _, directory = saved
    src = tmp_path / "s1.tif"
    write_s1(src)
    runner = CliRunner()
    base = ["embed", str(src), str(tmp_path / "o.tif"), "--model", str(directory)]
    result = runner.invoke(app, [*base, "--sensor", "landsat"])
    assert result.exit_code == 2 and "s1.tif: unknown sensor 'landsat'" in result.output
    result = runner.invoke(app, [*base, "--sensor", "s1", "--bands", "VV"])
    assert result.exit_code == 2 and "s1.tif: the file has 2 band(s) but 1 band names" in result.output
    result = runner.invoke(app, [*base, "--sensor", "s2"])
    assert result.exit_code == 2 and "bands ['VV', 'VH'] are not bands of sensor 's2'" in result.output
    result = runner.invoke(app, base)
    assert result.exit_code == 2 and "no sensor given" in result.output
    result = runner.invoke(app, [*base, "--sensor", "s1", "--stage", "4"])
    assert result.exit_code == 2 and "stage 4 out of range" in result.output
    assert not (tmp_path / "o.tif").exists()
