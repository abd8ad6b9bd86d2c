"""`msgfm embed`: patch-level embeddings of a GeoTIFF from a pretrained msGFM encoder, kept georeferenced.

The raster is normalised with the sensor's registry stats (nodata and NaN become the band mean, i.e.
0 in normalised units), cut into model-sized chips (edges padded with the mean), encoded, and the chosen
stage's feature maps are stitched into one grid whose pixel is `stride` input pixels: its transform is
the input transform scaled by the stride, in the input CRS. Chips are encoded independently, so
features next to chip borders see only their own chip (as during pretraining).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from tqdm import tqdm

from msgfm.geo.io import atomic_path, write_cog
from msgfm.models.hub import load_pretrained
from msgfm.sensors import SENSORS, get_sensor

log = logging.getLogger(__name__)

SENSOR_TAGS = ("sensor", "MSGFM_SENSOR")
"""GeoTIFF metadata tags read for the sensor name when --sensor is not given."""


class EmbedInputError(ValueError):
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


def embed_array(
    model_dir_or_model, image: np.ndarray, sensor: str, bands: Sequence[str], stage: int = -1, batch_size: int = 16
) -> tuple[np.ndarray, int]:
    """(C, H, W) normalised image -> ((D, ceil(H/stride), ceil(W/stride)) float32 embeddings, stride in pixels)."""
    model = load_pretrained(model_dir_or_model) if isinstance(model_dir_or_model, str | Path) else model_dir_or_model
    encoder = model.encoder.eval()
    cfg = encoder.config
    if sensor not in cfg.sensors:
        raise EmbedInputError(f"the model was not trained on sensor {sensor!r} (it knows {list(cfg.sensors)})")
    n_stages = len(cfg.depths)
    if not -n_stages <= stage < n_stages:
        raise EmbedInputError(
            f"stage {stage} out of range: the encoder has stages 0..{n_stages - 1} (or -1 for the last)"
        )
    stage = stage % n_stages
    stride = cfg.patch_px * 2**stage
    chip = cfg.chip_px
    c, h, w = image.shape
    rows, cols = math.ceil(h / chip), math.ceil(w / chip)
    padded = np.zeros((c, rows * chip, cols * chip), dtype=np.float32)
    padded[:, :h, :w] = image
    tiles = padded.reshape(c, rows, chip, cols, chip).transpose(1, 3, 0, 2, 4).reshape(rows * cols, c, chip, chip)
    cell = chip // stride
    out = np.zeros((rows * cols, cfg.stage_dims[stage], cell, cell), dtype=np.float32)
    with torch.inference_mode():
        for start in tqdm(range(0, len(tiles), batch_size), desc="embed", unit="batch", leave=False):
            batch = torch.from_numpy(tiles[start : start + batch_size])
            feats = encoder({sensor: batch}, {sensor: tuple(bands)}).features[sensor][stage]
            out[start : start + batch_size] = feats.numpy()
    grid = out.reshape(rows, cols, -1, cell, cell).transpose(2, 0, 3, 1, 4).reshape(-1, rows * cell, cols * cell)
    return np.ascontiguousarray(grid[:, : math.ceil(h / stride), : math.ceil(w / stride)]), stride


def embed_geotiff(
    src_path: str | Path,
    model_dir: str | Path,
    out_path: str | Path,
    sensor: str | None = None,
    bands: Sequence[str] | None = None,
    stage: int = -1,
    batch_size: int = 16,
) -> Path:
    """Write patch-level embeddings of a GeoTIFF as a GeoTIFF (.tif) or .npz, with the patch-grid transform and CRS."""
    src_path, out_path = Path(src_path), Path(out_path)
    if out_path.suffix.lower() not in (".tif", ".tiff", ".npz"):
        raise EmbedInputError(f"{out_path}: output must end in .tif, .tiff or .npz")
    try:
        with rasterio.open(src_path) as src:
            pixels = src.read().astype(np.float32)
            descriptions, tags = src.descriptions, src.tags()
            transform, crs, nodata = src.transform, src.crs, src.nodata
    except rasterio.errors.RasterioIOError as e:
        raise EmbedInputError(f"{src_path}: cannot read raster: {e}") from None
    if crs is None:
        raise EmbedInputError(f"{src_path}: the raster has no CRS, so its embeddings cannot be georeferenced")
    sensor, bands = resolve_sensor_and_bands(src_path, pixels.shape[0], descriptions, tags, sensor, bands)
    model = load_pretrained(model_dir)
    sensor_def = get_sensor(sensor)
    mean, _ = sensor_def.stats(bands)
    invalid = ~np.isfinite(pixels)
    if nodata is not None:
        invalid |= pixels == nodata
    pixels = np.where(invalid, mean[:, None, None], pixels)
    normalised = sensor_def.normalise(pixels, bands)
    log.info("embedding %s (%s, bands %s) with %s", src_path, sensor, ",".join(bands), model_dir)
    emb, stride = embed_array(model, normalised, sensor, bands, stage=stage, batch_size=batch_size)
    out_transform = transform @ Affine.scale(stride)
    meta = {"sensor": sensor, "bands": ",".join(bands), "stage": str(stage), "stride_px": str(stride)}
    meta["model"] = str(model_dir)
    if out_path.suffix.lower() == ".npz":
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            embeddings=emb,
            transform=np.array(out_transform.to_gdal(), dtype=np.float64),
            crs=np.array(crs.to_wkt()),
            **{k: np.array(v) for k, v in meta.items()},
        )
        with atomic_path(out_path, suffix=".npz") as tmp:
            tmp.write_bytes(buf.getvalue())
    else:
        names = [f"emb_{i:04d}" for i in range(emb.shape[0])]
        write_cog(out_path, emb, crs=crs, transform=out_transform, band_names=names, tags=meta)
    return out_path
