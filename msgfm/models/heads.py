"""Task heads over msGFM encoder features, for fine-tuning on the four downstream tasks.

Every head takes the encoder's per-sensor multi-scale features ``{sensor: [4 maps (B, C_i, h_i, w_i)]}``
and fuses sensors by averaging the maps of the sensors present (optionally per sample, with
`present` masks), so a model fine-tuned on S2+S1 still runs when only S2 arrives at test time.

- ClassificationHead: pooled last stage -> LayerNorm -> Linear (scene classification, multi-label logits).
- SegmentationHead: FPN over the four stages -> per-pixel logits at input resolution (RGB+DSM segmentation).
- ImageToImageHead: FPN + a full-resolution band-aware stem on the input pixels of several sensors,
  optionally predicting a residual over one sensor's input (cloud removal over cloudy S2,
  pan-sharpening over upsampled MS).

`TaskModel(encoder, head)` runs encoder and head: ``model(images, bands, present=None) -> Tensor``
(``return_aux=True`` also returns the encoder's MoE balancing loss to add while fine-tuning).
`build_task_model(spec, encoder, num_classes)` puts the head of a task's kind on an encoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from msgfm.models.encoder import MSGFMEncoder
from msgfm.models.patch_embed import check_bands
from msgfm.sensors import get_sensor


def fuse_sensors(
    features: Mapping[str, Sequence[torch.Tensor]], present: Mapping[str, torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """Average each stage's maps over the sensors present; present[s] (B,) bool excludes a sensor per sample."""
    if not features:
        raise ValueError("no sensor features to fuse")
    n_stages = len(next(iter(features.values())))
    fused = []
    for i in range(n_stages):
        total, weight = 0.0, 0.0
        for sensor, maps in features.items():
            w = maps[i].new_ones(maps[i].shape[0])
            if present is not None and sensor in present:
                w = present[sensor].to(maps[i].dtype)
            total = total + maps[i] * w[:, None, None, None]
            weight = weight + w
        fused.append(total / torch.as_tensor(weight).clamp(min=1.0)[:, None, None, None])
    return fused


class ClassificationHead(nn.Module):
    """Pooled linear classifier on the fused last stage; returns logits (B, num_classes)."""

    def __init__(self, dims: Sequence[int], num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dims[-1])
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(dims[-1], num_classes)

    def forward(self, features: Mapping[str, Sequence[torch.Tensor]], images=None, bands=None, present=None):
        """Logits from the average-pooled fused last-stage map."""
        pooled = fuse_sensors(features, present)[-1].mean(dim=(2, 3))
        return self.fc(self.drop(self.norm(pooled)))


class FPN(nn.Module):
    """Feature pyramid over the encoder stages -> one map of `channels` at the finest stage's resolution."""

    def __init__(self, dims: Sequence[int], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(d, channels, 1) for d in dims)
        self.smooth = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
            for _ in dims
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(channels * len(dims), channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()
        )

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Top-down pathway with lateral connections, then concatenate all levels at the finest size."""
        laterals = [conv(m) for conv, m in zip(self.lateral, maps, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:])
        size = laterals[0].shape[-2:]
        levels = [
            F.interpolate(smooth(m), size=size, mode="bilinear", align_corners=False) if i else smooth(m)
            for i, (smooth, m) in enumerate(zip(self.smooth, laterals, strict=True))
        ]
        return self.fuse(torch.cat(levels, dim=1))


class SegmentationHead(nn.Module):
    """FPN segmentation decoder: per-pixel logits (B, num_classes, H, W) at the input resolution."""

    def __init__(self, dims: Sequence[int], num_classes: int, channels: int = 64) -> None:
        super().__init__()
        self.fpn = FPN(dims, channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features, images: Mapping[str, torch.Tensor], bands=None, present=None) -> torch.Tensor:
        """Fuse sensors, decode, upsample to the chip size."""
        size = next(iter(images.values())).shape[-2:]
        logits = self.classifier(self.fpn(fuse_sensors(features, present)))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class BandAwareStem(nn.Module):
    """3x3 convolution of one sensor's full-resolution pixels, kernels indexed by band name."""

    def __init__(self, sensor: str, channels: int) -> None:
        super().__init__()
        self.sensor = sensor
        self.weight = nn.ParameterDict(
            {b: nn.Parameter(torch.empty(channels, 1, 3, 3)) for b in get_sensor(sensor).band_names}
        )
        for w in self.weight.values():
            nn.init.kaiming_normal_(w, nonlinearity="relu")

    def forward(self, image: torch.Tensor, bands: Sequence[str]) -> torch.Tensor:
        """(B, C_bands, H, W) -> (B, channels, H, W)."""
        check_bands(self.sensor, bands)
        weight = torch.cat([self.weight[b] for b in bands], dim=1)
        return F.conv2d(image, weight, padding=1)


DETAIL_GAIN_SCALE = 30.0
"""DetailInjection's gains are stored divided by this: Adam moves a weight by about lr per step, and fine-tuning's
lr range (1e-4..3e-3) would otherwise move gains of order 0.5 too little in a few dozen steps (the equalised
learning rate of Karras et al. 2018). On the study world's 174 training chips, 40 Adam steps of batch 8 on the gains
alone gain +0.40 dB (val PSNR over HPF) at scale 1 and lr 1e-3, +0.67 at 3e-3; at scale 30 +0.67 at lr 1e-4 and
+0.93 at 3e-3 (the least-squares gains: +0.97)."""


