"""`msgfm simulate`: the embedded simulated multisensor world, published as a static STAC catalog of COGs.

Layout (docs/data-layout.md): `catalog.json` with collections `sentinel-2-l2a`, `sentinel-1-grd`,
`aerial-rgb`, `dsm` and `landcover`; each item is `{collection}/{item_id}/{item_id}.json` with its COG
assets beside it; true misregistrations go to `truth/{aoi}.json`, outside the catalog.
Every acquisition is drawn from its own seed (seed, aoi, sensor, date), so `--until` only chooses which
acquisitions are published: a later run adds items and leaves existing files untouched.
The model itself is in msgfm.sim.world (ground truth) and msgfm.sim.observe (sensors).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pystac
from affine import Affine
from rasterio.warp import transform as warp_points
from rasterio.warp import transform_bounds
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from msgfm.config import AOIParams, SimulateParams
from msgfm.geo.grids import utm_crs
from msgfm.geo.io import write_cog
from msgfm.landcover import NODATA
from msgfm.sensors import S2_L2A_BANDS, get_sensor
from msgfm.sim import observe
from msgfm.sim.catalog import COLLECTIONS, KeepUnchangedStacIO, items_done, make_item, publish_catalog
from msgfm.sim.world import CODES, World, rng_for

log = logging.getLogger(__name__)

S2_SUBSAMPLES = 4
"""S2 is rendered on 4 x 4 points per 10 m pixel (2.5 m) and area-averaged: mixed pixels, roads visible at 10 m."""
DSM_NODATA = float(get_sensor("dsm").bands[0].nodata)
RGB_CRS = "EPSG:3857"
TRUTH_CONVENTION = (
    "dx_px, dy_px: the shift to apply to the item's raster to align it with the reference grid, in reference "
    "pixels; +x east, +y south. The item declares the nominal reference transform, but its pixel (row r, col c) "
    "shows the ground at reference pixel (r + dy_px, c + dx_px); e.g. scipy.ndimage.shift(img, (dy_px, dx_px)) "
    "or skimage phase_cross_correlation(reference, img) -> (dy_px, dx_px) recovers it."
)


class SimulateError(ValueError):
    """The simulate parameters cannot be honoured (for example the dates do not fit); the message says why."""


@dataclass(frozen=True)
class Acquisition:
    """One item to publish: sensor, AOI, date, and for S2 whether it is cloudy."""

    sensor: str
    aoi: AOIParams
    date: dt.date
    cloudy: bool = False

    @property
    def item_id(self) -> str:
        if self.sensor == "landcover":  # static: one map per AOI
            return f"landcover_{self.aoi.name}"
        return f"{self.sensor}_{self.aoi.name}_{self.date:%Y%m%d}"


@dataclass(frozen=True)
class AOIGrids:
    """The AOI's UTM CRS, S2 10 m grid and fine grid (absolute UTM metres) and its centre."""

    crs: str
    centre: tuple[float, float]
    s2: Affine
    size: int
    fine: Affine
    fine_size: int

    def centres(self, transform: Affine, size: int, dx: float = 0.0, dy: float = 0.0):
        """Pixel-centre coordinates relative to the AOI centre, of pixel (r + dy, c + dx) of a grid."""
        c = np.arange(size, dtype=np.float64) + 0.5
        x = transform.c + transform.a * (c + dx) - self.centre[0]
        y = transform.f + transform.e * (c + dy) - self.centre[1]
        return np.meshgrid(x, y)


def aoi_grids(cfg: SimulateParams, aoi: AOIParams) -> AOIGrids:
    """Grids of one AOI: the S2 grid centred on (lon, lat) snapped to 60 m, the fine grid centred inside it."""
    crs = utm_crs(aoi.lon, aoi.lat)
    (ex,), (ny,) = warp_points("EPSG:4326", crs, [aoi.lon], [aoi.lat])
    cx, cy = round(ex / 60) * 60.0, round(ny / 60) * 60.0
    half = cfg.size_px * 10 / 2
    fine_half = cfg.fine_size_px * cfg.fine_gsd_m / 2
    return AOIGrids(
        crs=crs,
        centre=(cx, cy),
        s2=Affine(10, 0, cx - half, 0, -10, cy + half),
        size=cfg.size_px,
        fine=Affine(cfg.fine_gsd_m, 0, cx - fine_half, 0, -cfg.fine_gsd_m, cy + fine_half),
        fine_size=cfg.fine_size_px,
    )


