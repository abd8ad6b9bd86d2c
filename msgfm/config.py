"""Typed, validated view of params.yaml, the single parameter file of the pipeline.

Each stage owns one section. Unknown keys, wrong types and out-of-range values are errors whose
message names the dotted key and what it allows, so a typo in params.yaml stops the stage at once.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    from msgfm.architectures import MSGFMConfig


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
    cloudy_fraction: float = Field(0.33, ge=0, le=0.5, description="share of S2 dates that are cloudy")
    clear_partner_days: int = Field(5, ge=1, le=30, description="days from a cloudy S2 date to its clear partner")
    s1_looks: float = Field(4.4, ge=1, le=20, description="equivalent number of looks of the S1 Gamma speckle")
    max_s1_shift_px: float = Field(3.0, ge=0, le=20)
    max_dsm_shift_px: float = Field(3.0, ge=0, le=20)
    until: dt.date | None = Field(None, description="publish only acquisitions up to this date")

    @model_validator(mode="after")
    def _dates_ordered(self) -> SimulateParams:
        if self.end <= self.start:
            raise ValueError(f"simulate.end ({self.end}) must be after simulate.start ({self.start})")
        if self.size_px % 6:
            raise ValueError(f"simulate.size_px ({self.size_px}) must be a multiple of 6 (20 m and 60 m S2 bands)")
        if self.fine_size_px * self.fine_gsd_m > self.size_px * 10:
            raise ValueError(
                f"simulate.fine_size_px * fine_gsd_m ({self.fine_size_px * self.fine_gsd_m} m) must fit in the AOI "
                f"(size_px * 10 m = {self.size_px * 10} m)"
            )
        names = [a.name for a in self.aois]
        if len(set(names)) != len(names):
            raise ValueError(f"simulate.aois names must be unique, got {names}")
        return self


class RetrainParams(Section):
    """flows/retrain.py: scheduled retraining on new acquisitions, and its champion/challenger gate."""

    cron: str = Field(
        "0 3 * * *",
        pattern=r"^\S+( \S+){4}$",
        description="when the retrain-on-new-acquisitions deployment polls the source (5-field cron)",
    )
    timezone: str = Field("UTC", description="IANA time zone the cron schedule is read in")
    tolerance: float = Field(0.02, ge=0, le=1, description="largest relative loss on any metric still promoted")
    lock_path: Path = Field(Path("data/retrain.lock"), description="file lock held while a retraining run works")
    lock_wait_s: float = Field(0, ge=0, le=86400, description="wait this long for a running retrain, then exit")
    registry_path: Path = Path("data/models/registry.json")
    metrics_path: Path = Field(Path("data/metrics/evaluate.json"), description="the evaluate stage's test metrics")

    @model_validator(mode="after")
    def _known_timezone(self) -> RetrainParams:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"retrain.timezone: unknown time zone {self.timezone!r}") from None
        return self


class CoregisterParams(Section):
    """`msgfm coregister`: every sensor of an AOI on one grid (S1/S2 10 m; RGB/DSM fine), shift-corrected."""

    out_dir: Path = Field(Path("data/coreg"), description="co-registered COGs and rasters.parquet")
    report: Path = Path("data/reports/coregister.json")
    truth_dir: Path | None = Field(Path("data/source/truth"), description="simulator truth sidecars, to score shifts")
    fine_gsd_m: float = Field(1.0, gt=0, le=5, description="pixel size of the RGB/DSM grid, metres")
    s2_resampling: Literal["bilinear", "cubic", "cubic_spline", "lanczos", "average"] = "bilinear"
    s1_resampling: Literal["nearest", "bilinear", "cubic", "cubic_spline", "lanczos"] = "bilinear"
    fine_resampling: Literal["nearest", "bilinear", "cubic", "cubic_spline", "lanczos"] = "bilinear"
    s2_feature_bands: list[str] = Field(["B02", "B03", "B04", "B08", "B11", "B12"], min_length=1)
    s1_feature_bands: list[Literal["VV", "VH"]] = Field(["VV", "VH"], min_length=1)
    feature_sigma_px: float = Field(1.0, ge=0, le=10, description="Gaussian smoothing before gradients")
    s1_speckle_sigma_px: float = Field(1.0, ge=0, le=10, description="S1 despeckling before gradients")
    dsm_detrend_sigma_px: float = Field(8.0, ge=0, le=100, description="terrain removed from the DSM before gradients")
    upsample_factor: int = Field(20, ge=1, le=1000, description="phase correlation precision, 1/upsample px")
    match_px: int = Field(512, ge=32, le=8192, description="side of the centred window where shifts are matched")
    normalization: Literal["phase"] | None = Field(None, description="phase: phase correlation; null: plain")
    max_shift_px: float = Field(6.0, gt=0, description="largest plausible misregistration: the peak search radius")
    compress: Literal["deflate", "lzw", "zstd", "none"] = "none"
    reference_dates: int = Field(3, ge=1, description="the S2 (RGB) reference averages this many clearest dates")

    @model_validator(mode="after")
    def _known_bands(self) -> CoregisterParams:
        from msgfm.sensors import S2_L2A_BANDS

        unknown = [b for b in self.s2_feature_bands if b not in S2_L2A_BANDS]
        if unknown:
            raise ValueError(f"coregister.s2_feature_bands: unknown bands {unknown}; L2A bands are {S2_L2A_BANDS}")
        return self


class PairParams(Section):
    """`msgfm pair`: chips per AOI and date, S1-S2 and RGB-DSM pairs, spatial-block splits, the chip store."""

    out_dir: Path = Field(Path("data/chips"), description="the chip store (memory-mapped .npy per sensor)")
    manifest: Path = Path("data/manifest.parquet")
    chip_px: int = Field(64, ge=8, le=1024, description="chip side in pixels, the same for every sensor")
    stride_px: int = Field(64, ge=1, le=1024, description="step between chip origins, pixels")
    max_days: float = Field(10, ge=0, description="largest S1-S2 time gap for a pair, days")
    fine_max_days: float = Field(3650, ge=0, description="largest RGB-DSM time gap for a pair, days")
    max_nodata_fraction: float = Field(0.5, ge=0, le=1, description="chips with more nodata are dropped")
    block_m: float = Field(960.0, gt=0, description="side of the square spatial blocks that get one split, metres")
    buffer_m: float = Field(
        0.0, ge=0, description="chips closer than this to a block of another split are dropped (0: may touch)"
    )
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)

    @model_validator(mode="after")
    def _fractions(self) -> PairParams:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("pair.val_fraction + pair.test_fraction must be below 1 (train needs blocks)")
        return self


class SourceParams(Section):
    """`msgfm download`: where acquisitions come from (static STAC catalog, STAC API or a folder of GeoTIFFs)."""

    kind: Literal["static", "stac_api", "folder"] = "static"
    href: str = Field("data/source/catalog.json", description="static: catalog.json path or URL")
    url: str | None = Field(None, description="stac_api: the API landing page URL")
    collections: dict[str, str] = Field(
        default_factory=dict, description="sensor -> collection id (stac_api; static catalogs without msgfm:sensor)"
    )
    bbox: list[float] | None = Field(None, min_length=4, max_length=4, description="stac_api: WGS84 search box")
    datetime: str | None = Field(None, description="stac_api: RFC 3339 instant or interval, e.g. 2024-03-01/2024-10-31")
    max_items: int = Field(500, ge=1, le=100000, description="stac_api: most items fetched from a search")
    sign: Literal["none", "planetary_computer"] = Field("none", description="href-signing hook for API assets")
    path: Path | None = Field(None, description="folder: directory of GeoTIFFs, each with a .json/.yaml sidecar")
    aoi: str = Field("aoi", pattern=r"^[a-z0-9_]+$", description="AOI name for items without msgfm:aoi")
    assets: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "s1": ["VV", "VH"],
            "s2": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12", "cloud_mask"],
            "rgb": ["image"],
            "dsm": ["dsm"],
            "landcover": ["map", "map_fine"],
        },
        description="sensor -> asset keys to download (and that the raw gate requires)",
    )

    @model_validator(mode="after")
    def _kind_complete(self) -> SourceParams:
        from msgfm.sensors import SENSORS

        known = {*SENSORS, "landcover"}
        for key in ("collections", "assets"):
            unknown = sorted(set(getattr(self, key)) - known)
            if unknown:
                raise ValueError(f"source.{key}: unknown sensor(s) {unknown}; known: {sorted(known)}")
        if self.kind == "stac_api" and (not self.url or not self.collections):
            raise ValueError("source.kind stac_api needs source.url and source.collections (sensor -> collection id)")
        if self.kind == "folder" and self.path is None:
            raise ValueError("source.kind folder needs source.path (a directory of GeoTIFFs with sidecars)")
        if self.bbox is not None and not (self.bbox[0] <= self.bbox[2] and self.bbox[1] <= self.bbox[3]):
            raise ValueError(f"source.bbox must be [west, south, east, north], got {self.bbox}")
        return self


class DownloadParams(Section):
    """`msgfm download`: concurrent, resumable, verified fetching of assets into data/raw."""

    out_dir: Path = Path("data/raw")
    workers: int = Field(4, ge=1, le=64, description="items fetched at the same time (threads)")
    retries: int = Field(3, ge=0, le=20, description="extra attempts per asset after a network error")
    backoff_s: float = Field(0.5, ge=0, le=60, description="first retry delay; doubles on every retry")
    timeout_s: float = Field(30.0, gt=0, le=3600, description="connect/read timeout of one HTTP request")


class GatesParams(Section):
    """The Great Expectations gates between stages (msgfm/validation), and where their decisions and reports go."""

    dir: Path = Field(Path("data/gates"), description="each gate's decisions table {dir}/{gate}.parquet")
    reports_dir: Path = Field(
        Path("data/reports/gates"), description="each gate's JSON report {reports_dir}/{gate}.json"
    )
    min_pass_rate: float = Field(0.8, ge=0, le=1, description="a gate fails below this accepted fraction")
    max_nodata_fraction: float = Field(0.5, ge=0, le=1, description="raw: most nodata pixels in any band asset")
    max_out_of_range_fraction: float = Field(
        0.001, ge=0, le=1, description="raw: most valid pixels outside the sensor's physical range"
    )
    max_read_px: int = Field(2048, ge=64, le=65536, description="raw: rasters are read decimated to this side")
    max_residual_px: float = Field(0.5, gt=0, le=10, description="coreg: most shift left after correction, px")
    min_valid_fraction: float = Field(0.5, ge=0, le=1, description="coreg: least valid overlap with the AOI grid")
    min_paired_fraction: float = Field(0.3, ge=0, le=1, description="pairs: least share of S1/RGB chips with a partner")


class RayParams(Section):
    """Where Ray Train runs: a local instance sized to this machine, or an existing cluster."""

    address: str | None = Field(None, description="join this cluster (host:port or 'auto'); null: RAY_ADDRESS or local")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local instance; null: all of this machine's")
    include_dashboard: bool = Field(False, description="start the dashboard (bound to 127.0.0.1) with a local instance")


class PretrainParams(Section):
    """`msgfm pretrain`: cross-sensor masked-image-modeling pretraining on Ray Train."""

    chips_dir: Path = Field(Path("data/chips"), description="the chip store written by pair")
    manifest: Path = Path("data/manifest.parquet")
    out_dir: Path = Field(Path("data/models/pretrain"), description="the pretrained model (safetensors + config)")
    checkpoint_dir: Path = Field(Path("data/checkpoints/pretrain"), description="Ray checkpoints, for resume")
    metrics: Path = Path("data/metrics/pretrain.json")
    plots_dir: Path = Field(Path("data/plots/pretrain"), description="loss curve (dvclive) and reconstructions PNG")
    sensors: list[Literal["s1", "s2", "rgb", "dsm"]] = Field(
        ["s1", "s2", "rgb", "dsm"], min_length=1, description="sensors to pretrain on; one sensor = the baseline"
    )
    sensor_mix: dict[str, float] = Field(
        {"s1": 1.0, "s2": 1.0, "rgb": 1.0, "dsm": 1.0}, description="relative share of each sensor's chips drawn"
    )
    workers: int = Field(2, ge=1, le=1024, description="Ray Train workers (DDP ranks)")
    gpu: Literal["auto", "never", "always"] = Field("auto", description="auto: use GPUs when the cluster has them")
    threads_per_worker: int = Field(1, ge=1, le=256, description="torch CPU threads in each worker")
    steps: int = Field(150, ge=1, description="optimizer steps")
    batch_size: int = Field(32, ge=1, description="chips per worker per step")
    lr: float = Field(2e-3, gt=0, le=1)
    min_lr_ratio: float = Field(0.05, ge=0, le=1, description="cosine schedule floor, as a fraction of lr")
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.05, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)
    augment: bool = Field(True, description="random flips and 90-degree rotations, the same for paired chips")
    checkpoint_every: int = Field(50, ge=1, description="steps between Ray checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept")
    log_every: int = Field(10, ge=1, description="steps between progress lines")
    val_chips: int = Field(64, ge=1, description="validation chips per sensor for the final loss")
    preview_chips: int = Field(2, ge=1, le=8, description="chips per sensor in the reconstructions PNG")
    single_sensor: Literal["s1", "s2", "rgb", "dsm"] = Field(
        "s2", description="sensor of the single-sensor baseline (`msgfm pretrain --single-sensor`)"
    )

    @model_validator(mode="after")
    def _mix_covers_sensors(self) -> PretrainParams:
        unknown = sorted(set(self.sensor_mix) - {"s1", "s2", "rgb", "dsm"})
        if unknown:
            raise ValueError(f"pretrain.sensor_mix has unknown sensors {unknown}; allowed: s1, s2, rgb, dsm")
        missing = [s for s in self.sensors if self.sensor_mix.get(s, 0) <= 0]
        if missing:
            raise ValueError(
                f"pretrain.sensor_mix must give a positive share to every pretrained sensor; missing {missing}"
            )
        return self


class ModelParams(Section):
    """The msGFM model (msgfm/models): a registered config plus the pretraining objective's knobs.

    What makes a model buildable (chip and mask sizes, MoE layout, ranges) is written once, in
    msgfm.architectures.MSGFMConfig; the section is checked against it when params load.
    """

    name: str = Field("msgfm_tiny", description="registered model config (msgfm.architectures.MODEL_CONFIGS)")
    chip_px: int = Field(64, ge=16, le=1024, description="chip side in pixels; must equal pair.chip_px")
    mask_patch_px: int = Field(8, ge=4, le=512, description="side of a masked cell, pixels (multiple of patch 4)")
    mask_ratio: float = Field(0.6, description="share of cells masked per chip, in (0, 1)")
    p_cross: float = Field(0.5, description="probability a paired chip also reconstructs its partner")
    experts: int = Field(4, le=64, description="experts per MoE MLP; 0 = dense model")
    moe_stages: list[int] = Field([2, 3], description="encoder stages (0-based) whose blocks may be MoE")
    moe_every: int = Field(2, le=8, description="every n-th block of those stages is MoE")
    moe_top_k: int = Field(1, le=8, description="experts per token")
    moe_capacity_factor: float = Field(1.25, gt=0, le=16, description="expert slots = factor * tokens * k / experts")
    aux_loss_weight: float = Field(0.01, ge=0, le=10, description="weight of the MoE load-balancing loss")
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="stochastic depth, deepest block")

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        from msgfm.architectures import MODEL_CONFIGS

        if name not in MODEL_CONFIGS:
            raise ValueError(f"unknown msGFM model; registered models are {', '.join(sorted(MODEL_CONFIGS))}")
        return name

    @model_validator(mode="after")
    def _builds_a_model(self) -> ModelParams:
        from msgfm.architectures import MSGFMConfigError

        try:
            self.to_model_config()
        except MSGFMConfigError as e:
            raise ValueError("; ".join(f"model.{problem}" for problem in e.problems)) from None
        return self

    def to_model_config(self, **overrides: Any) -> MSGFMConfig:
        """The model this section describes: its registered config with the section's values, then `overrides`."""
        from msgfm.architectures import get_config

        return get_config(self.name, **{**self.model_dump(exclude={"name"}), **overrides})


