"""The ground truth of the simulated world: terrain, land cover and objects as functions of map coordinates.

Every field is an analytic function of UTM easting/northing (random Fourier noise and integer hashes of
cell indices), so any sensor grid (S2 10 m, a shifted S1 grid, the 1 m fine grid, a Web Mercator RGB grid)
samples exactly the same world. Misregistration is then exact: a sensor's pixels are evaluated at
coordinates displaced by the truth offset while its declared geotransform stays nominal.
See docs/simulator.md for the model and the meaning of every number.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

CODES = np.array([10, 20, 30, 40, 50, 60, 70, 80, 90], dtype=np.uint8)
"""ESA WorldCover 2021 codes: tree, shrub, grass, crop, built-up, bare, snow/ice, water, wetland."""
TREE, SHRUB, GRASS, CROP, BUILT, BARE, SNOW, WATER, WETLAND = range(9)
CLASS_NAMES = ("tree", "shrub", "grass", "crop", "built", "bare", "snow", "water", "wetland")


@dataclass(frozen=True)
class Biome:
    """Land-cover priors and terrain of one biome."""

    priors: tuple[float, ...]  # share of each class, CODES order
    elev_base_m: float
    relief_m: float
    conifer: bool  # tree spectra/crowns: needleleaf (True) or broadleaf deciduous
    bare_kind: str  # "soil", "sand" or "rock"
    elev_affinity: tuple[float, ...] = (0, 0, 0, 0, 0, 0, 2.5, -2.5, -1.5)
    sea: bool = False  # a coastline: water on one side of the AOI
    veg_vigour: float = 1.0  # scales greenness (sparse vegetation in dry biomes)
    building_height_m: tuple[float, float] = (5.0, 14.0)


BIOMES: dict[str, Biome] = {
    "temperate_farmland": Biome((0.17, 0.02, 0.15, 0.52, 0.08, 0.01, 0.0, 0.03, 0.02), 450, 35, False, "soil"),
    "boreal_forest": Biome((0.60, 0.06, 0.07, 0.03, 0.01, 0.01, 0.0, 0.14, 0.08), 150, 25, True, "soil"),
    "arid": Biome((0.005, 0.22, 0.08, 0.06, 0.04, 0.585, 0.0, 0.005, 0.005), 600, 60, False, "sand", veg_vigour=0.55),
    "coastal_city": Biome(
        (0.08, 0.02, 0.11, 0.04, 0.44, 0.02, 0.0, 0.28, 0.01),
        40,
        20,
        False,
        "soil",
        sea=True,
        building_height_m=(8.0, 40.0),
    ),
    "alpine": Biome(
        (0.36, 0.08, 0.22, 0.02, 0.01, 0.15, 0.11, 0.03, 0.02),
        2100,
        650,
        True,
        "rock",
        elev_affinity=(-1.2, 0.0, 0.4, -1.0, -1.0, 1.8, 3.0, -2.0, -1.5),
    ),
}


def stable_key(*parts: str | int) -> list[int]:
    """Integers for a SeedSequence from names and numbers, stable across runs and Python versions."""
    return [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]


def rng_for(seed: int, *parts: str | int) -> np.random.Generator:
    """An independent generator for one (aoi, sensor, date, ...) key: draws never depend on other keys."""
    return np.random.default_rng(np.random.SeedSequence([seed, *stable_key(*parts)]))


def hash_uniform(salt: int, *ints: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) per integer tuple (cell indices): grid-independent randomness for objects."""
    h = np.full(np.shape(ints[0]), (salt * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF, np.uint64)
    for a in ints:
        h ^= np.asarray(a, dtype=np.int64).view(np.uint64) + np.uint64(0x632BE59BD9B4E019)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass
class FourierNoise:
    """Smooth random field: a sum of cosines with random direction, wavelength and phase (unit variance)."""

    kx: np.ndarray
    ky: np.ndarray
    phase: np.ndarray
    amp: np.ndarray

    @classmethod
    def create(cls, rng: np.random.Generator, wl_min: float, wl_max: float, n: int = 14, hurst: float = 0.0):
        wl = np.exp(rng.uniform(np.log(wl_min), np.log(wl_max), n))
        ang = rng.uniform(0, 2 * np.pi, n)
        amp = wl**hurst
        amp = amp / np.sqrt((amp**2).sum() / 2)
        k = 2 * np.pi / wl
        return cls(k * np.cos(ang), k * np.sin(ang), rng.uniform(0, 2 * np.pi, n), amp)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.zeros(np.shape(x), np.float32)
        for kx, ky, ph, a in zip(self.kx, self.ky, self.phase, self.amp, strict=True):
            out += np.float32(a) * np.cos(kx * x + ky * y + ph).astype(np.float32)
        return out


@dataclass
class World:
    """One AOI's ground truth. Coordinates are metres relative to the AOI centre (x east, y north)."""

    biome: Biome
    half_extent_m: float
    rng: np.random.Generator
    salt: int = 0
    class_noise: list[FourierNoise] = field(default_factory=list)
    bias: np.ndarray = field(default_factory=lambda: np.zeros(9))
    sea_dir: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0]))

    @classmethod
    def create(cls, biome_name: str, half_extent_m: float, seed: int, aoi: str) -> World:
        """Draw the world of one AOI and calibrate class biases so class shares follow the biome priors."""
        rng = rng_for(seed, aoi, "world")
        w = cls(BIOMES[biome_name], half_extent_m, rng, salt=int(rng.integers(1, 2**47)))
        scale = max(half_extent_m, 300.0)
        w.terrain = FourierNoise.create(rng, scale * 0.3, scale * 6, n=18, hurst=1.2)
        w.terrain_detail = FourierNoise.create(rng, 60, 600, n=10, hurst=1.5)
        w.class_noise = [FourierNoise.create(rng, scale * 0.25, scale * 1.6, n=12, hurst=0.6) for _ in CODES]
        w.edge_noise = FourierNoise.create(rng, 25, 250, n=12)
        w.texture = FourierNoise.create(rng, 60, 400, n=12)
        w.fine_texture = FourierNoise.create(rng, 3, 40, n=16)
        ang = rng.uniform(0, 2 * np.pi)
        w.sea_dir = np.array([np.cos(ang), np.sin(ang)])
        w.street_angle = rng.uniform(0, np.pi / 2)
        w.field_angle = rng.uniform(-0.5, 0.5)
        w.crown_cell_m = 4.5 if w.biome.conifer else 6.0
        w._calibrate()
        return w

    # -- terrain -------------------------------------------------------------------------------------
    def elevation(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Bare-earth terrain height, metres."""
        b = self.biome
        e = b.elev_base_m + b.relief_m * (self.terrain(x, y) + 0.03 * self.terrain_detail(x, y))
        if b.sea:  # land rises away from the sea
            e = e - 0.012 * (x * self.sea_dir[0] + y * self.sea_dir[1])
        return e.astype(np.float32)

    def _scores(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        b = self.biome
        e = self.elevation(x, y)
        e_norm = (e - b.elev_base_m) / max(b.relief_m, 1.0)
        edge = 0.4 * self.edge_noise(x, y)
        s = np.stack([n(x, y) for n in self.class_noise]).astype(np.float32)
        s += edge[None] + np.asarray(b.elev_affinity, np.float32)[:, None, None] * e_norm[None]
        if b.sea:
            along = (x * self.sea_dir[0] + y * self.sea_dir[1]) / self.half_extent_m
            s[WATER] += 6.0 * along
        s += self.bias.astype(np.float32)[:, None, None]
        s[np.asarray(b.priors) <= 0] = -np.inf
        return s

    def _calibrate(self, n: int = 64, iters: int = 40) -> None:
        """Fit per-class biases on a coarse grid so that the class shares match the biome priors."""
        c = np.linspace(-self.half_extent_m, self.half_extent_m, n)
        x, y = np.meshgrid(c, c)
        prior = np.maximum(np.asarray(self.biome.priors, float), 1e-9)
        self.bias = np.log(prior)
        for _ in range(iters):
            cls = self._scores(x, y).argmax(0)
            frac = np.bincount(cls.ravel(), minlength=9) / cls.size
            self.bias = self.bias + 0.6 * (np.log(prior) - np.log(frac + 1e-3))

    def classes(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Land-cover class index (0..8, CODES order) at each point."""
        return self._scores(x, y).argmax(0).astype(np.uint8)

    # -- objects -------------------------------------------------------------------------------------
    def parcels(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Field parcel key (uniform [0,1) per parcel) and distance to the parcel edge (m), staggered strips."""
        ca, sa = np.cos(self.field_angle), np.sin(self.field_angle)
        u, v = x * ca + y * sa, -x * sa + y * ca
        width = 70.0
        cu = np.floor(u / width)
        length = 60 + 140 * hash_uniform(self.salt + 1, cu)
        off = length * hash_uniform(self.salt + 2, cu)
        cv = np.floor((v + off) / length)
        key = hash_uniform(self.salt + 3, cu, cv)
        du = np.minimum(u - cu * width, (cu + 1) * width - u)
        dv = np.minimum(v + off - cv * length, (cv + 1) * length - (v + off))
        return key, np.minimum(du, dv)

    def urban(self, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """Street grid and buildings: road mask, building height (m, 0 off roofs) and roof colour key."""
        ca, sa = np.cos(self.street_angle), np.sin(self.street_angle)
        u, v = x * ca + y * sa, -x * sa + y * ca
        bu_len, bv_len, road = 96.0, 72.0, 9.0
        bu, bv = np.floor(u / bu_len), np.floor(v / bv_len)
        lu, lv = u - bu * bu_len, v - bv * bv_len
        is_road = (lu < road) | (lv < road)
        block = hash_uniform(self.salt + 4, bu, bv)
        lot_w = 14 + 10 * np.floor(block * 3)  # 14, 24 or 34 m lots per block
        lot = np.floor((lu - road) / lot_w)
        ll = lu - road - lot * lot_w
        lot_key = hash_uniform(self.salt + 5, bu, bv, lot)
        setback = 2.0 + 3.0 * lot_key
        house = (ll > 1.5) & (ll < lot_w - 1.5) & (lv > road + setback) & (lv < bv_len - setback) & (lot_key < 0.85)
        large = block < 0.18  # one big building (industry, mall) on the whole block
        big = (lu > road + 4) & (lu < bu_len - 4) & (lv > road + 4) & (lv < bv_len - 4)
        building = np.where(large, big, house) & ~is_road
        lo, hi = self.biome.building_height_m
        height = np.where(large, lo + 0.6 * (hi - lo) * block / 0.18, lo + (hi - lo) * lot_key**2)
        return {
            "road": is_road,
            "height": np.where(building, height, 0).astype(np.float32),
            "roof": np.where(large, block, lot_key).astype(np.float32),
        }

    def crowns(self, x: np.ndarray, y: np.ndarray, cls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tree/bush crowns on a jittered lattice: crown shape in [0,1] and its top height (m)."""
        cell = self.crown_cell_m
        i, j = np.floor(x / cell), np.floor(y / cell)
        cx = (i + 0.5 + 0.2 * (hash_uniform(self.salt + 6, i, j) - 0.5)) * cell
        cy = (j + 0.5 + 0.2 * (hash_uniform(self.salt + 7, i, j) - 0.5)) * cell
        k = hash_uniform(self.salt + 8, i, j)
        radius = cell * (0.3 + 0.18 * k)
        shape = np.clip(1 - ((x - cx) ** 2 + (y - cy) ** 2) / radius**2, 0, 1)
        density = np.array([0.92, 0.35, 0.03, 0.0, 0.06, 0.01, 0.0, 0.0, 0.08])[cls]
        present = hash_uniform(self.salt + 9, i, j) < density
        top = np.where(cls == SHRUB, 1.0 + 2.0 * k, (10 + 14 * k) * (0.7 if self.biome.conifer else 1.0))
        shape = np.where(present, shape, 0).astype(np.float32)
        return shape, top.astype(np.float32)

    def surface(self, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """Everything the fine sensors see at each point: class, terrain, objects (DSM = terrain+objects)."""
        cls = self.classes(x, y)
        urban = self.urban(x, y)
        built = cls == BUILT
        crown, top = self.crowns(x, y, cls)
        crown = np.where(built & (urban["road"] | (urban["height"] > 0)), 0, crown)
        canopy = top * np.sqrt(crown) if self.biome.conifer is False else top * crown
        b_height = np.where(built, urban["height"], 0)
        terrain = self.elevation(x, y)
        return {
            "cls": cls,
            "terrain": terrain,
            "road": built & urban["road"],
            "building": b_height,
            "roof": urban["roof"],
            "crown": crown,
            "canopy": canopy.astype(np.float32),
            "dsm": (terrain + np.maximum(b_height, canopy)).astype(np.float32),
        }