def _spread(start: dt.date, end: dt.date, n: int, phase: float, shift_days: int = 0) -> list[dt.date]:
    """n dates evenly spread over [start, end], at `phase` (0..1) of each slot."""
    span = (end - start).days
    return [min(start + dt.timedelta(days=int(span * (i + phase) / n) + shift_days), end) for i in range(n)]


def schedule(cfg: SimulateParams, aoi: AOIParams, seed: int) -> list[Acquisition]:
    """Every acquisition of an AOI over [start, end], independent of `until`."""
    n_cloudy = int(round(cfg.cloudy_fraction * cfg.s2_dates))
    n_base = cfg.s2_dates - n_cloudy
    base = _spread(cfg.start, cfg.end - dt.timedelta(days=cfg.clear_partner_days), n_base, 0.1)
    rng = rng_for(seed, aoi.name, "s2-schedule")
    cloudy_idx = set(rng.choice(n_base, size=n_cloudy, replace=False).tolist()) if n_cloudy else set()
    gaps = [(b - a).days for a, b in zip(base, base[1:], strict=False)]
    if n_cloudy and gaps and min(gaps) <= cfg.clear_partner_days:
        raise SimulateError(
            f"simulate: {cfg.s2_dates} S2 dates ({n_cloudy} cloudy, each with a clear partner "
            f"{cfg.clear_partner_days} days later) do not fit between {cfg.start} and {cfg.end}: S2 dates would be "
            f"{min(gaps)} days apart; lower simulate.s2_dates, simulate.cloudy_fraction or simulate.clear_partner_days"
        )
    acq = []
    for i, d in enumerate(base):
        acq.append(Acquisition("s2", aoi, d, cloudy=i in cloudy_idx))
        if i in cloudy_idx:
            acq.append(Acquisition("s2", aoi, d + dt.timedelta(days=cfg.clear_partner_days)))
    acq += [Acquisition("s1", aoi, d) for d in sorted(set(_spread(cfg.start, cfg.end, cfg.s1_dates, 0.3)))]
    acq += [Acquisition("rgb", aoi, d) for d in sorted(set(_spread(cfg.start, cfg.end, cfg.rgb_dates, 0.6)))]
    acq += [Acquisition("dsm", aoi, d) for d in sorted(set(_spread(cfg.start, cfg.end, cfg.dsm_dates, 0.6, 3)))]
    return sorted(acq, key=lambda a: (a.date, a.sensor))


def draw_shift(rng: np.random.Generator, max_px: float) -> tuple[float, float]:
    """A misregistration of norm between 0.1*max_px and max_px in a random direction, rounded to 1/1000 px."""
    r = rng.uniform(0.1, 1.0) * max_px
    ang = rng.uniform(0, 2 * np.pi)
    return round(float(r * np.cos(ang)), 3), round(float(r * np.sin(ang)), 3)


# -- rendering one acquisition: returns {asset key: (path, per-asset grid or None)} --------------------------


class _AOIContext:
    """Per-AOI state shared by its acquisitions: world, grids and the static S2-grid fields."""

    def __init__(self, cfg: SimulateParams, aoi: AOIParams, seed: int):
        self.cfg, self.aoi, self.seed = cfg, aoi, seed
        self.grids = aoi_grids(cfg, aoi)
        self.world = World.create(aoi.biome, cfg.size_px * 10 / 2, seed, aoi.name)
        self._static: dict[str, np.ndarray] | None = None

    @property
    def static(self) -> dict[str, np.ndarray]:
        """S2 pixel centres, and class, parcel, texture and urban objects on the S2 sub-grid (once per AOI)."""
        if self._static is None:
            g, f = self.grids, S2_SUBSAMPLES
            x, y = g.centres(g.s2, g.size)
            sx, sy = g.centres(g.s2 * Affine.scale(1 / f), g.size * f)
            parcel, _ = self.world.parcels(sx, sy)
            urban = self.world.urban(sx, sy)
            self._static = {
                "x": x,
                "y": y,
                "sub": np.array(f),
                "cls": self.world.classes(sx, sy),
                "parcel": parcel.astype(np.float32),
                "texture": self.world.grain(sx, sy),
                "road": urban["road"],
                "building": urban["height"] > 0,
                "roof": urban["roof"],
            }
        return self._static


