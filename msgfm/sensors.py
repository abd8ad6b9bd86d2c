"""Registry of the sensors msGFM knows, band by band: the four it is pretrained on and those added for fine-tuning.

Every stage that touches pixels (simulation, validation, co-registration, normalisation, the
band-aware patch embedding) reads band names, native resolution, dtype, nodata and normalisation
statistics from here, so a sensor is described once.

Normalisation statistics: Sentinel-2 and Sentinel-1 use the published BigEarthNet v1.0 per-band
means and standard deviations (L2A reflectance x 10000, S1 backscatter in dB); RGB uses values
typical of 1 m aerial imagery. DSM height is normalised relative to each chip's mean (scale 10 m),
since its absolute level only says how high the place is.

`SENSORS` holds the four pretraining sensors (simulated, ingested, paired). `ADDED_SENSORS` holds sensors that
enter only at fine-tuning (WorldView-2/3 PAN and 8-band MS, for SpaceNet pan-sharpening); a pretrained
encoder grows an embedding for them, initialised from its wavelength-nearest bands (msgfm.models.extend).
`register_sensor` adds another one; docs/adding-a-sensor.md walks through it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Band:
    """One band of a sensor: what it measures and how to normalise it."""

    name: str
    gsd_m: float
    dtype: str
    nodata: float | None
    mean: float
    std: float
    wavelength_nm: float | None = None
    unit: str = ""
    relative: bool = False
    """Normalise against the chip's own mean, not `mean`: DSM heights, whose absolute level (tens to
    thousands of metres) says where a chip is, not what is on it."""


@dataclass(frozen=True)
class Sensor:
    """A sensor: its bands in canonical order and where it sits in the pipeline."""

    name: str
    title: str
    bands: tuple[Band, ...]
    unit: str
    valid_range: tuple[float, float]
    fine_grid: bool
    """True for the ~1 m sensors (RGB, DSM) co-registered on the fine grid; False for the 10 m grid."""
    mission_start: dt.date | None = None
    """First day the mission acquired data (its first satellite's launch); None for airborne sensors."""
    full_scale: float = 1.0
    """The value of reflectance 1 (or of the full range) in the sensor's unit: image metrics take value / full_scale."""

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    def band(self, name: str) -> Band:
        """Return the band called `name`, or raise a KeyError that lists the valid names."""
        for b in self.bands:
            if b.name == name:
                return b
        raise KeyError(f"sensor {self.name!r} has no band {name!r}; its bands are {list(self.band_names)}")

    def stats(self, band_names: tuple[str, ...] | list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Means and stds (float32) for `band_names` (all bands by default), in that order."""
        names = self.band_names if band_names is None else tuple(band_names)
        bands = [self.band(n) for n in names]
        return (
            np.array([b.mean for b in bands], dtype=np.float32),
            np.array([b.std for b in bands], dtype=np.float32),
        )

    def normalise(self, pixels: np.ndarray, band_names: tuple[str, ...] | list[str] | None = None) -> np.ndarray:
        """(C, H, W) or (B, C, H, W) physical values -> float32 (x - mean) / std with the registry stats.

        Relative bands (DSM height) subtract each chip's own mean instead of the registry mean.
        """
        return self.normaliser(band_names, pixels.shape[-2:])(pixels)

    def normaliser(
        self, band_names: tuple[str, ...] | list[str] | None = None, shape: tuple[int, ...] = (1, 1)
    ) -> Normaliser:
        """`normalise` for chips of `band_names` and (H, W) `shape`, with its constants computed once."""
        names = self.band_names if band_names is None else tuple(band_names)
        mean, std = self.stats(names)
        plane = (len(names), *shape)
        return Normaliser(
            np.ascontiguousarray(np.broadcast_to(mean[:, None, None], plane)),
            np.ascontiguousarray(np.broadcast_to(std[:, None, None], plane)),
            tuple(i for i, n in enumerate(names) if self.band(n).relative),
        )

    def denormalise(self, pixels: np.ndarray, band_names: tuple[str, ...] | list[str] | None = None) -> np.ndarray:
        """Inverse of `normalise` (relative bands come back relative to the chip mean, plus the registry mean)."""
        mean, std = self.stats(band_names)
        return (pixels.astype(np.float32) * std[:, None, None] + mean[:, None, None]).astype(np.float32)


@dataclass(frozen=True)
class Normaliser:
    """(x - mean) / std for one band list and chip size, mean and std held as full (C, H, W) planes.

    Full planes, not (C, 1, 1) columns: numpy broadcasts a column over a plane several times slower than it
    runs two contiguous arrays, and a chip store normalising row by row (`msgfm.chips.store`) calls this per
    chip with `out` a row of its batch, so the cast and both passes stay in cache.
    """

    centre: np.ndarray
    scale: np.ndarray
    relative: tuple[int, ...]
    """Bands normalised against the chip's own mean (DSM height) instead of `centre`."""

    def __call__(self, pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Normalised float32 pixels, written into `out` (same shape, float32) when given."""
        out = np.empty(pixels.shape, np.float32) if out is None else out
        np.copyto(out, pixels)
        centre = self.centre
        if self.relative:
            rel = list(self.relative)
            centre = np.broadcast_to(centre, out.shape).copy()
            centre[..., rel, :, :] = out[..., rel, :, :].mean(axis=(-2, -1), keepdims=True)
        out -= centre
        out /= self.scale
        return out


_S2 = [
    # name, gsd, wavelength, BigEarthNet mean, std
    ("B01", 60, 443, 340.76, 554.81),
    ("B02", 10, 490, 429.94, 572.41),
    ("B03", 10, 560, 614.21, 582.87),
    ("B04", 10, 665, 590.23, 675.88),
    ("B05", 20, 705, 950.68, 729.89),
    ("B06", 20, 740, 1792.46, 1096.01),
    ("B07", 20, 783, 2075.46, 1273.45),
    ("B08", 10, 842, 2218.94, 1365.45),
    ("B8A", 20, 865, 2266.46, 1356.13),
    ("B09", 60, 945, 2246.07, 1302.30),
    ("B10", 60, 1375, 15.0, 30.0),
    ("B11", 20, 1610, 1594.42, 1079.19),
    ("B12", 20, 2190, 1009.32, 818.86),
]

_C_BAND_WAVELENGTH_NM = 5.5465763e7  # Sentinel-1 C-band, 5.405 GHz

SENTINEL1 = Sensor(
    name="s1",
    title="Sentinel-1 GRD (VV, VH backscatter, dB)",
    bands=(
        Band("VV", 10, "float32", None, -12.62, 5.12, _C_BAND_WAVELENGTH_NM, "dB"),
        Band("VH", 10, "float32", None, -19.29, 5.46, _C_BAND_WAVELENGTH_NM, "dB"),
    ),
    unit="dB",
    valid_range=(-50.0, 20.0),
    fine_grid=False,
    mission_start=dt.date(2014, 4, 3),  # Sentinel-1A launch
)

SENTINEL2 = Sensor(
    name="s2",
    title="Sentinel-2 MSI (13 L1C bands; L2A has 12, without B10), reflectance x 10000",
    bands=tuple(Band(n, g, "uint16", 0, m, s, w, "reflectance x 10000") for n, g, w, m, s in _S2),
    unit="reflectance x 10000",
    valid_range=(0.0, 15000.0),  # plausible, not physical: snow and bright clouds exceed reflectance 1 (10000)
    fine_grid=False,
    mission_start=dt.date(2015, 6, 23),  # Sentinel-2A launch
    full_scale=10000.0,
)

RGB = Sensor(
    name="rgb",
    title="High-resolution aerial RGB (about 1 m, uint8)",
    bands=(
        Band("R", 1, "uint8", None, 118.0, 52.0, 640, "DN"),
        Band("G", 1, "uint8", None, 121.0, 47.0, 555, "DN"),
        Band("B", 1, "uint8", None, 108.0, 45.0, 465, "DN"),
    ),
    unit="DN",
    valid_range=(0.0, 255.0),
    fine_grid=True,
)

DSM = Sensor(
    name="dsm",
    title="Digital surface model (height above the ellipsoid, metres, about 1 m)",
    bands=(Band("height", 1, "float32", -9999.0, 0.0, 10.0, None, "m", relative=True),),
    unit="m",
    valid_range=(-500.0, 9000.0),
    fine_grid=True,
)

SENSORS: dict[str, Sensor] = {s.name: s for s in (SENTINEL1, SENTINEL2, RGB, DSM)}
"""The pretraining sensors by short name, in the order the model indexes them."""

WV_UNIT = "DN / 2047 (11-bit counts scaled to 0..1, as msgfm.datasets.benchmarks.spacenet reads them)"
_WV_MEAN, _WV_STD = 0.15, 0.08
"""Placeholder statistics, not published ones (none exist for SpaceNet): typical 11-bit WorldView DN of land
(about 300 of 2047) and their spread; re-estimate them on your tiles (docs/adding-a-sensor.md)."""

_WV_MS = [
    # name as SpaceNet's loader calls it, centre wavelength (nm): WorldView-2/3 MS bands (Maxar spectral ranges
    # 400-450, 450-510, 510-580, 585-625, 630-690, 705-745, 770-895, 860-1040 nm)
    ("Coastal", 425),
    ("Blue", 480),
    ("Green", 545),
    ("Yellow", 605),
    ("Red", 660),
    ("RedEdge", 725),
    ("NIR1", 833),
    ("NIR2", 950),
]

WORLDVIEW_PAN = Sensor(
    name="wv_pan",
    title="WorldView-2/3 panchromatic (450-800 nm, 0.31 m on WV-3, 11-bit)",
    bands=(Band("PAN", 0.31, "uint16", 0, _WV_MEAN, _WV_STD, 625, WV_UNIT),),
    unit=WV_UNIT,
    valid_range=(0.0, 1.0),
    fine_grid=True,
    mission_start=dt.date(2009, 10, 8),  # WorldView-2 launch
)

WORLDVIEW_MS = Sensor(
    name="wv_ms",
    title="WorldView-2/3 8-band multispectral (400-1040 nm, 1.24 m on WV-3, 11-bit)",
    bands=tuple(Band(n, 1.24, "uint16", 0, _WV_MEAN, _WV_STD, w, WV_UNIT) for n, w in _WV_MS),
    unit=WV_UNIT,
    valid_range=(0.0, 1.0),
    fine_grid=True,
    mission_start=dt.date(2009, 10, 8),  # WorldView-2 launch
)

ADDED_SENSORS: dict[str, Sensor] = {s.name: s for s in (WORLDVIEW_PAN, WORLDVIEW_MS)}
"""Sensors added for fine-tuning only, by short name: an encoder grows their embeddings (msgfm.models.extend)."""


def register_sensor(sensor: Sensor) -> Sensor:
    """Add a fine-tuning sensor to the registry; its bands need centre wavelengths to borrow pretrained kernels."""
    if sensor.name in SENSORS or sensor.name in ADDED_SENSORS:
        raise ValueError(f"sensor {sensor.name!r} is already registered")
    unplaced = [b.name for b in sensor.bands if b.wavelength_nm is None]
    if unplaced or not sensor.bands:
        raise ValueError(
            f"sensor {sensor.name!r}: bands {unplaced or '()'} have no wavelength_nm; an added sensor's embedding "
            "is initialised from the pretrained bands nearest in wavelength"
        )
    ADDED_SENSORS[sensor.name] = sensor
    return sensor


S2_L2A_BANDS: tuple[str, ...] = tuple(n for n in SENTINEL2.band_names if n != "B10")
"""The 12 bands of a Sentinel-2 L2A product (B10, the cirrus band, is dropped by Sen2Cor)."""

LEVEL_LACKS: dict[str, dict[str, tuple[str, ...]]] = {"s2": {"L2A": ("B10",), "L1C": ("SCL",)}}
"""Assets a product level never has: an L2A no B10 (Sen2Cor drops the cirrus band), an L1C no scene classification."""


def level_keys(sensor: str, level: str | None, keys: list[str]) -> list[str]:
    """The wanted asset `keys` that an acquisition of product `level` can have (all, level unknown)."""
    lacks = LEVEL_LACKS.get(sensor, {}).get(level or "", ())
    return [k for k in keys if k not in lacks]


PAIRS: tuple[tuple[str, str], ...] = (("s1", "s2"), ("rgb", "dsm"))
"""Sensors that are co-located and paired for cross-sensor reconstruction."""


S2_COMMON_NAMES: dict[str, str] = {
    "coastal": "B01",
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "rededge1": "B05",
    "rededge2": "B06",
    "rededge3": "B07",
    "nir": "B08",
    "nir08": "B8A",
    "nir09": "B09",
    "cirrus": "B10",
    "swir16": "B11",
    "swir22": "B12",
    "scl": "SCL",
}
"""Earth Search's (element84) Sentinel-2 asset keys, the STAC eo common names, -> the registry's band names."""

AUXILIARY_ASSETS: dict[str, tuple[str, ...]] = {"s2": ("SCL", "cloud_mask")}
"""Assets of a band-split sensor that are not bands: the L2A scene classification, the simulator's cloud mask."""


def canonical_band(sensor: str, key: str, asset: dict | None = None) -> str:
    """The registry's name for a catalog's asset key or band name of `sensor` (`key` itself when unknown).

    The one alias table of the project: any case (`vv`, `b02`), unpadded S2 numbers (`B1`, `B8a`), Earth
    Search's common names (`blue`, `nir08`, `swir16`, `scl`), then the asset's single `eo:bands` entry
    (`name` or `common_name`) when the key says nothing (`image_b2`).
    """
    spec = SENSORS.get(sensor)
    if spec is None:
        return key
    names = {n.lower(): n for n in (*spec.band_names, *AUXILIARY_ASSETS.get(sensor, ()))}
    low = key.strip().lower()
    if sensor == "s2":
        low = S2_COMMON_NAMES.get(low, low).lower()
        if len(low) == 2 and low[0] == "b" and low[1].isdigit():
            low = f"b0{low[1]}"  # B1 -> B01
    if low in names:
        return names[low]
    bands = (asset or {}).get("eo:bands")
    if isinstance(bands, list) and len(bands) == 1 and isinstance(bands[0], dict):
        for field in ("name", "common_name"):
            named = bands[0].get(field)
            if isinstance(named, str) and named and named != key:
                found = canonical_band(sensor, named)
                if found.lower() in names:
                    return found
    return key


def get_sensor(name: str) -> Sensor:
    """Return the sensor called `name`, or raise a KeyError that lists the known sensors."""
    found = SENSORS.get(name) or ADDED_SENSORS.get(name)
    if found is None:
        raise KeyError(f"unknown sensor {name!r}; known sensors are {[*SENSORS, *ADDED_SENSORS]}")
    return found


def partner_of(sensor: str) -> str:
    """The sensor paired with `sensor` for cross-sensor reconstruction."""
    for a, b in PAIRS:
        if sensor == a:
            return b
        if sensor == b:
            return a
    raise KeyError(f"sensor {sensor!r} has no partner; pairs are {PAIRS}")
