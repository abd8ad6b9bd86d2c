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
from msgfm.config.training import (
    FIXED_VARIANTS,
    EvaluateParams,
    FinetuneParams,
    ModelParams,
    PretrainParams,
    PretrainVariant,
    PretrainVariantsParams,
)

__all__ = [
    "FIXED_VARIANTS",
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
    "PretrainVariant",
    "PretrainVariantsParams",
    "RayParams",
    "RetrainParams",
    "Section",
    "SimulateParams",
    "SourceParams",
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
    pretrain_variants: PretrainVariantsParams = Field(default_factory=PretrainVariantsParams)
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
        for name in self.pretrain_variants.define:
            try:
                self.pretrain_variant(name)
            except ValidationError as e:
                problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
                raise ValueError(f"pretrain_variants.define.{name}: {problems}") from None
        unknown = [v for v in self.finetune.variants if v not in (*FIXED_VARIANTS, *self.pretrain_variants.define)]
        if unknown or len(set(self.finetune.variants)) != len(self.finetune.variants):
            raise ValueError(
                f"finetune.variants must be distinct names among {[*FIXED_VARIANTS, *self.pretrain_variants.define]} "
                f"(pretrain_variants.define), got {self.finetune.variants}"
            )
        return self

    def pretrain_variant(self, name: str) -> Params:
        """These params as pretraining variant `name` runs them: its sensors and model values, and its own outputs
        (the model in `pretrain_variants.models_dir/<name>`, the other paths of `pretrain` suffixed `_<name>`)."""
        spec = self.pretrain_variants.define.get(name)
        if spec is None:
            known = sorted(self.pretrain_variants.define)
            raise ParamsError(f"unknown pretraining variant {name!r}; pretrain_variants.define has {known}")
        cfg = self.pretrain
        sensors = spec.sensors or cfg.sensors

        def suffixed(path: Path) -> Path:
            return path.with_name(f"{path.stem}_{name}{path.suffix}")

        pretrain = PretrainParams.model_validate(
            {
                **cfg.model_dump(),
                "sensors": sensors,
                # a sensor the base mix lacks (params already narrowed to another variant) gets share 1
                "sensor_mix": {s: cfg.sensor_mix.get(s, 1.0) for s in sensors},
                "out_dir": self.pretrain_variants.models_dir / name,
                "checkpoint_dir": suffixed(cfg.checkpoint_dir),
                "metrics": suffixed(cfg.metrics),
                "plots_dir": suffixed(cfg.plots_dir),
            }
        )
        model = ModelParams.model_validate({**self.model.model_dump(), **spec.model})
        return self.model_copy(update={"pretrain": pretrain, "model": model})


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
