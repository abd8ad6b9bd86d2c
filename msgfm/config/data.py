"""Params sections of the data stages: simulate, source, download, gates, coregister, pair, retrain."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from msgfm.config.base import Section


class AOIParams(Section):
    """One simulated area of interest."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    biome: Literal["temperate_farmland", "boreal_forest", "arid", "coastal_city", "alpine"]
    lon: float = Field(ge=-180, le=180)
    lat: float = Field(ge=-80, le=84)


class SimulateParams(Section):
    """`msgfm simulate`: the embedded simulated world, published as a static STAC catalog."""

    out_dir: Path = Path("data/source")
    aois: list[AOIParams] = Field(min_length=1)
    size_px: int = Field(128, ge=32, le=4096, description="AOI side at the 10 m S2 grid, pixels")
    fine_size_px: int = Field(256, ge=32, le=8192, description="RGB/DSM side at the fine grid, pixels")
    fine_gsd_m: float = Field(1.0, gt=0, le=5)
    start: dt.date = dt.date(2024, 3, 1)
    end: dt.date = dt.date(2024, 10, 31)
    s2_dates: int = Field(6, ge=1, le=100)
    s1_dates: int = Field(6, ge=1, le=100)
    rgb_dates: int = Field(1, ge=1, le=20)
    dsm_dates: int = Field(1, ge=1, le=20)
    cloudy_fraction: float = Field(0.33, ge=0, le=0.5, description="share of S2 dates that are cloudy")
    clear_partner_days: int = Field(5, ge=1, le=30, description="days from a cloudy S2 date to its clear partner")
    s1_looks: float = Field(4.4, ge=1, le=20, description="equivalent number of looks of the S1 Gamma speckle")
    max_s1_shift_px: float = Field(3.0, ge=0, le=20)
    max_dsm_shift_px: float = Field(3.0, ge=0, le=20)
    until: dt.date | None = Field(None, description="publish only acquisitions up to this date")
    label_noise: float = Field(
        0.05, ge=0, le=0.5, description="share of 30 m cells the land-cover map labels with the runner-up class"
    )

    @model_validator(mode="after")
    def _dates_ordered(self) -> SimulateParams:
        if self.end <= self.start:
            raise ValueError(f"simulate.end ({self.end}) must be after simulate.start ({self.start})")
        if self.size_px % 6:
            raise ValueError(f"simulate.size_px ({self.size_px}) must be a multiple of 6 (20 m and 60 m S2 bands)")
        if self.fine_size_px * self.fine_gsd_m > self.size_px * 10:
            raise ValueError(
                f"simulate.fine_size_px * fine_gsd_m ({self.fine_size_px * self.fine_gsd_m} m) must fit in the AOI "
                f"(size_px * 10 m = {self.size_px * 10} m)"
            )
        names = [a.name for a in self.aois]
        if len(set(names)) != len(names):
            raise ValueError(f"simulate.aois names must be unique, got {names}")
        return self


class RetrainParams(Section):
    """flows/retrain.py: scheduled retraining on new acquisitions, and its champion/challenger gate."""

    cron: str = Field(
        "0 3 * * *",
        pattern=r"^\S+( \S+){4}$",
        description="when the retrain-on-new-acquisitions deployment polls the source (5-field cron)",
    )
    timezone: str = Field("UTC", description="IANA time zone the cron schedule is read in")
    tolerance: float = Field(
        0.02, ge=0, le=1, description="relative loss still promoted on a gated metric without intervals"
    )
    lock_path: Path = Field(Path("data/retrain.lock"), description="file lock held while a retraining run works")
    lock_wait_s: float = Field(0, ge=0, le=86400, description="wait this long for a running retrain, then exit")
    registry_path: Path = Path("data/models/registry.json")
    metrics_path: Path = Field(Path("data/metrics/evaluate.json"), description="the evaluate stage's test metrics")
    allowed_overrides: list[str] = Field(
        ["seed", "simulate", "coregister", "pair", "model", "pretrain", "pretrain_variants", "finetune", "evaluate"],
        description="params sections (or dotted keys) a flow run's `overrides` may set; others are refused",
    )

    @model_validator(mode="after")
    def _known_timezone(self) -> RetrainParams:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"retrain.timezone: unknown time zone {self.timezone!r}") from None
        return self


