"""How each sensor sees the simulated world: Sentinel-2 spectra, Sentinel-1 backscatter, aerial RGB, DSM.

All functions take map coordinates (metres relative to the AOI centre) of a sensor's pixel centres and
return that sensor's pixels; the grids, dates and files are the business of msgfm.sim.simulate.
Spectral signatures are L2A surface reflectance x 10000 in the 12-band order of S2_L2A_BANDS, shaped
after published library spectra (vegetation: low red, red edge B05-B07, NIR plateau B08/B8A; snow dark
in SWIR; water dark beyond green). See docs/simulator.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np

from msgfm.sim.world import (
    BARE,
    BUILT,
    CROP,
    GRASS,
    SHRUB,
    SNOW,
    TREE,
    WATER,
    WETLAND,
    World,
    fbm,
    hash_uniform,
)

# B01  B02  B03  B04  B05  B06  B07  B08  B8A  B09  B11  B12
SIGNATURES: dict[str, list[float]] = {
    "broadleaf": [250, 300, 600, 220, 950, 3300, 4200, 4500, 4650, 4400, 1900, 850],
    "conifer": [180, 230, 420, 180, 650, 2000, 2550, 2750, 2850, 2750, 1150, 500],
    "crop": [280, 330, 700, 240, 1100, 3500, 4400, 4750, 4900, 4600, 2100, 950],
    "grass": [300, 350, 650, 300, 1050, 3000, 3700, 3950, 4050, 3850, 2100, 1050],
    "shrub": [350, 420, 650, 600, 1050, 1900, 2250, 2400, 2500, 2400, 2300, 1500],
    "soil": [700, 850, 1150, 1450, 1700, 1900, 2050, 2200, 2300, 2300, 2900, 2400],
    "sand": [1000, 1250, 1750, 2300, 2550, 2700, 2800, 2900, 3000, 2950, 3600, 3100],
    "rock": [900, 1000, 1200, 1400, 1500, 1600, 1700, 1800, 1850, 1850, 2300, 2000],
    "dry_grass": [550, 700, 1000, 1250, 1550, 1900, 2150, 2350, 2450, 2400, 2900, 2100],
    "litter": [400, 500, 700, 800, 1050, 1400, 1600, 1750, 1850, 1800, 2200, 1500],
    "built": [1000, 1100, 1250, 1350, 1450, 1600, 1700, 1800, 1850, 1800, 2100, 1900],
    "snow": [6000, 6300, 6200, 6000, 5800, 5600, 5400, 5200, 5100, 4600, 600, 450],
    "water": [550, 480, 420, 280, 230, 180, 160, 140, 130, 110, 95, 75],
    "wet_ground": [450, 450, 550, 450, 550, 800, 900, 950, 980, 900, 700, 400],
    "asphalt": [650, 700, 760, 800, 830, 850, 870, 900, 920, 900, 1000, 950],
    "roof": [1100, 1250, 1400, 1550, 1650, 1750, 1850, 1950, 2000, 1950, 2300, 2100],
    "cloud": [5200, 5300, 5200, 5300, 5400, 5500, 5600, 5600, 5700, 3000, 4300, 3200],
}

# Sentinel-1 backscatter (dB) per class at 37 deg incidence: (VV, VH), before phenology and moisture.
S1_DB = np.array(
    [
        (-7.5, -13.0),  # tree: volume scattering, high VH
        (-9.5, -16.5),  # shrub
        (-11.0, -18.5),  # grass
        (-13.0, -21.0),  # crop (bare soil; grows with the canopy)
        (-4.0, -11.0),  # built-up: double bounce, bright
        (-13.0, -21.0),  # bare (soil; sand and rock set per biome)
        (-13.0, -21.5),  # snow
        (-21.0, -28.0),  # water: specular, dark (wind roughens it per date)
        (-10.0, -18.0),  # wetland: flooded vegetation
    ],
    np.float32,
)

# Aerial RGB colours (DN) per surface.
RGB_COLOURS = {
    "ground_tree": (70, 80, 50),
    "crown_broadleaf": (72, 108, 52),
    "crown_conifer": (52, 84, 54),
    "shrub_ground": (150, 135, 105),
    "grass_green": (95, 130, 60),
    "grass_dry": (165, 150, 105),
    "crop_green": (80, 128, 50),
    "soil": (140, 115, 90),
    "straw": (196, 178, 112),
    "sand": (214, 190, 150),
    "rock": (140, 135, 130),
    "road": (95, 95, 100),
    "garden": (100, 122, 72),
    "snow": (236, 240, 248),
    "water": (38, 62, 78),
    "wetland": (85, 100, 65),
}
ROOF_PALETTE = np.array([(160, 82, 62), (128, 128, 134), (72, 72, 78), (198, 192, 186), (150, 60, 45)], np.float32)


def bell(doy: float, peak: np.ndarray | float, width: np.ndarray | float) -> np.ndarray:
    """Seasonal green-up curve: 1 at `peak` day of year, falling off over `width` days."""
    return np.exp(-(((doy - peak) / width) ** 2))


def greenness(world: World, cls: np.ndarray, parcel: np.ndarray, doy: int) -> np.ndarray:
    """Green vegetation fraction (0..1) per pixel on day-of-year `doy`: class phenology, per-parcel crops."""
    conifer = world.biome.conifer
    g = np.zeros(cls.shape, np.float32)
    tree = 0.78 + 0.17 * bell(doy, 190, 70) if conifer else 0.25 + 0.7 * bell(doy, 190, 55)
    g[cls == TREE] = tree
    g[cls == SHRUB] = 0.45 + 0.35 * bell(doy, 170, 70)
    g[cls == GRASS] = 0.35 + 0.55 * bell(doy, 165, 65)
    g[cls == WETLAND] = 0.3 + 0.5 * bell(doy, 180, 60)
    g[cls == BUILT] = 0.12 * bell(doy, 180, 80)
    crop = cls == CROP
    peak = 130 + 110 * parcel[crop]  # winter cereals peak in May, maize in August
    width = 28 + 30 * ((parcel[crop] * 7.31) % 1)
    g[crop] = 0.95 * bell(doy, peak, width)
    return (g * world.biome.veg_vigour).astype(np.float32)


def _luts(world: World) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (green vegetation, background) signatures, shape (9, 12)."""
    s = {k: np.asarray(v, np.float32) for k, v in SIGNATURES.items()}
    bare = s[world.biome.bare_kind]
    dry_bg = s["sand"] if world.biome.bare_kind == "sand" else s["dry_grass"]
    tree = s["conifer"] if world.biome.conifer else s["broadleaf"]
    veg = [tree, s["shrub"], s["grass"], s["crop"], s["grass"], bare, s["snow"], s["water"], s["grass"]]
    bg = [s["litter"], dry_bg, dry_bg, bare if world.biome.bare_kind != "rock" else s["soil"], s["built"], bare,
          s["snow"], s["water"], s["wet_ground"]]  # fmt: skip
    return np.stack(veg), np.stack(bg)


