"""msGFM model: shapes per sensor and band subset, masked loss, cross-sensor targets, MoE routing, overfitting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_fixtures import MICRO, one_thread  # noqa: F401 (autouse fixture)

from msgfm.architectures import MSGFMConfig, get_config
from msgfm.config import load_params
from msgfm.datasets.collate import collate_multisensor
from msgfm.models import (
    count_parameters,
    create_model,
    create_model_from_params,
    masked_l1,
)
from msgfm.models.moe import MoEMlp
from msgfm.models.msgfm import upsample_mask, visible_stats
from msgfm.sensors import S2_L2A_BANDS, SENSORS
from msgfm.training.mim_baselines import chip_mean_fill

ALL_BANDS = {s: SENSORS[s].band_names for s in SENSORS}


def micro_model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("msgfm_tiny", **{**MICRO, **overrides})


@pytest.fixture(scope="module")
def model():
    return micro_model()


SUBSETS = [
    ("s1", ("VV", "VH")),
    ("s1", ("VV",)),
    ("s2", SENSORS["s2"].band_names),
    ("s2", S2_L2A_BANDS),
    ("s2", ("B04", "B03", "B02")),
    ("rgb", ("R", "G", "B")),
    ("rgb", ("B", "G")),
    ("dsm", ("height",)),
]


@pytest.mark.parametrize(("sensor", "bands"), SUBSETS, ids=[f"{s}-{len(b)}" for s, b in SUBSETS])
def test_shapes_for_every_sensor_and_band_subset(model, sensor: str, bands: tuple[str, ...]) -> None:
    images = {sensor: torch.randn(3, len(bands), 32, 32)}
    encoded = model.encoder(images, {sensor: bands})
    feats = encoded.features[sensor]
    assert [tuple(f.shape) for f in feats] == [(3, 16, 8, 8), (3, 32, 4, 4), (3, 64, 2, 2), (3, 128, 1, 1)]
    out = model({"images": images, "bands": {sensor: bands}})
    assert out.pred[sensor].shape == (3, len(bands), 32, 32)
    assert out.mask[sensor].shape == (3, 32, 32)
    assert torch.isfinite(out.loss) and set(out.losses) == {f"mim/{sensor}", "recon", "aux", "total"}


def test_band_subset_equals_zero_filled_full_input(model) -> None:
    """Band-aware embedding of a subset = embedding all bands with the missing ones at their mean (0)."""
    g = torch.Generator().manual_seed(1)
    subset = torch.randn(2, len(S2_L2A_BANDS), 32, 32, generator=g)
    full = torch.zeros(2, 13, 32, 32)
    full[:, [SENSORS["s2"].band_names.index(b) for b in S2_L2A_BANDS]] = subset
    embed = model.encoder.patch_embed["s2"]
    torch.testing.assert_close(embed(subset, S2_L2A_BANDS), embed(full, SENSORS["s2"].band_names))
    # order matters: the same channels under swapped names embed differently
    assert not torch.allclose(embed(subset[:, :2], ("B01", "B02")), embed(subset[:, :2], ("B02", "B01")))


def test_bad_bands_are_clear_errors(model) -> None:
    with pytest.raises(KeyError, match=r"'s2' has no band\(s\) \['B99'\]"):
        model.encoder({"s2": torch.zeros(1, 2, 32, 32)}, {"s2": ("B02", "B99")})
    with pytest.raises(ValueError, match="image has 3 channels but 2 band names"):
        model.encoder({"s1": torch.zeros(1, 3, 32, 32)}, {"s1": ("VV", "VH")})
    with pytest.raises(ValueError, match="multiples of the patch size"):  # any other size runs (test_input_size)
        model.encoder({"dsm": torch.zeros(1, 1, 30, 30)}, {"dsm": ("height",)})


def test_mixed_batch_encodes_each_chip_as_alone(model) -> None:
    """One encoder pass over concatenated sensors gives each chip the features it gets on its own."""
    g = torch.Generator().manual_seed(2)
    images = {s: torch.randn(2, len(b), 32, 32, generator=g) for s, b in ALL_BANDS.items()}
    model.eval()
    try:
        mixed = model.encoder(images, ALL_BANDS).features
        for sensor in images:
            alone = model.encoder({sensor: images[sensor]}, ALL_BANDS).features[sensor]
            for a, b in zip(mixed[sensor], alone, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    finally:
        model.train()


def test_masked_l1_ignores_unmasked_pixels() -> None:
    g = torch.Generator().manual_seed(3)
    pred, target = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    mask = torch.rand(2, 16, 16, generator=g) < 0.5
    loss = masked_l1(pred, target, mask)
    unmasked = (~mask).unsqueeze(1).expand_as(pred)
    pred2, target2 = pred.clone(), target.clone()
    pred2[unmasked] += 5.0
    target2[unmasked] -= 7.0
    torch.testing.assert_close(masked_l1(pred2, target2, mask), loss)
    pred2[~unmasked] += 1.0
    assert masked_l1(pred2, target2, mask) != loss
    expected = (pred - target).abs().permute(1, 0, 2, 3)[:, mask].mean()
    torch.testing.assert_close(loss, expected)


def test_model_never_sees_masked_pixels_and_scores_only_them(model) -> None:
    """Masked pixels change only the loss target; unmasked ones change the prediction, never the target."""
    g = torch.Generator().manual_seed(4)
    images = {"s2": torch.randn(2, 12, 32, 32, generator=g)}
    batch = {"images": images, "bands": {"s2": S2_L2A_BANDS}}
    masks = model.generate_masks(images, g)
    assert masks["s2"].shape == (2, 4, 4) and int(masks["s2"][0].sum()) == round(0.6 * 16)
    px = upsample_mask(masks["s2"], 8).unsqueeze(1).expand(-1, 12, -1, -1)
    model.eval()
    try:
        base = model(batch, masks=masks)
        changed = images["s2"].clone()
        changed[px] += 3.0  # only masked pixels
        out = model({"images": {"s2": changed}, "bands": batch["bands"]}, masks=masks)
        torch.testing.assert_close(out.pred["s2"], base.pred["s2"])  # the encoder never saw them
        assert out.loss != base.loss  # but they are the target
        # the loss is the masked L1 of the prediction over masked pixels only
        torch.testing.assert_close(base.losses["mim/s2"], masked_l1(base.pred["s2"], images["s2"], base.mask["s2"]))
    finally:
        model.train()


def test_cross_sensor_reconstructs_partner_channels(model) -> None:
    g = torch.Generator().manual_seed(5)
    images = {"s1": torch.randn(2, 2, 32, 32, generator=g), "s2": torch.randn(2, 12, 32, 32, generator=g)}
    bands = {"s1": ("VV", "VH"), "s2": S2_L2A_BANDS}
    partner = {"s1": torch.tensor([1, 0]), "s2": torch.tensor([1, 0])}
    cross = {"s1": torch.tensor([True, True]), "s2": torch.tensor([False, False])}
    masks = model.generate_masks(images, g)
    out = model({"images": images, "bands": bands, "partner": partner}, masks=masks, cross=cross)
    assert set(out.cross_pred) == {"s1->s2"} and "cross/s2->s1" not in out.losses
    pred = out.cross_pred["s1->s2"]
    assert pred.shape == (2, 12, 32, 32)  # the partner's (S2) channels, from S1 input
    # the target is the partner chip (swapped order), under the source chip's mask
    expected = masked_l1(pred, images["s2"][[1, 0]], out.mask["s1"])
    torch.testing.assert_close(out.losses["cross/s1->s2"], expected)
    assert not torch.isclose(out.losses["cross/s1->s2"], masked_l1(pred, images["s2"], out.mask["s1"]))
    # the prediction is the S2 decoder applied to the S1 chips' features, in units of the partner's visible
    # per-band std around its visible mean (target_norm chip)
    feats = model.encoder(images, bands, {s: upsample_mask(m, 2) for s, m in masks.items()}).features["s1"]
    mean, std = visible_stats(images["s2"][[1, 0]], out.mask["s1"])
    decoded = model.decoders["s2"](feats, S2_L2A_BANDS)
    torch.testing.assert_close(pred, mean + std * decoded, rtol=1e-4, atol=1e-5)
    # random draws: p_cross = 0 never crosses, 1 always crosses every paired chip
    assert not micro_model(p_cross=0.0).draw_cross(partner, g)["s1"].any()
    always = micro_model(p_cross=1.0).draw_cross({"s1": torch.tensor([0, -1, 1])}, g)["s1"]
    assert always.tolist() == [True, False, True]


def test_moe_routes_sensors_to_different_experts_and_balance_loss_falls() -> None:
    """Toy problem: two sensors with the same inputs but different targets; routing starts collapsed."""
    torch.manual_seed(0)
    moe = MoEMlp(8, 32, experts=2, n_sensors=2, top_k=1, capacity_factor=2.0)
    with torch.no_grad():
        moe.router.bias.copy_(torch.tensor([2.0, -2.0]))  # every token starts on expert 0
    maps = torch.randn(2, 8, 8)
    sensor = torch.arange(2).repeat_interleave(128)
    opt = torch.optim.Adam(moe.parameters(), lr=1e-2)
    aux_curve = []
    for _ in range(200):
        x = torch.randn(256, 8)
        y = torch.einsum("nd,nde->ne", x, maps[sensor])
        out, aux = moe(x, sensor)
        loss = (out - y).pow(2).mean() + 0.1 * aux
        opt.zero_grad()
        loss.backward()
        opt.step()
        aux_curve.append(aux.item())
    assert aux_curve[0] > 1.8 and aux_curve[-1] < 1.1  # from collapsed (2) towards balanced (1)
    _, chosen, _ = moe.route(torch.randn(512, 8), torch.arange(2).repeat_interleave(256))
    share0 = [(chosen[i * 256 : (i + 1) * 256, 0] == 0).float().mean().item() for i in range(2)]
    majority = [int(s < 0.5) for s in share0]
    assert majority[0] != majority[1], share0
    assert all(max(s, 1 - s) > 0.9 for s in share0), share0


def test_moe_capacity_drops_overflow_only_in_training() -> None:
    torch.manual_seed(0)
    moe = MoEMlp(8, 16, experts=4, n_sensors=1, top_k=1, capacity_factor=0.5)
    with torch.no_grad():
        moe.router.bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))
    x, ids = torch.randn(64, 8), torch.zeros(64, dtype=torch.long)
    out, _ = moe(x, ids)
    assert moe.capacity(64) == 8
    dropped = (out.abs().sum(dim=1) == 0).sum().item()
    assert dropped >= 64 - 4 * 8  # at most 8 tokens per expert were kept
    moe.eval()
    out_eval, _ = moe(x, ids)
    assert (out_eval.abs().sum(dim=1) > 0).all()


def test_dense_config_has_no_experts() -> None:
    dense = micro_model(experts=0)
    assert not any(isinstance(m, MoEMlp) for m in dense.modules())
    out = dense({"images": {"dsm": torch.randn(1, 1, 32, 32)}, "bands": {"dsm": ("height",)}})
    assert out.losses["aux"] == 0 and out.losses["total"] == out.losses["recon"]
    moe = micro_model()
    assert sum(isinstance(m, MoEMlp) for m in moe.modules()) == 2  # 2nd block of stages 2 and 3


def test_windows_are_shifted_where_a_stage_has_several() -> None:
    """64 px chips: token grids 16, 8, 4, 2; windows of 4 shift in stages 1-2, stages 3-4 are one window."""
    encoder = create_model("msgfm_tiny", chip_px=64).encoder
    layout = [[(block.window_size, block.shift_size) for block in stage] for stage in encoder.stages]
    several = [((4, 4), (0, 0)), ((4, 4), (2, 2))]
    assert layout == [several, several, [((4, 4), (0, 0))] * 2, [((2, 2), (0, 0))] * 2]


def test_base_encoder_is_swin_b_sized() -> None:
    with torch.device("meta"):
        base = create_model("msgfm_base")
        dense = create_model("msgfm_base", experts=0)
    assert base.config.depths == (2, 2, 18, 2) and base.config.num_heads == (4, 8, 16, 32)
    active = count_parameters(base.encoder, active=True)
    assert 86.5e6 < count_parameters(dense.encoder) < 89e6
    assert 86.5e6 < active < 89e6  # parameters a token uses: Swin-B's
    assert count_parameters(base.encoder) > active + 50e6  # experts add capacity, not per-token compute


def test_chip_target_norm_starts_at_the_chip_mean_and_none_predicts_pixels() -> None:
    """target_norm chip: a decoder that outputs zero predicts each chip's visible per-band mean exactly (the
    baseline is where learning starts); none: the decoder's output is the prediction."""
    g = torch.Generator().manual_seed(7)
    images = {"s2": torch.randn(2, 12, 32, 32, generator=g) * 3.0 + 5.0}
    batch = {"images": images, "bands": {"s2": S2_L2A_BANDS}}
    for norm in ("chip", "none"):
        model = micro_model(target_norm=norm)
        for p in model.decoders.parameters():
            torch.nn.init.zeros_(p)
        masks = model.generate_masks(images, g)
        out = model(batch, masks=masks)
        fill = chip_mean_fill(images["s2"], out.mask["s2"]) if norm == "chip" else torch.zeros_like(images["s2"])
        torch.testing.assert_close(out.pred["s2"], fill)
    with pytest.raises(ValueError, match="target_norm 'pixel' is not known"):
        MSGFMConfig(target_norm="pixel")


