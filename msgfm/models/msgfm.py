"""msGFM pretraining model: cross-sensor masked image modeling over a batch that mixes sensors.

Public API (what pretraining and fine-tuning call)
--------------------------------------------------
Build::

    from msgfm.models import create_model, create_model_from_params
    model = create_model("msgfm_tiny", chip_px=64, experts=4)      # or create_model_from_params(params.model)

Batch (a plain dict, so DataLoader workers and Ray can move it)::

    batch = {
        "images":  {"s1": Tensor(B1, C1, H, W), "s2": Tensor(B2, C2, H, W), ...},  # normalised units
        "bands":   {"s1": ("VV", "VH"), "s2": S2_L2A_BANDS, ...},   # channel names, any subset/order
        "partner": {"s1": LongTensor(B1), "s2": LongTensor(B2)},   # optional: index of the co-located
    }                                                              # chip in images[partner_of(s)], -1 = unpaired

Images are `Sensor.normalise`d, every sensor's chips have the same size (config.chip_px in the
pipeline; any multiple of mask_patch_px works), and any subset of sensors may be present.
`msgfm.datasets.collate.collate_multisensor(samples)` builds this dict from per-chip samples
``{"sensor": "s2", "image": (C, H, W), "bands": (...), "pair": <key shared by co-located chips>}``.

Forward::

    out = model(batch, generator=None, masks=None, cross=None)   # -> PretrainOutput
    out.loss.backward()

`out.losses` keys: ``total`` (= ``recon`` + aux_loss_weight * ``aux``), ``recon`` (mean of the
reconstruction terms below), ``aux`` (MoE balancing loss, 0 when dense), ``mim/<sensor>`` (masked L1
of each sensor present, averaged over its masked pixels and bands) and ``cross/<a>-><b>`` (masked L1 of
sensor b's pixels reconstructed from sensor a's masked input, for the samples drawn for cross-sensor
reconstruction). `out.pred[s]` is the full reconstruction (B_s, C_s, H, W), `out.mask[s]` the pixel
mask (B_s, H, W, True = masked), `out.cross_pred["a->b"]` / `out.cross_index["a->b"]` the cross
reconstructions and the rows of images[a] they came from (their targets are
images[b][partner[a][rows]]).

Fine-tuning uses `model.encoder(images, bands)` -> `EncoderOutput(features={sensor: [4 maps
(B, C_i, H/4/2^i, W/4/2^i)]}, aux_loss)` with the heads in msgfm.models.heads.

Distributed training: a batch need not contain every sensor and top-k routing leaves experts idle,
so wrap with DDP(find_unused_parameters=True) (Ray: prepare_model(parallel_strategy_kwargs=...)).

Objective (docs/model.md)
-------------------------
Mask: the chip is cut into mask_patch_px cells and round(mask_ratio * cells) of them, chosen uniformly
per chip, are masked (SimMIM; 0.6 as GFM). Masked patch tokens are replaced by the mask token before
the encoder. Each chip is reconstructed by its own sensor's decoder (``mim/<s>``). A paired chip is, with
probability p_cross, also decoded by its partner's decoder and compared with the partner's pixels
under the same mask (``cross/<a>-><b>``): the encoder sees the masked input of one sensor and must
produce the other. The encoder runs once per chip; the cross term costs one extra light decoder pass.
Decoders (msgfm.models.decoders, `config.decoder`) read every stage map: `decoder(maps, bands)`.
With `config.target_norm` "chip" a decoder's output is in units of the target chip's visible per-band std
around its visible mean (for a cross term: the partner's pixels at a's visible cells, the statistics the
chip-mean baseline uses), so the model learns structure, not each chip's level (S2 under cloud, season).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import torch
from huggingface_hub import ModelHubMixin
from torch import nn

from msgfm.architectures import MSGFMConfig, get_config
from msgfm.models.decoders import build_decoder
from msgfm.models.encoder import MSGFMEncoder
from msgfm.models.fill import visible_fill
from msgfm.sensors import PAIRS

if TYPE_CHECKING:
    from msgfm.config import ModelParams


class MultiSensorBatch(TypedDict, total=False):
    """The batch format of MSGFM.forward (see the module docstring)."""

    images: dict[str, torch.Tensor]
    bands: dict[str, tuple[str, ...]]
    partner: dict[str, torch.Tensor]


@dataclass
class PretrainOutput:
    """Losses and reconstructions of one pretraining step (all pixels in normalised units)."""

    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    pred: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]
    cross_pred: dict[str, torch.Tensor]
    cross_index: dict[str, torch.Tensor]
    cross_mask: dict[str, torch.Tensor]
    cross_context: dict[str, torch.Tensor]


def masked_l1(pred: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over masked pixels (pixel_mask (B, H, W), True = masked) and all channels."""
    weight = pixel_mask.to(pred.dtype).unsqueeze(1)
    denom = weight.sum() * pred.shape[1]
    return ((pred - target).abs() * weight).sum() / denom.clamp(min=1.0)