def s2_reflectance(world: World, static: dict[str, np.ndarray], date: dt.date, rng: np.random.Generator) -> np.ndarray:
    """Cloud-free surface reflectance x 10000, (12, H, W) float32: rendered on the sub-grid of `static`
    (`sub` x `sub` points per 10 m pixel) and area-averaged, so a pixel mixes the classes and objects it covers."""
    cls, parcel, texture, f = static["cls"], static["parcel"], static["texture"], int(static["sub"])
    veg, bg = _luts(world)
    doy = date.timetuple().tm_yday
    g = greenness(world, cls, parcel, doy)
    refl = bg[cls] + g[..., None] * (veg[cls] - bg[cls])  # (H*f, W*f, 12)
    refl = _built_structure(world, refl, static, doy)
    bright = 1 + 0.08 * texture + np.where(cls == CROP, 0.16 * (parcel - 0.5), 0)
    bright = np.where(cls == WATER, 1 + 0.2 * texture, bright)
    refl = refl * bright[..., None].astype(np.float32)
    h, w = cls.shape[0] // f, cls.shape[1] // f
    refl = refl.reshape(h, f, w, f, refl.shape[-1]).mean(axis=(1, 3))
    refl *= np.float32(1 + 0.03 * rng.standard_normal())  # per-date atmosphere/illumination residual
    refl *= 1 + 0.012 * rng.standard_normal(refl.shape).astype(np.float32)  # sensor noise
    refl += 12 * rng.standard_normal(refl.shape).astype(np.float32)
    return np.moveaxis(refl, -1, 0).astype(np.float32)


