"""Spatial-block splits: which chip positions are train, val or test, so no two splits share a pixel.

Each AOI is cut into square blocks of `pair.block_m` anchored at its S2 grid corner; blocks get train,
val or test by a seeded shuffle (`assign_splits`: val/test take their share of the blocks holding
fine-grid chips and of those holding S2-grid chips only, every AOI keeps train blocks, and a block
turns train when a land-cover class would otherwise be missing from train, unless that would leave a
split without chips of a grid: then the class stays absent from train, and the pairs gate reports it).
A chip gets the split of every block its footprint, grown by `pair.buffer_m`, overlaps; a chip that
would overlap blocks of two splits is dropped, so no two chips of different splits ever share a pixel.
The same blocks cut the 10 m and the fine grid, so the rule holds across grids.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from msgfm.chips.positions import Position
from msgfm.geo.grids import Bounds

if TYPE_CHECKING:
    from msgfm.config import PairParams

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

Block = tuple[str, int, int]
"""A split block: (aoi, block x, block y) on the AOI's block lattice."""


@dataclass
class _Blocks:
    """How chip positions sit on the block lattice."""

    touched: dict[Position, set[Block]] = field(default_factory=dict)
    """Blocks each footprint grown by the buffer overlaps."""
    home: dict[Position, Block] = field(default_factory=dict)
    """The block holding each footprint's centre (its `block` id in the manifest)."""
    occupied: dict[str, set[tuple[int, int]]] = field(default_factory=lambda: defaultdict(set))
    """Per AOI, the blocks some footprint itself overlaps: the only blocks that get a split."""
    grids: dict[Block, set[str]] = field(default_factory=lambda: defaultdict(set))
    """Grids whose chips each block holds: the stratum a block is drawn in."""


def assign_splits(
    cfg: PairParams,
    seed: int,
    footprints: dict[Position, Bounds],
    origins: dict[str, tuple[float, float]],
    classes: dict[Position, set[int]],
) -> dict[Position, tuple[str, str]]:
    """Split and block id of every chip position that the buffer keeps (see the module docstring).

    Blocks are shuffled with the seed and grouped by the grids whose chips they hold (blocks with fine-grid
    chips and blocks with S2-grid chips only); test and val take their share of each group, at most
    `1 - train share` of any one AOI's blocks (so every AOI keeps train blocks). Then, while a land-cover
    class occurs in kept chips but in no train chip, the val/test block holding most such chips turns train,
    unless that leaves a split (val or test) without chips of a grid that had some.
    """
    blocks = _locate(cfg, footprints, origins)
    split = _draw(cfg, seed, blocks)
    _cover_train_classes(split, blocks, classes)
    return {pos: (sp, f"{blocks.home[pos][1]}_{blocks.home[pos][2]}") for pos, sp in _kept(split, blocks).items()}


def _locate(cfg: PairParams, footprints: dict[Position, Bounds], origins: dict[str, tuple[float, float]]) -> _Blocks:
    """Place every footprint on its AOI's block lattice."""
    blocks = _Blocks()
    for pos, bounds in footprints.items():
        aoi, origin = pos[0], origins[pos[0]]
        blocks.touched[pos] = {(aoi, *b) for b in blocks_touched(bounds, cfg.block_m, cfg.buffer_m, origin)}
        own = blocks_touched(bounds, cfg.block_m, 0.0, origin)
        blocks.occupied[aoi] |= own
        for b in own:
            blocks.grids[(aoi, *b)].add(pos[1])
        cx, cy = (bounds[0] + bounds[2]) / 2 - origin[0], (bounds[1] + bounds[3]) / 2 - origin[1]
        blocks.home[pos] = (aoi, math.floor(cx / cfg.block_m), math.floor(cy / cfg.block_m))
    return blocks


