"""A small synthetic world in download's output layout (data/raw + ledger + raw gate), for coregister/pair tests.

Generated here, not copied: one AOI in UTM 32N with a textured land-cover scene rendered at 2 m (10 m
grid) and 0.5 m (fine grid), then area-averaged to each sensor's pixels so resampling behaves as on
real data. Sentinel-2 has 12 L2A bands at native 10/20/60 m; Sentinel-1 (VV, VH, dB, with speckle) lies
on its own 10 m grid offset by a fraction of a pixel and misregistered by a known shift; aerial RGB is
in EPSG:3857; the DSM lies on its own 1 m UTM grid with a known shift. Shift convention (the same as
msgfm.coreg.shifts): the sensor's content appears at (c + dx, r + dy) of the reference grid.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from rasterio.warp import transform, transform_bounds
from scipy import ndimage

from msgfm.sensors import S2_L2A_BANDS, get_sensor

CRS_UTM = "EPSG:32632"
ORIGIN = (600000.0, 5340000.0)  # top-left of the S2 grid, metres (UTM 32N, about 48.2 N 11.4 E)
CLASSES = (10, 30, 40, 50, 80)  # tree, grass, crop, built-up, water (WorldCover codes)
# reflectance x 10000 per class for B02, B04, B08, B11 (other bands interpolate between them)
_REFL = {10: (300, 250, 3200, 1300), 30: (450, 500, 2800, 1900), 40: (600, 900, 2200, 2400),
         50: (1100, 1200, 1500, 2300), 80: (500, 300, 150, 80)}  # fmt: skip
_S1_DB = {10: (-8.0, -14.0), 30: (-11.0, -18.0), 40: (-9.5, -16.5), 50: (-3.0, -10.0), 80: (-22.0, -29.0)}
_HEIGHT = {10: 12.0, 30: 0.0, 40: 0.5, 50: 15.0, 80: -1.0}
_RGB = {10: (40, 80, 40), 30: (110, 150, 70), 40: (170, 150, 100), 50: (150, 140, 140), 80: (30, 60, 110)}


def _class_map(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Blobby land-cover map: the class of the largest of five smoothed noise fields per pixel."""
    fields = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), scale) for _ in CLASSES])
    return np.asarray(CLASSES, dtype=np.uint8)[fields.argmax(axis=0)]


def _lookup(classes: np.ndarray, table: dict, k: int) -> np.ndarray:
    out = np.zeros(classes.shape, dtype=np.float32)
    for c, values in table.items():
        out[classes == c] = values[k] if isinstance(values, tuple) else values
    return out


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    h, w = a.shape[0] // f, a.shape[1] // f
    return a[: h * f, : w * f].reshape(h, f, w, f).mean(axis=(1, 3))


def _write(path: Path, data: np.ndarray, crs: str, tf: Affine, nodata=None) -> Path:
    data = data[None] if data.ndim == 2 else data
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", count=data.shape[0], height=data.shape[1], width=data.shape[2],
        dtype=data.dtype, crs=crs, transform=tf, nodata=nodata,
    ) as dst:  # fmt: skip
        dst.write(data)
    return path


