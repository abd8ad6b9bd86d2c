"""Inference products in the field's formats: GeoParquet patch tables and STAC items beside every output.

GeoParquet (v1.1, one row per patch, like Clay's and Major TOM's embedding tables): the patch footprint
as a WKB polygon in the raster's CRS (stated as PROJJSON in the file's `geo` metadata), its grid row and
column, the acquisition datetime, the sensor, the model id and version, and the embedding as a fixed-size
list (float32, or int8 codes with the scale in the file's metadata and in the item). Rows are written
in row groups straight from the stitched grid, so the table never sits in memory whole.

The STAC item (`<output file name>.item.json`) describes the file: footprint in EPSG:4326, datetime, the
projection extension (code, shape, transform), the model and, for a COG, raster:bands with the scale.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pystac
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_geom

from msgfm.geo.io import atomic_path, atomic_write_json
from msgfm.inference.rasters import quantise

GEOPARQUET_VERSION = "1.1.0"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
PROJ_EXT = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER_EXT = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
_WKB_POLYGON = np.dtype([("order", "u1"), ("type", "<u4"), ("rings", "<u4"), ("points", "<u4"), ("xy", "<f8", (10,))])


def item_path(out_path: Path) -> Path:
    """Where the STAC item of an output file goes: beside it, `<file name>.item.json` (e.tif -> e.tif.item.json)."""
    return out_path.with_name(f"{out_path.name}.item.json")


def cell_polygons_wkb(transform: Affine, rows: np.ndarray, cols: np.ndarray) -> pa.Array:
    """WKB polygons (little-endian, one ring of 5 points) of the grid cells (rows[i], cols[i])."""
    corners = [(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)]
    records = np.zeros(len(rows), dtype=_WKB_POLYGON)
    records["order"], records["type"], records["rings"], records["points"] = 1, 3, 1, 5
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    for i, (dx, dy) in enumerate(corners):
        x, y = cols + dx, rows + dy
        records["xy"][:, 2 * i] = a * x + b * y + c
        records["xy"][:, 2 * i + 1] = d * x + e * y + f
    size = _WKB_POLYGON.itemsize
    offsets = np.arange(len(rows) + 1, dtype=np.int32) * size
    return pa.Array.from_buffers(pa.binary(), len(rows), [None, pa.py_buffer(offsets), pa.py_buffer(records.tobytes())])


def geo_metadata(crs: CRS, bbox: tuple[float, float, float, float]) -> bytes:
    """The GeoParquet `geo` key: one WKB polygon column in `crs` (PROJJSON) with its bbox."""
    column = {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": crs.to_dict(projjson=True), "bbox": list(bbox)}
    return json.dumps({"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": column}})


def write_geoparquet(
    out_path: Path,
    blocks: Iterable[tuple[int, np.ndarray]],
    *,
    dim: int,
    transform: Affine,
    crs: CRS,
    bounds: tuple[float, float, float, float],
    when: dt.datetime,
    columns: Mapping[str, str],
    scale: float | None = None,
) -> Path:
    """One row per grid cell from (row0, (dim, rows, W)) blocks; `columns` hold per-file strings (sensor, model)."""
    value_type = pa.int8() if scale is not None else pa.float32()
    metadata = {"geo": geo_metadata(crs, bounds)}
    if scale is not None:
        metadata["embedding_scale"] = repr(scale)
    fields = [
        ("row", pa.int32()),
        ("col", pa.int32()),
        ("geometry", pa.binary()),
        ("datetime", pa.timestamp("us", tz="UTC")),
        *[(name, pa.string()) for name in columns],
        ("embedding", pa.list_(value_type, dim)),
    ]
    schema = pa.schema(fields, metadata=metadata)
    with atomic_path(out_path, suffix=".parquet") as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for row0, block in blocks:
            _, rows, width = block.shape
            r, c = (a.ravel() for a in np.meshgrid(np.arange(row0, row0 + rows), np.arange(width), indexing="ij"))
            vectors = block.reshape(dim, -1).T
            vectors = quantise(vectors, scale) if scale is not None else vectors.astype(np.float32)
            n = len(r)
            table = [
                pa.array(r, pa.int32()),
                pa.array(c, pa.int32()),
                cell_polygons_wkb(transform, r, c),
                pa.array([when] * n, pa.timestamp("us", tz="UTC")),
                *[pa.array([value] * n, pa.string()) for value in columns.values()],
                pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), value_type), dim),
            ]
            writer.write_table(pa.Table.from_arrays(table, schema=schema))
    return out_path


def write_item(
    out_path: Path,
    *,
    media_type: str,
    crs: CRS,
    transform: Affine,
    shape: tuple[int, int],
    when: dt.datetime,
    properties: Mapping[str, Any],
    raster_bands: list[dict[str, Any]] | None = None,
) -> Path:
    """The STAC item describing `out_path` (its one asset `data`), written beside it; returns the item's path."""
    height, width = shape
    left, top = transform @ (0, 0)
    right, bottom = transform @ (width, height)
    ring = [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]]
    footprint = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    xs = [p[0] for p in footprint["coordinates"][0]]
    ys = [p[1] for p in footprint["coordinates"][0]]
    props = {
        "proj:code": f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else None,
        "proj:wkt2": None if crs.to_epsg() else crs.to_wkt(),
        "proj:shape": [height, width],
        "proj:transform": list(transform)[:6],
        **properties,
    }
    item = pystac.Item(
        id=out_path.stem,
        geometry=footprint,
        bbox=[min(xs), min(ys), max(xs), max(ys)],
        datetime=when,
        properties={k: v for k, v in props.items() if v is not None},
        stac_extensions=[PROJ_EXT] + ([RASTER_EXT] if raster_bands else []),
    )
    extra = {"raster:bands": raster_bands} if raster_bands else {}
    item.add_asset(
        "data", pystac.Asset(href=f"./{out_path.name}", media_type=media_type, roles=["data"], extra_fields=extra)
    )
    path = item_path(out_path)
    atomic_write_json(path, item.to_dict(include_self_link=False, transform_hrefs=False))
    return path
