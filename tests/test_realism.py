"""Realism of the simulated world against the real samples in tests/data (BigEarthNet v1 S2/S1, SEN12MS-CR).

Each test compares a statistic of simulated rasters with the same statistic of real rasters, with a
tolerance the earlier point-sampled simulator failed (numbers in docs/simulator.md, "Realism"):
per-band reflectance and backscatter quantiles, the radially averaged power spectrum's log-log slope
(texture and mixed pixels), spectral peaks (periodic artefacts of sums of cosines in clouds), and how
far a single band threshold recovers a class of the land-cover map (labels as hard as real ones).
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import yaml

from msgfm.config import load_params
from msgfm.sim.simulate import simulate_world

DATA = Path(__file__).parent / "data"
VEGETATED = ("farm", "taiga")  # the real BigEarthNet patches are vegetated summer scenes
WORLD = {
    "seed": 11,
    "simulate": {
        "aois": [
            {"name": "farm", "biome": "temperate_farmland", "lon": 11.4, "lat": 48.2},
            {"name": "taiga", "biome": "boreal_forest", "lon": 26.7, "lat": 62.3},
            {"name": "port", "biome": "coastal_city", "lon": -8.62, "lat": 41.15},
            {"name": "peaks", "biome": "alpine", "lon": 10.9, "lat": 46.8},
        ],
        "size_px": 120,
        "fine_size_px": 96,
        "start": "2024-06-01",
        "end": "2024-07-10",
        "s2_dates": 2,
        "s1_dates": 1,
        "cloudy_fraction": 0.5,
    },
}


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    """A small June world (four biomes, one clear and one cloudy S2 date each), simulated once."""
    tmp = tmp_path_factory.mktemp("realism")
    doc = json.loads(json.dumps(WORLD))
    doc["simulate"]["out_dir"] = str(tmp / "src")
    (tmp / "params.yaml").write_text(yaml.safe_dump(doc))
    params = load_params(tmp / "params.yaml")
    simulate_world(params.simulate, seed=params.seed, progress=False)
    return tmp / "src"


def _read(path: str | Path, band: int = 1) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(band)


def _items(root: Path, sensor: str, aois: tuple[str, ...] | None = None) -> list[pystac.Item]:
    cat = pystac.Catalog.from_file(str(root / "catalog.json"))
    items = [i for i in cat.get_items(recursive=True) if i.properties["msgfm:sensor"] == sensor]
    return sorted((i for i in items if aois is None or i.properties["msgfm:aoi"] in aois), key=lambda i: i.id)


def _asset(item: pystac.Item, key: str) -> np.ndarray:
    return _read(item.assets[key].get_absolute_href())


def _clear_s2(root: Path, aois: tuple[str, ...] | None = None) -> list[pystac.Item]:
    return [i for i in _items(root, "s2", aois) if i.properties["eo:cloud_cover"] == 0]


def _real_s2(band: str) -> list[np.ndarray]:
    files = sorted(glob.glob(str(DATA / "bigearthnet-v1" / "BigEarthNet-v1.0" / "*" / f"*_{band}.tif")))
    assert len(files) == 4
    return [_read(f).astype(np.float64) for f in files]


def spectrum_slope(img: np.ndarray) -> float:
    """Log-log slope of the radially averaged power spectrum (Hann-windowed), wavenumbers 2..n/2-1."""
    n = min(img.shape)
    a = img[:n, :n].astype(np.float64)
    a = (a - a.mean()) * np.outer(np.hanning(n), np.hanning(n))
    power = np.abs(np.fft.fftshift(np.fft.fft2(a))) ** 2
    yy, xx = np.indices(power.shape)
    r = np.hypot(yy - n // 2, xx - n // 2).astype(int).ravel()
    prof = np.bincount(r, power.ravel()) / np.maximum(np.bincount(r), 1)
    k = np.arange(2, n // 2)
    return float(np.polyfit(np.log(k), np.log(prof[k]), 1)[0])


def spectral_peak_ratio(img: np.ndarray) -> float:
    """Largest power over the median power of its own wavenumber ring (k >= 3): sums of few cosines have
    isolated peaks (ratios in the thousands); fractal textures and real scenes have tens."""
    n = min(img.shape)
    a = img[:n, :n].astype(np.float64)
    a = (a - a.mean()) * np.outer(np.hanning(n), np.hanning(n))
    power = np.abs(np.fft.fftshift(np.fft.fft2(a))) ** 2
    yy, xx = np.indices(power.shape)
    r = np.hypot(yy - n // 2, xx - n // 2).astype(int)
    best = 0.0
    for k in range(3, n // 2):
        ring = power[r == k]
        best = max(best, float(ring.max() / np.median(ring)))
    return best


@pytest.mark.parametrize("band", ["B02", "B04", "B08", "B11", "B12"])
def test_vegetated_s2_quantiles_are_like_real_bigearthnet(sim, band):
    """Quartiles of vegetated June scenes within a factor 1.5 of the four real patches pooled."""
    real = np.percentile(np.concatenate([a.ravel() for a in _real_s2(band)]), [25, 50, 75])
    items = _clear_s2(sim, VEGETATED)
    assert len(items) == 2
    simulated = np.percentile(np.concatenate([_asset(i, band).ravel() for i in items]), [25, 50, 75])
    ratio = simulated / real
    assert np.all((ratio > 1 / 1.5) & (ratio < 1.5)), f"{band}: simulated {simulated} vs real {real}"


def test_dense_vegetation_reaches_real_ndvi(sim):
    """The 90th NDVI percentile of vegetated scenes within 0.06 of the real patches' (about 0.88)."""
    red, nir = _real_s2("B04"), _real_s2("B08")
    real = np.percentile(np.concatenate([((n - r) / (n + r)).ravel() for r, n in zip(red, nir, strict=True)]), 90)
    ndvi = []
    for item in _clear_s2(sim, VEGETATED):
        r, n = _asset(item, "B04").astype(np.float64), _asset(item, "B08").astype(np.float64)
        ndvi.append(((n - r) / (n + r)).ravel())
    simulated = np.percentile(np.concatenate(ndvi), 90)
    assert abs(simulated - real) < 0.06, f"NDVI p90 simulated {simulated:.3f} vs real {real:.3f}"