def imagery_like(b: int, c: int, generator: torch.Generator, px: int) -> torch.Tensor:
    """Chips whose bands mix three smooth latent fields (structure at the 8 px mask-cell scale), as bands of
    real imagery are correlated."""
    latent = F.interpolate(torch.randn(b, 3, px // 8, px // 8, generator=generator), size=px, mode="bilinear")
    return torch.einsum("kc,bkhw->bchw", torch.randn(3, c, generator=generator) / 3**0.5, latent)


@pytest.mark.parametrize("decoder", ["unet", "linear"])
def test_model_overfits_one_64px_batch_far_below_the_chip_mean(decoder: str) -> None:
    """At 64 px (a 2x2 last-stage grid) every term's masked error falls to a small fraction of predicting
    each chip's visible mean: the decoder can place structure inside the masked cells, not only means."""
    model = micro_model(chip_px=64, embed_dim=32, p_cross=1.0, decoder=decoder)
    g = torch.Generator().manual_seed(6)
    images = {s: imagery_like(2, len(b), g, px=64) for s, b in ALL_BANDS.items()}
    partner = {s: torch.tensor([1, 0]) for s in SENSORS}
    batch = {"images": images, "bands": ALL_BANDS, "partner": partner}
    masks = model.generate_masks(images, g)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(150):
        out = model(batch, masks=masks)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    with torch.no_grad():
        out = model(batch, masks=masks)
    assert len([k for k in out.losses if k.startswith("cross/")]) == 4
    for key, loss in out.losses.items():
        if not key.startswith(("mim/", "cross/")):
            continue
        src, dst = (key[4:], key[4:]) if key.startswith("mim/") else key[6:].split("->")
        target = images[dst] if src == dst else images[dst].index_select(0, partner[src])
        baseline = masked_l1(chip_mean_fill(target, out.mask[src]), target, out.mask[src])
        assert loss < 0.3 * baseline, (key, float(loss), float(baseline))


def test_config_validation_names_the_problem() -> None:
    with pytest.raises(KeyError, match="unknown msGFM model 'msgfm_huge'"):
        create_model("msgfm_huge")
    with pytest.raises(ValueError, match="chip_px 48 must be a multiple of"):
        get_config("msgfm_tiny", chip_px=48)
    with pytest.raises(ValueError, match="unknown msGFM config keys"):
        get_config("msgfm_tiny", heads=3)
    with pytest.raises(ValueError, match="experts 1 must be 0"):
        MSGFMConfig(experts=1)
    with pytest.raises(ValueError, match=r"decoder 'mlp' is not a design; known are \['unet', 'linear'\]"):
        MSGFMConfig(decoder="mlp")


def test_model_from_params_yaml(repo_root) -> None:
    params = load_params(repo_root / "params.yaml")
    cfg = create_model_from_params(params.model.model_copy(update={"name": "msgfm_tiny"}), **MICRO).config
    assert cfg.mask_ratio == params.model.mask_ratio and cfg.p_cross == params.model.p_cross
    assert cfg.moe_stages == tuple(params.model.moe_stages) and cfg.chip_px == 32


def test_collate_links_partners_by_pair_key() -> None:
    samples = [
        {"sensor": "s2", "image": torch.zeros(12, 32, 32), "bands": S2_L2A_BANDS, "pair": "a"},
        {"sensor": "s1", "image": torch.ones(2, 32, 32), "bands": ("VV", "VH"), "pair": "b"},
        {"sensor": "s2", "image": torch.ones(12, 32, 32), "bands": S2_L2A_BANDS, "pair": "b"},
        {"sensor": "dsm", "image": torch.ones(1, 32, 32), "bands": ("height",)},
    ]
    batch = collate_multisensor(samples)
    assert {s: tuple(t.shape) for s, t in batch["images"].items()} == {
        "s2": (2, 12, 32, 32),
        "s1": (1, 2, 32, 32),
        "dsm": (1, 1, 32, 32),
    }
    assert batch["partner"]["s1"].tolist() == [1] and batch["partner"]["s2"].tolist() == [-1, 0]
    assert batch["partner"]["dsm"].tolist() == [-1]
    samples[2] = {**samples[2], "bands": SENSORS["s2"].band_names, "image": torch.ones(13, 32, 32)}
    with pytest.raises(ValueError, match="different band lists"):
        collate_multisensor(samples)