class CoregisterParams(Section):
    """`msgfm coregister`: every sensor of an AOI on one grid (S1/S2 10 m; RGB/DSM fine), shift-corrected."""

    out_dir: Path = Field(Path("data/coreg"), description="co-registered tiled GeoTIFFs and rasters.parquet")
    report: Path = Path("data/reports/coregister.json")
    truth_dir: Path | None = Field(Path("data/source/truth"), description="simulator truth sidecars, to score shifts")
    fine_gsd_m: float = Field(1.0, gt=0, le=5, description="pixel size of the RGB/DSM grid, metres")
    s2_resampling: Literal["bilinear", "cubic", "cubic_spline", "lanczos", "average"] = "bilinear"
    s1_resampling: Literal["nearest", "bilinear", "cubic", "cubic_spline", "lanczos"] = "bilinear"
    fine_resampling: Literal["nearest", "bilinear", "cubic", "cubic_spline", "lanczos"] = "bilinear"
    s2_feature_bands: list[str] = Field(["B02", "B03", "B04", "B08", "B11", "B12"], min_length=1)
    s1_feature_bands: list[Literal["VV", "VH"]] = Field(["VV", "VH"], min_length=1)
    feature_sigma_px: float = Field(1.0, ge=0, le=10, description="Gaussian smoothing before gradients")
    s1_speckle_sigma_px: float = Field(1.0, ge=0, le=10, description="S1 despeckling before gradients")
    dsm_detrend_sigma_px: float = Field(8.0, ge=0, le=100, description="terrain removed from the DSM before gradients")
    upsample_factor: int = Field(20, ge=1, le=1000, description="phase correlation precision, 1/upsample px")
    match_px: int = Field(512, ge=32, le=8192, description="side of the centred window where shifts are matched")
    normalization: Literal["phase"] | None = Field(None, description="phase: phase correlation; null: plain")
    max_shift_px: float = Field(6.0, gt=0, description="largest plausible misregistration: the peak search radius")
    min_shift_confidence: float = Field(
        0.5, ge=0, le=1, description="a shift whose correlation peak is less unique than this is not applied"
    )
    compress: Literal["deflate", "lzw", "zstd", "none"] = "none"
    reference_dates: int = Field(3, ge=1, description="the S2 (RGB) reference averages this many clearest dates")
    max_source_px: int = Field(
        250_000_000, ge=1, description="most pixels (width x height) of a source raster read in full"
    )

    @model_validator(mode="after")
    def _known_bands(self) -> CoregisterParams:
        from msgfm.sensors import S2_L2A_BANDS

        unknown = [b for b in self.s2_feature_bands if b not in S2_L2A_BANDS]
        if unknown:
            raise ValueError(f"coregister.s2_feature_bands: unknown bands {unknown}; L2A bands are {S2_L2A_BANDS}")
        return self