Variant = Literal["pretrained", "scratch", "single_sensor"]


class FinetuneParams(Section):
    """`msgfm finetune --task T`: Optuna-tuned fine-tuning of msGFM (and the baselines) on one downstream task."""

    chips_dir: Path = Field(Path("data/chips"), description="the chip store written by pair")
    manifest: Path = Path("data/manifest.parquet")
    out_dir: Path = Field(Path("data/models"), description="per task: optuna.db and one folder per variant")
    metrics_dir: Path = Field(Path("data/metrics/finetune"), description="per task: best trial of each variant")
    pretrained_model: Path = Field(Path("data/models/pretrain"), description="the msGFM pretrained model")
    single_sensor_model: Path = Field(Path("data/models/pretrain_s2"), description="single-sensor pretrained model")
    variants: list[Variant] = Field(
        ["pretrained", "scratch", "single_sensor"], min_length=1, description="encoders fine-tuned per task"
    )
    label_fraction: float = Field(0.1, gt=0, le=1, description="share of training labels used (label budget)")
    trials: int = Field(3, ge=1, le=10000, description="Optuna trials per task and variant")
    epochs: int = Field(4, ge=1, le=1000, description="epochs per trial (the pruner sees the val metric each)")
    min_steps_per_epoch: int = Field(4, ge=1, description="an epoch is at least this many steps (tiny budgets)")
    batch_sizes: list[int] = Field([8, 16], min_length=1, description="batch sizes Optuna chooses from")
    lr_range: tuple[float, float] = Field((1e-4, 3e-3), description="log-uniform learning-rate range")
    weight_decay_range: tuple[float, float] = Field((1e-4, 0.1), description="log-uniform weight-decay range")
    layer_decay_range: tuple[float, float] = Field((0.5, 1.0), description="layer-wise lr decay range")
    freeze_choices: list[bool] = Field([True, False], min_length=1, description="frozen encoder or full fine-tuning")
    pruner_warmup_epochs: int = Field(1, ge=0, description="MedianPruner: epochs before a trial may be pruned")
    max_cloud_fraction: float = Field(0.01, ge=0, le=1, description="an S2 chip with at most this much cloud is clear")
    clear_within_days: int = Field(
        15, ge=1, description="cloud removal: the clear target is at most this many days later"
    )
    holdout_aois: list[str] = Field(["alps"], description="AOIs never fine-tuned on (held-out biome test)")
    train_until: dt.date | None = Field(None, description="chips after this date are held out (later-date test)")
    eval_batch_size: int = Field(32, ge=1, description="batch size for validation and test passes")
    max_val_chips: int = Field(32, ge=1, description="validation chips scored per epoch (a seeded subset)")
    threads: int = Field(2, ge=1, le=256, description="torch CPU threads")

    @model_validator(mode="after")
    def _ranges(self) -> FinetuneParams:
        for key in ("lr_range", "weight_decay_range", "layer_decay_range"):
            low, high = getattr(self, key)
            if not 0 < low <= high:
                raise ValueError(f"finetune.{key} must be [low, high] with 0 < low <= high, got {[low, high]}")
        if self.layer_decay_range[1] > 1:
            raise ValueError("finetune.layer_decay_range must stay within (0, 1]")
        if any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"finetune.batch_sizes must be positive, got {self.batch_sizes}")
        return self


class EvaluateParams(Section):
    """`msgfm evaluate`: test metrics of every variant, modality ablations, generalisation, plots and report."""

    metrics: Path = Field(Path("data/metrics/evaluate.json"), description="msGFM pretrained {task: {metric: v}}")
    baselines: Path = Field(Path("data/metrics/baselines.json"), description="{variant: {task: {metric: v}}}")
    ablations: Path = Field(Path("data/metrics/ablations.json"), description="{task: {condition: {metric: v}}}")
    generalisation: Path = Field(Path("data/metrics/generalisation.json"), description="held-out AOI and dates")
    plots_dir: Path = Field(Path("data/plots/evaluate"), description="PNG figures and DVC plot tables")
    report: Path = Field(Path("data/reports/report.md"), description="the Markdown report")
    noise_std: float = Field(1.0, ge=0, description="ablation: Gaussian noise std added to a sensor (normalised units)")
    shift_px: int = Field(4, ge=1, le=64, description="ablation: misregistration of a sensor, pixels")
    cloud_cover: float = Field(0.4, gt=0, le=1, description="ablation: share of an optical chip covered by cloud")
    examples: int = Field(3, ge=1, le=16, description="chips in the example PNGs")


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
