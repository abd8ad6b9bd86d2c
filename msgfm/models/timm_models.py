"""msGFM encoders in timm's registry: `timm.create_model("msgfm_tiny", ...)` gives a one-sensor backbone.

TerraTorch and timm users build backbones by name; this module registers `msgfm_tiny` and `msgfm_base`
with `@register_model`. A backbone is the shared encoder seen through one sensor's bands::

    import timm, msgfm.models  # importing msgfm.models registers the names
    net = timm.create_model("msgfm_tiny", pretrained=True, sensor="s2", features_only=True,
                            pretrained_cfg_overlay={"file": "data/models/pretrain"})
    maps = net(x)                    # 4 maps (B, C_i, H/4/2^i, W/4/2^i); net.feature_info describes them
    net.pretrained_cfg["bands"]      # the band order and mean/std that x must be normalised with

`pretrained=True` loads a model directory written by `save_pretrained` (config.json + model.safetensors)
from `pretrained_cfg_overlay["file"]`; nothing is ever downloaded. `group_matcher` serves timm's
layer-wise lr decay (`timm.optim.create_optimizer_v2(net, layer_decay=0.75)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from timm.models import register_model
from torch import nn

from msgfm.architectures import get_config
from msgfm.models.encoder import MSGFMEncoder
from msgfm.sensors import get_sensor


class MSGFMBackbone(nn.Module):
    """One sensor's view of the msGFM encoder: (B, C, H, W) normalised pixels -> pooled features or maps."""

    def __init__(
        self,
        encoder: MSGFMEncoder,
        sensor: str = "s2",
        bands: Sequence[str] | None = None,
        num_classes: int = 0,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
    ) -> None:
        super().__init__()
        if sensor not in encoder.sensors:
            raise ValueError(f"sensor {sensor!r} is not in this model; it knows {list(encoder.sensors)}")
        self.encoder = encoder
        self.sensor = sensor
        self.bands = tuple(bands or get_sensor(sensor).band_names)
        self.features_only = features_only
        self.out_indices = tuple(out_indices)
        self.num_features = encoder.dims[-1]
        self.feature_info = [
            {"num_chs": encoder.dims[i], "reduction": encoder.config.patch_px * 2**i, "module": f"encoder.stages.{i}"}
            for i in self.out_indices
        ]
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        mean, std = get_sensor(sensor).stats(self.bands)
        self.pretrained_cfg: dict[str, Any] = {
            "architecture": encoder.config.name,
            "sensor": sensor,
            "bands": list(self.bands),
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "input_size": (len(self.bands), encoder.config.chip_px, encoder.config.chip_px),
            "num_classes": num_classes,
        }

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for timm's layer decay: embeddings, one group per stage, the head on top."""
        return self.encoder.group_matcher(coarse, prefix="encoder.")

    def get_classifier(self) -> nn.Module:
        """The classification head (identity when num_classes is 0)."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head for `num_classes` (0: pooled features)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage maps of `x` (B, C, H, W), channels in `self.bands` order."""
        return self.encoder({self.sensor: x}, {self.sensor: self.bands}).features[self.sensor]

    def forward_head(self, features: list[torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        """Global average pool of the last map, then the head unless `pre_logits`."""
        pooled = features[-1].mean(dim=(2, 3))
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Maps at `out_indices` when features_only, else the head's output on the pooled features."""
        features = self.forward_features(x)
        if self.features_only:
            return [features[i] for i in self.out_indices]
        return self.forward_head(features)


def _create(
    name: str,
    pretrained: bool = False,
    *,
    pretrained_cfg: Any = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    cache_dir: Any = None,
    sensor: str = "s2",
    bands: Sequence[str] | None = None,
    num_classes: int = 0,
    features_only: bool = False,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    **overrides: Any,
) -> MSGFMBackbone:
    """Build a backbone, fresh (config `name` with overrides) or from a local pretrained model directory."""
    if pretrained:
        from msgfm.models.hub import load_pretrained

        file = (pretrained_cfg_overlay or {}).get("file")
        if not file:
            raise ValueError(
                f"{name}: pretrained=True needs pretrained_cfg_overlay={{'file': <model directory>}}; "
                "msgfm downloads nothing"
            )
        directory = Path(file)
        directory = directory.parent if directory.is_file() else directory
        model = load_pretrained(directory)
        if model.config.name != name:
            raise ValueError(f"{directory}: holds a {model.config.name} model, not {name}")
        if overrides:
            raise ValueError(f"{name}: config overrides {sorted(overrides)} cannot change a pretrained model")
        encoder = model.encoder.train()
    else:
        encoder = MSGFMEncoder(get_config(name, **overrides))
    return MSGFMBackbone(encoder, sensor, bands, num_classes, features_only, out_indices)


@register_model
def msgfm_tiny(pretrained: bool = False, **kwargs: Any) -> MSGFMBackbone:
    """msGFM tiny (Swin-T layout at half width, 4 experts): the CPU-sized default."""
    return _create("msgfm_tiny", pretrained, **kwargs)


@register_model
def msgfm_base(pretrained: bool = False, **kwargs: Any) -> MSGFMBackbone:
    """msGFM base (the paper's Swin-B: embed 128, depths 2-2-18-2)."""
    return _create("msgfm_base", pretrained, **kwargs)