class DetailInjection(nn.Module):
    """Learned injection of high-pass detail, the band-wise gains of the pan-sharpening literature (Aiazzi et al.
    2002, 2007): out_b += sum_c G_bc * hp_c, hp = the input minus its r x r block mean upsampled bicubically. The
    gains start at zero, so the head starts at its input (the HPF fusion); under HPF every band carries the PAN's
    detail unscaled, which the gains learn to scale, mix and remove band by band."""

    def __init__(self, bands: int, ratio: int, scale: float = DETAIL_GAIN_SCALE) -> None:
        super().__init__()
        self.ratio = ratio
        self.scale = scale
        self.weight = nn.Parameter(torch.zeros(bands, bands))

    @property
    def gains(self) -> torch.Tensor:
        """(out band, input band) gains on the input's high-pass detail."""
        return self.weight * self.scale

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the injected detail (B, C, H, W); H and W multiples of the ratio."""
        low = F.avg_pool2d(image, self.ratio)
        detail = image - F.interpolate(low, size=image.shape[-2:], mode="bicubic", align_corners=False)
        return torch.einsum("bchw,dc->bdhw", detail, self.gains)


class ImageToImageHead(nn.Module):
    """FPN features upsampled to full resolution, joined with a pixel stem over several sensors' inputs.

    Output (B, len(out_bands), H, W) in `out_sensor`'s normalised units. With `residual` set, the head
    predicts a correction added to that input sensor's bands (which must carry `out_bands`), the
    usual formulation for cloud removal and pan-sharpening; `detail_ratio` adds a DetailInjection of those
    bands' high-pass detail above 1/detail_ratio of their resolution (pan-sharpening).
    """

    def __init__(
        self,
        dims: Sequence[int],
        input_sensors: Sequence[str],
        out_sensor: str,
        out_bands: Sequence[str],
        channels: int = 64,
        residual: str | None = None,
        detail_ratio: int | None = None,
    ) -> None:
        super().__init__()
        check_bands(out_sensor, out_bands)
        if detail_ratio is not None and residual is None:
            raise ValueError("detail_ratio injects the residual sensor's detail: it needs residual set")
        self.out_bands = tuple(out_bands)
        self.residual = residual
        self.detail = DetailInjection(len(self.out_bands), detail_ratio) if detail_ratio is not None else None
        self.fpn = FPN(dims, channels)
        self.stems = nn.ModuleDict({s: BandAwareStem(s, channels) for s in input_sensors})
        self.up = nn.Sequential(
            nn.ConvTranspose2d(channels, channels, 2, stride=2),
            nn.ReLU(),
            nn.ConvTranspose2d(channels, channels, 2, stride=2),
            nn.ReLU(),
        )
        self.out = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, len(self.out_bands), 1),
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(
        self,
        features,
        images: Mapping[str, torch.Tensor],
        bands: Mapping[str, Sequence[str]],
        present: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Decode fused features at full resolution; add the residual sensor's input if configured."""
        size = next(iter(images.values())).shape[-2:]
        deep = F.interpolate(self.up(self.fpn(fuse_sensors(features, present))), size=size, mode="bilinear")
        stems = {s: self.stems[s](img, bands[s]).relu() for s, img in images.items() if s in self.stems}
        if not stems:
            raise ValueError(f"none of the head's input sensors {list(self.stems)} are in the batch")
        shallow = fuse_sensors({s: [m] for s, m in stems.items()}, present)[0]
        out = self.out(torch.cat([deep, shallow], dim=1))
        if self.residual is not None:
            if self.residual not in images:
                raise ValueError(f"residual sensor {self.residual!r} missing from the batch")
            have = list(bands[self.residual])
            lacking = [b for b in self.out_bands if b not in have]
            if lacking:
                raise ValueError(f"residual sensor {self.residual!r} input lacks output bands {lacking}")
            base = images[self.residual][:, [have.index(b) for b in self.out_bands]]
            out = out + base if self.detail is None else out + base + self.detail(base)
        return out


class TaskModel(nn.Module):
    """A pretrained (or fresh) msGFM encoder with a task head; runs on whichever sensors are given."""

    def __init__(self, encoder: MSGFMEncoder, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """The encoder's parameter groups (timm's layer decay); the head, unmatched, is the top layer."""
        return self.encoder.group_matcher(coarse, prefix="encoder.")

    def forward(
        self,
        images: Mapping[str, torch.Tensor],
        bands: Mapping[str, Sequence[str]],
        present: Mapping[str, torch.Tensor] | None = None,
        return_aux: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """images: {sensor: (B, C, H, W)} normalised, same B for all; return_aux adds the MoE balancing loss."""
        sizes = {img.shape[0] for img in images.values()}
        if len(sizes) != 1:
            raise ValueError(f"task batches need the same batch size for every sensor, got {sizes}")
        encoded = self.encoder(images, bands)
        out = self.head(encoded.features, images=images, bands=bands, present=present)
        return (out, encoded.aux_loss) if return_aux else out


class HeadSpec(Protocol):
    """What shapes a task's head (msgfm.datasets.tasks.TaskSpec has these fields)."""

    kind: str  # "multilabel", "image", "segmentation"
    inputs: tuple[str, ...]
    out_sensor: str | None
    out_bands: tuple[str, ...]
    residual: str | None
    detail_ratio: int | None


def build_task_model(spec: HeadSpec, encoder: MSGFMEncoder, num_classes: int) -> TaskModel:
    """The head of `spec`'s kind on `encoder`: classification, segmentation or image-to-image."""
    dims = encoder.dims
    head: nn.Module
    if spec.kind == "multilabel":
        head = ClassificationHead(dims, num_classes)
    elif spec.kind == "segmentation":
        head = SegmentationHead(dims, num_classes, channels=32)
    else:
        head = ImageToImageHead(
            dims,
            spec.inputs,
            spec.out_sensor,
            spec.out_bands,
            channels=32,
            residual=spec.residual,
            detail_ratio=spec.detail_ratio,
        )
    return TaskModel(encoder, head)
