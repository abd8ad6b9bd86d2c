"""Adding a sensor after pretraining: the WorldView registry entries, the wavelength-nearest embedding and the
grown encoder (msgfm.sensors.ADDED_SENSORS, msgfm.models.patch_embed, msgfm.models.extend)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from msgfm.architectures import MSGFMConfig
from msgfm.datasets.benchmarks.spacenet import MS_BAND_NAMES
from msgfm.models import create_model
from msgfm.models.extend import add_sensors, addable
from msgfm.models.finetuned import rebuild_task_model
from msgfm.models.patch_embed import nearest_bands
from msgfm.sensors import ADDED_SENSORS, SENSORS, WORLDVIEW_MS, Band, get_sensor, register_sensor

PRETRAINED = ("s1", "s2", "rgb", "dsm")


def test_worldview_sensors_are_registered_beside_the_four_pretraining_ones() -> None:
    assert set(SENSORS) == set(PRETRAINED) and set(ADDED_SENSORS) == {"wv_pan", "wv_ms"}
    ms = get_sensor("wv_ms")
    assert ms.band_names == MS_BAND_NAMES[8] == WORLDVIEW_MS.band_names
    centres = [b.wavelength_nm for b in ms.bands]
    assert centres == sorted(centres) and 400 < centres[0] < 450 and 860 < centres[-1] < 1040
    assert 450 < get_sensor("wv_pan").band("PAN").wavelength_nm < 800
    assert MSGFMConfig().sensors == PRETRAINED  # the default model is still the four-sensor one
    assert MSGFMConfig(sensors=(*PRETRAINED, "wv_ms")).sensors[-1] == "wv_ms"


def test_nearest_bands_pick_the_closest_centre_wavelength() -> None:
    chosen = nearest_bands("wv_ms", PRETRAINED)
    assert chosen == {
        "Coastal": ("s2", "B01"),  # 425 nm: B01 443
        "Blue": ("s2", "B02"),  # 480: B02 490 before RGB's B 465
        "Green": ("rgb", "G"),  # 545: G 555 before B03 560
        "Yellow": ("rgb", "R"),  # 605: R 640 before B03 560
        "Red": ("s2", "B04"),
        "RedEdge": ("s2", "B06"),
        "NIR1": ("s2", "B08"),
        "NIR2": ("s2", "B09"),
    }
    assert nearest_bands("wv_pan", PRETRAINED) == {"PAN": ("rgb", "R")}
    assert nearest_bands("wv_pan", ("s2",)) == {"PAN": ("s2", "B04")}  # an S2-only encoder lends S2 bands
    with pytest.raises(ValueError, match="none of the donor sensors"):
        nearest_bands("wv_pan", ("dsm",))


def _encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("msgfm_tiny", chip_px=32).encoder.eval()


def test_grown_encoder_keeps_the_pretrained_sensors_and_borrows_for_the_new_ones() -> None:
    encoder = _encoder()
    grown = add_sensors(encoder, addable(["wv_ms", "wv_pan", "s1"], encoder)).eval()
    assert grown.sensors == (*PRETRAINED, "wv_ms", "wv_pan")
    image = {"s2": torch.randn(2, 13, 32, 32)}
    bands = {"s2": get_sensor("s2").band_names}
    with torch.no_grad():
        before, after = encoder(image, bands), grown(image, bands)
    for old, new in zip(before.features["s2"], after.features["s2"], strict=True):
        torch.testing.assert_close(old, new)  # nothing pretrained moved

    embed, s2, rgb = grown.patch_embed["wv_ms"], encoder.patch_embed["s2"], encoder.patch_embed["rgb"]
    torch.testing.assert_close(embed.weight["NIR2"], s2.weight["B09"])
    torch.testing.assert_close(embed.weight["Green"], rgb.weight["G"])
    torch.testing.assert_close(embed.bias, s2.bias)  # S2 lends 6 of the 8 bands
    index = grown.sensor_index
    torch.testing.assert_close(grown.sensor_embed[index["wv_ms"]], encoder.sensor_embed[index["s2"]])
    torch.testing.assert_close(grown.sensor_embed[index["wv_pan"]], encoder.sensor_embed[index["rgb"]])
    routers = [name for name, _ in grown.named_parameters() if name.endswith("sensor_bias.weight")]
    assert routers, "msgfm_tiny has MoE blocks"
    for name in routers:
        rows = dict(grown.named_parameters())[name]
        torch.testing.assert_close(rows[index["wv_ms"]], dict(encoder.named_parameters())[name][index["s2"]])

    ms = torch.randn(2, 8, 32, 32)
    with torch.no_grad():
        out = grown({"wv_ms": ms}, {"wv_ms": WORLDVIEW_MS.band_names})
    assert out.features["wv_ms"][-1].shape == (2, 384, 1, 1)
    assert add_sensors(grown, ["wv_ms"]) is grown  # nothing to add
    with pytest.raises(ValueError, match="pretraining sensors"):
        add_sensors(create_model("msgfm_tiny", chip_px=32, sensors=("s2",)).encoder, ["s1"])


def test_borrowed_embedding_sees_like_its_donor_where_a_random_one_does_not() -> None:
    """A WorldView MS image made of the S2 image's wavelength-nearest bands is embedded close to that S2 image
    by the borrowed embedding; a freshly initialised one is no closer than two unrelated images (the baseline)."""
    encoder = _encoder()
    grown = add_sensors(encoder, ["wv_ms"]).eval()
    fresh = add_sensors(encoder, ["wv_ms"]).eval()
    torch.manual_seed(1)
    for w in fresh.patch_embed["wv_ms"].weight.values():  # what the embedding would start from without borrowing
        torch.nn.init.trunc_normal_(w, std=0.02)
    s2_names = ("B01", "B02", "B03", "B04", "B04", "B06", "B08", "B09")  # S2 bands nearest to each WV band
    s2 = torch.randn(4, 13, 32, 32)
    wv = s2[:, [get_sensor("s2").band_names.index(b) for b in s2_names]]
    bands = {"s2": get_sensor("s2").band_names, "wv_ms": WORLDVIEW_MS.band_names}

    def tokens(enc: torch.nn.Module, sensor: str, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return enc.patch_embed[sensor](image, bands[sensor]).flatten(1)

    reference = tokens(encoder, "s2", s2)
    similar = torch.nn.functional.cosine_similarity
    borrowed = similar(tokens(grown, "wv_ms", wv), reference).mean()
    random = similar(tokens(fresh, "wv_ms", wv), reference).mean()
    unrelated = similar(tokens(encoder, "s2", torch.randn(4, 13, 32, 32)), reference).mean()
    assert borrowed > 0.4 and borrowed > random + 0.3, (borrowed, random)
    assert abs(random - unrelated) < 0.2, (random, unrelated)


def test_a_fine_tuned_checkpoint_with_added_sensors_rebuilds() -> None:
    from msgfm.datasets.tasks import get_task
    from msgfm.models.heads import build_task_model

    encoder = add_sensors(_encoder(), ["wv_ms", "wv_pan"])
    spec = dataclasses.replace(
        get_task("pansharpening"),
        inputs=("wv_ms", "wv_pan"),
        out_sensor="wv_ms",
        out_bands=WORLDVIEW_MS.band_names,
        residual="wv_ms",
    )
    model = build_task_model(spec, encoder, 0)
    best = {"encoder_config": encoder.config.to_dict(), "class_codes": []}
    rebuilt = rebuild_task_model(best, spec)
    rebuilt.load_state_dict(model.state_dict())  # same keys and shapes, strict
    assert rebuilt.encoder.sensors == encoder.sensors


def test_register_sensor_checks_names_and_wavelengths() -> None:
    band = Band("B1", 3.0, "uint16", 0, 0.1, 0.05, 490, "DN")
    planet = dataclasses.replace(WORLDVIEW_MS, name="planetscope", title="PlanetScope", bands=(band,))
    try:
        assert register_sensor(planet) is get_sensor("planetscope")
        assert nearest_bands("planetscope", PRETRAINED) == {"B1": ("s2", "B02")}
    finally:
        ADDED_SENSORS.pop("planetscope", None)
    with pytest.raises(ValueError, match="already registered"):
        register_sensor(WORLDVIEW_MS)
    no_wavelength = dataclasses.replace(planet, bands=(dataclasses.replace(band, wavelength_nm=None),))
    with pytest.raises(ValueError, match="no wavelength_nm"):
        register_sensor(no_wavelength)
    assert "planetscope" not in ADDED_SENSORS


def test_spacenet_samples_feed_the_hpf_fused_ms_and_refuse_another_ratio(test_data: Path) -> None:
    from msgfm.config import load_params
    from msgfm.datasets.benchmarks.spacenet import SpaceNetPansharpen
    from msgfm.datasets.pansharpen import hpf_fuse
    from msgfm.datasets.streaming import BenchmarkSplit, BenchmarkSplitError
    from msgfm.training.benchmark import benchmark_task_data

    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    data = benchmark_task_data(params, "spacenet_pansharpen", test_data / "spacenet")
    split, spec = data.splits["test"], data.spec
    assert (spec.inputs, spec.out_sensor, spec.residual) == (("wv_pan", "wv_ms"), "wv_ms", "wv_ms")
    assert spec.out_bands == WORLDVIEW_MS.band_names and len(split) == 3 and split.size == (16, 16)
    sample = SpaceNetPansharpen(test_data / "spacenet", "test")[0]
    fused = hpf_fuse(sample["ms"][None], sample["pan"][None])[0].clamp(0, 1).numpy()
    streamed = split[0]  # read from the files when asked for, not held in memory
    assert streamed["id"] == sample["id"] and streamed["bands_wv_ms"] == WORLDVIEW_MS.band_names
    np.testing.assert_allclose(get_sensor("wv_ms").denormalise(streamed["image_wv_ms"].numpy()), fused, atol=1e-5)
    bicubic = torch.nn.functional.interpolate(sample["ms"][None], size=(16, 16), mode="bicubic")[0].numpy()
    assert np.abs(fused - bicubic).max() > 0.01  # the PAN's detail is in the input
    other = SpaceNetPansharpen(test_data / "spacenet", "test", ratio=2)
    bands = WORLDVIEW_MS.band_names
    with pytest.raises(
        BenchmarkSplitError, match=r"sample AOI_9_Synthetic_img\d+: PAN \(16, 16\) px is not 4 x the MS"
    ):
        BenchmarkSplit(other, np.arange(1), (16, 16), "image", "wv_ms", bands, hpf="wv_ms")[0]


def test_spacenet_product_of_another_pan_ratio_fails_before_training(test_data: Path, tmp_path: Path) -> None:
    """A SpaceNet-layout product whose PAN is 2x (not WorldView's 4x) finer than its MS is refused by name when its
    streamed splits are set up, before any training."""
    import shutil

    import rasterio
    from affine import Affine

    from msgfm.config import load_params
    from msgfm.training.benchmark import benchmark_task_data
    from msgfm.training.finetune import FinetuneError

    root = tmp_path / "spacenet_2x"
    shutil.copytree(test_data / "spacenet" / "MS", root / "MS")
    (root / "PAN").mkdir()
    for path in sorted((test_data / "spacenet" / "PAN").glob("PAN_*.tif")):
        with rasterio.open(path) as src:
            pan, profile = src.read(), src.profile
        coarse = pan[:, :66, :66].reshape(1, 33, 2, 33, 2).mean(axis=(2, 4)).round().astype(pan.dtype)
        t = profile["transform"]
        profile.update(width=33, height=33, transform=t @ Affine.scale(2), tiled=False)
        profile.pop("blockxsize"), profile.pop("blockysize")
        with rasterio.open(root / "PAN" / path.name, "w", **profile) as dst:
            dst.write(coarse)
    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    with pytest.raises(
        FinetuneError, match=r"sample AOI_9_Synthetic_img\d+: PAN \(16, 16\) px is not 4 x the MS \(8, 8\)"
    ):
        benchmark_task_data(params, "spacenet_pansharpen", root)
