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

from msgfm.landcover import SIMULATED

CODES = np.array([c.code for c in SIMULATED], dtype=np.uint8)
"""The WorldCover code of each class index: tree, shrub, grass, crop, built-up, bare, snow/ice, water, wetland."""
TREE, SHRUB, GRASS, CROP, BUILT, BARE, SNOW, WATER, WETLAND = range(len(SIMULATED))


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
    # priors:              tree   shrub  grass  crop   built  bare   snow  water  wetland
    "temperate_farmland": Biome((0.17, 0.02, 0.15, 0.52, 0.08, 0.01, 0.0, 0.03, 0.02),
                                elev_base_m=450, relief_m=35, conifer=False, bare_kind="soil"),
    "boreal_forest": Biome((0.60, 0.06, 0.07, 0.03, 0.01, 0.01, 0.0, 0.14, 0.08),
                           elev_base_m=150, relief_m=25, conifer=True, bare_kind="soil"),
    "arid": Biome((0.005, 0.22, 0.08, 0.06, 0.04, 0.585, 0.0, 0.005, 0.005),
                  elev_base_m=600, relief_m=60, conifer=False, bare_kind="sand", veg_vigour=0.55),
    "coastal_city": Biome((0.08, 0.02, 0.11, 0.04, 0.44, 0.02, 0.0, 0.28, 0.01),
                          elev_base_m=40, relief_m=20, conifer=False, bare_kind="soil", sea=True,
                          building_height_m=(8.0, 40.0)),
    "alpine": Biome((0.36, 0.08, 0.22, 0.02, 0.01, 0.15, 0.11, 0.03, 0.02),
                    elev_base_m=2100, relief_m=300, conifer=True, bare_kind="rock",
                    elev_affinity=(-1.2, 0.0, 0.4, -1.0, -1.0, 1.8, 3.0, -2.0, -1.5)),
}  # fmt: skip


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
        """The field at points (x, y). On a pixel grid (x, y affine in row and column, as every sensor grid
        here is) the sum of cosines is a complex matrix product of per-row and per-column phasors, so the
        trigonometry is O(rows + columns); other point sets take the direct sum."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        steps = _affine_steps(x, y)
        if steps is not None:
            (x0, y0), (xc, yc), (xr, yr) = steps
            h, w = x.shape
            col_phase = (
                np.outer(self.kx * xc + self.ky * yc, np.arange(w))
                + (self.kx * x0 + self.ky * y0 + self.phase)[:, None]
            )
            row_phase = np.outer(np.arange(h), self.kx * xr + self.ky * yr)
            return ((np.exp(1j * row_phase) * self.amp) @ np.exp(1j * col_phase)).real.astype(np.float32)
        out = np.zeros(x.shape, np.float32)
        for kx, ky, ph, a in zip(self.kx, self.ky, self.phase, self.amp, strict=True):
            out += np.float32(a) * np.cos(kx * x + ky * y + ph).astype(np.float32)
        return out


def value_noise(salt: int, x: np.ndarray, y: np.ndarray, cell_m: float) -> np.ndarray:
    """Smooth lattice noise (hashed corner values, smoothstep-interpolated) of period-free cells of `cell_m`."""
    u, v = np.asarray(x, np.float64) / cell_m, np.asarray(y, np.float64) / cell_m
    i, j = np.floor(u), np.floor(v)
    fu, fv = u - i, v - j
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    corner = [hash_uniform(salt, i + di, j + dj) for di in (0, 1) for dj in (0, 1)]  # (0,0) (0,1) (1,0) (1,1)
    left = corner[0] + fv * (corner[1] - corner[0])
    right = corner[2] + fv * (corner[3] - corner[2])
    return ((left + fu * (right - left)) * 2 - 1).astype(np.float32)


def fbm(salt: int, x: np.ndarray, y: np.ndarray, cell_min_m: float, cell_max_m: float, hurst: float = 0.7):
    """Fractal (fBm) noise of unit variance from octaves of value noise between two cell sizes: a texture
    with a power-law spectrum and, unlike a sum of a few cosines, no periodic pattern."""
    out = np.zeros(np.shape(x), np.float32)
    total, cell, k = 0.0, float(cell_max_m), 0
    while cell >= cell_min_m * 0.999:
        amp = (cell / cell_max_m) ** hurst
        out += np.float32(amp) * value_noise(salt + 101 * k, x, y, cell)
        total += amp**2
        cell, k = cell / 2, k + 1
    return out / np.float32(np.sqrt(total * 0.2))  # value noise on [-1, 1] has variance about 0.2


def _affine_steps(x: np.ndarray, y: np.ndarray, tol_m: float = 1e-6):
    """(origin, step per column, step per row) when the 2-D coordinate arrays are affine in (row, col)."""
    if x.ndim != 2 or min(x.shape) < 2 or x.shape != y.shape:
        return None
    steps = []
    for a in (x, y):
        c, r = a[0, 1] - a[0, 0], a[1, 0] - a[0, 0]
        model = a[0, 0] + np.arange(a.shape[1]) * c + np.arange(a.shape[0])[:, None] * r
        if np.abs(model - a).max() > tol_m:
            return None
        steps.append((a[0, 0], c, r))
    (x0, xc, xr), (y0, yc, yr) = steps
    return (x0, y0), (xc, yc), (xr, yr)


@dataclass
class World:
    """One AOI's ground truth. Coordinates are metres relative to the AOI centre (x east, y north)."""

    biome: Biome
    half_extent_m: float
    salt: int  # keys the integer hashes of parcels, streets and crowns
    terrain: FourierNoise
    terrain_detail: FourierNoise
    class_noise: list[FourierNoise]
    edge_noise: FourierNoise  # roughens class boundaries
    texture: FourierNoise  # within-class variation seen at 10 m
    fine_texture: FourierNoise  # grain seen at 1 m
    sea_dir: np.ndarray  # unit vector towards the sea (coastal biome)
    street_angle: float
    field_angle: float
    crown_cell_m: float
    bias: np.ndarray = field(default_factory=lambda: np.zeros(9))

    @classmethod
    def create(cls, biome_name: str, half_extent_m: float, seed: int, aoi: str) -> World:
        """Draw the world of one AOI and calibrate class biases so class shares follow the biome priors."""
        rng = rng_for(seed, aoi, "world")
        biome = BIOMES[biome_name]
        scale = max(half_extent_m, 300.0)
        salt = int(rng.integers(1, 2**47))
        terrain = FourierNoise.create(rng, scale * 0.5, scale * 8, n=18, hurst=1.2)
        terrain_detail = FourierNoise.create(rng, 60, 600, n=10, hurst=1.5)
        class_noise = [FourierNoise.create(rng, scale * 0.25, scale * 1.6, n=12, hurst=0.6) for _ in CODES]
        edge_noise = FourierNoise.create(rng, 25, 250, n=12)
        texture = FourierNoise.create(rng, 60, 600, n=16, hurst=1.0)
        fine_texture = FourierNoise.create(rng, 2, 30, n=24, hurst=0.5)
        ang = rng.uniform(0, 2 * np.pi)
        w = cls(
            biome=biome,
            half_extent_m=half_extent_m,
            salt=salt,
            terrain=terrain,
            terrain_detail=terrain_detail,
            class_noise=class_noise,
            edge_noise=edge_noise,
            texture=texture,
            fine_texture=fine_texture,
            sea_dir=np.array([np.cos(ang), np.sin(ang)]),
            street_angle=float(rng.uniform(0, np.pi / 2)),
            field_angle=float(rng.uniform(-0.5, 0.5)),
            crown_cell_m=4.5 if biome.conifer else 6.0,
        )
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

    def _scores(self, x: np.ndarray, y: np.ndarray, with_bias: bool = True) -> np.ndarray:
        b = self.biome
        e = self.elevation(x, y)
        e_norm = (e - b.elev_base_m) / max(b.relief_m, 1.0)
        edge = 0.4 * self.edge_noise(x, y)
        s = np.stack([n(x, y) for n in self.class_noise]).astype(np.float32)
        s += edge[None] + np.asarray(b.elev_affinity, np.float32)[:, None, None] * e_norm[None]
        if b.sea:
            along = (x * self.sea_dir[0] + y * self.sea_dir[1]) / self.half_extent_m
            s[WATER] += 6.0 * along
        if with_bias:
            s += self.bias.astype(np.float32)[:, None, None]
        s[np.asarray(b.priors) <= 0] = -np.inf
        return s

    def _calibrate(self, n: int = 64, iters: int = 200) -> None:
        """Fit per-class biases on a coarse grid so that the class shares match the biome priors."""
        c = np.linspace(-self.half_extent_m, self.half_extent_m, n)
        x, y = np.meshgrid(c, c)
        scores = self._scores(x, y, with_bias=False)
        target = np.log(np.maximum(np.asarray(self.biome.priors, float), 1e-6))
        self.bias = target.copy()
        for _ in range(iters):
            cls = (scores + self.bias[:, None, None].astype(np.float32)).argmax(0)
            frac = np.bincount(cls.ravel(), minlength=9) / cls.size
            self.bias = np.clip(self.bias + 0.2 * (target - np.log(frac + 1e-3)), -50, 50)

    def classes(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Land-cover class index (0..8, CODES order) at each point."""
        return self._scores(x, y).argmax(0).astype(np.uint8)

    def mapped_classes(self, x: np.ndarray, y: np.ndarray, noise: float, cell_m: float = 30.0) -> np.ndarray:
        """The class a land-cover map reports: the true class, except in a share `noise` of `cell_m` cells
        (grid-independent) where the mapper picked the runner-up class, the plausible confusion."""
        scores = self._scores(x, y)
        order = np.argsort(-scores, axis=0)
        wrong = hash_uniform(self.salt + 12, np.floor(x / cell_m), np.floor(y / cell_m)) < noise
        runner_up_valid = np.isfinite(np.take_along_axis(scores, order[1:2], 0)[0])
        return np.where(wrong & runner_up_valid, order[1], order[0]).astype(np.uint8)

    def grain(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Within-class texture seen by S2 (unit-variance fBm from 5 m to 640 m, no periodic pattern)."""
        return fbm(self.salt + 20, x, y, 5.0, 640.0)

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
        """Tree/bush crowns, one candidate per lattice cell placed anywhere in it (checked over the 3x3
        neighbourhood, so crowns overlap naturally): crown shape in [0,1] and the crown's top height (m)."""
        cell = self.crown_cell_m
        i0, j0 = np.floor(x / cell).astype(np.int64), np.floor(y / cell).astype(np.int64)
        # per-cell draws on the (small) lattice, gathered per pixel
        ii, jj = np.meshgrid(
            np.arange(i0.min() - 1, i0.max() + 2), np.arange(j0.min() - 1, j0.max() + 2), indexing="ij"
        )
        k_t = hash_uniform(self.salt + 8, ii, jj)
        cx_t = (ii + hash_uniform(self.salt + 6, ii, jj)) * cell
        cy_t = (jj + hash_uniform(self.salt + 7, ii, jj)) * cell
        present_t = hash_uniform(self.salt + 9, ii, jj)
        density = np.array([0.85, 0.35, 0.03, 0.0, 0.06, 0.01, 0.0, 0.0, 0.08], np.float32)[cls]
        shrub = cls == SHRUB
        tree_scale = 0.7 if self.biome.conifer else 1.0
        best = np.zeros(x.shape, np.float32)
        best_top = np.zeros(x.shape, np.float32)
        height = np.zeros(x.shape, np.float32)
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                li, lj = i0 + di - ii[0, 0], j0 + dj - jj[0, 0]
                k = k_t[li, lj]
                radius = cell * (0.45 + 0.35 * k)
                shape = np.clip(1 - ((x - cx_t[li, lj]) ** 2 + (y - cy_t[li, lj]) ** 2) / radius**2, 0, 1)
                shape = np.where(present_t[li, lj] < density, shape, 0).astype(np.float32)
                top = np.where(shrub, 1.0 + 2.0 * k, (10 + 14 * k) * tree_scale).astype(np.float32)
                h = top * (shape if self.biome.conifer else np.sqrt(shape))  # cones vs domes
                take = h > height
                height = np.where(take, h, height)
                best = np.where(take, shape, best)
                best_top = np.where(take, top, best_top)
        return best, best_top

    def surface(self, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """Everything the fine sensors see at each point: class, terrain, objects (DSM = terrain+objects)."""
        cls = self.classes(x, y)
        urban = self.urban(x, y)
        built = cls == BUILT
        crown, top = self.crowns(x, y, cls)
        crown = np.where(built & (urban["road"] | (urban["height"] > 0)), 0, crown)
        canopy = top * crown if self.biome.conifer else top * np.sqrt(crown)
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