def _built_structure(world: World, refl: np.ndarray, static: dict[str, np.ndarray], doy: int) -> np.ndarray:
    """Built-up sub-pixels by object: asphalt roads, roofs (brightness per roof) and green gardens."""
    s = {k: np.asarray(v, np.float32) for k, v in SIGNATURES.items()}
    built = static["cls"] == BUILT
    garden_g = 0.6 * (0.35 + 0.55 * bell(doy, 165, 65)) * world.biome.veg_vigour
    garden = s["dry_grass"] + np.float32(garden_g) * (s["grass"] - s["dry_grass"])
    roof = s["roof"][None] * (0.6 + 0.8 * static["roof"][..., None])
    obj = np.where(static["road"][..., None], s["asphalt"], np.where(static["building"][..., None], roof, garden))
    return np.where(built[..., None], obj, refl).astype(np.float32)


def add_clouds(
    refl: np.ndarray, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, half_extent_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """Blend clouds and their shadows into `refl`; return it with the cloud mask (0 clear, 1 cloud, 2 shadow)."""
    scale = max(half_extent_m, 300.0)
    salt = int(rng.integers(1, 2**40))

    def field(px: np.ndarray, py: np.ndarray) -> np.ndarray:  # fractal, so no periodic dot pattern
        return fbm(salt, px, py, 20.0, scale * 1.2, hurst=0.8)

    def detail(px: np.ndarray, py: np.ndarray) -> np.ndarray:
        return fbm(salt + 7, px, py, 10.0, 160.0, hurst=0.5)

    cover = rng.uniform(0.15, 0.6)
    sample = field(x[::4, ::4], y[::4, ::4])
    thr = np.quantile(sample, 1 - cover)
    alpha = np.clip((field(x, y) + 0.15 * detail(x, y) - thr) / 0.5, 0, 1)
    sun_az = np.deg2rad(rng.uniform(130, 170))  # sun in the south-east to south: shadows fall to the north-west
    reach = rng.uniform(250, 600)
    sx, sy = -reach * np.sin(sun_az), -reach * np.cos(sun_az)
    shadow = np.clip((field(x - sx, y - sy) + 0.15 * detail(x - sx, y - sy) - thr) / 0.5, 0, 1) * (1 - alpha)
    cloud_sig = np.asarray(SIGNATURES["cloud"], np.float32)[:, None, None]
    surface = refl * (1 - 0.6 * shadow)[None]
    out = (1 - alpha)[None] * surface + alpha[None] * cloud_sig * (0.85 + 0.1 * detail(x, y))[None]
    mask = np.where(alpha > 0.3, 1, np.where(shadow > 0.3, 2, 0)).astype(np.uint8)
    return out.astype(np.float32), mask


def s1_backscatter(
    world: World, x: np.ndarray, y: np.ndarray, date: dt.date, rng: np.random.Generator, looks: float
) -> np.ndarray:
    """VV, VH in dB, (2, H, W) float32: class backscatter, phenology, moisture, incidence angle, Gamma speckle."""
    cls = world.classes(x, y)
    parcel, _ = world.parcels(x, y)
    g = greenness(world, cls, parcel, date.timetuple().tm_yday)
    db = S1_DB[cls].copy()  # (H, W, 2)
    bare_db = {"soil": (-13.0, -21.0), "sand": (-17.0, -26.5), "rock": (-9.0, -17.0)}[world.biome.bare_kind]
    db[cls == BARE] = bare_db
    veg = (cls == CROP) | (cls == GRASS) | (cls == WETLAND)
    db[..., 0] += np.where(veg, 3.0 * g, 0)
    db[..., 1] += np.where(veg, 6.0 * g, 0)
    moisture = 1.2 * rng.standard_normal()  # soil moisture of the date
    wet = veg | (cls == BARE) & (world.biome.bare_kind == "soil")
    db += np.where(wet, moisture, 0)[..., None]
    wind = rng.uniform(0, 1)  # wind roughens open water
    db[cls == WATER] += 6.0 * wind
    db[cls == SNOW] += rng.uniform(-3, 1)  # wet vs dry snow
    db += (0.4 * world.texture(x, y))[..., None]
    db[cls == BUILT] += (2.5 * (world.urban(x, y)["roof"][cls == BUILT] - 0.5))[:, None]
    # incidence angle: the swath's near-to-far gradient across the AOI plus local terrain slope
    # (ascending pass, right-looking: the radar looks east; slopes rising to the east face it)
    theta_near = rng.uniform(31, 43)
    theta = theta_near + 0.06e-3 * (x - x.min())  # ~15 deg over a 250 km swath
    slope = np.where(cls == WATER, 0.0, (world.elevation(x + 5, y) - world.elevation(x - 5, y)) / 10)  # lakes are flat
    theta_local = theta - np.rad2deg(_same_on_every_cpu(np.arctan, slope))
    db += (-0.15 * (theta_local - 37.0))[..., None]
    lin = _same_on_every_cpu(lambda v: 10 ** (v / 10), db)
    speckle = rng.gamma(looks, 1 / looks, size=lin.shape)  # multiplicative, intensity, mean 1
    out = 10 * _same_on_every_cpu(np.log10, np.maximum(lin * speckle, 1e-5))
    return np.moveaxis(out, -1, 0).astype(np.float32)


def _same_on_every_cpu(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """fn(x) as float64 through numpy's long-double loops (libm), not its SIMD loops.

    numpy picks float32/float64 arctan, power and log10 loops by CPU (AVX2, AVX-512), and they differ in the
    last bit; S1 dB values kept those bits, so S1 files and every stage after them differed between machines.
    """
    return fn(np.asarray(x, np.longdouble)).astype(np.float64)


def _shadow(height: np.ndarray, px_m: float, sun_az_deg: float, sun_elev_deg: float) -> np.ndarray:
    """Cast shadows of a height field (objects above ground, m) on a north-up grid; True where shaded."""
    dc, dr = np.sin(np.deg2rad(sun_az_deg)), -np.cos(np.deg2rad(sun_az_deg))  # unit step towards the sun
    drop = px_m * np.tan(np.deg2rad(sun_elev_deg))
    steps = int(np.ceil(float(height.max(initial=0)) / drop)) if height.size else 0
    shade = np.zeros(height.shape, bool)
    h, w = height.shape
    for k in range(1, min(steps, 80) + 1):
        r, c = int(round(k * dr)), int(round(k * dc))
        src = np.zeros_like(height)
        rs, cs = slice(max(r, 0), h + min(r, 0)), slice(max(c, 0), w + min(c, 0))
        rd, cd = slice(max(-r, 0), h + min(-r, 0)), slice(max(-c, 0), w + min(-c, 0))
        src[rd, cd] = height[rs, cs]
        shade |= src - k * drop > height + 0.5
    return shade


def rgb_image(world: World, x: np.ndarray, y: np.ndarray, px_m: float, date: dt.date, rng: np.random.Generator):
    """Aerial RGB, (3, H, W) uint8 on a north-up grid of pixel size `px_m`: textures, roofs, crowns, shadows."""
    s = world.surface(x, y)
    cls = s["cls"]
    doy = date.timetuple().tm_yday
    col = {k: np.asarray(v, np.float32) for k, v in RGB_COLOURS.items()}
    parcel, edge = world.parcels(x, y)
    g = greenness(world, cls, parcel, doy)[..., None]
    bare = col[world.biome.bare_kind]
    img = np.zeros((*cls.shape, 3), np.float32)
    img[cls == TREE] = col["ground_tree"]
    img[cls == SHRUB] = col["sand"] * 0.9 if world.biome.bare_kind == "sand" else col["shrub_ground"]
    grass = col["grass_dry"] + g * (col["grass_green"] - col["grass_dry"])
    img = np.where((cls == GRASS)[..., None], grass, img)
    crop_soil = col["sand"] * 0.8 if world.biome.bare_kind == "sand" else col["soil"]
    ripening = (doy - (130 + 110 * parcel)) / (28 + 30 * ((parcel * 7.31) % 1))  # past the parcel's peak
    background = np.where(((ripening > 0) & (ripening < 1.6))[..., None], col["straw"], crop_soil)
    crop = background + g * (col["crop_green"] - background)
    ca, sa = np.cos(world.field_angle), np.sin(world.field_angle)
    along = np.where(parcel > 0.5, -x * sa + y * ca, x * ca + y * sa)  # rows along or across the strip
    rows = 1 + 0.07 * np.sin(2 * np.pi * along / (0.75 + 3 * ((parcel * 13.7) % 1)))  # sowing/tramlines
    crop = crop * (0.9 + 0.2 * parcel[..., None]) * rows[..., None]
    crop = np.where((edge < 1.5)[..., None], col["grass_green"] * 0.9, crop)  # grassy field margins
    img = np.where((cls == CROP)[..., None], crop, img)
    roof = ROOF_PALETTE[np.minimum((s["roof"] * len(ROOF_PALETTE)).astype(int), len(ROOF_PALETTE) - 1)]
    built = np.where(s["road"][..., None], col["road"], np.where((s["building"] > 0)[..., None], roof, col["garden"]))
    img = np.where((cls == BUILT)[..., None], built, img)
    img[cls == BARE] = bare
    img[cls == SNOW] = col["snow"]
    img[cls == WATER] = col["water"]
    img[cls == WETLAND] = col["wetland"]
    crown_col = col["crown_conifer"] if world.biome.conifer else col["crown_broadleaf"]
    crown = s["crown"][..., None]
    img = img * (1 - np.minimum(crown * 3, 1)) + np.minimum(crown * 3, 1) * crown_col * (0.75 + 0.45 * crown)
    grain = 0.06 * world.texture(x, y) + 0.07 * world.fine_texture(x, y)
    texture = 1 + grain + 0.04 * rng.standard_normal(cls.shape).astype(np.float32)
    img *= texture[..., None]
    # illumination: hillshade of the terrain, then cast shadows of buildings and trees
    sun_az, sun_elev = 150.0, 48.0
    ter = s["terrain"]
    gy, gx = np.gradient(ter + s["canopy"], px_m)  # crowns are lit on their sunny side
    az, el = np.deg2rad(sun_az), np.deg2rad(sun_elev)
    normal = np.stack([-gx, gy, np.ones_like(gx)]) / np.sqrt(gx**2 + gy**2 + 1)
    sun = np.array([np.sin(az) * np.cos(el), np.cos(az) * np.cos(el), np.sin(el)])[:, None, None]
    hill = np.where(cls == WATER, 1.0, np.clip((normal * sun).sum(0) / np.sin(el), 0.3, 1.3))
    shade = _shadow(s["dsm"] - ter, px_m, sun_az, sun_elev)
    img *= (hill * np.where(shade, 0.45, 1.0))[..., None]
    return np.moveaxis(np.clip(np.round(img), 0, 255).astype(np.uint8), -1, 0)


def dsm_heights(world: World, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, nodata: float) -> np.ndarray:
    """Surface heights (m, float32): terrain + buildings + canopy, with lidar dropouts and no returns on water."""
    s = world.surface(x, y)
    dsm = s["dsm"] + 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    salt = int(rng.integers(1, 2**40))
    cell = 25.0
    i, j = np.floor(x / cell), np.floor(y / cell)
    cx = (i + hash_uniform(salt, i, j)) * cell
    cy = (j + hash_uniform(salt + 1, i, j)) * cell
    radius = 2 + 5 * hash_uniform(salt + 2, i, j)
    hole = (hash_uniform(salt + 3, i, j) < 0.05) & ((x - cx) ** 2 + (y - cy) ** 2 < radius**2)
    water_gap = (s["cls"] == WATER) & (hash_uniform(salt + 4, np.floor(x / 40), np.floor(y / 40)) < 0.6)
    return np.where(hole | water_gap, nodata, dsm).astype(np.float32)