def _draw(cfg: PairParams, seed: int, blocks: _Blocks) -> dict[Block, str]:
    """The seeded draw: test, then val, take their share of each stratum, keeping train blocks in every AOI."""
    # only blocks some footprint overlaps get a split: a grown footprint reaching into a block that no
    # chip overlaps cannot touch any chip there
    lattice = sorted((aoi, *b) for aoi, bs in blocks.occupied.items() for b in bs)
    rng = np.random.default_rng(seed)
    order = [lattice[i] for i in rng.permutation(len(lattice))]
    train_share = 1 - cfg.val_fraction - cfg.test_fraction
    limit = {aoi: len(bs) - max(1, math.ceil(len(bs) * train_share - 1e-9)) for aoi, bs in blocks.occupied.items()}
    held: dict[str, int] = defaultdict(int)
    split = {b: "train" for b in lattice}
    # strata: blocks with chips of the same grids (the fine grid covers a sub-area of the AOI), so that
    # each grid's tasks get their share of val and test blocks
    stratum = {b: tuple(sorted(blocks.grids[b])) for b in lattice}
    for name, fraction in (("test", cfg.test_fraction), ("val", cfg.val_fraction)):
        for key in sorted(set(stratum.values())):
            members = [b for b in order if stratum[b] == key]
            quota = int(round(len(members) * fraction))
            for b in members:
                if quota and split[b] == "train" and held[b[0]] < limit[b[0]]:
                    split[b] = name
                    held[b[0]] += 1
                    quota -= 1
    return split


def _kept(split: dict[Block, str], blocks: _Blocks) -> dict[Position, str]:
    """The split of every position whose grown footprint overlaps blocks of one split only."""
    out = {}
    for pos, bs in blocks.touched.items():
        names = {split[b] for b in bs if b in split}
        if len(names) == 1:
            out[pos] = names.pop()
    return out


def _cover_train_classes(split: dict[Block, str], blocks: _Blocks, classes: dict[Position, set[int]]) -> None:
    """Turn val/test blocks train, most-affected first, while a class of a kept chip is missing from train.

    A block turns train only if every split and grid that has val/test chips keeps some afterwards: an empty
    val or test set costs more than a class absent from train, which the pairs gate and evaluation report.
    """
    while True:
        survivors = _kept(split, blocks)
        train = set().union(*(classes.get(p, set()) for p, sp in survivors.items() if sp == "train"))
        missing = set().union(*(classes.get(p, set()) for p in survivors)) - train
        if not missing:
            return
        score: dict[Block, int] = defaultdict(int)
        for p, sp in survivors.items():
            if sp != "train" and classes.get(p, set()) & missing:
                score[blocks.home[p]] += 1
        held = _held_out_cells(survivors)
        flip = next(
            (
                b
                for b in sorted(sorted(score), key=lambda b: -score[b])
                if _held_out_cells(_kept({**split, b: "train"}, blocks)) == held
            ),
            None,
        )
        if flip is None:
            log.warning("pair: classes %s occur in no train chip (turning a block train would empty a split)",
                        sorted(missing))  # fmt: skip
            return
        log.info("pair: block %s turns train so classes %s occur in train", flip, sorted(missing))
        split[flip] = "train"


def _held_out_cells(kept: dict[Position, str]) -> set[tuple[str, str]]:
    """The (split, grid) pairs of val/test that hold at least one kept chip."""
    return {(sp, pos[1]) for pos, sp in kept.items() if sp != "train"}


def blocks_touched(
    bounds: Bounds, block_m: float, buffer_m: float, origin: tuple[float, float] = (0, 0)
) -> set[tuple[int, int]]:
    """Blocks (of a lattice anchored at `origin`) whose interior the footprint grown by `buffer_m` overlaps.

    A footprint that only touches a block's edge (buffer 0, chip edge on the block line) does not overlap it.
    """
    left, bottom, right, top = (
        bounds[0] - origin[0],
        bounds[1] - origin[1],
        bounds[2] - origin[0],
        bounds[3] - origin[1],
    )
    eps = 1e-6 * block_m
    x0 = math.floor((left - buffer_m) / block_m + eps)
    x1 = math.ceil((right + buffer_m) / block_m - eps) - 1
    y0 = math.floor((bottom - buffer_m) / block_m + eps)
    y1 = math.ceil((top + buffer_m) / block_m - eps) - 1
    return {(bx, by) for bx in range(x0, x1 + 1) for by in range(y0, y1 + 1)}
