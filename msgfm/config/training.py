"""Params sections of the model stages: pretrain, model, finetune, evaluate."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from msgfm.config.base import Section

if TYPE_CHECKING:
    from msgfm.architectures import MSGFMConfig


DeviceChoice = Literal["auto", "cpu", "cuda"]
"""Where fine-tuning, evaluation and embedding run (msgfm.models.device.resolve_device)."""


class PretrainParams(Section):
    """`msgfm pretrain`: cross-sensor masked-image-modeling pretraining on Ray Train."""

    chips_dir: Path = Field(Path("data/chips"), description="the chip store written by pair")
    manifest: Path = Path("data/manifest.parquet")
    out_dir: Path = Field(Path("data/models/pretrain"), description="the pretrained model (safetensors + config)")
    checkpoint_dir: Path = Field(Path("data/checkpoints/pretrain"), description="Ray checkpoints, for resume")
    metrics: Path = Path("data/metrics/pretrain.json")
    plots_dir: Path = Field(Path("data/plots/pretrain"), description="loss curve (dvclive) and reconstructions PNG")
    sensors: list[Literal["s1", "s2", "rgb", "dsm"]] = Field(
        ["s1", "s2", "rgb", "dsm"], min_length=1, description="sensors to pretrain on"
    )
    sensor_mix: dict[str, float] = Field(
        {"s1": 1.0, "s2": 1.0, "rgb": 1.0, "dsm": 1.0}, description="relative share of each sensor's chips drawn"
    )
    workers: int = Field(2, ge=1, le=1024, description="Ray Train workers (DDP ranks)")
    gpu: Literal["auto", "never", "always"] = Field("auto", description="auto: use GPUs when the cluster has them")
    threads_per_worker: int = Field(1, ge=1, le=256, description="torch CPU threads in each worker")
    loader_workers: int = Field(
        0, ge=0, le=256, description="DataLoader processes per Ray worker drawing batches ahead (0: in the worker)"
    )
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
    exclude_holdout_aois: bool = Field(
        True, description="leave the chips of finetune.holdout_aois out of pretraining (an unseen held-out biome)"
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
    decoder: str = Field("unet", description="reconstruction decoder design (msgfm.architectures.DECODER_DESIGNS)")
    target_norm: str = Field("chip", description="decoder target: chip (visible per-chip mean/std) or none")
    cross_design: str = Field("joint", description="cross-sensor term: joint (both visible) or translate")
    fill_scales_px: list[int] = Field([4, 8, 16], description="scales (px) of the visible-pixel fill decoders add to")
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


class PretrainVariant(Section):
    """One pretraining baseline: msGFM pretraining with one term of the objective changed."""

    claim: str = Field(min_length=1, description="what 'pretrained beats this variant' tests, in the report's words")
    sensors: list[Literal["s1", "s2", "rgb", "dsm"]] | None = Field(
        None,
        min_length=1,
        description="sensors pretrained on, each an embedding and a decoder (null: pretrain.sensors)",
    )
    model: dict[str, Any] = Field({}, description="model-section values changed, e.g. {p_cross: 0} or {experts: 0}")


FIXED_VARIANTS = ("pretrained", "scratch")
"""Fine-tuning variants that are no pretraining variant: msGFM pretrained (stage pretrain) and from scratch."""


class PretrainVariantsParams(Section):
    """`msgfm pretrain --variant NAME` (stage pretrain_variant): the baselines that isolate terms of the objective."""

    models_dir: Path = Field(
        Path("data/models/pretrain_variants"), description="one pretrained model folder per variant, named by it"
    )
    run: list[str] = Field(
        ["single_s2"], min_length=1, description="variants the pipeline pretrains (the stage's foreach list)"
    )
    define: dict[str, PretrainVariant] = Field(
        default_factory=lambda: {
            "single_s2": PretrainVariant(
                claim="Cross-sensor pretraining beats single-sensor pretraining", sensors=["s2"]
            )
        },
        description="variant name -> what it changes",
    )

    @model_validator(mode="after")
    def _names(self) -> PretrainVariantsParams:
        bad = [n for n in self.define if n in FIXED_VARIANTS or not re.fullmatch(r"[a-z][a-z0-9_]*", n)]
        if bad:
            raise ValueError(
                f"pretrain_variants.define names must be lower_snake_case and not {list(FIXED_VARIANTS)}, got {bad}"
            )
        unknown = [n for n in self.run if n not in self.define]
        if unknown or len(set(self.run)) != len(self.run):
            raise ValueError(
                f"pretrain_variants.run must name distinct variants of pretrain_variants.define "
                f"({sorted(self.define)}), got {self.run}"
            )
        return self


class FinetuneParams(Section):
    """`msgfm finetune --task T`: Optuna-tuned fine-tuning of msGFM (and the baselines) on one downstream task."""

    chips_dir: Path = Field(Path("data/chips"), description="the chip store written by pair")
    manifest: Path = Path("data/manifest.parquet")
    out_dir: Path = Field(Path("data/models"), description="per task: optuna.db and one folder per variant")
    metrics_dir: Path = Field(Path("data/metrics/finetune"), description="per task: best trial of each variant")
    pretrained_model: Path = Field(Path("data/models/pretrain"), description="the msGFM pretrained model")
    variants: list[str] = Field(
        ["pretrained", "scratch", "single_s2"],
        min_length=1,
        description="encoders fine-tuned per task: pretrained, scratch or a pretrain_variants.define name",
    )
    label_fraction: float = Field(0.1, gt=0, le=1, description="share of training labels used (label budget)")
    trials: int = Field(3, ge=1, le=10000, description="Optuna trials per task and variant")
    seeds: list[int] = Field(
        [0],
        min_length=1,
        description="fine-tuning seeds: each trains the best trial's hyperparameters with the trial's seed plus "
        "this offset (0: the best trial itself); evaluation averages over them",
    )
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
    train_until: dt.date | None = Field(None, description="val/test chips after this date: the later-date test")
    eval_batch_size: int = Field(32, ge=1, description="batch size for validation and test passes")
    max_val_chips: int = Field(32, ge=1, description="validation chips scored per epoch (a seeded subset)")
    threads: int = Field(2, ge=1, le=256, description="torch CPU threads")
    loader_workers: int = Field(
        0, ge=0, le=256, description="DataLoader worker processes reading samples (0: in the training process)"
    )
    stream_chips: bool = Field(
        False,
        description="read the chip-store tasks' train and val samples from the store when a batch needs them "
        "(memory bounded by the batches; a frozen encoder's features are then not cached)",
    )
    benchmark_px: int | None = Field(
        None, ge=8, le=4096, description="--benchmark: feed samples at this size (null: the benchmark's native size)"
    )
    trial_workers: int = Field(
        1, ge=1, le=1024, description="Optuna trials run at once, each a Ray task of `threads` CPUs (1: in process)"
    )
    study_storage: str | None = Field(
        None, description="an Optuna RDB URL shared by a cluster's workers; default: a file beside the task's models"
    )
    device: DeviceChoice = Field(
        "auto", description="fine-tuning and evaluation: auto = the GPU when torch sees one (bf16 autocast)"
    )

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
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"finetune.seeds must be distinct offsets >= 0, got {self.seeds}")
        return self


class EvaluateParams(Section):
    """`msgfm evaluate`: test metrics of every variant, modality ablations, generalisation, plots and report."""

    metrics: Path = Field(Path("data/metrics/evaluate.json"), description="msGFM pretrained {task: {metric: v, n, ci}}")
    baselines: Path = Field(Path("data/metrics/baselines.json"), description="{variant: {task: {metric: v, n, ci}}}")
    ablations: Path = Field(Path("data/metrics/ablations.json"), description="{task: {condition: {metric: v}}}")
    generalisation: Path = Field(Path("data/metrics/generalisation.json"), description="held-out AOI and dates")
    comparisons: Path = Field(Path("data/metrics/comparisons.json"), description="paired differences and verdicts")
    plots_dir: Path = Field(Path("data/plots/evaluate"), description="PNG figures and DVC plot tables")
    report: Path = Field(Path("data/reports/report.md"), description="the Markdown report")
    noise_std: float = Field(1.0, ge=0, description="ablation: Gaussian noise std added to a sensor (normalised units)")
    shift_px: int = Field(4, ge=1, le=64, description="ablation: misregistration of a sensor, pixels")
    cloud_cover: float = Field(0.4, gt=0, le=1, description="ablation: share of an optical chip covered by cloud")
    examples: int = Field(3, ge=1, le=16, description="chips in the example PNGs")
    bootstrap_unit: Literal["position", "block"] = Field(
        "position", description="what a bootstrap resample draws: chip positions (all dates of a place) or blocks"
    )
    bootstrap_resamples: int = Field(1000, ge=1, le=100000, description="bootstrap resamples per interval")
    confidence: float = Field(0.95, gt=0, lt=1, description="confidence level of every interval")
    min_effect: dict[str, float] = Field(
        {"mAP_micro": 0.01, "mIoU": 0.01, "MAE": 0.002, "PSNR": 0.1},
        description="smallest gain per primary metric that a 'held' verdict needs (metric units)",
    )

    @field_validator("min_effect")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        """A negative minimum difference would let a loss count as a gain."""
        bad = {k: v for k, v in value.items() if not v >= 0}
        if bad:
            raise ValueError(f"evaluate.min_effect entries must be >= 0, got {bad}")
        return value
