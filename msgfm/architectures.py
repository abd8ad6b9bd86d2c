"""The msGFM architectures: `MSGFMConfig` (every number that defines a model), its rules and the named configs.

Pure Python (no torch), so params.yaml's `model` section is checked against the same rules when it loads
(msgfm.config.ModelParams.to_model_config) as a config read from a saved model or given to create_model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from msgfm.sensors import ADDED_SENSORS, SENSORS

DECODER_DESIGNS = ("unet", "linear")
"""Reconstruction decoder designs (msgfm.models.decoders): a U-Net/FPN path over every stage, or SimMIM's linear."""

TARGET_NORMS = ("chip", "none")
"""What a decoder predicts (msgfm.models.msgfm): `chip` the deviation from the target chip's visible per-band mean
in units of its visible std (MAE's norm_pix_loss with visible-pixel statistics), `none` the pixels themselves."""


class MSGFMConfigError(ValueError):
    """A config that cannot build a model; `problems` each start with the field they are about."""

    def __init__(self, name: str, problems: list[str]) -> None:
        super().__init__(f"invalid msGFM config {name!r}: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class MSGFMConfig:
    """Everything that defines an msGFM model: encoder shape, MoE layout and the pretraining objective."""

    name: str = "msgfm_tiny"
    sensors: tuple[str, ...] = tuple(SENSORS)
    chip_px: int = 64
    patch_px: int = 4
    embed_dim: int = 48
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 4
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    experts: int = 4
    moe_stages: tuple[int, ...] = (2, 3)
    moe_every: int = 2
    moe_top_k: int = 1
    moe_capacity_factor: float = 1.25
    aux_loss_weight: float = 0.01
    mask_patch_px: int = 8
    mask_ratio: float = 0.6
    p_cross: float = 0.5
    decoder: str = "unet"
    target_norm: str = "chip"

    def __post_init__(self) -> None:
        for name in ("sensors", "depths", "num_heads", "moe_stages"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = []
        known = [*SENSORS, *ADDED_SENSORS]
        unknown = [s for s in self.sensors if s not in known]
        if unknown or not self.sensors:
            problems.append(f"sensors {list(self.sensors)}: unknown {unknown}; known are {known}")
        if len(self.depths) != len(self.num_heads):
            problems.append(f"depths {self.depths} and num_heads {self.num_heads} differ in length")
        if self.chip_px % self.stride:
            problems.append(
                f"chip_px {self.chip_px} must be a multiple of {self.stride}, the last stage's stride "
                f"(patch_px {self.patch_px} * 2**(stages - 1))"
            )
        if self.mask_patch_px % self.patch_px or self.chip_px % self.mask_patch_px:
            problems.append(
                f"mask_patch_px {self.mask_patch_px} must be a multiple of patch_px {self.patch_px} "
                f"and divide chip_px {self.chip_px}"
            )
        if not 0.0 < self.mask_ratio < 1.0:
            problems.append(f"mask_ratio {self.mask_ratio} must be in (0, 1)")
        if not 0.0 <= self.p_cross <= 1.0:
            problems.append(f"p_cross {self.p_cross} must be in [0, 1]")
        if self.experts == 1 or self.experts < 0:
            problems.append(f"experts {self.experts} must be 0 (dense) or >= 2")
        if self.experts and not 1 <= self.moe_top_k <= self.experts:
            problems.append(f"moe_top_k {self.moe_top_k} must be in 1..experts ({self.experts})")
        bad_stages = [s for s in self.moe_stages if not 0 <= s < len(self.depths)]
        if bad_stages:
            problems.append(f"moe_stages {bad_stages} out of range 0..{len(self.depths) - 1}")
        if self.decoder not in DECODER_DESIGNS:
            problems.append(f"decoder {self.decoder!r} is not a design; known are {list(DECODER_DESIGNS)}")
        if self.target_norm not in TARGET_NORMS:
            problems.append(f"target_norm {self.target_norm!r} is not known; known are {list(TARGET_NORMS)}")
        if self.moe_every < 1:
            problems.append(f"moe_every {self.moe_every} must be >= 1")
        if problems:
            raise MSGFMConfigError(self.name, problems)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """Channel width of each stage's output."""
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))

    @property
    def stride(self) -> int:
        """Pixels per token of the last stage."""
        return self.patch_px * 2 ** (len(self.depths) - 1)

    def is_moe_block(self, stage: int, block: int) -> bool:
        """Whether block `block` of stage `stage` uses the MoE MLP (every moe_every-th block, counting from 1)."""
        return self.experts > 0 and stage in self.moe_stages and (block + 1) % self.moe_every == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MSGFMConfig:
        """Inverse of to_dict; unknown keys are an error that names them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown msGFM config keys {unknown}; allowed: {sorted(names)}")
        return cls(**data)


MODEL_CONFIGS: Mapping[str, MSGFMConfig] = {
    # CPU-sized: Swin-T layout at half width, trains in minutes on 64 px chips.
    "msgfm_tiny": MSGFMConfig(name="msgfm_tiny"),
    # The paper's Swin-B: embed 128, depths 2-2-18-2, heads 4-8-16-32.
    "msgfm_base": MSGFMConfig(
        name="msgfm_base",
        embed_dim=128,
        depths=(2, 2, 18, 2),
        num_heads=(4, 8, 16, 32),
        drop_path_rate=0.1,
    ),
}
"""Named configs (params.yaml `model.name`); create_model(name, **overrides) builds from one of these."""


def get_config(name: str, **overrides: Any) -> MSGFMConfig:
    """The registered config `name` with `overrides` applied; errors list the known names and keys."""
    if name not in MODEL_CONFIGS:
        raise KeyError(f"unknown msGFM model {name!r}; known models are {sorted(MODEL_CONFIGS)}")
    names = {f.name for f in dataclasses.fields(MSGFMConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown msGFM config keys {unknown}; allowed: {sorted(names)}")
    return dataclasses.replace(MODEL_CONFIGS[name], **overrides)
