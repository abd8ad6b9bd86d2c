"""Typed, validated view of params.yaml, the single parameter file of the pipeline.

Each stage owns one section. Unknown keys, wrong types and out-of-range values are errors whose
message names the dotted key and what it allows, so a typo in params.yaml stops the stage at once.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the file and the key."""


class Section(BaseModel):
    """Base of every params section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class AOIParams(Section):
    """One simulated area of interest."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    biome: Literal["temperate_farmland", "boreal_forest", "arid", "coastal_city", "alpine"]
    lon: float = Field(ge=-180, le=180)
    lat: float = Field(ge=-80, le=84)


class SimulateParams(Section):
    """`msgfm simulate`: the embedded simulated world, published as a static STAC catalog."""

    out_dir: Path = Path("data/source")
    aois: list[AOIParams] = Field(min_length=1)
    size_px: int = Field(128, ge=32, le=4096, description="AOI side at the 10 m S2 grid, pixels")
    fine_size_px: int = Field(256, ge=32, le=8192, description="RGB/DSM side at the fine grid, pixels")
    fine_gsd_m: float = Field(1.0, gt=0, le=5)
    start: dt.date = dt.date(2024, 3, 1)
    end: dt.date = dt.date(2024, 10, 31)
    s2_dates: int = Field(6, ge=1, le=100)
    s1_dates: int = Field(6, ge=1, le=100)
    rgb_dates: int = Field(1, ge=1, le=20)
    dsm_dates: int = Field(1, ge=1, le=20)
    cloudy_fraction: float = Field(0.33, ge=0, le=1)
    max_s1_shift_px: float = Field(3.0, ge=0, le=20)
    max_dsm_shift_px: float = Field(3.0, ge=0, le=20)
    until: dt.date | None = Field(None, description="publish only acquisitions up to this date")

    @model_validator(mode="after")
    def _dates_ordered(self) -> SimulateParams:
        if self.end <= self.start:
            raise ValueError(f"simulate.end ({self.end}) must be after simulate.start ({self.start})")
        names = [a.name for a in self.aois]
        if len(set(names)) != len(names):
            raise ValueError(f"simulate.aois names must be unique, got {names}")
        return self


class Params(Section):
    """The whole params.yaml. Stages add their section here as they land."""

    seed: int = Field(0, ge=0)
    simulate: SimulateParams


def _format_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: {err.error_count()} invalid parameter(s):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            parent = e["loc"][:-1]
            allowed = _allowed_keys(parent)
            msg = f"unknown key; allowed keys here: {', '.join(allowed)}" if allowed else "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        got = e.get("input")
        got_txt = "" if e["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {key}: {msg}{got_txt}")
    return "\n".join(lines)


def _allowed_keys(loc: tuple) -> list[str]:
    """Field names of the section at `loc` (a pydantic error location), for error messages."""
    model: type[BaseModel] = Params
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        inner = getattr(ann, "__args__", None)
        candidates = [ann, *(inner or ())]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            return []
        model = nxt
    return sorted(model.model_fields)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; raise ParamsError naming the file and every bad key."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(_format_error(path, e)) from None
