"""`msgfm predict`: fine-tuned segmentation and cloud-removal heads on GeoTIFFs, tiled with centre-crop stitching."""

from __future__ import annotations

import numpy as np
import pystac
import pytest
import rasterio
import torch
from affine import Affine
from model_fixtures import MICRO, one_thread  # noqa: F401 (autouse fixture)
from typer.testing import CliRunner

from msgfm.architectures import MSGFMConfig
from msgfm.cli import app
from msgfm.datasets.tasks import get_task
from msgfm.geo.io import write_cog
from msgfm.inference.predict_raster import predict_geotiff
from msgfm.models.encoder import MSGFMEncoder
from msgfm.models.finetuned import save_best
from msgfm.models.heads import build_task_model
from msgfm.sensors import S2_L2A_BANDS, get_sensor

FINE = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0)
S10 = Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5300000.0)
CODES = [10, 40, 50]
WHEN = "2024-06-01T10:00:00"


def save_task_model(directory, task: str, seed: int = 0):
    """A fine-tuned model of `task` as `msgfm finetune` saves it (best.json + safetensors), weights perturbed."""
    torch.manual_seed(seed)
    encoder = MSGFMEncoder(MSGFMConfig(name="msgfm_tiny", **MICRO))
    model = build_task_model(get_task(task), encoder, len(CODES))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the image head's zero-initialised output layer predicts something
    record = {"task": task, "variant": "pretrained", "class_codes": CODES, "encoder_config": encoder.config.to_dict()}
    save_best(directory, model, model.state_dict(), record)
    return model.eval()


def write(path, pixels: np.ndarray, transform: Affine, names) -> np.ndarray:
    """A GeoTIFF with band names and a datetime tag."""
    write_cog(path, pixels, crs="EPSG:32632", transform=transform, band_names=names, tags={"datetime": WHEN})
    return pixels


def direct(model, windows: dict[str, np.ndarray], bands: dict[str, tuple[str, ...]]) -> np.ndarray:
    """The model on one window per sensor (physical units, normalised like predict does), as numpy."""
    images = {s: torch.from_numpy(get_sensor(s).normalise(x[None], bands[s])) for s, x in windows.items()}
    with torch.inference_mode():
        return model(images, bands)[0].numpy()


@pytest.fixture(scope="module")
def segmentation(tmp_path_factory):
    directory = tmp_path_factory.mktemp("seg") / "segmentation" / "pretrained"
    return save_task_model(directory, "segmentation"), directory


def rgb_dsm(tmp_path, height: int, width: int):
    """RGB (DN) and DSM (m) GeoTIFFs on one fine grid."""
    rng = np.random.default_rng(1)
    rgb = write(tmp_path / "rgb.tif", rng.uniform(0, 255, (3, height, width)).astype(np.float32), FINE, ["R", "G", "B"])
    dsm = write(tmp_path / "dsm.tif", rng.normal(300, 8, (1, height, width)).astype(np.float32), FINE, ["height"])
    return rgb, dsm


def test_segmentation_is_georeferenced_and_tiled_equals_untiled_in_the_interior(segmentation, tmp_path) -> None:
    model, directory = segmentation
    rgb, dsm = rgb_dsm(tmp_path, 70, 90)
    out = tmp_path / "classes.tif"
    args = ["predict", str(out), "--model", str(directory), "--device", "cpu"]
    result = CliRunner().invoke(
        app, [*args, "--input", f"rgb={tmp_path / 'rgb.tif'}", "--input", f"dsm={tmp_path / 'dsm.tif'}"]
    )
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as pred, rasterio.open(tmp_path / "rgb.tif") as src:
        assert (pred.crs, pred.transform, pred.shape) == (src.crs, src.transform, src.shape)
        assert pred.count == 1 and pred.dtypes[0] == "uint8" and pred.tags()["task"] == "segmentation"
        classes = pred.read(1)
    assert set(np.unique(classes)) <= set(CODES) and len(np.unique(classes)) > 1
    bands = {"rgb": ("R", "G", "B"), "dsm": ("height",)}
    # chip 32: windows start every 16 px at -8; the one at (24, 40) keeps its pixels 8..24, output 32..48 x 48..64
    logits = direct(model, {"rgb": rgb[:, 24:56, 40:72], "dsm": dsm[:, 24:56, 40:72]}, bands)
    np.testing.assert_array_equal(classes[32:48, 48:64], np.asarray(CODES)[logits.argmax(0)][8:24, 8:24])
    item = pystac.Item.from_file(str(tmp_path / "classes.tif.item.json"))
    assert item.properties["msgfm:task"] == "segmentation" and item.properties["proj:shape"] == [70, 90]


