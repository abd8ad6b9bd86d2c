"""A PNG of one simulated AOI's sensors side by side (`msgfm simulate --preview`), for a person to look at."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pystac

from msgfm.config import SimulateParams
from msgfm.geo.io import atomic_path, read_raster
from msgfm.landcover import SIMULATED
from msgfm.sim.simulate import DSM_NODATA, RGB_CRS, SimulateError, aoi_grids
from msgfm.sim.world import CODES


def write_preview(out: Path, cfg: SimulateParams, path: Path, aoi_name: str | None = None) -> Path:
    """PNG of one AOI's published sensors side by side: S2 true colour, S1 VV, RGB, DSM and land cover."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, by_sensor = _preview_items(out, cfg, aoi_name)
    fig, axes = plt.subplots(1, 5, figsize=(22, 4.8), constrained_layout=True)
    _draw_sensors(fig, axes[:4], cfg, name, by_sensor)
    _draw_landcover(axes[4], by_sensor["landcover"])
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"msgfm simulated world: AOI '{name}'", fontsize=13)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, format="png", metadata={"Software": None})
    plt.close(fig)
    return path


def _preview_items(out: Path, cfg: SimulateParams, aoi_name: str | None) -> tuple[str, dict[str, pystac.Item]]:
    """The previewed AOI (default: the first coastal city) and its items: S2 and S1 the clear scene nearest the RGB."""
    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    aois = [a for a in cfg.aois if a.biome == "coastal_city"] + list(cfg.aois)
    name = aoi_name or aois[0].name
    items = [i for i in catalog.get_items(recursive=True) if i.properties["msgfm:aoi"] == name]
    by_sensor: dict[str, pystac.Item] = {}
    for sensor in ("rgb", "dsm", "landcover", "s2", "s1"):  # S2 and S1: the clear scene nearest the RGB date
        when = by_sensor["rgb"].datetime if "rgb" in by_sensor else None
        cands = [
            i for i in items if i.properties["msgfm:sensor"] == sensor and i.properties.get("eo:cloud_cover", 0) < 5
        ]
        if not cands:
            raise SimulateError(f"preview: AOI {name!r} has no published {sensor} item yet (see simulate.until)")
        by_sensor[sensor] = min(cands, key=lambda i: (abs(i.datetime - when) if when else dt.timedelta(0), i.id))
    return name, by_sensor


def _draw_sensors(fig: Any, axes: Any, cfg: SimulateParams, name: str, by_sensor: dict[str, pystac.Item]) -> None:
    """The S2, S1, RGB and DSM panels; the S2 panel outlines the fine grid's footprint."""
    from matplotlib.patches import Rectangle

    def asset(sensor: str, key: str) -> np.ndarray:
        return read_raster(by_sensor[sensor].assets[key].get_absolute_href())[0]

    s2 = np.stack([asset("s2", b)[0] for b in ("B04", "B03", "B02")], -1).astype(np.float32)
    axes[0].imshow(np.clip((s2 / 2500) ** 0.8, 0, 1))
    axes[0].set_title(f"Sentinel-2 L2A true colour, 10 m\n{by_sensor['s2'].id}")
    g = aoi_grids(cfg, next(a for a in cfg.aois if a.name == name))
    off = (g.fine.c - g.s2.c) / 10
    size = g.fine_size * g.fine.a / 10
    axes[0].add_patch(Rectangle((off - 0.5, off - 0.5), size, size, fill=False, ec="w", lw=1.2, ls="--"))
    axes[1].imshow(asset("s1", "VV")[0], cmap="gray", vmin=-25, vmax=0)
    axes[1].set_title(f"Sentinel-1 VV (dB, -25..0), 10 m\n{by_sensor['s1'].id}")
    axes[2].imshow(np.moveaxis(asset("rgb", "image"), 0, -1))
    axes[2].set_title(f"aerial RGB, ~{cfg.fine_gsd_m:g} m, {RGB_CRS}\n{by_sensor['rgb'].id} (dashed box in S2)")
    dsm = np.ma.masked_equal(asset("dsm", "dsm")[0], DSM_NODATA)
    im = axes[3].imshow(dsm, cmap="terrain")
    fig.colorbar(im, ax=axes[3], shrink=0.8, label="m")
    axes[3].set_title(f"DSM (white: nodata), ~{cfg.fine_gsd_m:g} m\n{by_sensor['dsm'].id}")


def _draw_landcover(ax: Any, item: pystac.Item) -> None:
    """The land-cover panel in WorldCover colours, with a legend of the classes present."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    lc = read_raster(Path(item.assets["map"].get_absolute_href()))[0][0]
    idx = np.searchsorted(CODES, lc)
    ax.imshow(idx, cmap=ListedColormap([c.colour for c in SIMULATED]), vmin=0, vmax=len(CODES) - 1,
              interpolation="nearest")  # fmt: skip
    ax.set_title(f"land cover (WorldCover codes), 10 m\n{item.id}")
    present = set(np.unique(lc).tolist())
    ax.legend(handles=[Patch(color=c.colour, label=f"{c.code} {c.short}") for c in SIMULATED
              if c.code in present], loc="lower right", fontsize=7, framealpha=0.8)  # fmt: skip