def visible_stats(
    image: torch.Tensor, pixel_mask: torch.Tensor, eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-chip, per-band mean and std (B, C, 1, 1) over the visible pixels (pixel_mask True = masked)."""
    visible = (~pixel_mask).to(image.dtype).unsqueeze(1)
    count = visible.sum(dim=(2, 3), keepdim=True).clamp(min=1.0)
    mean = (image * visible).sum(dim=(2, 3), keepdim=True) / count
    var = (((image - mean) * visible) ** 2).sum(dim=(2, 3), keepdim=True) / count
    return mean, (var + eps).sqrt()


def upsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, h, w) mask -> (B, h*factor, w*factor) by repeating each cell."""
    return mask.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)


class MSGFM(nn.Module, ModelHubMixin, library_name="msgfm", tags=["remote-sensing", "earth-observation"]):
    """Band-aware per-sensor embeddings, a shared Swin-MoE encoder and per-sensor decoders, trained by MIM.

    `model.save_pretrained(dir)` / `MSGFM.from_pretrained(dir)` are huggingface_hub's mixin over our own
    layout (msgfm.models.hub: model.safetensors + config.json, plus the mixin's README.md model card);
    only local directories load: nothing is downloaded.
    """

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's hook: write model.safetensors and our config.json (msgfm.models.hub.save_pretrained)."""
        from msgfm.models.hub import save_pretrained

        save_pretrained(self, save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> MSGFM:
        """Load a model directory written by save_pretrained; anything but a local directory is refused."""
        if not Path(pretrained_model_name_or_path).is_dir():
            raise FileNotFoundError(
                f"{pretrained_model_name_or_path}: not a local model directory (msgfm downloads nothing)"
            )
        return super().from_pretrained(pretrained_model_name_or_path, local_files_only=True, **kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", **kwargs: Any) -> MSGFM:
        """The mixin's hook: rebuild from config.json and load the weights strictly (no unpickling)."""
        from msgfm.models.hub import load_pretrained

        return load_pretrained(model_id, device=map_location)

    def __init__(self, config: MSGFMConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = MSGFMEncoder(config)
        self.decoders = nn.ModuleDict({s: build_decoder(s, config) for s in config.sensors})
        n_fill = len(config.fill_scales_px)
        self.fill_gain = (
            nn.ParameterDict({s: nn.Parameter(torch.full((n_fill,), 1.0 / max(n_fill, 1))) for s in config.sensors})
            if n_fill
            else None
        )

    def generate_masks(
        self, images: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Random (B_s, H/m, W/m) boolean masks on the mask-cell grid (m = mask_patch_px),
        round(mask_ratio * cells) cells per chip."""
        cfg = self.config
        masks = {}
        for sensor, image in images.items():
            b, (h, w) = image.shape[0], image.shape[-2:]
            if h % cfg.mask_patch_px or w % cfg.mask_patch_px:
                raise ValueError(
                    f"sensor {sensor!r}: {h}x{w} px is not a whole number of {cfg.mask_patch_px} px mask cells"
                )
            gh, gw = h // cfg.mask_patch_px, w // cfg.mask_patch_px
            scores = torch.rand(b, gh * gw, generator=generator)
            ranks = scores.argsort(dim=1).argsort(dim=1)
            masks[sensor] = (ranks < int(round(cfg.mask_ratio * gh * gw))).reshape(b, gh, gw).to(image.device)
        return masks

    def draw_cross(
        self, partner: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """For each paired chip, True with probability p_cross: also reconstruct its partner."""
        return {
            s: (idx >= 0) & (torch.rand(idx.shape[0], generator=generator).to(idx.device) < self.config.p_cross)
            for s, idx in partner.items()
        }

    def forward(
        self,
        batch: Mapping[str, Any],
        generator: torch.Generator | None = None,
        masks: Mapping[str, torch.Tensor] | None = None,
        cross: Mapping[str, torch.Tensor] | None = None,
    ) -> PretrainOutput:
        """One cross-sensor MIM step; masks (mask-grid bools) and cross (per-chip bools) default to random draws."""
        cfg = self.config
        images: Mapping[str, torch.Tensor] = batch["images"]
        bands: Mapping[str, Sequence[str]] = batch["bands"]
        partner: Mapping[str, torch.Tensor] = batch.get("partner") or {}
        masks = dict(masks) if masks is not None else self.generate_masks(images, generator)
        cross = dict(cross) if cross is not None else self.draw_cross(partner, generator)

        token_masks = {s: upsample_mask(m, cfg.mask_patch_px // cfg.patch_px) for s, m in masks.items()}
        pixel_masks = {s: upsample_mask(m, cfg.mask_patch_px) for s, m in masks.items()}
        cross_index = self._cross_rows(images, partner, cross)
        fused = {}
        if cfg.cross_design == "joint":
            fused = {
                f"{a}+{b}": (cross_index[f"{a}->{b}"], cross_index[f"{b}->{a}"])
                for a, b in PAIRS
                if f"{a}->{b}" in cross_index
            }
        encoded = self.encoder(images, bands, token_masks, fused)

        losses: dict[str, torch.Tensor] = {}
        preds: dict[str, torch.Tensor] = {}
        cross_pred: dict[str, torch.Tensor] = {}
        cross_mask: dict[str, torch.Tensor] = {}
        cross_context: dict[str, torch.Tensor] = {}
        for target, image in images.items():
            # One decoder pass per sensor over its own chips and the cross chips it reconstructs.
            keys = [k for k in cross_index if k.endswith(f"->{target}")]
            parts = [encoded.features[target]]  # each a list of stage maps
            parts += [self._cross_features(encoded.features, k, cross_index[k]) for k in keys]
            stages = [torch.cat(maps) for maps in zip(*parts, strict=True)] if keys else parts[0]
            decoded = self.decoders[target](stages, bands[target])
            outputs = decoded.split([p[0].shape[0] for p in parts])
            preds[target] = self._pixels(outputs[0], image, pixel_masks[target], target, fill=True)
            losses[f"mim/{target}"] = masked_l1(preds[target], image, pixel_masks[target])
            for key, pred in zip(keys, outputs[1:], strict=True):
                source = key.split("->")[0]
                rows = cross_index[key]
                target_rows = partner[source].index_select(0, rows)
                target_px = image.index_select(0, target_rows)
                source_mask = pixel_masks[source].index_select(0, rows)
                if cfg.cross_design == "joint":  # b's masked cells that a shows; b's visible pixels give the level
                    cross_context[key] = pixel_masks[target].index_select(0, target_rows)
                    cross_mask[key] = cross_context[key] & ~source_mask
                else:  # b at a's masked cells; b's pixels at a's visible cells give the level
                    cross_context[key] = cross_mask[key] = source_mask
                joint = cfg.cross_design == "joint"
                cross_pred[key] = self._pixels(pred, target_px, cross_context[key], target, fill=joint)
                losses[f"cross/{key}"] = masked_l1(cross_pred[key], target_px, cross_mask[key])

        recon = torch.stack(list(losses.values())).mean()
        losses["recon"] = recon
        losses["aux"] = encoded.aux_loss
        losses["total"] = recon + cfg.aux_loss_weight * encoded.aux_loss
        return PretrainOutput(
            loss=losses["total"],
            losses=losses,
            pred=preds,
            mask=pixel_masks,
            cross_pred=cross_pred,
            cross_index=cross_index,
            cross_mask=cross_mask,
            cross_context=cross_context,
        )

    def _cross_rows(
        self, images: Mapping[str, torch.Tensor], partner: Mapping[str, torch.Tensor], cross: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Rows of images[a] reconstructed as their partner in b, per direction "a->b". `joint` draws per pair (by
        the pair's first sensor a) and uses each drawn pair in both directions, b's rows in the order of a's."""
        found: dict[str, torch.Tensor] = {}
        for a, b in PAIRS:
            if a not in images or b not in images:
                continue
            for src, dst in ((a, b), (b, a)):
                drawn = src if self.config.cross_design == "translate" else a
                if drawn not in partner or drawn not in cross:
                    continue
                rows = torch.nonzero(cross[drawn] & (partner[drawn] >= 0)).flatten()
                if src != drawn:
                    rows = partner[drawn].index_select(0, rows)
                if rows.numel():
                    found[f"{src}->{dst}"] = rows
        return found

    def _cross_features(
        self, features: Mapping[str, list[torch.Tensor]], key: str, rows: torch.Tensor
    ) -> list[torch.Tensor]:
        """The stage maps a cross direction decodes: the source chips' own (translate) or the fused pair's (joint)."""
        src, dst = key.split("->")
        if self.config.cross_design == "joint":
            return features[f"{src}+{dst}" if (src, dst) in PAIRS else f"{dst}+{src}"]
        return [f.index_select(0, rows) for f in features[src]]

    def _pixels(
        self, decoded: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor, sensor: str, fill: bool
    ) -> torch.Tensor:
        """The decoder's output in pixel units: with target_norm `chip`, scaled by the visible pixels' std and
        shifted by their mean, so a zero output is the per-chip visible-mean predictor and the decoder learns
        structure rather than each chip's level and contrast. With fill_scales_px and `fill` (the target's
        visible pixels are input the model sees), the decoder adds to a learned mix of visible-pixel fills."""
        cfg = self.config
        mean, std = visible_stats(target, hidden) if cfg.target_norm == "chip" else (0.0, 1.0)
        if fill and self.fill_gain is not None:
            fills = visible_fill(target, hidden, cfg.fill_scales_px, cfg.patch_px)
            gain = self.fill_gain[sensor].to(decoded.dtype).view(-1, 1, 1, 1, 1)
            decoded = decoded + (gain * (fills - mean) / std).sum(0)
        return mean + std * decoded


def create_model(name: str = "msgfm_tiny", **overrides: Any) -> MSGFM:
    """Build a registered msGFM model (msgfm_tiny, msgfm_base) with config overrides, freshly initialised."""
    return MSGFM(get_config(name, **overrides))


def create_model_from_params(model_params: ModelParams, **overrides: Any) -> MSGFM:
    """Build the model of params.yaml's `model` section with config overrides, e.g. sensors=pretrain.sensors."""
    return MSGFM(model_params.to_model_config(**overrides))