def test_s2_power_spectrum_slope_is_like_real(sim):
    """Median slope over clear scenes and the 10 m bands within 0.2 of the real patches' median (about -2.8):
    point-sampled pixels with per-pixel noise are too rough (about -2.5)."""
    bands = ("B02", "B03", "B04", "B08")
    real = np.median([spectrum_slope(a) for b in bands for a in _real_s2(b)])
    items = _clear_s2(sim)
    simulated = np.median([spectrum_slope(_asset(i, b)) for i in items for b in bands])
    assert abs(simulated - real) < 0.2, f"slope simulated {simulated:.2f} vs real {real:.2f} (n={len(items)} scenes)"


def test_clouds_have_no_periodic_artefacts(sim):
    """Cloudy bands have no isolated spectral peaks: peak ratio under 3x the real cloudy SEN12MS-CR scene's."""
    path = glob.glob(str(DATA / "sen12ms-cr" / "*_s2_cloudy" / "*" / "*.tif"))[0]
    real = spectral_peak_ratio(_read(path, 2))  # B02 of the 13 L1C bands
    cloudy = [i for i in _items(sim, "s2") if i.properties["eo:cloud_cover"] > 5]
    assert len(cloudy) >= 3
    ratios = [spectral_peak_ratio(_asset(i, "B02")) for i in cloudy]
    assert max(ratios) < 3 * real, f"peak ratios {np.round(ratios)} vs real cloudy {real:.0f}"


@pytest.mark.parametrize("pol", ["VV", "VH"])
def test_vegetated_s1_quantiles_are_like_real(sim, pol):
    """VV/VH dB deciles of vegetated scenes within 2.5 dB of the real BigEarthNet S1 patches pooled."""
    files = glob.glob(str(DATA / "bigearthnet-v1" / "BigEarthNet-S1-v1.0" / "*" / f"*_{pol}.tif"))
    real = np.percentile(np.concatenate([_read(f).ravel() for f in files]), [10, 50, 90])
    pooled = np.concatenate([_asset(i, pol).ravel() for i in _items(sim, "s1", VEGETATED)])
    simulated = np.percentile(pooled, [10, 50, 90])
    assert np.all(np.abs(simulated - real) < 2.5), f"{pol}: simulated {simulated.round(1)} vs real {real.round(1)}"


def _best_threshold_agreement(values: np.ndarray, truth: np.ndarray) -> float:
    """The best balanced accuracy of `values < t` or `values > t` for the boolean map `truth`."""
    best = 0.0
    for t in np.unique(np.percentile(values, np.linspace(0.5, 99.5, 200))):
        below = values < t
        for pred in (below, ~below):
            bacc = 0.5 * (pred[truth].mean() + (~pred[~truth]).mean())
            best = max(best, float(bacc))
    return best


@pytest.mark.parametrize(("code", "band"), [(80, "B08"), (70, "B02"), (50, "B04")])
def test_no_class_is_a_single_band_threshold(sim, code, band):
    """Mixed pixels, texture and label noise: no band threshold reproduces a class of the map (water B08,
    snow B02, built-up B04) at 99 % balanced accuracy (the point-sampled world: 100 %)."""
    agreements = []
    for lc in _items(sim, "landcover"):
        label = _asset(lc, "map") == code
        if label.sum() < 30:
            continue
        aoi = lc.properties["msgfm:aoi"]
        for item in _clear_s2(sim, (aoi,)):
            agreements.append(_best_threshold_agreement(_asset(item, band).astype(np.float64), label))
    assert agreements
    assert max(agreements) < 0.99, f"class {code} from {band}: balanced accuracy {np.round(agreements, 4)}"
