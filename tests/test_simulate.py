"""The simulated world (`msgfm simulate`): determinism, --until increments, STAC, truth, and realism against
real BigEarthNet v1 / SEN12MS-CR samples in tests/data (see their README.md)."""

from __future__ import annotations

import datetime as dt
import glob
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import yaml
from scipy import ndimage
from skimage.registration import phase_cross_correlation
from typer.testing import CliRunner

from msgfm.config import ParamsError, load_params
from msgfm.geo.io import sha256_file
from msgfm.sensors import S2_L2A_BANDS
from msgfm.sim.catalog import COLLECTIONS, validate_catalog
from msgfm.sim.preview import write_preview
from msgfm.sim.simulate import (
    DSM_NODATA,
    Acquisition,
    _AOIContext,
    schedule,
    simulate_world,
)

TINY = {
    "seed": 7,
    "simulate": {
        "out_dir": "OUT",
        "aois": [
            {"name": "farm", "biome": "temperate_farmland", "lon": 11.4, "lat": 48.2},
            {"name": "taiga", "biome": "boreal_forest", "lon": 26.7, "lat": 62.3},
            {"name": "dunes", "biome": "arid", "lon": 35.2, "lat": 30.6},
            {"name": "port", "biome": "coastal_city", "lon": -8.62, "lat": 41.15},
            {"name": "peaks", "biome": "alpine", "lon": 10.9, "lat": 46.8},
        ],
        "size_px": 60,
        "fine_size_px": 96,
        "start": "2024-04-01",
        "end": "2024-09-30",
        "s2_dates": 3,
        "s1_dates": 2,
        "cloudy_fraction": 0.34,
        "max_s1_shift_px": 2.5,
        "max_dsm_shift_px": 2.0,
    },
}
UNTIL = dt.date(2024, 6, 15)


def _params(tmp: Path, out: Path, **overrides) -> Path:
    doc = json.loads(json.dumps(TINY))
    doc["simulate"]["out_dir"] = str(out)
    doc["simulate"].update(overrides)
    path = tmp / f"params_{out.name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, object]:
    """The tiny world, simulated once with a preview; returns (out_dir, params)."""
    tmp = tmp_path_factory.mktemp("sim")
    params = load_params(_params(tmp, tmp / "full"))
    simulate_world(params.simulate, seed=params.seed, progress=False)
    write_preview(Path(params.simulate.out_dir), params.simulate, tmp / "preview.png")
    return tmp / "full", params


def _items(root: Path, sensor: str) -> list[pystac.Item]:
    cat = pystac.Catalog.from_file(str(root / "catalog.json"))
    return sorted(
        (i for i in cat.get_items(recursive=True) if i.properties["msgfm:sensor"] == sensor), key=lambda i: i.id
    )


def _read(item: pystac.Item, key: str) -> np.ndarray:
    with rasterio.open(item.assets[key].get_absolute_href()) as src:
        return src.read(1)


def test_until_increments_touch_no_file_and_add_up_to_the_same_bytes(world, tmp_path):
    """Publishing up to a date, then to the end, leaves existing files untouched and gives exactly the bytes
    of a separate one-shot run with the same seed (so this is also the determinism check over all files)."""
    root, _ = world
    out = tmp_path / "incremental"
    params = load_params(_params(tmp_path, out))
    simulate_world(params.simulate.model_copy(update={"until": UNTIL}), seed=params.seed, progress=False)
    early = _items(out, "s2") + _items(out, "s1")
    assert early and all(i.datetime.date() <= UNTIL for i in early)
    before = {p: (p.stat().st_mtime_ns, sha256_file(p)) for p in out.rglob("*") if p.is_file()}
    n_before = sum(1 for _ in pystac.Catalog.from_file(str(out / "catalog.json")).get_items(recursive=True))

    simulate_world(params.simulate, seed=params.seed, progress=False)
    n_after = sum(1 for _ in pystac.Catalog.from_file(str(out / "catalog.json")).get_items(recursive=True))
    assert n_after > n_before
    untouched = [p for p in before if p.suffix == ".tif" or p.parent.name == p.stem]  # assets and item JSON
    assert untouched
    for p in untouched:
        assert (p.stat().st_mtime_ns, sha256_file(p)) == before[p], f"{p} was rewritten"
    full, incremental = _hashes(root), _hashes(out)
    assert len(full) > 100
    assert incremental == full


