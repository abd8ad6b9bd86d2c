"""The ESA WorldCover 2021 legend: the land-cover codes of the label source, their names and colours.

One home for the legend, so the simulator (which classes it draws), the raw gate (which values a land-cover
asset may hold) and evaluation (class names in plots and tables) agree without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LandCoverClass:
    """One class of the legend: its code, official name, short name (reports and plots) and official colour."""

    code: int
    name: str
    short: str
    colour: str


NODATA = 0
"""The code of pixels without a class."""

LEGEND: tuple[LandCoverClass, ...] = (
    LandCoverClass(10, "Tree cover", "tree", "#006400"),
    LandCoverClass(20, "Shrubland", "shrub", "#ffbb22"),
    LandCoverClass(30, "Grassland", "grass", "#ffff4c"),
    LandCoverClass(40, "Cropland", "crop", "#f096ff"),
    LandCoverClass(50, "Built-up", "built", "#fa0000"),
    LandCoverClass(60, "Bare / sparse vegetation", "bare", "#b4b4b4"),
    LandCoverClass(70, "Snow and ice", "snow", "#f0f0f0"),
    LandCoverClass(80, "Permanent water bodies", "water", "#0064c8"),
    LandCoverClass(90, "Herbaceous wetland", "wetland", "#0096a0"),
    LandCoverClass(95, "Mangroves", "mangrove", "#00cf75"),
    LandCoverClass(100, "Moss and lichen", "moss", "#fae6a0"),
)
"""Every class of the ESA WorldCover 2021 (v200) map, by code."""

SIMULATED: tuple[LandCoverClass, ...] = LEGEND[:9]
"""The classes the simulated world draws (10 to 90; no mangroves, moss or lichen), in its class-index order."""

SHORT_NAMES: dict[int, str] = {c.code: c.short for c in LEGEND}
"""Short class name of each code, as reports and plots show it."""