class PairParams(Section):
    """`msgfm pair`: chips per AOI and date, S1-S2 and RGB-DSM pairs, spatial-block splits, the chip store."""

    out_dir: Path = Field(Path("data/chips"), description="the chip store (a shard of memory-mapped .npy per AOI)")
    manifest: Path = Path("data/manifest.parquet")
    chip_px: int = Field(64, ge=8, le=1024, description="chip side in pixels, the same for every sensor")
    stride_px: int = Field(64, ge=1, le=1024, description="step between chip origins, pixels")
    max_days: float = Field(10, ge=0, description="largest S1-S2 time gap for a pair, days")
    fine_max_days: float = Field(3650, ge=0, description="largest RGB-DSM time gap for a pair, days")
    max_nodata_fraction: float = Field(0.5, ge=0, le=1, description="chips with more nodata are dropped")
    block_m: float = Field(960.0, gt=0, description="side of the square spatial blocks that get one split, metres")
    buffer_m: float = Field(
        0.0, ge=0, description="chips closer than this to a block of another split are dropped (0: may touch)"
    )
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    label_min_fraction: float = Field(
        0.05, ge=0, le=1, description="a chip's multi-label classes cover at least this share of its known pixels"
    )

    @model_validator(mode="after")
    def _fractions(self) -> PairParams:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("pair.val_fraction + pair.test_fraction must be below 1 (train needs blocks)")
        return self


class SourceParams(Section):
    """`msgfm download`: where acquisitions come from (static STAC catalog, STAC API or a folder of GeoTIFFs)."""

    kind: Literal["static", "stac_api", "folder"] = "static"
    href: str = Field("data/source/catalog.json", description="static: catalog.json path or URL")
    url: str | None = Field(None, description="stac_api: the API landing page URL")
    collections: dict[str, list[str]] = Field(
        default_factory=dict,
        description="sensor -> collection id or list of ids (s2: [sentinel-2-l2a, sentinel-2-l1c]); stac_api, "
        "and static catalogs without msgfm:sensor",
    )
    bbox: list[float] | None = Field(None, min_length=4, max_length=4, description="stac_api: WGS84 search box")
    datetime: str | None = Field(None, description="stac_api: RFC 3339 instant or interval, e.g. 2024-03-01/2024-10-31")
    max_items: int = Field(500, ge=1, le=100000, description="stac_api: most items fetched from a search")
    sign: Literal["none", "planetary_computer"] = Field("none", description="href-signing hook for API assets")
    path: Path | None = Field(None, description="folder: directory of GeoTIFFs, each with a .json/.yaml sidecar")
    aoi: str = Field("aoi", pattern=r"^[a-z0-9_]+$", description="AOI name (prefix) for items without msgfm:aoi")
    aoi_tile_m: int | None = Field(
        10000,
        ge=1000,
        le=1_000_000,
        multiple_of=1000,
        description="items without msgfm:aoi: AOIs are squares of this side on a UTM grid (msgfm.ingest.aois): a "
        "stac_api bbox is tiled into them; other items (static, folder, search without bbox) are grouped by "
        "overlapping footprints, one AOI per group; null: they all get the one AOI `aoi`",
    )
    max_cloud_cover: float | None = Field(
        None,
        ge=0,
        le=100,
        description="S2 items whose eo:cloud_cover (percent) exceeds this are not downloaded: a STAC API search "
        "asks for at most it (query extension), static and folder items are skipped (folder sidecar: "
        "cloud_cover); items without eo:cloud_cover are kept; null: no filter",
    )
    assets: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "s1": ["VV", "VH"],
            "s2": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12", "cloud_mask"],
            "rgb": ["image"],
            "dsm": ["dsm"],
            "landcover": ["map", "map_fine"],
        },
        description="sensor -> asset keys to download (and that the raw gate requires); any case or alias "
        "(vv, blue, b02, scl), matched as the registry's band names (msgfm.sensors.canonical_band)",
    )

    @field_validator("collections", mode="before")
    @classmethod
    def _collection_lists(cls, value: Any) -> Any:
        """One collection id or a list of them per sensor; always a list after validation."""
        if not isinstance(value, dict):
            return value
        return {sensor: [ids] if isinstance(ids, str) else ids for sensor, ids in value.items()}

    @field_validator("assets")
    @classmethod
    def _canonical_keys(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        from msgfm.sensors import canonical_band

        out = {}
        for sensor, keys in value.items():
            names = [canonical_band(sensor, k) for k in keys]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"source.assets.{sensor}: {twice} listed more than once (aliases of one band)")
            out[sensor] = names
        return out

    @model_validator(mode="after")
    def _kind_complete(self) -> SourceParams:
        from msgfm.sensors import SENSORS

        known = {*SENSORS, "landcover"}
        for key in ("collections", "assets"):
            unknown = sorted(set(getattr(self, key)) - known)
            if unknown:
                raise ValueError(f"source.{key}: unknown sensor(s) {unknown}; known: {sorted(known)}")
        if self.kind == "stac_api" and (not self.url or not self.collections):
            raise ValueError("source.kind stac_api needs source.url and source.collections (sensor -> collection id)")
        if self.kind == "folder" and self.path is None:
            raise ValueError("source.kind folder needs source.path (a directory of GeoTIFFs with sidecars)")
        if self.bbox is not None and not (self.bbox[0] <= self.bbox[2] and self.bbox[1] <= self.bbox[3]):
            raise ValueError(f"source.bbox must be [west, south, east, north], got {self.bbox}")
        return self