def _tags(acq_id: str) -> dict[str, str]:
    return {"MSGFM_ITEM": acq_id, "MSGFM_SOURCE": "msgfm simulate"}


def acquisition_rng(seed: int, acq: Acquisition) -> np.random.Generator:
    """The generator of one acquisition; its first draws (S1, DSM) are the truth shift."""
    return rng_for(seed, acq.aoi.name, acq.sensor, acq.date.toordinal())


def truth_shift(cfg: SimulateParams, seed: int, acq: Acquisition) -> dict[str, Any] | None:
    """The true misregistration of an S1 or DSM acquisition (None for the other sensors)."""
    if acq.sensor not in ("s1", "dsm"):
        return None
    limit = cfg.max_s1_shift_px if acq.sensor == "s1" else cfg.max_dsm_shift_px
    dx, dy = draw_shift(acquisition_rng(seed, acq), limit)
    ref_asset, gsd = ("map", 10.0) if acq.sensor == "s1" else ("map_fine", cfg.fine_gsd_m)
    return {"dx_px": dx, "dy_px": dy, "reference": f"landcover_{acq.aoi.name}", "reference_asset": ref_asset,
            "reference_gsd_m": gsd}  # fmt: skip


def render(ctx: _AOIContext, acq: Acquisition, folder: Path) -> None:
    """Write the assets of one acquisition into `folder` (truth shifts are the first draws of its generator)."""
    rng = acquisition_rng(ctx.seed, acq)
    g, w, crs = ctx.grids, ctx.world, ctx.grids.crs
    if acq.sensor == "s2":
        st = ctx.static
        refl = observe.s2_reflectance(w, st, acq.date, rng)
        mask = np.zeros(st["x"].shape, np.uint8)
        if acq.cloudy:
            refl, mask = observe.add_clouds(refl, st["x"], st["y"], rng, w.half_extent_m)
        for band, img in zip(S2_L2A_BANDS, refl, strict=True):
            f = int(get_sensor("s2").band(band).gsd_m // 10)
            img = img.reshape(g.size // f, f, g.size // f, f).mean(axis=(1, 3)) if f > 1 else img
            dn = np.clip(np.round(img), 1, 65535).astype(np.uint16)
            write_cog(folder / f"{band}.tif", dn, crs=crs, transform=g.s2 @ Affine.scale(f), nodata=0,
                      band_names=[band], tags=_tags(acq.item_id))  # fmt: skip
        write_cog(folder / "cloud_mask.tif", mask, crs=crs, transform=g.s2, band_names=["cloud_mask"],
                  tags=_tags(acq.item_id))  # fmt: skip
        return
    if acq.sensor == "s1":
        dx, dy = draw_shift(rng, ctx.cfg.max_s1_shift_px)
        x, y = g.centres(g.s2, g.size, dx, dy)
        db = observe.s1_backscatter(w, x, y, acq.date, rng, ctx.cfg.s1_looks)
        for band, img in zip(("VV", "VH"), db, strict=True):
            write_cog(folder / f"{band}.tif", img, crs=crs, transform=g.s2, band_names=[band], tags=_tags(acq.item_id))
        return
    if acq.sensor == "dsm":
        dx, dy = draw_shift(rng, ctx.cfg.max_dsm_shift_px)
        x, y = g.centres(g.fine, g.fine_size, dx, dy)
        dsm = observe.dsm_heights(w, x, y, rng, DSM_NODATA)
        write_cog(folder / "dsm.tif", dsm, crs=crs, transform=g.fine, nodata=DSM_NODATA, band_names=["height"],
                  tags=_tags(acq.item_id))  # fmt: skip
        return
    if acq.sensor == "rgb":
        transform, size, x, y, px = _rgb_grid(ctx)
        img = observe.rgb_image(w, x, y, px, acq.date, rng)
        write_cog(folder / "image.tif", img, crs=RGB_CRS, transform=transform, band_names=["R", "G", "B"],
                  tags=_tags(acq.item_id))  # fmt: skip
        return
    if acq.sensor == "landcover":
        x, y = g.centres(g.s2, g.size)
        write_cog(folder / "map.tif", CODES[w.mapped_classes(x, y, ctx.cfg.label_noise)], crs=crs, transform=g.s2,
                  nodata=NODATA, band_names=["landcover"], tags=_tags(acq.item_id))  # fmt: skip
        x, y = g.centres(g.fine, g.fine_size)
        write_cog(folder / "map_fine.tif", CODES[w.mapped_classes(x, y, ctx.cfg.label_noise)], crs=crs,
                  transform=g.fine, nodata=NODATA, band_names=["landcover"], tags=_tags(acq.item_id))  # fmt: skip
        return
    raise ValueError(f"unknown sensor {acq.sensor!r}")


def _rgb_grid(ctx: _AOIContext):
    """The RGB delivery grid in Web Mercator covering the fine area, ground pixel ~fine_gsd_m; and its UTM centres."""
    g = ctx.grids
    left, top = g.fine.c, g.fine.f
    right, bottom = left + g.fine_size * g.fine.a, top + g.fine_size * g.fine.e
    ml, mb, mr, mt = transform_bounds(g.crs, RGB_CRS, left, bottom, right, top)
    px = ctx.cfg.fine_gsd_m / np.cos(np.deg2rad(ctx.aoi.lat))  # Mercator scale factor
    px = round(float(px), 4)
    ml, mt = np.floor(ml / px) * px, np.ceil(mt / px) * px
    width, height = int(np.ceil((mr - ml) / px)), int(np.ceil((mt - mb) / px))
    transform = Affine(px, 0, ml, 0, -px, mt)
    # Mercator -> UTM is affine to well under 1 cm across the <= 1 km fine area: fit it on a 5x5 lattice
    lc, lr = np.meshgrid(np.linspace(0.5, width - 0.5, 5), np.linspace(0.5, height - 0.5, 5))
    ex, ny = warp_points(RGB_CRS, g.crs, (transform.c + lc * px).ravel(), (transform.f - lr * px).ravel())
    design = np.column_stack([np.ones(lc.size), lc.ravel(), lr.ravel()])
    coef_x = np.linalg.lstsq(design, np.asarray(ex) - g.centre[0], rcond=None)[0]
    coef_y = np.linalg.lstsq(design, np.asarray(ny) - g.centre[1], rcond=None)[0]
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    x = coef_x[0] + coef_x[1] * cols + coef_x[2] * rows
    y = coef_y[0] + coef_y[1] * cols + coef_y[2] * rows
    return transform, (height, width), x, y, ctx.cfg.fine_gsd_m


def simulate_world(
    cfg: SimulateParams,
    seed: int = 0,
    progress: bool = True,
) -> pystac.Catalog:
    """Render every acquisition up to `cfg.until` into `cfg.out_dir` and publish the STAC catalog and truth."""
    out = Path(cfg.out_dir)
    until = cfg.until or cfg.end
    plan: list[Acquisition] = []
    for aoi in cfg.aois:
        plan.append(Acquisition("landcover", aoi, cfg.start))
        plan += [a for a in schedule(cfg, aoi, seed) if a.date <= until]
    contexts: dict[str, _AOIContext] = {}
    items: dict[str, list[pystac.Item]] = {s: [] for s in COLLECTIONS}
    truth: dict[str, dict[str, Any]] = {a.name: {} for a in cfg.aois}
    rendered = 0
    with threadpool_limits(1):  # small matrix products: BLAS threads only contend on a shared machine
        for acq in tqdm(plan, desc="simulate", unit="item", disable=not progress):
            folder = out / COLLECTIONS[acq.sensor][0] / acq.item_id
            if not items_done(folder, acq.sensor):  # resumable: existing (atomically written) assets are kept
                if acq.aoi.name not in contexts:
                    contexts[acq.aoi.name] = _AOIContext(cfg, acq.aoi, seed)
                render(contexts[acq.aoi.name], acq, folder)
                rendered += 1
            items[acq.sensor].append(make_item(acq, folder))
            if (shift := truth_shift(cfg, seed, acq)) is not None:
                truth[acq.aoi.name][acq.item_id] = shift
    catalog = publish_catalog(out, items)
    io = KeepUnchangedStacIO()
    for aoi in cfg.aois:
        doc = {"aoi": aoi.name, "biome": aoi.biome, "convention": TRUTH_CONVENTION, "shifts": truth[aoi.name]}
        io.write_text_to_href(str(out / "truth" / f"{aoi.name}.json"), json.dumps(doc, indent=2, sort_keys=True))
    log.info("simulate: %d items published (%d rendered) in %s", len(plan), rendered, out)
    return catalog
