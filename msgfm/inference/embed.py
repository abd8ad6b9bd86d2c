"""`msgfm embed`: georeferenced embeddings of a GeoTIFF of any size from a pretrained msGFM encoder, tiled.

The raster is read strip by strip and cut into model-sized windows that overlap by half; each window
contributes only its centre (tiling.py), so a cell's embedding no longer depends on where a chip border
fell. Windows are normalised with the sensor's registry stats (nodata, NaN and the outside of the raster
become the band mean, i.e. 0 in normalised units) and encoded in batches; the chosen stage's cells form
one grid whose pixel is `stride` input pixels: its transform is the input transform scaled by the stride,
in the input CRS. Outputs (by suffix): `.tif`, a Cloud-Optimized GeoTIFF with one band per feature (the
dense grid), or `.parquet`, a GeoParquet table with one row per patch; each gets a STAC item beside it.
`quantize="int8"` stores int8 codes and one scale (value = code * scale) in the file and the item.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path

from affine import Affine

from msgfm.inference.products import PARQUET_MEDIA_TYPE, write_geoparquet, write_item
from msgfm.inference.rasters import (
    GridWriter,
    InferenceInputError,
    RasterInput,
    bounded_gdal_cache,
    grid_writer,
    quantisation_scale,
)
from msgfm.inference.tiled import resolve_device, run_tiled
from msgfm.inference.tiling import axis_plan
from msgfm.models.hub import load_pretrained, read_config
from msgfm.sensors import SENSORS, get_sensor

log = logging.getLogger(__name__)

SENSOR_TAGS = ("sensor", "MSGFM_SENSOR")
"""GeoTIFF metadata tags read for the sensor name when --sensor is not given."""
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
SUFFIXES = (".tif", ".tiff", ".parquet")
QUANTIZE = (None, "int8")


class EmbedInputError(InferenceInputError):
    """The input raster cannot be embedded; the message names the file and the problem."""


def resolve_sensor_and_bands(
    path: Path, count: int, descriptions: Sequence[str | None], tags: dict[str, str], sensor: str | None, bands
) -> tuple[str, tuple[str, ...]]:
    """Sensor from the option or file tags; bands from the option, the band descriptions, or all bands in order."""
    if sensor is None:
        sensor = next((tags[t] for t in SENSOR_TAGS if t in tags), None)
        if sensor is None:
            raise EmbedInputError(f"{path}: no sensor given and no 'sensor' tag in the file; pass --sensor")
    if sensor not in SENSORS:
        raise EmbedInputError(f"{path}: unknown sensor {sensor!r}; known sensors are {list(SENSORS)}")
    names = get_sensor(sensor).band_names
    if bands is None:
        if all(descriptions):
            bands = tuple(descriptions)
        elif count == len(names):
            bands = names
        else:
            raise EmbedInputError(
                f"{path}: {count} band(s) without descriptions, but sensor {sensor!r} has {len(names)} "
                f"({list(names)}); pass --bands"
            )
    bands = tuple(bands)
    unknown = [b for b in bands if b not in names]
    if unknown:
        raise EmbedInputError(f"{path}: bands {unknown} are not bands of sensor {sensor!r} ({list(names)})")
    if len(bands) != count:
        raise EmbedInputError(f"{path}: the file has {count} band(s) but {len(bands)} band names {list(bands)}")
    if len(set(bands)) != len(bands):
        raise EmbedInputError(f"{path}: duplicate band names {list(bands)}")
    return sensor, bands


def bind_input(inp: RasterInput, sensor: str | None, bands: Sequence[str] | None) -> None:
    """Resolve the input's sensor and band names (options, else the file's tags and descriptions) and bind them."""
    src = inp.src
    inp.bind(*resolve_sensor_and_bands(inp.path, src.count, src.descriptions, src.tags(), sensor, bands))


def checked_stage(model_config, sensor: str, stage: int) -> int:
    """The stage index in 0..n-1 for `stage` (negative counts from the end); errors name the valid range."""
    if sensor not in model_config.sensors:
        raise EmbedInputError(f"the model was not trained on sensor {sensor!r} (it knows {list(model_config.sensors)})")
    n_stages = len(model_config.depths)
    if not -n_stages <= stage < n_stages:
        raise EmbedInputError(
            f"stage {stage} out of range: the encoder has stages 0..{n_stages - 1} (or -1 for the last)"
        )
    return stage % n_stages


def embed_geotiff(
    src_path: str | Path,
    model_dir: str | Path,
    out_path: str | Path,
    sensor: str | None = None,
    bands: Sequence[str] | None = None,
    stage: int = -1,
    batch_size: int = 16,
    device: str = "auto",
    quantize: str | None = None,
    when: dt.datetime | None = None,
) -> Path:
    """Embed a GeoTIFF tile by tile into a COG (.tif) or GeoParquet (.parquet) plus its STAC item; returns out_path."""
    src_path, out_path = Path(src_path), Path(out_path)
    if out_path.suffix.lower() not in SUFFIXES:
        raise EmbedInputError(f"{out_path}: output must end in {', '.join(SUFFIXES)}")
    if quantize not in QUANTIZE:
        raise EmbedInputError(f"--quantize must be int8 or not given, got {quantize!r}")
    torch_device = resolve_device(device)
    with bounded_gdal_cache(), RasterInput(src_path) as inp:
        bind_input(inp, sensor, bands)
        acquired = inp.acquired(when)
        model = load_pretrained(model_dir, device=torch_device)
        encoder, cfg = model.encoder, model.config
        stage = checked_stage(cfg, inp.sensor, stage)
        stride = cfg.patch_px * 2**stage
        plans = (axis_plan(inp.shape[0], cfg.chip_px, stride), axis_plan(inp.shape[1], cfg.chip_px, stride))
        dim = cfg.stage_dims[stage]
        transform = inp.src.transform @ Affine.scale(stride)
        crs = inp.src.crs
        log.info(
            "embedding %s (%s, bands %s) with %s on %s",
            src_path,
            inp.sensor,
            ",".join(inp.bands),
            model_dir,
            torch_device,
        )
        name, sensor_bands = inp.sensor, inp.bands

        def forward(images):
            return encoder(images, {name: sensor_bands}).features[name][stage]

        shape = (dim, plans[0].out_cells, plans[1].out_cells)
        with grid_writer(out_path, shape, crs, transform) as grid:
            run_tiled([inp], forward, plans, dim, grid.write_rows, batch_size, torch_device, desc="embed")
            grid.close()
            scale = quantisation_scale(grid.max_abs) if quantize else None
            meta = {
                "sensor": name,
                "bands": ",".join(sensor_bands),
                "stage": str(stage),
                "stride_px": str(stride),
                "model": str(model_dir),
                "model_id": cfg.name,
                "model_version": read_config(model_dir)["weights_sha256"][:16],
                "datetime": acquired.isoformat(),
            }
            _write_product(grid, out_path, meta, scale, inp.src.bounds)
    return out_path


def _write_product(grid: GridWriter, out_path: Path, meta: dict[str, str], scale: float | None, bounds) -> None:
    """The finished grid as a COG or GeoParquet, then its STAC item."""
    when = dt.datetime.fromisoformat(meta["datetime"])
    dim, height, width = grid.shape
    properties = {f"msgfm:{k}": v for k, v in meta.items() if k != "datetime"}
    properties["msgfm:quantization"] = {"dtype": "int8", "scale": scale} if scale is not None else None
    if out_path.suffix.lower() == ".parquet":
        columns = {k: meta[k] for k in ("sensor", "model_id", "model_version")}
        write_geoparquet(
            out_path,
            grid.row_blocks(),
            dim=dim,
            transform=grid.transform,
            crs=grid.crs,
            bounds=tuple(bounds),
            when=when,
            columns=columns,
            scale=scale,
        )
        media_type, raster_bands = PARQUET_MEDIA_TYPE, None
    else:
        tags = {**meta, **({"scale": repr(scale)} if scale is not None else {})}
        grid.to_cog([f"emb_{i:04d}" for i in range(dim)], tags, scale=scale)
        band = {"data_type": "int8", "scale": scale} if scale is not None else {"data_type": "float32"}
        media_type, raster_bands = COG_MEDIA_TYPE, [band] * dim
    write_item(
        out_path,
        media_type=media_type,
        crs=grid.crs,
        transform=grid.transform,
        shape=(height, width),
        when=when,
        properties=properties,
        raster_bands=raster_bands,
    )