class DownloadParams(Section):
    """`msgfm download`: concurrent, resumable, verified fetching of assets into data/raw."""

    out_dir: Path = Path("data/raw")
    workers: int = Field(4, ge=1, le=64, description="items fetched at the same time (threads)")
    retries: int = Field(3, ge=0, le=20, description="extra attempts per asset after a network error")
    backoff_s: float = Field(0.5, ge=0, le=60, description="first retry delay; doubles on every retry")
    timeout_s: float = Field(30.0, gt=0, le=3600, description="connect/read timeout of one HTTP request")
    max_catalog_depth: int = Field(16, ge=1, le=1000, description="static catalog: deepest child nesting followed")
    max_catalog_objects: int = Field(
        200_000, ge=1, le=10_000_000, description="static catalog: most catalogs and items read in one walk"
    )
    max_json_bytes: int = Field(16 << 20, ge=1024, description="largest catalog, item or sidecar document read")
    max_asset_bytes: int = Field(
        20 << 30, ge=1, description="largest asset body accepted when the item declares no file:size"
    )
    windowed: bool = Field(
        True,
        description="http(s) assets of items with a derived AOI square: read only the square (plus the margin) "
        "with range requests (msgfm.ingest.window); false: fetch whole files",
    )
    window_margin_m: float = Field(
        200.0, ge=0, le=10_000, description="a windowed read's margin around the AOI square (co-registration), m"
    )


class GatesParams(Section):
    """The Great Expectations gates between stages (msgfm/validation), and where their decisions and reports go."""

    dir: Path = Field(Path("data/gates"), description="each gate's decisions table {dir}/{gate}.parquet")
    reports_dir: Path = Field(
        Path("data/reports/gates"), description="each gate's JSON report {reports_dir}/{gate}.json"
    )
    min_pass_rate: float = Field(0.8, ge=0, le=1, description="a gate fails below this accepted fraction")
    max_nodata_fraction: float = Field(0.5, ge=0, le=1, description="raw: most nodata pixels in any band asset")
    max_out_of_range_fraction: float = Field(
        0.001, ge=0, le=1, description="raw: most valid pixels outside the sensor's physical range"
    )
    max_read_px: int = Field(2048, ge=64, le=65536, description="raw: rasters are read decimated to this side")
    max_pixels: int = Field(
        250_000_000, ge=1, description="raw: most pixels (width x height) a raster's header may claim"
    )
    max_residual_px: float = Field(0.5, gt=0, le=10, description="coreg: most shift left after correction, px")
    min_residual_zncc: float = Field(
        0.4, gt=0, le=1, description="coreg: a residual is measurable when its ZNCC peak correlation reaches this"
    )
    min_valid_fraction: float = Field(0.5, ge=0, le=1, description="coreg: least valid overlap with the AOI grid")
    min_paired_fraction: float = Field(0.3, ge=0, le=1, description="pairs: least share of S1/RGB chips with a partner")