def test_cloud_removal_in_physical_units_matches_the_model_on_a_single_chip(tmp_path) -> None:
    """The model run untiled on one chip-sized crop: the tiled output is that output's centre, on the same pixels."""
    directory = tmp_path / "cloud_removal" / "pretrained"
    model = save_task_model(directory, "cloud_removal", seed=1)
    rng = np.random.default_rng(2)
    s2 = write(tmp_path / "s2.tif", rng.uniform(200, 3000, (12, 48, 48)).astype(np.float32), S10, list(S2_L2A_BANDS))
    s1 = write(tmp_path / "s1.tif", rng.normal(-15, 4, (2, 48, 48)).astype(np.float32), S10, ["VV", "VH"])
    out = predict_geotiff({"s2": tmp_path / "s2.tif", "s1": tmp_path / "s1.tif"}, directory, tmp_path / "clear.tif")
    with rasterio.open(out) as pred:
        assert pred.descriptions == S2_L2A_BANDS and pred.dtypes[0] == "float32"
        assert pred.transform == S10 and pred.crs.to_epsg() == 32632
        clear = pred.read()
    expected = get_sensor("s2").denormalise(
        direct(model, {"s2": s2[:, 8:40, 8:40], "s1": s1[:, 8:40, 8:40]}, {"s2": S2_L2A_BANDS, "s1": ("VV", "VH")}),
        S2_L2A_BANDS,
    )
    # windows start every 16 px at -8: the one at 8 keeps its pixels 8..24, which are output pixels 16..32
    np.testing.assert_allclose(clear[:, 16:32, 16:32], expected[:, 8:24, 8:24], rtol=1e-5, atol=1e-3)
    assert not np.allclose(clear, s2, atol=1.0)  # the head changed the cloudy input


def test_predict_refuses_bad_inputs_with_clear_messages(segmentation, tmp_path) -> None:
    _, directory = segmentation
    rgb_dsm(tmp_path, 40, 40)
    write(tmp_path / "shifted.tif", np.zeros((1, 40, 40), np.float32), FINE @ Affine.translation(3, 0), ["height"])
    runner = CliRunner()
    base = ["predict", str(tmp_path / "o.tif"), "--model", str(directory)]
    cases = [
        (
            ["--input", f"rgb={tmp_path / 'rgb.tif'}", "--input", f"dsm={tmp_path / 'shifted.tif'}"],
            "is not on the grid of",
        ),
        (["--input", f"s2={tmp_path / 'rgb.tif'}"], "task segmentation takes --input for sensors ['rgb', 'dsm']"),
        (["--input", "rgb"], "--input takes SENSOR=FILE"),
        (["--input", f"rgb={tmp_path / 'missing.tif'}"], "missing.tif: cannot read raster"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2 and message in result.output, (extra, result.output)
    result = runner.invoke(app, ["predict", str(tmp_path / "o.tif"), "--model", str(tmp_path), "--input", "rgb=x.tif"])
    assert result.exit_code == 2 and "no fine-tuned checkpoint" in result.output
    classifier = tmp_path / "classification" / "pretrained"
    save_task_model(classifier, "classification")
    result = runner.invoke(app, ["predict", str(tmp_path / "o.tif"), "--model", str(classifier), "--input", "s2=x.tif"])
    assert result.exit_code == 2 and "one label set per chip, not a raster" in result.output
    assert not list(tmp_path.glob("o.*"))
