"""Benchmark loaders on real samples (BigEarthNet v1.0, SEN12MS-CR) and exact-layout fixtures (SpaceNet, Vaihingen)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject
from torch.utils.data import DataLoader

from msgfm.datasets.benchmarks import BENCHMARKS, BenchmarkDataError, create_benchmark
from msgfm.datasets.benchmarks.bigearthnet import (
    BIGEARTHNET_19_CLASSES,
    CORINE_LABELS_43,
    CORINE_TO_19,
    BigEarthNet,
    labels_to_indices,
)
from msgfm.datasets.benchmarks.sen12ms_cr import SEN12MSCR, split_of, to_reflectance
from msgfm.datasets.benchmarks.spacenet import SpaceNetPansharpen, hash_fraction
from msgfm.datasets.benchmarks.vaihingen import COLOURS, IGNORE_INDEX, Vaihingen, colours_to_mask, window_starts
from msgfm.geo.io import write_cog
from msgfm.metrics import PRIMARY_METRIC
from msgfm.sensors import ADDED_SENSORS, S2_L2A_BANDS, SENSORS, SENTINEL2

# Hand-checked from each patch's labels_metadata.json and the BigEarthNet-19 table (Sumbul et al. 2021).
BEN_EXPECTED = {
    "S2A_MSIL2A_20170613T101031_87_48": {
        "split": "train",
        "s1": "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48",
        # Non-irrigated arable land -> Arable land; Land principally occupied by agriculture... -> itself
        "classes": {
            "Arable land",
            "Land principally occupied by agriculture, with significant areas of natural vegetation",
        },
    },
    "S2A_MSIL2A_20170617T113321_36_85": {
        "split": "train",
        "s1": "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_36_85",
        "classes": {"Arable land", "Pastures"},  # Non-irrigated arable land, Pastures
    },
    "S2A_MSIL2A_20170617T113321_4_55": {
        "split": "val",
        "s1": "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_4_55",
        "classes": {"Pastures"},
    },
    "S2B_MSIL2A_20170924T93020_69_24": {
        "split": "test",
        "s1": "S1A_IW_GRDH_1SDV_20170925T043256_35VPK_69_24",
        # Coniferous forest, Mixed forest, Transitional woodland/shrub, Peatbogs, Water bodies
        "classes": {
            "Coniferous forest",
            "Mixed forest",
            "Transitional woodland, shrub",
            "Inland wetlands",
            "Inland waters",
        },
    },
}


@pytest.fixture(scope="module")
def ben_root(test_data: Path) -> Path:
    return test_data / "bigearthnet-v1"


def _ben_band_path(root: Path, patch: str, band: str) -> Path:
    return root / "BigEarthNet-v1.0" / patch / f"{patch}_{band}.tif"


def _copy_ben(ben_root: Path, dst: Path) -> Path:
    """A writable copy of the BigEarthNet sample root (to break it on purpose)."""
    shutil.copytree(ben_root, dst)
    return dst


# ---------------------------------------------------------------- BigEarthNet


def test_bigearthnet_samples_shapes_bands_and_values(ben_root: Path) -> None:
    for split in ("train", "val", "test"):
        ds = BigEarthNet(ben_root, split)
        assert len(ds) == sum(v["split"] == split for v in BEN_EXPECTED.values())
        assert ds.band_names == {"s2": S2_L2A_BANDS, "s1": ("VV", "VH")}
        for i in range(len(ds)):
            sample = ds[i]
            assert set(sample) == {"s2", "s1", "label", "id", "crs", "bounds"}
            with rasterio.open(_ben_band_path(ben_root, ds.s2_patches[i], "B02")) as src:  # the 10 m grid
                assert (sample["id"], sample["crs"]) == (ds.s2_patches[i], src.crs.to_string())
                assert sample["bounds"] == tuple(src.bounds)
            assert sample["s2"].shape == (12, 120, 120) and sample["s2"].dtype == torch.float32
            assert sample["s1"].shape == (2, 120, 120) and sample["s1"].dtype == torch.float32
            assert sample["label"].shape == (19,)
            # 10 m bands are not resampled: identical to the file
            b04 = rasterio.open(_ben_band_path(ben_root, ds.s2_patches[i], "B04")).read(1)
            np.testing.assert_array_equal(sample["s2"][S2_L2A_BANDS.index("B04")].numpy(), b04)
            assert sample["s1"].min() > -50 and sample["s1"].max() < 20  # dB
            assert 0 < sample["s2"].mean() < 10000


@pytest.mark.parametrize("band", ["B05", "B8A", "B12", "B01", "B09"])
def test_bigearthnet_resampled_bands_agree_with_source(ben_root: Path, band: str) -> None:
    patch = "S2A_MSIL2A_20170613T101031_87_48"
    ds = BigEarthNet(ben_root, "train", sensors=("s2",))
    up = ds[ds.s2_patches.index(patch)]["s2"][S2_L2A_BANDS.index(band)].numpy().astype(np.float64)
    with rasterio.open(_ben_band_path(ben_root, patch, band)) as src:
        native = src.read(1).astype(np.float64)
        factor = 120 // native.shape[0]
        assert factor == (2 if native.shape[0] == 60 else 6)
        # georeferenced bilinear warp onto the 10 m grid of B02: the loader must match it (alignment check)
        with rasterio.open(_ben_band_path(ben_root, patch, "B02")) as ref:
            warped = np.zeros((120, 120))
            reproject(native, warped, src_transform=src.transform, src_crs=src.crs, dst_transform=ref.transform,
                      dst_crs=ref.crs, resampling=Resampling.bilinear)  # fmt: skip
    assert up.shape == (120, 120)
    assert np.abs(up - warped).max() <= 1.0  # uint16 rounding only
    assert abs(up.mean() - native.mean()) / native.mean() < 0.005  # mean preserved
    blocks = up.reshape(native.shape[0], factor, native.shape[1], factor).mean(axis=(1, 3))
    aligned = np.abs(blocks - native).mean()
    shifted = np.abs(blocks[:, 1:] - native[:, :-1]).mean()  # one source pixel off
    assert aligned / native.mean() < 0.1 and aligned < 0.6 * shifted  # each source pixel lands at its location

    nearest = BigEarthNet(ben_root, "train", sensors=("s2",), resampling="nearest")
    up_nearest = nearest[nearest.s2_patches.index(patch)]["s2"][S2_L2A_BANDS.index(band)].numpy()
    np.testing.assert_array_equal(up_nearest[::factor, ::factor], native)


def test_bigearthnet_labels_mapped_to_19_classes(ben_root: Path) -> None:
    assert len(CORINE_LABELS_43) == 43 and set(CORINE_TO_19) == set(CORINE_LABELS_43)
    assert {c for c in CORINE_TO_19.values() if c} == set(BIGEARTHNET_19_CLASSES)
    assert sum(v is None for v in CORINE_TO_19.values()) == 11
    for split in ("train", "val", "test"):
        ds = BigEarthNet(ben_root, split, sensors=("s2",))
        for i, patch in enumerate(ds.s2_patches):
            got = {BIGEARTHNET_19_CLASSES[j] for j in torch.nonzero(ds[i]["label"]).flatten().tolist()}
            assert got == BEN_EXPECTED[patch]["classes"], patch
    assert labels_to_indices(["Bare rock", "Burnt areas"], 19, "p") == []  # dropped by the 19-class nomenclature
    assert labels_to_indices(["Salines", "Salt marshes", "Sea and ocean"], 19, "p") == [16, 18]
    ds43 = BigEarthNet(ben_root, "test", sensors=("s2",), num_classes=43)
    names = {CORINE_LABELS_43[j] for j in torch.nonzero(ds43[0]["label"]).flatten().tolist()}
    assert names == {"Coniferous forest", "Mixed forest", "Transitional woodland/shrub", "Peatbogs", "Water bodies"}
    with pytest.raises(BenchmarkDataError, match="patch X: unknown CORINE label"):
        labels_to_indices(["Moon dust"], 19, "X")


def test_bigearthnet_s1_joined_to_the_right_s2_patch(ben_root: Path) -> None:
    for split in ("train", "val", "test"):
        ds = BigEarthNet(ben_root, split)
        for i, patch in enumerate(ds.s2_patches):
            s1 = ds.s1_patch_of(i)
            assert s1 == BEN_EXPECTED[patch]["s1"]
            vv_path = ben_root / "BigEarthNet-S1-v1.0" / s1 / f"{s1}_VV.tif"
            with rasterio.open(vv_path) as vv, rasterio.open(_ben_band_path(ben_root, patch, "B02")) as b02:
                assert vv.bounds == b02.bounds and vv.crs == b02.crs
                np.testing.assert_array_equal(ds[i]["s1"][0].numpy(), vv.read(1))


def test_bigearthnet_two_column_csv_needs_no_s1_metadata(ben_root: Path, tmp_path: Path) -> None:
    root = _copy_ben(ben_root, tmp_path / "ben")
    for meta in (root / "BigEarthNet-S1-v1.0").glob("*/*_labels_metadata.json"):
        meta.unlink()
    with pytest.raises(BenchmarkDataError, match=r"BigEarthNet S1 patch S1A_.*: metadata missing"):
        BigEarthNet(root, "test")
    patch, info = next((p, v) for p, v in BEN_EXPECTED.items() if v["split"] == "test")
    (root / "test.csv").write_text(f"{patch},{info['s1']}\n")
    ds = BigEarthNet(root, "test")
    assert ds.s1_patch_of(0) == info["s1"] and ds[0]["s1"].shape == (2, 120, 120)
    (tmp_path / "bigearthnet-test.csv").write_text(f"{patch},{info['s1']}\n")  # TorchGeo's file name
    (root / "test.csv").unlink()
    assert BigEarthNet(root, "test", split_file=tmp_path / "bigearthnet-test.csv").s1_patch_of(0) == info["s1"]


def test_bigearthnet_missing_split_band_and_corrupt_file_are_clear_errors(ben_root: Path, tmp_path: Path) -> None:
    root = _copy_ben(ben_root, tmp_path / "ben")
    (root / "val.csv").unlink()
    with pytest.raises(BenchmarkDataError, match=r"split file val\.csv missing \(expected .*val\.csv\)"):
        BigEarthNet(root, "val")

    patch = "S2A_MSIL2A_20170613T101031_87_48"
    _ben_band_path(root, patch, "B8A").unlink()
    ds = BigEarthNet(root, "train")
    expected = re.escape(f"BigEarthNet patch {patch}: band B8A missing (expected {_ben_band_path(root, patch, 'B8A')})")
    with pytest.raises(BenchmarkDataError, match=expected):
        ds[ds.s2_patches.index(patch)]

    other = "S2A_MSIL2A_20170617T113321_36_85"
    _ben_band_path(root, other, "B11").write_bytes(b"not a tiff")
    with pytest.raises(BenchmarkDataError, match=f"BigEarthNet patch {other}: band B11 unreadable"):
        ds[ds.s2_patches.index(other)]
    b12 = _ben_band_path(root, other, "B12")
    b12.write_bytes(b12.read_bytes()[:-200])  # truncated download: the header opens, a strip fails
    _ben_band_path(root, other, "B11").unlink()
    shutil.copy(_ben_band_path(ben_root, other, "B11"), _ben_band_path(root, other, "B11"))
    with pytest.raises(BenchmarkDataError, match=f"BigEarthNet patch {other}: band B12 unreadable .*B12.tif.*failed"):
        ds[ds.s2_patches.index(other)]

    (root / "train.csv").write_text("S2A_MSIL2A_20170613T101031_99_99\n")
    with pytest.raises(BenchmarkDataError, match="no S1 patch .* names 1 S2 patch"):
        BigEarthNet(root, "train")


def test_bigearthnet_batches_through_a_dataloader(ben_root: Path) -> None:
    ds = create_benchmark("bigearthnet", ben_root, "train", transforms=lambda s: {**s, "s2": s["s2"] / 10000})
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["s2"].shape == (2, 12, 120, 120) and batch["label"].shape == (2, 19)
    assert batch["s2"].max() <= 1.5  # the transforms hook ran


# ---------------------------------------------------------------- SEN12MS-CR

CR_PATCH = "ROIs1970_fall_139_p839"


def test_sen12mscr_triplet_shapes_values_and_alignment(test_data: Path) -> None:
    root = test_data / "sen12ms-cr"
    assert split_of("ROIs1970_fall", 139) == "test" and split_of("ROIs1158_spring", 17) == "val"
    assert split_of("ROIs1970_fall", 14) == "train"
    ds = SEN12MSCR(root, "test")
    assert len(ds) == 1 and ds.patch_id(0) == CR_PATCH
    assert len(SEN12MSCR(root, "all")) == 1
    sample = ds[0]
    assert {k: tuple(v.shape) for k, v in sample.items() if isinstance(v, torch.Tensor)} == {
        "s1": (2, 256, 256),
        "s2": (13, 256, 256),
        "s2_cloudy": (13, 256, 256),
    }
    assert sample["id"] == CR_PATCH
    assert ds.band_names["s2"] == SENTINEL2.band_names and ds.band_names["s1"] == ("VV", "VH")
    assert sample["s1"].min() > -50 and sample["s1"].max() <= 0.0  # dB
    files = {
        "s1": root / "ROIs1970_fall_s1/s1_139/ROIs1970_fall_s1_139_p839.tif",
        "s2": root / "ROIs1970_fall_s2/s2_139/ROIs1970_fall_s2_139_p839.tif",
        "s2_cloudy": root / "ROIs1970_fall_s2_cloudy/s2_cloudy_139/ROIs1970_fall_s2_cloudy_139_p839.tif",
    }
    grids = set()
    for key, path in files.items():
        with rasterio.open(path) as src:
            np.testing.assert_array_equal(sample[key].numpy(), src.read().astype(np.float32))
            grids.add((src.transform, src.crs, src.shape))
            assert (sample["crs"], sample["bounds"]) == (src.crs.to_string(), tuple(src.bounds))
    assert len(grids) == 1  # the triplet shares one grid
    assert sample["s2_cloudy"].mean() > sample["s2"].mean()  # clouds are bright

    scaled = SEN12MSCR(root, "test", reflectance=True)[0]
    assert scaled["s2"].min() >= 0.0 and scaled["s2_cloudy"].max() <= 1.0
    torch.testing.assert_close(scaled["s2"], sample["s2"] / 10000)
    assert to_reflectance(torch.tensor([-5.0, 2500.0, 12000.0])).tolist() == [0.0, 0.25, 1.0]


def test_sen12mscr_errors_name_the_patch(test_data: Path, tmp_path: Path) -> None:
    root = shutil.copytree(test_data / "sen12ms-cr", tmp_path / "cr")
    with pytest.raises(BenchmarkDataError, match="no train patches"):
        SEN12MSCR(root, "train")

    s2 = root / "ROIs1970_fall_s2/s2_139/ROIs1970_fall_s2_139_p839.tif"
    with rasterio.open(s2) as src:
        data, profile = src.read(), src.profile
    write_cog(s2, data, crs=profile["crs"], transform=profile["transform"] @ Affine.translation(3, 0))
    with pytest.raises(
        BenchmarkDataError,
        match=rf"SEN12MS-CR patch {CR_PATCH}: s2 grid \(origin 701909.91, 3710139.54; 10 m; 256 x 256 px\) differs",
    ):
        SEN12MSCR(root, "test")[0]

    write_cog(s2, data[:12], crs=profile["crs"], transform=profile["transform"])
    with pytest.raises(BenchmarkDataError, match=f"SEN12MS-CR patch {CR_PATCH}: s2 has 12 bands, expected 13"):
        SEN12MSCR(root, "test")[0]

    cloudy = root / "ROIs1970_fall_s2_cloudy/s2_cloudy_139/ROIs1970_fall_s2_cloudy_139_p839.tif"
    cloudy.unlink()
    with pytest.raises(BenchmarkDataError, match=f"patch {CR_PATCH}: triplet incomplete, missing .*s2_cloudy_139_p839"):
        SEN12MSCR(root, "test")
    with pytest.raises(BenchmarkDataError, match="no test patches"):
        SEN12MSCR(root, "test", on_incomplete="skip")


# ---------------------------------------------------------------- SpaceNet-style PAN/MS


def test_spacenet_wald_protocol_shapes_and_degradation(test_data: Path) -> None:
    root = test_data / "spacenet"
    ds = SpaceNetPansharpen(root, "all")
    assert len(ds) == 18 and ds.band_names["ms"][4] == "Red"
    for i, tile in enumerate(ds.tiles):
        sample = ds[i]
        assert {k: tuple(v.shape) for k, v in sample.items() if isinstance(v, torch.Tensor)} == {
            "pan": (1, 16, 16),  # PAN degraded onto the (cropped) MS grid
            "ms": (8, 4, 4),  # MS degraded by the ratio 4
            "target": (8, 16, 16),  # the original MS, cropped from 17 to a multiple of 4
        }
        with (
            rasterio.open(root / "MS" / f"MS_{tile}.tif") as ms,
            rasterio.open(root / "PAN" / f"PAN_{tile}.tif") as pan,
        ):
            ms_native, pan_native = ms.read().astype(np.float32) / 2047, pan.read(1).astype(np.float64) / 2047
            cropped = rasterio.windows.bounds(rasterio.windows.Window(0, 0, 16, 16), ms.transform)
            assert (sample["id"], sample["crs"], sample["bounds"]) == (tile, ms.crs.to_string(), cropped)
        np.testing.assert_allclose(sample["target"].numpy(), ms_native[:, :16, :16])
        expected_ms = ms_native[:, :16, :16].reshape(8, 4, 4, 4, 4).mean(axis=(2, 4))
        np.testing.assert_allclose(sample["ms"].numpy(), expected_ms, rtol=1e-5)
        expected_pan = pan_native[:64, :64].reshape(16, 4, 16, 4).mean(axis=(1, 3))
        np.testing.assert_allclose(sample["pan"][0].numpy(), expected_pan, rtol=1e-4)
        assert sample["target"].min() > 0.0 and sample["target"].max() < 1.0

    full = SpaceNetPansharpen(root, "all", protocol="full")[0]
    assert {k: tuple(v.shape) for k, v in full.items() if isinstance(v, torch.Tensor)} == {
        "pan": (1, 66, 66),
        "ms": (8, 17, 17),
    }
    assert full["id"] == ds.tiles[0] and len(full["bounds"]) == 4


def test_spacenet_hash_split_partitions_tiles() -> None:
    fractions = np.array([hash_fraction(f"AOI_2_Vegas_img{n}") for n in range(2000)])
    assert ((fractions >= 0) & (fractions < 1)).all()
    assert 0.75 < (fractions < 0.8).mean() < 0.85 and 0.07 < (fractions >= 0.9).mean() < 0.13
    assert hash_fraction("AOI_2_Vegas_img7") == hash_fraction("AOI_2_Vegas_img7")


def test_spacenet_mul_folder_ratio_and_missing_tile(test_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "sn"
    shutil.copytree(test_data / "spacenet" / "PAN", root / "PAN")
    (root / "MUL").mkdir()
    for path in (test_data / "spacenet" / "MS").glob("MS_*.tif"):
        shutil.copy(path, root / "MUL" / path.name.replace("MS_", "MUL_", 1))
    ds = SpaceNetPansharpen(root, "all")  # SpaceNet's own MUL naming
    assert ds.ms_dir.name == "MUL" and ds[0]["target"].shape == (8, 16, 16)

    mul = root / "MUL" / f"MUL_{ds.tiles[0]}.tif"
    with rasterio.open(mul) as src:
        data, profile = src.read(), src.profile
    write_cog(mul, data, crs=profile["crs"], transform=Affine(1.0, 0, 500100.0, 0, -1.0, 4000000.0))
    with pytest.raises(BenchmarkDataError, match=f"SpaceNet tile {ds.tiles[0]}: MS/PAN pixel size ratio 3.333"):
        ds[0]
    assert SpaceNetPansharpen(root, "all", ratio=4)[0]["ms"].shape == (8, 4, 4)
    write_cog(mul, data, crs=profile["crs"], transform=Affine(1.2, 0, 500150.0, 0, -1.2, 4000000.0))
    with pytest.raises(BenchmarkDataError, match=f"SpaceNet tile {ds.tiles[0]}: PAN extent .* does not cover"):
        ds[0]  # MS shifted 50 m east of its PAN

    (root / "MUL" / f"MUL_{ds.tiles[1]}.tif").unlink()
    with pytest.raises(BenchmarkDataError, match=f"SpaceNet tile {ds.tiles[1]}: MS image missing"):
        SpaceNetPansharpen(root, "all")


# ---------------------------------------------------------------- Vaihingen-style tiles


def test_vaihingen_colour_mapping() -> None:
    gt = np.array(COLOURS, dtype=np.uint8).T.reshape(3, 2, 3)  # the six colours in a 2 x 3 image
    np.testing.assert_array_equal(colours_to_mask(gt, "t"), [[0, 1, 2], [3, 4, 5]])
    # impervious white, building blue, low vegetation cyan, tree green, car yellow, clutter red
    assert COLOURS == ((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0))
    black = gt.copy()
    black[:, 1, 2] = 0
    np.testing.assert_array_equal(colours_to_mask(black, "t", eroded=True)[1], [3, 4, IGNORE_INDEX])
    with pytest.raises(BenchmarkDataError, match=r"tile 9: 1 pixel\(s\) .* first \(0, 0, 0\) at row 1, col 2"):
        colours_to_mask(black, "tile 9")
    odd = gt.copy()
    odd[:, 0, 1] = (12, 34, 56)
    with pytest.raises(BenchmarkDataError, match=r"first \(12, 34, 56\) at row 100, col 201"):
        colours_to_mask(odd, "t", offset=(100, 200))


def test_vaihingen_tiles_and_sliding_windows(test_data: Path) -> None:
    root = test_data / "vaihingen"
    whole = Vaihingen(root, "val", crop_size=None)
    assert whole.areas == (5, 15, 21, 30) and len(whole) == 4
    present = set()
    lut = {c: i for i, c in enumerate(COLOURS)}
    for i, area in enumerate(whole.areas):
        sample = whole[i]
        h, w = whole.tile_shapes[area]
        assert sample["rgb"].shape == (3, h, w) and sample["dsm"].shape == (1, h, w) and sample["mask"].shape == (h, w)
        with rasterio.open(root / "gts_for_participants" / f"top_mosaic_09cm_area{area}.tif") as src:
            colours = src.read()
        expected = np.vectorize(lambda r, g, b: lut[(r, g, b)])(*colours)
        np.testing.assert_array_equal(sample["mask"].numpy(), expected)
        present |= set(sample["mask"].unique().tolist())
    assert present == set(range(6))

    assert window_starts(40, 32, 32) == [0, 8] and window_starts(64, 32, 16) == [0, 16, 32]
    crops = Vaihingen(root, "val", crop_size=32)
    assert len(crops) == 16  # every tile needs 2 x 2 windows of 32 px
    rebuilt = torch.full(whole.tile_shapes[5], -1, dtype=torch.int64)
    for i in range(len(crops)):
        area, window = crops.window_of(i)
        sample = crops[i]
        assert sample["rgb"].shape == (3, 32, 32) and sample["mask"].shape == (32, 32)
        if area == 5:
            rebuilt[window.row_off : window.row_off + 32, window.col_off : window.col_off + 32] = sample["mask"]
    torch.testing.assert_close(rebuilt, whole[0]["mask"])  # the windows cover the tile, in place

    eroded = Vaihingen(root, "val", crop_size=None, eroded=True)[0]["mask"]
    assert (eroded == IGNORE_INDEX).any()
    kept = eroded != IGNORE_INDEX
    torch.testing.assert_close(eroded[kept], whole[0]["mask"][kept])


def test_vaihingen_random_crops_are_seeded_and_in_place(test_data: Path) -> None:
    root = test_data / "vaihingen"
    ds = Vaihingen(root, "val", crop_size=24, mode="random", crops_per_tile=3)
    assert len(ds) == 12
    whole = Vaihingen(root, "val", crop_size=None)
    torch.manual_seed(7)
    area, window = ds.window_of(4)
    torch.manual_seed(7)
    sample = ds[4]
    tile = whole[whole.areas.index(area)]
    rows = slice(window.row_off, window.row_off + 24)
    cols = slice(window.col_off, window.col_off + 24)
    torch.testing.assert_close(sample["dsm"], tile["dsm"][:, rows, cols])
    torch.testing.assert_close(sample["mask"], tile["mask"][rows, cols])
    offsets = {ds.window_of(0)[1].row_off for _ in range(20)}
    assert len(offsets) > 1  # a new crop each draw


def test_vaihingen_errors_name_the_area(test_data: Path, tmp_path: Path) -> None:
    root = shutil.copytree(test_data / "vaihingen", tmp_path / "vh")
    with pytest.raises(
        BenchmarkDataError, match=r"Vaihingen area 1: top missing \(expected .*top_mosaic_09cm_area1.tif"
    ):
        Vaihingen(root, "train")
    with pytest.raises(BenchmarkDataError, match=r"Vaihingen area 5: tile \(40, 48\) px is smaller than crop_size 64"):
        Vaihingen(root, "val", crop_size=64)

    gt_path = root / "gts_for_participants" / "top_mosaic_09cm_area21.tif"
    with rasterio.open(gt_path) as src:
        gt, profile = src.read(), src.profile
    gt[:, 7, 9] = (12, 34, 56)
    write_cog(gt_path, gt, crs=profile["crs"], transform=profile["transform"])
    ds = Vaihingen(root, "val", areas=[21], crop_size=None)
    with pytest.raises(
        BenchmarkDataError, match=r"Vaihingen area 21: labels .*area21.tif: 1 pixel\(s\) .* \(12, 34, 56\)"
    ):
        ds[0]

    (root / "dsm" / "dsm_09cm_matching_area15.tif").unlink()
    with pytest.raises(
        BenchmarkDataError, match=r"Vaihingen area 15: dsm missing \(expected .*dsm_09cm_matching_area15"
    ):
        Vaihingen(root, "val", crop_size=16)


# ---------------------------------------------------------------- registry


def test_registry_and_factory(test_data: Path) -> None:
    assert set(BENCHMARKS) == {"bigearthnet", "sen12ms_cr", "spacenet_pansharpen", "vaihingen"}
    for cls in BENCHMARKS.values():
        assert cls.task in PRIMARY_METRIC
        assert all(sensor is None or sensor in {*SENSORS, *ADDED_SENSORS} for sensor in cls.inputs.values())
        assert cls.target_sensor is None or cls.target_sensor in cls.inputs.values()
    ds = create_benchmark("vaihingen", test_data / "vaihingen", "val", crop_size=None)
    assert isinstance(ds, Vaihingen) and set(ds[0]) == set(ds.inputs) | {ds.target_key}
    with pytest.raises(BenchmarkDataError, match="unknown benchmark 'bigearth'; known benchmarks: bigearthnet"):
        create_benchmark("bigearth", test_data, "train")
    with pytest.raises(BenchmarkDataError, match="unknown split 'training'"):
        create_benchmark("sen12ms_cr", test_data / "sen12ms-cr", "training")
    with pytest.raises(IndexError):
        ds[len(ds)]
