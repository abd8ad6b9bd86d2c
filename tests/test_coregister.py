"""coregister: grids, one-warp shift folding, sub-pixel shift recovery, real layouts and bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from coreg_world import CRS_UTM, ORIGIN, RawWorld, pipeline_root, two_aoi_world  # noqa: F401 (session fixture)
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject
from scipy import ndimage

from msgfm.config import CoregisterParams
from msgfm.coreg.aoi_grids import read_grids
from msgfm.coreg.features import gradient_feature
from msgfm.coreg.inputs import CoregisterError, load_accepted_items
from msgfm.coreg.shifts import estimate_shift, shift_confidence
from msgfm.coreg.stage import coregister
from msgfm.coreg.warp import warp_files
from msgfm.geo.grids import Grid, utm_crs, warp_to_grid
from msgfm.sensors import S2_L2A_BANDS


def run_stage(root: Path, cfg: CoregisterParams | None = None, ray_cfg=None) -> pd.DataFrame:
    """Run the stage on a world written under `root` (download's layout); `ray_cfg` as the CLI passes params.ray."""
    return coregister(
        cfg or CoregisterParams(),
        ledger=root / "data/raw/acquisitions.parquet",
        raw_gate=root / "data/gates/raw.parquet",
        raw_dir=root / "data/raw",
        out_dir=root / "data/coreg",
        report=root / "data/reports/coregister.json",
        truth_dir=root / "data/source/truth",
        ray_cfg=ray_cfg,
    )


@pytest.fixture(scope="module")
def world(pipeline_root) -> tuple[Path, pd.DataFrame]:  # noqa: F811
    """The default synthetic world, co-registered once for the session (shared with the pair tests)."""
    return pipeline_root, pd.read_parquet(pipeline_root / "data/coreg/rasters.parquet")


def _textured(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.standard_normal(shape), 3.0).astype(np.float32)


def test_grid_covering_snaps_and_matches():
    grid = Grid.covering("EPSG:32632", (600003.0, 5339001.0, 600958.0, 5339999.5), 10.0)
    assert grid.transform.c == 600000.0 and grid.transform.f == 5340000.0
    assert (grid.width, grid.height) == (96, 100)
    assert grid.matches("EPSG:32632", grid.transform, 96, 100)
    assert not grid.matches("EPSG:32632", grid.transform * Affine.translation(0.5, 0), 96, 100)
    assert not grid.matches("EPSG:32633", grid.transform, 96, 100)
    assert utm_crs(11.4, 48.2) == "EPSG:32632" and utm_crs(-70.0, -33.0) == "EPSG:32719"


def test_warp_folds_shift_into_destination_transform(tmp_path):
    """A 2 px shift folded into the warp equals moving the unshifted warp by 2 px (one resampling, not two)."""
    scene = _textured((80, 80))
    path = tmp_path / "a.tif"
    tf = Affine(10.0, 0, ORIGIN[0], 0, -10.0, ORIGIN[1])
    with rasterio.open(
        path, "w", driver="GTiff", count=1, width=80, height=80, dtype="float32", crs=CRS_UTM, transform=tf
    ) as d:
        d.write(scene[None])
    grid = Grid(CRS_UTM, tf @ Affine.translation(0.5, 0.25), 60, 60)
    with rasterio.open(path) as src:
        plain = warp_to_grid(src, grid, resampling=Resampling.bilinear)[0]
        shifted = warp_to_grid(src, grid, resampling=Resampling.bilinear, shift_px=(2.0, -3.0))[0]
    np.testing.assert_allclose(shifted[5:50, 5:50], plain[2:47, 7:52], atol=1e-5)


def _band_file(path: Path, pixels: np.ndarray, gsd: float, nodata: float | None = 0) -> Path:
    """A single-band UTM GeoTIFF at `gsd` metres with its top-left at ORIGIN."""
    tf = Affine(gsd, 0, ORIGIN[0], 0, -gsd, ORIGIN[1])
    with rasterio.open(
        path, "w", driver="GTiff", count=1, width=pixels.shape[1], height=pixels.shape[0], dtype=pixels.dtype.name,
        crs=CRS_UTM, transform=tf, nodata=nodata,
    ) as dst:  # fmt: skip
        dst.write(pixels[None])
    return path


def test_bands_sharing_a_georeference_warp_together_as_if_alone(tmp_path):
    """Two 20 m bands and a 60 m band in one call (grouped by georeference) equal three separate warps, exactly."""
    rng = np.random.default_rng(4)
    paths = [
        _band_file(tmp_path / "a20.tif", rng.integers(1, 5000, (30, 30), dtype=np.uint16), 20.0),
        _band_file(tmp_path / "b60.tif", rng.integers(1, 5000, (10, 10), dtype=np.uint16), 60.0),
        _band_file(tmp_path / "c20.tif", rng.integers(1, 5000, (30, 30), dtype=np.uint16), 20.0),
    ]
    grid = Grid(CRS_UTM, Affine(10.0, 0, ORIGIN[0], 0, -10.0, ORIGIN[1]), 60, 60)
    options = dict(resampling=Resampling.bilinear, shift_px=(0.3, -0.6), dtype="uint16", nodata=0)
    with rasterio.open(paths[0]) as a, rasterio.open(paths[1]) as b, rasterio.open(paths[2]) as c:
        together = warp_files([a, b, c], [a.read([1]), b.read([1]), c.read([1])], grid, **options)
        alone = np.concatenate([warp_to_grid(src, grid, **options) for src in (a, b, c)])
    assert together.shape == (3, 60, 60) and together.dtype == np.uint16
    np.testing.assert_array_equal(together, alone)


def test_warp_honours_nodata_and_skips_the_mask_when_no_pixel_is_nodata(tmp_path):
    """Nodata pixels stay nodata; without any, the unmasked warp matches GDAL's masked one to 1 DN."""
    rng = np.random.default_rng(5)
    clean = rng.integers(100, 5000, (20, 20), dtype=np.uint16)
    holed = clean.copy()
    holed[5:10, 5:10] = 0
    grid = Grid(CRS_UTM, Affine(10.0, 0, ORIGIN[0], 0, -10.0, ORIGIN[1]), 120, 120)
    for name, pixels in (("clean", clean), ("holed", holed)):
        with rasterio.open(_band_file(tmp_path / f"{name}.tif", pixels, 60.0)) as src:
            out = warp_to_grid(src, grid, resampling=Resampling.bilinear, dtype="uint16", nodata=0)[0]
            masked = np.zeros((120, 120), np.uint16)
            reproject(
                src.read(1), masked, src_transform=src.transform, src_crs=src.crs, src_nodata=0,
                dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=0, resampling=Resampling.bilinear,
            )  # fmt: skip
        assert np.abs(out.astype(int) - masked.astype(int)).max() <= 1, name
        assert ((out == 0) == (masked == 0)).all(), name
    assert (out[33:57, 33:57] == 0).all() and (out[:25] > 0).all()  # the hole (60 m pixels 5-9) stays nodata


def test_phase_correlation_recovers_subpixel_shift_of_gradients():
    """Gradient features of a scene and of a contrast-inverted, shifted copy give the shift to 0.05 px."""
    scene = _textured((128, 128), seed=1)
    moved = -3.0 * ndimage.shift(scene, (-0.6, 1.3), order=3, mode="reflect") + 5.0
    valid = np.ones(scene.shape, bool)
    dx, dy, _ = estimate_shift(gradient_feature(scene, valid, 1.0), gradient_feature(moved, valid, 1.0))
    assert abs(dx - 1.3) < 0.05 and abs(dy + 0.6) < 0.05


def test_peak_search_limited_to_plausible_shifts():
    """A stronger pattern matching 30 px away does not win over the true small shift inside max_shift_px."""
    valid = np.ones((128, 128), bool)
    scene, decoy = _textured((128, 128), seed=2), _textured((128, 128), seed=3)
    ref = gradient_feature(scene, valid, 1.0) + 1.5 * gradient_feature(decoy, valid, 1.0)
    mov = gradient_feature(ndimage.shift(scene, (-0.6, 1.3), order=3, mode="reflect"), valid, 1.0)
    mov += 1.5 * gradient_feature(ndimage.shift(decoy, (20, -22), mode="wrap"), valid, 1.0)
    unlimited = estimate_shift(ref, mov)
    assert np.hypot(unlimited[0] + 22, unlimited[1] - 20) < 1  # the decoy wins the global peak
    dx, dy, _ = estimate_shift(ref, mov, max_shift_px=6)
    assert np.hypot(dx - 1.3, dy + 0.6) < 0.5


def test_shift_estimates_never_exceed_max_shift_px():
    """A true shift just beyond the search radius: the refined estimate is clipped onto it, never past it."""
    valid = np.ones((128, 128), bool)
    scene = _textured((128, 128), seed=4)
    for true in ((6.7, 0.0), (4.9, -4.9), (0.0, -6.4)):
        moved = ndimage.shift(scene, (true[1], true[0]), order=3, mode="reflect")
        dx, dy, _ = estimate_shift(
            gradient_feature(scene, valid, 1.0), gradient_feature(moved, valid, 1.0), max_shift_px=6
        )
        assert np.hypot(dx, dy) <= 6 + 1e-9, (true, dx, dy)


def test_shift_confidence_separates_a_true_shift_from_noise():
    """A shifted textured scene gives the same shift in every quadrant; two unrelated fields do not."""
    valid, cfg = np.ones((128, 128), bool), CoregisterParams()
    scene = gradient_feature(_textured((128, 128), seed=5), valid, 1.0)
    moved = gradient_feature(ndimage.shift(_textured((128, 128), seed=5), (1.2, -2.1), order=3), valid, 1.0)
    unrelated = gradient_feature(_textured((128, 128), seed=6), valid, 1.0)
    for mov, confident in ((moved, True), (unrelated, False)):
        dx, dy, _ = estimate_shift(scene, mov, max_shift_px=6)
        assert (shift_confidence(cfg, scene, mov, (dx, dy)) > 0.7) is confident
        assert (shift_confidence(cfg, scene, mov, (dx, dy)) < 0.4) is not confident


def test_recovered_shifts_match_truth(world):
    """S1 and DSM shifts against the truth sidecar: median absolute error under 0.25 px, also in the report."""
    root, table = world
    scored = table[table["truth_dx_px"].notna()]
    assert set(scored["sensor"]) == {"s1", "dsm"} and len(scored) == 4
    err = np.hypot(scored["shift_dx_px"] - scored["truth_dx_px"], scored["shift_dy_px"] - scored["truth_dy_px"])
    assert np.median(err) < 0.25 and err.max() < 0.5
    report = json.loads((root / "data/reports/coregister.json").read_text())
    assert report["median_abs_error_px"] == pytest.approx(float(np.median(err)), abs=1e-3)
    assert report["s1"]["n"] == 3 and report["dsm"]["n"] == 1 and report["failed"] == 0


def _coreg_path(root: Path, table: pd.DataFrame, raster_id: str) -> Path:
    """The file of a raster of rasters.parquet (names carry an id-derived suffix: read them from the table)."""
    return root / "data/coreg" / table.set_index("id").loc[raster_id, "path"]


def test_every_raster_on_its_aoi_grid(world):
    root, table = world
    assert (table["status"] == "ok").all(), table.loc[table["status"] != "ok", ["id", "error"]]
    grids = read_grids(root / "data/coreg", "farm")
    assert grids["s10"].crs == CRS_UTM and grids["fine"].crs == CRS_UTM  # RGB came in EPSG:3857
    assert grids["fine"].res == (1.0, 1.0)
    for row in table.itertuples():
        with rasterio.open(root / "data/coreg" / row.path) as src:
            assert grids[row.grid].matches(src.crs, src.transform, src.width, src.height), row.id
    s2 = table[(table["sensor"] == "s2") & (table["kind"] == "image")]
    assert list(s2["band_names"].iloc[0]) == list(S2_L2A_BANDS)
    ids = ["s2_farm_20240501", "s2_farm_20240501_cloud", "s1_farm_20240502", "rgb_farm_20240415", "dsm_farm_20230901"]
    expected = [Path(p).name for p in table.set_index("id").loc[ids, "path"]]
    patterns = [
        r"s2_20240501_[0-9a-f]{8}",
        r"s2_20240501_[0-9a-f]{8}_cloud",
        r"s1_20240502_[0-9a-f]{8}",
        r"rgb_20240415_[0-9a-f]{8}",
    ]
    for name, pattern in zip(expected, [*patterns, r"dsm_20230901_[0-9a-f]{8}"], strict=True):
        assert re.fullmatch(pattern + r"\.tif", name), name
    assert set(expected) <= {p.name for p in (root / "data/coreg/farm").glob("*.tif")}
    assert {"landcover.tif", "landcover_fine.tif"} <= {p.name for p in (root / "data/coreg/farm").glob("*.tif")}


def test_coarse_bands_resampled_to_10m(world):
    """The 60 m and 20 m bands land on the 10 m grid with their mean preserved and their shape at 10 m."""
    root, table = world
    with rasterio.open(_coreg_path(root, table, "s2_farm_20240501")) as src:
        out = src.read()
        assert out.shape == (12, 96, 96)
    for band in ("B01", "B05", "B12"):
        with rasterio.open(root / f"data/raw/s2/s2_farm_20240501/{band}.tif") as src:
            native = src.read(1).astype(float)
        resampled = out[S2_L2A_BANDS.index(band)].astype(float)
        assert abs(resampled.mean() - native.mean()) / native.mean() < 0.02
        assert resampled.std() > 0


def test_shift_correction_aligns_s1_with_s2(world):
    """After correction, S1 and S2 gradients agree better than before (the correction is applied, not only recorded)."""
    root, table = world
    cfg = CoregisterParams()
    with rasterio.open(_coreg_path(root, table, "s2_farm_20240501")) as src:
        s2 = src.read([S2_L2A_BANDS.index(b) + 1 for b in cfg.s2_feature_bands]).astype(np.float32)
    ref = gradient_feature(s2, np.all(s2 > 0, axis=0), cfg.feature_sigma_px)
    with rasterio.open(_coreg_path(root, table, "s1_farm_20240502")) as src:
        s1 = src.read()
    after = estimate_shift(ref, gradient_feature(s1, np.all(np.isfinite(s1), axis=0), cfg.s1_speckle_sigma_px))
    assert np.hypot(after[0], after[1]) < 0.3  # truth was (1.3, -0.7)


def test_rerun_reuses_finished_rasters(world):
    root, table = world
    path = _coreg_path(root, table, "s1_farm_20240502")
    before = path.stat().st_mtime_ns
    again = run_stage(root)
    assert path.stat().st_mtime_ns == before
    pd.testing.assert_frame_equal(
        again.drop(columns=["datetime"]).reset_index(drop=True), table.drop(columns=["datetime"]).reset_index(drop=True)
    )


def test_bad_inputs_quarantined_and_good_ones_go_through(tmp_path):
    """S1 without S2 overlap, all-nodata S1, an AOI without S2, and a raw-gate reject: clear reasons, rest intact."""
    world = RawWorld(tmp_path, size=48, fine_size=48)
    world.add_s2("2024-05-01")
    world.add_s1("2024-05-02", (0.8, 0.4))
    far = world.add_s1("2024-05-03", (0.0, 0.0), far_away=True)
    empty = world.add_s1("2024-05-04", (0.0, 0.0), all_nodata=True)
    rejected = world.add_s1("2024-05-05", (0.0, 0.0))
    world.finish(rejected={rejected: "nodata fraction 1.0"})
    lonely = RawWorld(tmp_path, aoi="lonely", size=48, fine_size=48, seed=3)
    orphan = lonely.add_s1("2024-05-02", (0.5, 0.5))
    lonely.rows = world.rows + lonely.rows
    lonely.truth = {}
    lonely.finish(rejected={rejected: "nodata fraction 1.0"})

    table = run_stage(tmp_path).set_index("id")
    assert rejected not in table.index
    assert table.loc[far, "status"] == "failed" and "does not overlap" in table.loc[far, "error"]
    assert table.loc[empty, "status"] == "failed" and "all nodata" in table.loc[empty, "error"]
    assert table.loc[orphan, "status"] == "failed" and "no accepted Sentinel-2" in table.loc[orphan, "error"]
    good = table.loc["s1_farm_20240502"]
    assert good["status"] == "ok" and (tmp_path / "data/coreg" / good["path"]).is_file()
    assert not list((tmp_path / "data/coreg/farm").glob("s1_20240503_*"))


def test_reference_built_from_the_clearest_dates(tmp_path):
    """With reference_dates=2 the cloudy S2 date is left out of the S1 reference; the shift is still recovered."""
    world = RawWorld(tmp_path, size=64, fine_size=48)
    clear_early = world.add_s2("2024-05-01")
    world.add_s2("2024-05-11", cloud=True)
    clear_late = world.add_s2("2024-06-20")
    s1 = world.add_s1("2024-05-14", (-1.2, 0.6))
    world.finish()
    table = run_stage(tmp_path, CoregisterParams(reference_dates=2)).set_index("id")
    assert (table["status"] == "ok").all(), table.loc[table["status"] != "ok", "error"]
    row = table.loc[s1]
    assert row["reference_id"] == f"{clear_early}+{clear_late}"  # the clearest two, in date order
    assert np.hypot(row["shift_dx_px"] - row["truth_dx_px"], row["shift_dy_px"] - row["truth_dy_px"]) < 0.25


def test_missing_inputs_name_the_file(tmp_path):
    with pytest.raises(CoregisterError, match="acquisitions.parquet: not found"):
        load_accepted_items(tmp_path / "acquisitions.parquet", tmp_path / "raw.parquet", tmp_path)


def _ben_item(patch: Path, sensor: str, bands: list[str], aoi: str, raw: Path) -> dict:
    """A ledger row for a BigEarthNet v1.0 patch folder, in download's layout (assets relative to raw)."""
    assets = {b: str((patch / f"{patch.name}_{b}.tif").relative_to(raw)) for b in bands}
    return {
        "id": f"{sensor}_{aoi}_20170613", "sensor": sensor, "aoi": aoi, "biome": "", "bbox": [0, 0, 0, 0],
        "datetime": pd.Timestamp("2017-06-13", tz="UTC"), "crs": "", "assets": json.dumps(assets),
        "item_path": "", "status": "ok", "error": "",
    }  # fmt: skip


def test_bigearthnet_patch_real_layout(tmp_path, test_data):
    """A real BigEarthNet v1.0 S2 patch (bands at 10/20/60 m) and its S1 patch on the S2 10 m grid.

    BigEarthNet ships S1 and S2 on one grid: the S1 shift estimates of this 120 px patch's quadrants disagree
    (confidence about 0.36), so the estimate is not applied and the row says why.
    """
    raw = test_data / "bigearthnet-v1"
    s2_dir = raw / "BigEarthNet-v1.0" / "S2B_MSIL2A_20170924T93020_69_24"
    s1_dir = raw / "BigEarthNet-S1-v1.0" / "S1A_IW_GRDH_1SDV_20170925T043256_35VPK_69_24"
    rows = [_ben_item(s2_dir, "s2", list(S2_L2A_BANDS), "ben", raw), _ben_item(s1_dir, "s1", ["VV", "VH"], "ben", raw)]
    pd.DataFrame(rows).to_parquet(tmp_path / "acquisitions.parquet")
    pd.DataFrame({"id": [r["id"] for r in rows], "accepted": True, "reasons": ""}).to_parquet(tmp_path / "raw.parquet")
    cfg = CoregisterParams()
    table = coregister(
        cfg,
        ledger=tmp_path / "acquisitions.parquet",
        raw_gate=tmp_path / "raw.parquet",
        raw_dir=raw,
        out_dir=tmp_path / "coreg",
        report=tmp_path / "report.json",
    ).set_index("id")
    assert (table["status"] == "ok").all(), table["error"].tolist()
    with rasterio.open(tmp_path / "coreg" / table.loc["s2_ben_20170613", "path"]) as src:
        assert (src.count, src.height, src.width) == (12, 120, 120) and src.crs.to_epsg() == 32635
        out = src.read()
    for band in ("B01", "B09", "B8A"):  # 60 m, 60 m, 20 m
        with rasterio.open(s2_dir / f"{s2_dir.name}_{band}.tif") as src:
            native = src.read(1).astype(float)
        assert abs(out[S2_L2A_BANDS.index(band)].mean() - native.mean()) / native.mean() < 0.02
    s1 = table.loc["s1_ben_20170613"]
    with rasterio.open(s1_dir / f"{s1_dir.name}_VV.tif") as src:
        vv = src.read(1)
    valid = np.ones(vv.shape, bool)
    nir_vs_vv = estimate_shift(  # other features, other smoothing: NIR alone against VV alone
        gradient_feature(out[S2_L2A_BANDS.index("B08")].astype(np.float32), valid, 1.0),
        gradient_feature(vv, valid, 3.0),
        max_shift_px=cfg.max_shift_px,
    )
    assert 0.5 < np.hypot(*nir_vs_vv[:2]) < 4  # the estimators find some offset, ...
    assert s1["shift_confidence"] < cfg.min_shift_confidence  # ... but not the same in each quadrant: not applied
    assert (s1["shift_dx_px"], s1["shift_dy_px"]) == (0.0, 0.0)
    assert re.match(
        r"shift estimate \(\S+, \S+\) px not applied: confidence 0\.\d\d \(quadrants disagree\) < ", s1["shift_note"]
    )


def test_geographic_raster_onto_utm(tmp_path, test_data):
    """A real raster reprojected to EPSG:4326 comes back onto a UTM grid matching the original UTM pixels."""
    src_path = test_data / "geotiff" / "rasterio_RGB.byte.tif"
    geo = tmp_path / "rgb_4326.tif"
    with rasterio.open(src_path) as src:
        original = src.read(1).astype(float)
        tf, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
        out = np.zeros((src.count, h, w), np.uint8)
        reproject(src.read(), out, src_transform=src.transform, src_crs=src.crs, dst_transform=tf, dst_crs="EPSG:4326",
                  src_nodata=0, dst_nodata=0, resampling=Resampling.bilinear)  # fmt: skip
        profile = dict(
            driver="GTiff", count=src.count, width=w, height=h, dtype="uint8", crs="EPSG:4326", transform=tf, nodata=0
        )
        utm = Grid.of(src)
    with rasterio.open(geo, "w", **profile) as dst:
        dst.write(out)
    with rasterio.open(geo) as src:
        back = warp_to_grid(src, utm, indexes=[1], resampling=Resampling.bilinear, dtype="uint8", nodata=0)[0].astype(
            float
        )
    both = (back > 0) & (original > 0)
    assert both.mean() > 0.5
    assert np.corrcoef(back[both], original[both])[0, 1] > 0.9
    # and the phase correlation between the round trip and the original finds no shift
    dx, dy, _ = estimate_shift(gradient_feature(original, both, 1.0), gradient_feature(back, both, 1.0))
    assert np.hypot(dx, dy) < 0.25


def _files(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow  # starts a local Ray instance (5-20 s)
def test_aois_as_ray_tasks_write_the_same_bytes(tmp_path):
    """ray.data_workers: 2 runs each AOI as a Ray task; every output file matches the in-process run's bytes."""
    from msgfm.config import RayParams

    serial, parallel = two_aoi_world(tmp_path / "serial"), tmp_path / "parallel"
    shutil.copytree(serial / "data", parallel / "data")
    table = run_stage(serial)
    assert set(table["aoi"]) == {"farm", "town"} and (table["status"] == "ok").all()
    on_ray = run_stage(parallel, ray_cfg=RayParams(data_workers=2, num_cpus=2))
    pd.testing.assert_frame_equal(on_ray, table)
    ours, theirs = _files(parallel / "data/coreg"), _files(serial / "data/coreg")
    assert sorted(ours) == sorted(theirs)
    assert [p for p in ours if ours[p] != theirs[p]] == []
    report, expected = (json.loads((r / "data/reports/coregister.json").read_text()) for r in (parallel, serial))
    assert report.pop("seconds") > 0 and expected.pop("seconds") > 0
    assert report == expected
