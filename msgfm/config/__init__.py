"""Typed, validated view of params.yaml, the single parameter file of the pipeline.

Each stage owns one section (`data.py`: the data stages; `training.py`: the model stages; `cluster.py`: the
`ray` section both use). Unknown keys, wrong types and out-of-range values are errors whose message names the
dotted key and what it allows, so a typo in params.yaml stops the stage at once.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from msgfm.config.base import ParamsError, Section
from msgfm.config.cluster import RayParams
from msgfm.config.data import (
    AOIParams,
    CoregisterParams,
    DownloadParams,
    GatesParams,
    PairParams,
    RetrainParams,
    SimulateParams,
    SourceParams,
)
from msgfm.config.training import EvaluateParams, FinetuneParams, ModelParams, PretrainParams, Variant

__all__ = [
    "AOIParams",
    "CoregisterParams",
    "DownloadParams",
    "EvaluateParams",
    "FinetuneParams",
    "GatesParams",
    "ModelParams",
    "PairParams",
    "Params",
    "ParamsError",
    "PretrainParams",
    "RayParams",
    "RetrainParams",
    "Section",
    "SimulateParams",
    "SourceParams",
    "Variant",
    "load_params",
]


class Params(Section):
    """The whole params.yaml. Stages add their section here as they land."""

    seed: int = Field(0, ge=0)
    simulate: SimulateParams
    source: SourceParams = Field(default_factory=SourceParams)
    download: DownloadParams = Field(default_factory=DownloadParams)
    gates: GatesParams = Field(default_factory=GatesParams)
    retrain: RetrainParams = Field(default_factory=RetrainParams)
    coregister: CoregisterParams = Field(default_factory=CoregisterParams)
    pair: PairParams = Field(default_factory=PairParams)
    ray: RayParams = Field(default_factory=RayParams)
    pretrain: PretrainParams = Field(default_factory=PretrainParams)
    model: ModelParams = Field(default_factory=ModelParams)
    finetune: FinetuneParams = Field(default_factory=FinetuneParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)

    @model_validator(mode="after")
    def _chips_fit_the_model(self) -> Params:
        if self.model.chip_px != self.pair.chip_px:
            raise ValueError(
                f"model.chip_px ({self.model.chip_px}) must equal pair.chip_px ({self.pair.chip_px}): "
                "the encoder is built for the chips pair cuts"
            )
        return self


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
