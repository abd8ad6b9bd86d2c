"""Joint cross-sensor reconstruction (MultiMAE-style) and the visible-pixel fill skip of the decoders."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import MICRO, one_thread  # noqa: F401 (autouse fixture)

from msgfm.architectures import MSGFMConfig
from msgfm.models import create_model, masked_l1
from msgfm.models.fill import visible_fill
from msgfm.models.msgfm import upsample_mask, visible_stats
from msgfm.sensors import S2_L2A_BANDS

BANDS = {"s1": ("VV", "VH"), "s2": S2_L2A_BANDS}


def micro_model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("msgfm_tiny", **{**MICRO, **overrides}).eval()


def pair_batch(seed: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    images = {"s1": torch.randn(2, 2, 32, 32, generator=g), "s2": torch.randn(2, 12, 32, 32, generator=g)}
    partner = {"s1": torch.tensor([1, 0]), "s2": torch.tensor([1, 0])}  # s1 chip 0 lies with s2 chip 1
    return {"images": images, "bands": BANDS, "partner": partner}, {"s1": torch.ones(2, dtype=torch.bool)}


def test_joint_cross_sees_both_sensors_and_scores_b_where_only_a_shows() -> None:
    model = micro_model(cross_design="joint")
    batch, cross = pair_batch(1)
    images = batch["images"]
    masks = model.generate_masks(images, torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(batch, masks=masks, cross=cross)
    # one draw per pair, used in both directions; b's rows follow a's
    assert out.cross_index["s1->s2"].tolist() == [0, 1] and out.cross_index["s2->s1"].tolist() == [1, 0]
    px = {s: upsample_mask(m, 8) for s, m in masks.items()}
    scored = px["s2"][[1, 0]] & ~px["s1"]
    assert torch.equal(out.cross_mask["s1->s2"], scored) and scored.any()
    assert torch.equal(out.cross_context["s1->s2"], px["s2"][[1, 0]])
    target = images["s2"][[1, 0]]
    torch.testing.assert_close(out.losses["cross/s1->s2"], masked_l1(out.cross_pred["s1->s2"], target, scored))

    def cross_pred(changed: dict) -> torch.Tensor:
        with torch.no_grad():
            return model({**batch, "images": changed}, masks=masks, cross=cross).cross_pred["s1->s2"]

    hidden_s1 = images["s1"] + 3.0 * px["s1"].unsqueeze(1)  # S1 pixels under S1's mask: never seen
    hidden_s2 = images["s2"] + 3.0 * px["s2"].unsqueeze(1)  # S2 pixels under S2's mask: the targets
    torch.testing.assert_close(cross_pred({**images, "s1": hidden_s1}), out.cross_pred["s1->s2"])
    torch.testing.assert_close(cross_pred({**images, "s2": hidden_s2}), out.cross_pred["s1->s2"])
    # S1's visible pixels and S2's visible pixels both reach the S2 reconstruction (one fused input)
    seen_s1 = images["s1"] + 3.0 * (~px["s1"]).unsqueeze(1)
    seen_s2 = images["s2"] + 3.0 * (~px["s2"]).unsqueeze(1)
    sel = scored.unsqueeze(1).expand(-1, 12, -1, -1)
    for changed in ({**images, "s1": seen_s1}, {**images, "s2": seen_s2}):
        assert not torch.allclose(cross_pred(changed)[sel], out.cross_pred["s1->s2"][sel])


def test_translate_cross_sees_the_source_alone() -> None:
    model = micro_model(cross_design="translate")
    batch, cross = pair_batch(3)
    masks = model.generate_masks(batch["images"], torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = model(batch, masks=masks, cross=cross)
        seen_s2 = batch["images"]["s2"] + 3.0 * (~upsample_mask(masks["s2"], 8)).unsqueeze(1)
        other = model({**batch, "images": {**batch["images"], "s2": seen_s2}}, masks=masks, cross=cross)
    assert set(out.cross_index) == {"s1->s2"}  # translate draws per direction: only s1 was drawn
    src_mask = upsample_mask(masks["s1"], 8)
    assert torch.equal(out.cross_mask["s1->s2"], src_mask) and torch.equal(out.cross_context["s1->s2"], src_mask)
    # S2's pixels reach the S1->S2 reconstruction only through its level and contrast (the visible stats)
    target, seen_target = batch["images"]["s2"][[1, 0]], seen_s2[[1, 0]]
    decoded = [
        (o.cross_pred["s1->s2"] - m) / sd
        for o, (m, sd) in ((out, visible_stats(target, src_mask)), (other, visible_stats(seen_target, src_mask)))
    ]
    torch.testing.assert_close(decoded[0], decoded[1], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="cross_design 'both' is not known"):
        MSGFMConfig(cross_design="both")


def test_visible_fill_uses_only_visible_pixels_and_keeps_a_constant_chip() -> None:
    g = torch.Generator().manual_seed(5)
    image = torch.randn(2, 3, 32, 32, generator=g)
    hidden = upsample_mask(torch.rand(2, 4, 4, generator=g) < 0.6, 8)
    fill = visible_fill(image, hidden, (4, 16), cell_px=4)
    assert fill.shape == (2, 2, 3, 32, 32)
    changed = image + 5.0 * hidden.unsqueeze(1)
    torch.testing.assert_close(visible_fill(changed, hidden, (4, 16), cell_px=4), fill)
    constant = torch.full_like(image, 2.5)
    torch.testing.assert_close(visible_fill(constant, hidden, (4, 16), cell_px=4), torch.full_like(fill, 2.5))
    # a smooth ramp is interpolated far better than by the visible mean
    ramp = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(2, 3, 32, 32)
    ramp_fill = visible_fill(ramp, hidden, (4,), cell_px=4)[0]
    mean = (ramp * ~hidden.unsqueeze(1)).sum((2, 3), keepdim=True) / (~hidden).sum((1, 2)).view(2, 1, 1, 1)
    assert masked_l1(ramp_fill, ramp, hidden) < 0.5 * masked_l1(mean.expand_as(ramp), ramp, hidden)


def test_a_zero_decoder_with_the_fill_predicts_the_fill() -> None:
    """With fill_scales_px the reconstruction is the decoder's output added to a learned mix of visible fills:
    a zero decoder and gains (1, 0) predict the finest fill, for MIM and for a joint cross term."""
    model = micro_model(cross_design="joint", fill_scales_px=(4, 16))
    for p in model.decoders.parameters():
        torch.nn.init.zeros_(p)
    with torch.no_grad():
        for gain in model.fill_gain.values():
            gain.copy_(torch.tensor([1.0, 0.0]))
    batch, cross = pair_batch(6)
    masks = model.generate_masks(batch["images"], torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = model(batch, masks=masks, cross=cross)
    s2 = batch["images"]["s2"]
    expected = visible_fill(s2, out.mask["s2"], (4, 16), 4)[0]
    torch.testing.assert_close(out.pred["s2"], expected, rtol=1e-4, atol=1e-4)
    target = s2[[1, 0]]
    expected = visible_fill(target, out.cross_context["s1->s2"], (4, 16), 4)[0]
    torch.testing.assert_close(out.cross_pred["s1->s2"], expected, rtol=1e-4, atol=1e-4)