def test_catalog_validates_and_every_checksum_matches(world):
    root, params = world
    assert validate_catalog(root) > 20
    cat = pystac.Catalog.from_file(str(root / "catalog.json"))
    assert {c.id for c in cat.get_children()} == {c for c, _ in COLLECTIONS.values()}
    items = list(cat.get_items(recursive=True))
    for item in items:
        sensor = item.properties["msgfm:sensor"]
        assert item.properties["proj:code"].startswith("EPSG:")
        assert item.id == (f"landcover_{item.properties['msgfm:aoi']}" if sensor == "landcover"
                           else f"{sensor}_{item.properties['msgfm:aoi']}_{item.datetime:%Y%m%d}")  # fmt: skip
        for asset in item.assets.values():
            path = Path(asset.get_absolute_href())
            assert asset.extra_fields["file:size"] == path.stat().st_size
            assert asset.extra_fields["file:checksum"] == "1220" + sha256_file(path)
    s2 = _items(root, "s2")[0]
    assert set(s2.assets) == {*S2_L2A_BANDS, "cloud_mask"}
    with (
        rasterio.open(s2.assets["B01"].get_absolute_href()) as b01,
        rasterio.open(s2.assets["B05"].get_absolute_href()) as b05,
    ):
        assert (b01.res, b05.res) == ((60.0, 60.0), (20.0, 20.0))
        assert b01.width * 6 == params.simulate.size_px and b01.nodata == 0
    size = params.simulate.size_px
    assert s2.properties["proj:shape"] == [size, size] and s2.properties["proj:transform"][0] == 10.0
    assert s2.assets["B01"].extra_fields["proj:shape"] == [size // 6, size // 6]
    assert s2.assets["B05"].extra_fields["proj:transform"][0] == 20.0
    assert "proj:shape" not in s2.assets["B02"].extra_fields


def test_rgb_is_delivered_in_another_crs_than_s2(world):
    root, _ = world
    for rgb, s2 in zip(_items(root, "rgb"), _items(root, "s2")[:: 3], strict=False):  # fmt: skip
        with rasterio.open(rgb.assets["image"].get_absolute_href()) as src:
            assert src.count == 3 and src.dtypes[0] == "uint8"
            assert src.crs.to_string() != s2.properties["proj:code"]
            assert src.crs.to_string() == rgb.properties["proj:code"] == "EPSG:3857"


def test_truth_sidecar_has_every_s1_and_dsm_shift_within_limits(world):
    root, params = world
    cfg = params.simulate
    for aoi in cfg.aois:
        shifts = json.loads((root / "truth" / f"{aoi.name}.json").read_text())["shifts"]
        ids = {i.id for s in ("s1", "dsm") for i in _items(root, s) if i.properties["msgfm:aoi"] == aoi.name}
        assert set(shifts) == ids
        for item_id, t in shifts.items():
            limit = cfg.max_s1_shift_px if item_id.startswith("s1") else cfg.max_dsm_shift_px
            assert 0 < np.hypot(t["dx_px"], t["dy_px"]) <= limit + 1e-9
            assert t["reference"] == f"landcover_{aoi.name}"


def test_dsm_is_really_misregistered_by_the_truth_shift(world):
    """Phase correlation of the published DSM against the unshifted ground truth recovers (dy_px, dx_px)."""
    root, params = world
    errors = []
    for item in _items(root, "dsm"):
        aoi = next(a for a in params.simulate.aois if a.name == item.properties["msgfm:aoi"])
        ctx = _AOIContext(params.simulate, aoi, params.seed)
        x, y = ctx.grids.centres(ctx.grids.fine, ctx.grids.fine_size)
        reference = ctx.world.surface(x, y)["dsm"]
        dsm = _read(item, "dsm")
        with rasterio.open(item.assets["dsm"].get_absolute_href()) as src:
            assert src.transform == ctx.grids.fine  # the declared grid is the nominal one
        valid = dsm != DSM_NODATA
        moving = np.where(valid, dsm, np.median(dsm[valid]))
        t = json.loads((root / "truth" / f"{aoi.name}.json").read_text())["shifts"][item.id]
        # exact: the pixels are the ground truth sampled at the shifted positions (plus 5 cm noise) ...
        xs, ys = ctx.grids.centres(ctx.grids.fine, ctx.grids.fine_size, t["dx_px"], t["dy_px"])
        assert np.abs(dsm - ctx.world.surface(xs, ys)["dsm"])[valid].mean() < 0.1

        # ... and an image matcher recovers the shift with the documented sign convention
        def highpass(a):
            return a - ndimage.gaussian_filter(a, 4)

        (dy, dx), *_ = phase_cross_correlation(highpass(reference), highpass(moving), upsample_factor=20)
        errors.append(max(abs(dx - t["dx_px"]), abs(dy - t["dy_px"])))
    assert max(errors) < 0.3, errors


def test_every_cloudy_s2_scene_has_a_clear_scene_within_days(world):
    root, params = world
    s2 = _items(root, "s2")
    cloudy = [i for i in s2 if i.properties["eo:cloud_cover"] > 5]
    assert cloudy
    for item in cloudy:
        mask = _read(item, "cloud_mask")
        assert {1, 2} <= set(np.unique(mask).tolist())  # clouds and their shadows
        clear = [
            c for c in s2
            if c.properties["msgfm:aoi"] == item.properties["msgfm:aoi"] and c.properties["eo:cloud_cover"] == 0
            and abs((c.datetime - item.datetime).days) <= params.simulate.clear_partner_days
        ]  # fmt: skip
        assert clear, f"{item.id} has no clear partner"


def _real_s2_range() -> dict[str, tuple[float, float]]:
    root = Path(__file__).parent / "data" / "bigearthnet-v1" / "BigEarthNet-v1.0"
    out = {}
    for band in S2_L2A_BANDS:
        vals = [rasterio.open(f).read(1).ravel() for f in sorted(glob.glob(str(root / "*" / f"*_{band}.tif")))]
        v = np.concatenate(vals)
        out[band] = (float(v.min()), float(v.max()))
    return out


def test_s2_reflectance_percentiles_fall_inside_real_l2a_ranges(world):
    root, _ = world
    real = _real_s2_range()
    assert len(real) == 12
    for band in S2_L2A_BANDS:
        vals = []
        for item in _items(root, "s2"):
            img, mask = _read(item, band).astype(np.float32), _read(item, "cloud_mask")
            f = mask.shape[0] // img.shape[0]
            cloudfree = mask.reshape(img.shape[0], f, img.shape[1], f).max(axis=(1, 3)) == 0
            vals.append(img[cloudfree])
        p5, p95 = np.percentile(np.concatenate(vals), [5, 95])
        lo, hi = real[band]
        assert lo <= p5 < p95 <= hi, f"{band}: simulated p5-p95 {p5:.0f}-{p95:.0f} outside real {lo:.0f}-{hi:.0f}"


def test_cloud_reflectance_is_like_real_cloudy_sen12ms(world):
    root, _ = world
    path = glob.glob(str(Path(__file__).parent / "data" / "sen12ms-cr" / "*_s2_cloudy" / "*" / "*.tif"))[0]
    real = rasterio.open(path).read().astype(np.float32)  # 13 L1C bands
    for band in ("B02", "B03", "B04", "B08"):
        k = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"].index(band)
        clouds = np.concatenate([_read(i, band)[_read(i, "cloud_mask") == 1] for i in _items(root, "s2")])
        assert clouds.size > 100
        assert real[k].min() <= np.median(clouds) <= real[k].max()


def test_s1_db_percentiles_fall_inside_real_ranges(world):
    root, _ = world
    data = Path(__file__).parent / "data"
    s1_sen12 = rasterio.open(glob.glob(str(data / "sen12ms-cr" / "*_s1" / "*" / "*.tif"))[0]).read()
    for k, pol in enumerate(("VV", "VH")):
        ben = [
            rasterio.open(f).read(1).ravel()
            for f in glob.glob(str(data / "bigearthnet-v1" / "*S1*" / "*" / f"*_{pol}.tif"))
        ]
        real = np.concatenate([*ben, s1_sen12[k].ravel()])
        sim = np.concatenate([_read(i, pol).ravel() for i in _items(root, "s1")])
        p5, p95 = np.percentile(sim, [5, 95])
        assert real.min() <= p5 < p95 <= real.max(), f"{pol}: {p5:.1f}..{p95:.1f} vs {real.min():.1f}..{real.max():.1f}"


def test_s1_speckle_enl_on_homogeneous_water_is_3_to_6(world):
    root, params = world
    margin = int(np.ceil(params.simulate.max_s1_shift_px)) + 1  # S1 is misregistered: stay clear of shores
    enls = []
    for item in _items(root, "s1"):
        lc = _read(_items(root, "landcover")[[i.properties["msgfm:aoi"] for i in _items(root, "landcover")].index(
            item.properties["msgfm:aoi"])], "map")  # fmt: skip
        water = ndimage.binary_erosion(lc == 80, iterations=margin)
        if water.sum() < 100:
            continue
        lin = 10 ** (_read(item, "VV")[water].astype(np.float64) / 10)
        enls.append(lin.mean() ** 2 / lin.var())
    assert len(enls) >= 2
    assert all(3 <= e <= 6 for e in enls), enls


def test_backscatter_is_class_dependent(world):
    """Pooled over AOIs and dates: water dark, built-up bright in VV; forest high VH (low VV/VH ratio)."""
    root, params = world
    maps = {i.properties["msgfm:aoi"]: _read(i, "map") for i in _items(root, "landcover")}
    margin = int(np.ceil(params.simulate.max_s1_shift_px)) + 1
    pooled: dict[tuple[str, int], list[np.ndarray]] = {}
    for item in _items(root, "s1"):
        lc = maps[item.properties["msgfm:aoi"]]
        for code in (10, 50, 80):
            core = ndimage.binary_erosion(lc == code, iterations=margin)
            for pol in ("VV", "VH"):
                pooled.setdefault((pol, code), []).append(_read(item, pol)[core])
    mean = {k: float(np.concatenate(v).mean()) for k, v in pooled.items()}
    assert mean["VV", 80] + 8 < mean["VV", 50]
    assert mean["VH", 80] + 8 < mean["VH", 10]
    assert mean["VV", 10] < mean["VV", 50]
    assert mean["VV", 10] - mean["VH", 10] < mean["VV", 50] - mean["VH", 50]  # forest depolarises most


def test_crop_greenness_follows_the_season(world):
    root, _ = world
    lc = _read(next(i for i in _items(root, "landcover") if i.properties["msgfm:aoi"] == "farm"), "map")
    ndvi = {}
    for item in _items(root, "s2"):
        if item.properties["msgfm:aoi"] == "farm" and item.properties["eo:cloud_cover"] == 0:
            red, nir = _read(item, "B04").astype(float), _read(item, "B08").astype(float)
            ndvi[item.datetime.date()] = float(((nir - red) / (nir + red))[lc == 40].mean())
    assert len(ndvi) >= 2
    assert max(ndvi.values()) - min(ndvi.values()) > 0.1, ndvi


def test_land_cover_shares_follow_biome_priors(world):
    root, _ = world
    maps = {i.properties["msgfm:aoi"]: _read(i, "map") for i in _items(root, "landcover")}
    assert (maps["farm"] == 40).mean() > 0.25 and (maps["taiga"] == 10).mean() > 0.3
    assert (maps["dunes"] == 60).mean() > 0.3 and (maps["port"] == 50).mean() > 0.2
    assert (maps["peaks"] == 70).any() and not (maps["farm"] == 70).any()


def test_preview_png_is_written(world):
    root, _ = world
    from PIL import Image

    with Image.open(root.parent / "preview.png") as png:
        assert png.format == "PNG" and png.width > 3 * png.height > 600
        assert len(np.unique(np.asarray(png.convert("L")))) > 100  # an image, not a blank canvas


def test_schedule_ignores_until_and_pairs_cloudy_dates(world):
    _, params = world
    cfg = params.simulate
    full = schedule(cfg, cfg.aois[0], params.seed)
    assert schedule(cfg.model_copy(update={"until": UNTIL}), cfg.aois[0], params.seed) == full
    s2 = [a for a in full if a.sensor == "s2"]
    assert len(s2) == cfg.s2_dates and sum(a.cloudy for a in s2) == 1
    assert Acquisition("s2", cfg.aois[0], dt.date(2024, 1, 1)).item_id == "s2_farm_20240101"


def test_cli_simulate_and_bad_params(tmp_path):
    from msgfm.cli import app

    out = tmp_path / "cli"
    params = _params(tmp_path, out, aois=TINY["simulate"]["aois"][:1], s2_dates=2, s1_dates=1)
    res = CliRunner().invoke(app, ["simulate", "--params", str(params), "--until", "2024-05-01"])
    assert res.exit_code == 0, res.output
    items = list(pystac.Catalog.from_file(str(out / "catalog.json")).get_items(recursive=True))
    assert {i.properties["msgfm:sensor"] for i in items} == {"landcover", "s2"}
    bad = _params(tmp_path, tmp_path / "bad", size_px=50)
    res = CliRunner().invoke(app, ["simulate", "--params", str(bad)])
    assert res.exit_code == 2 and "size_px" in res.output and "multiple of 6" in res.output
    crowded = _params(tmp_path, tmp_path / "crowded", s2_dates=40, clear_partner_days=10, cloudy_fraction=0.5)
    res = CliRunner().invoke(app, ["simulate", "--params", str(crowded)])
    assert res.exit_code == 2 and "do not fit" in res.output and "Traceback" not in res.output
    with pytest.raises(ParamsError, match="must fit in the AOI"):
        load_params(_params(tmp_path, tmp_path / "bad2", fine_size_px=1000))