class RawWorld:
    """Writes a synthetic AOI into `root/data/raw` with the ledger, the raw gate table and the truth sidecar."""

    def __init__(self, root: Path, *, aoi: str = "farm", size: int = 96, fine_size: int = 96, seed: int = 0):
        self.root = Path(root)
        self.raw = self.root / "data" / "raw"
        self.aoi = aoi
        self.size = size
        self.fine_size = fine_size
        self.rng = np.random.default_rng(seed)
        self.rows: list[dict] = []
        self.truth: dict[str, dict] = {}
        self.hr = 5  # hi-res samples per 10 m pixel (2 m)
        self.scene = _class_map((size * self.hr, size * self.hr), 6.0, self.rng)
        self.texture = ndimage.gaussian_filter(self.rng.standard_normal(self.scene.shape), 2.0).astype(np.float32)
        self.s2_transform = Affine(10.0, 0, ORIGIN[0], 0, -10.0, ORIGIN[1])
        # fine region: fine_size metres square, 100 m inside the AOI's top-left corner, rendered at 0.5 m
        self.fine_origin = (ORIGIN[0] + 100.0, ORIGIN[1] - 100.0)
        self.fine_hr = 2
        n = fine_size * self.fine_hr
        self.fine_scene = _class_map((n, n), 8.0, self.rng)
        self.fine_texture = ndimage.gaussian_filter(self.rng.standard_normal((n, n)), 1.5).astype(np.float32)

    # -- items ------------------------------------------------------------------------------------

    def _add(self, sensor: str, date: str, assets: dict[str, Path], status: str = "ok") -> str:
        item_id = f"{sensor}_{self.aoi}_{date.replace('-', '')}" if sensor != "landcover" else f"landcover_{self.aoi}"
        self.rows.append(
            {
                "id": item_id, "sensor": sensor, "aoi": self.aoi, "biome": "temperate_farmland",
                "datetime": pd.Timestamp(date, tz="UTC"), "bbox": [11.0, 48.0, 11.1, 48.1], "crs": CRS_UTM,
                "assets": json.dumps({k: str(p.relative_to(self.raw)) for k, p in assets.items()}),
                "item_path": f"{sensor}/{item_id}/item.json", "status": status, "error": "",
            }
        )  # fmt: skip
        return item_id

    def _dir(self, sensor: str, date: str) -> Path:
        return self.raw / sensor / f"{sensor}_{self.aoi}_{date.replace('-', '')}"

    def add_s2(self, date: str, cloud: bool = False) -> str:
        """12 L2A bands at native 10/20/60 m on the AOI grid, and a cloud mask (a cloud disc when `cloud`)."""
        d = self._dir("s2", date)
        anchors = [_lookup(self.scene, _REFL, k) for k in range(4)]  # B02 B04 B08 B11
        yy, xx = np.mgrid[: self.scene.shape[0], : self.scene.shape[1]]
        r = self.scene.shape[0] * 0.18
        cloud_hr = ((yy - self.scene.shape[0] * 0.3) ** 2 + (xx - self.scene.shape[1] * 0.7) ** 2 < r**2) & cloud
        assets = {}
        for band in S2_L2A_BANDS:
            wl = get_sensor("s2").band(band).wavelength_nm
            w = np.interp(wl, [490, 665, 842, 1610], [0, 1, 2, 3])
            lo, hi = int(np.floor(w)), min(int(np.floor(w)) + 1, 3)
            value = anchors[lo] * (1 - (w - lo)) + anchors[hi] * (w - lo)
            value = value * (1 + 0.08 * self.texture) + np.where(cloud_hr, 6000.0, 0.0)
            gsd = int(get_sensor("s2").band(band).gsd_m)
            f = self.hr * gsd // 10
            arr = np.clip(_block_mean(value, f), 1, 10000).astype(np.uint16)
            tf = Affine(float(gsd), 0, ORIGIN[0], 0, -float(gsd), ORIGIN[1])
            assets[band] = _write(d / f"{band}.tif", arr, CRS_UTM, tf, nodata=0)
        mask = (_block_mean(cloud_hr.astype(np.float32), self.hr) > 0.5).astype(np.uint8)
        assets["cloud_mask"] = _write(d / "cloud_mask.tif", mask, CRS_UTM, self.s2_transform)
        return self._add("s2", date, assets)

    def add_s1(self, date: str, shift: tuple[float, float], offset: tuple[float, float] = (0.4, 0.3),
               far_away: bool = False, all_nodata: bool = False) -> str:  # fmt: skip
        """VV, VH in dB on a 10 m grid offset by `offset` px, content misregistered by `shift` px."""
        d = self._dir("s1", date)
        dx, dy = shift
        ox, oy = offset
        assets = {}
        for k, pol in enumerate(("VV", "VH")):
            linear = 10 ** (_lookup(self.scene, _S1_DB, k) / 10) * (1 + 0.1 * self.texture)
            moved = ndimage.shift(linear, (self.hr * (dy - oy), self.hr * (dx - ox)), order=1, mode="reflect")
            pixels = _block_mean(moved, self.hr)
            speckle = self.rng.gamma(4.0, 1 / 4.0, pixels.shape)
            db = (10 * np.log10(pixels * speckle)).astype(np.float32)
            if all_nodata:
                db[:] = np.nan
            tf = self.s2_transform @ Affine.translation(ox, oy)
            if far_away:
                tf = Affine.translation(50_000.0, 0) @ tf
            assets[pol] = _write(d / f"{pol}.tif", db, CRS_UTM, tf, nodata=np.nan if all_nodata else None)
        item_id = self._add("s1", date, assets)
        self.truth[item_id] = {"dx_px": dx, "dy_px": dy, "reference": "s2"}
        return item_id

    def _fine_fields(self) -> tuple[np.ndarray, np.ndarray]:
        """Height (m) and RGB (3, n, n) fields of the fine scene at 0.5 m."""
        height = 100.0 + _lookup(self.fine_scene, _HEIGHT, 0) * (1 + 0.2 * self.fine_texture)
        height = ndimage.gaussian_filter(height, 0.7)
        rgb = np.stack([_lookup(self.fine_scene, _RGB, k) * (1 + 0.25 * self.fine_texture) for k in range(3)])
        return height.astype(np.float32), rgb

    def add_rgb(self, date: str) -> str:
        """3-band uint8 in EPSG:3857 at about 1 m ground, point-sampled from the 0.5 m scene."""
        d = self._dir("rgb", date)
        x0, y0 = self.fine_origin
        left, bottom, right, top = transform_bounds(
            CRS_UTM, "EPSG:3857", x0, y0 - self.fine_size, x0 + self.fine_size, y0
        )
        res = (right - left) / self.fine_size
        w, h = self.fine_size, int(round((top - bottom) / res))
        tf = Affine(res, 0, left, 0, -res, top)
        cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        mx, my = tf @ (cols.ravel(), rows.ravel())
        ux, uy = transform("EPSG:3857", CRS_UTM, mx, my)
        fc = (np.asarray(ux) - x0) * self.fine_hr - 0.5
        fr = (y0 - np.asarray(uy)) * self.fine_hr - 0.5
        _, rgb = self._fine_fields()
        out = np.stack([ndimage.map_coordinates(b, [fr, fc], order=1, mode="nearest").reshape(h, w) for b in rgb])
        arr = np.clip(out, 1, 255).astype(np.uint8)
        return self._add("rgb", date, {"image": _write(d / "image.tif", arr, "EPSG:3857", tf)})

    def add_dsm(self, date: str, shift: tuple[float, float], offset: tuple[float, float] = (0.3, 0.6)) -> str:
        """Float32 heights on a 1 m UTM grid offset by `offset` px, misregistered by `shift` fine-grid px."""
        d = self._dir("dsm", date)
        dx, dy = shift
        ox, oy = offset
        height, _ = self._fine_fields()
        n = self.fine_size
        cols, rows = np.meshgrid(np.arange(n) + 0.5 + ox - dx, np.arange(n) + 0.5 + oy - dy)
        out = ndimage.map_coordinates(
            height, [rows * self.fine_hr - 0.5, cols * self.fine_hr - 0.5], order=1, mode="nearest"
        )
        x0, y0 = self.fine_origin
        tf = Affine(1.0, 0, x0, 0, -1.0, y0) @ Affine.translation(ox, oy)
        item_id = self._add(
            "dsm", date, {"dsm": _write(d / "dsm.tif", out.astype(np.float32), CRS_UTM, tf, nodata=-9999.0)}
        )
        self.truth[item_id] = {"dx_px": dx, "dy_px": dy, "reference": "rgb"}
        return item_id

    def add_landcover(self) -> str:
        """WorldCover-style codes on the S2 grid (`map`) and on the fine UTM 1 m grid (`map_fine`)."""
        d = self.raw / "landcover" / f"landcover_{self.aoi}"
        coarse = self.scene[self.hr // 2 :: self.hr, self.hr // 2 :: self.hr]
        fine = self.fine_scene[self.fine_hr // 2 :: self.fine_hr, self.fine_hr // 2 :: self.fine_hr]
        x0, y0 = self.fine_origin
        assets = {
            "map": _write(d / "map.tif", coarse, CRS_UTM, self.s2_transform, nodata=0),
            "map_fine": _write(d / "map_fine.tif", fine, CRS_UTM, Affine(1.0, 0, x0, 0, -1.0, y0), nodata=0),
        }
        return self._add("landcover", "2024-01-01", assets)

    # -- ledger -----------------------------------------------------------------------------------

    def finish(self, rejected: dict[str, str] | None = None) -> None:
        """Write the ledger, the raw gate table (all accepted but `rejected`) and the truth sidecar."""
        rejected = rejected or {}
        self.raw.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(self.rows).to_parquet(self.raw / "acquisitions.parquet", index=False)
        gates = self.root / "data" / "gates"
        gates.mkdir(parents=True, exist_ok=True)
        ids = [r["id"] for r in self.rows]
        pd.DataFrame(
            {"id": ids, "accepted": [i not in rejected for i in ids], "reasons": [rejected.get(i, "") for i in ids]}
        ).to_parquet(gates / "raw.parquet", index=False)
        truth = self.root / "data" / "source" / "truth"
        truth.mkdir(parents=True, exist_ok=True)
        # the simulator's sidecar format: the correction to apply, i.e. the negated content shift
        shifts = {
            i: {"dx_px": -t["dx_px"], "dy_px": -t["dy_px"], "reference": t["reference"]} for i, t in self.truth.items()
        }
        (truth / f"{self.aoi}.json").write_text(json.dumps({"aoi": self.aoi, "shifts": shifts}, indent=2))


def default_world(root: Path, **kw) -> RawWorld:
    """Three S2 dates (one cloudy), three S1 with known shifts, one RGB, one DSM, the land-cover maps."""
    world = RawWorld(root, **kw)
    world.add_s2("2024-05-01")
    world.add_s2("2024-05-11", cloud=True)
    world.add_s2("2024-06-20")
    world.add_s1("2024-05-02", (1.3, -0.7))
    world.add_s1("2024-05-14", (-2.2, 0.45))
    world.add_s1("2024-08-01", (0.6, 1.8))
    world.add_rgb("2024-04-15")
    world.add_dsm("2023-09-01", (1.6, -0.9))
    world.add_landcover()
    return world


def two_aoi_world(root: Path) -> Path:
    """The default synthetic world twice, as AOIs `farm` and `town` of one download folder."""
    parts = []
    for aoi, seed in (("farm", 0), ("town", 1)):
        world = default_world(root / aoi, aoi=aoi, seed=seed)
        world.finish()
        parts.append(root / aoi / "data")
    for sub in ("raw", "source/truth"):
        for part in parts:
            shutil.copytree(part / sub, root / "data" / sub, dirs_exist_ok=True)
    for table in ("raw/acquisitions.parquet", "gates/raw.parquet"):
        (root / "data" / table).parent.mkdir(parents=True, exist_ok=True)
        pd.concat([pd.read_parquet(part / table) for part in parts]).to_parquet(root / "data" / table, index=False)
    return root


def pair_params(root: Path, **overrides):
    """Pair params sized for the synthetic world: 16 px chips, 480 m blocks (2 x 2 per AOI), all splits present."""
    from msgfm.config import PairParams

    values = dict(
        out_dir=root / "data/chips", manifest=root / "data/manifest.parquet", chip_px=16, stride_px=16,
        block_m=480, buffer_m=10, val_fraction=0.25, test_fraction=0.25,
    )  # fmt: skip
    values.update(overrides)
    return PairParams(**values)


def build_pipeline(root: Path) -> Path:
    """default_world -> coregister -> validate_coreg -> pair under `root`, as the DVC stages would; returns root."""
    from msgfm.chips.pairing import pair
    from msgfm.config import CoregisterParams, GatesParams
    from msgfm.coreg.stage import coregister
    from msgfm.validation.coreg import validate_coreg

    default_world(root).finish()
    cfg = CoregisterParams()
    coregister(
        cfg, ledger=root / "data/raw/acquisitions.parquet", raw_gate=root / "data/gates/raw.parquet",
        raw_dir=root / "data/raw", out_dir=root / "data/coreg", report=root / "data/reports/coregister.json",
        truth_dir=root / "data/source/truth",
    )  # fmt: skip
    validate_coreg(
        root / "data/coreg", cfg, GatesParams(), gates_dir=root / "data/gates", reports_dir=root / "data/reports/gates"
    ).raise_if_failed()
    pair(pair_params(root), coreg_dir=root / "data/coreg", coreg_gate=root / "data/gates/coreg.parquet", seed=0)
    return root


@pytest.fixture(scope="session")
def pipeline_root(tmp_path_factory) -> Path:
    """One synthetic world taken through coregister, validate_coreg and pair, shared by the test modules.

    Tests that alter files copy the tree first (`copy_pipeline`).
    """
    return build_pipeline(tmp_path_factory.mktemp("pipeline"))


def copy_pipeline(root: Path, dest: Path) -> Path:
    """A private copy of a built pipeline tree, for tests that tamper with its files."""
    shutil.copytree(root / "data", dest / "data")
    return dest
