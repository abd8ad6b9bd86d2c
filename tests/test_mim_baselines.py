"""The baselines pretraining is scored against, on tiny chips with answers worked out by hand."""

from __future__ import annotations

import torch

from msgfm.models.msgfm import masked_l1
from msgfm.training.mim_baselines import chip_mean_fill, global_mean_fill, idw_fill


def test_global_mean_fill_broadcasts_per_band_means() -> None:
    like = torch.zeros(2, 3, 4, 5)
    out = global_mean_fill(torch.tensor([1.0, -2.0, 0.5]), like)
    assert out.shape == like.shape
    assert out[1, :, 3, 4].tolist() == [1.0, -2.0, 0.5] and out[0, 1].unique().tolist() == [-2.0]


def test_chip_mean_fill_uses_only_visible_pixels_of_each_chip_and_band() -> None:
    image = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]]]).repeat(2, 1, 1, 1)
    image[1] *= -1
    mask = torch.tensor([[[False, True], [True, True]], [[False, False], [True, True]]])
    out = chip_mean_fill(image, mask)
    # chip 0 sees only its top-left pixel; chip 1 its top row
    assert out[0, 0].unique().tolist() == [1.0] and out[0, 1].unique().tolist() == [10.0]
    assert out[1, 0].unique().tolist() == [-1.5] and out[1, 1].unique().tolist() == [-15.0]
    # scored on masked pixels only: chip 0 band 0 errs by 1, 2, 3 on its three masked pixels
    assert masked_l1(out[:1, :1], image[:1, :1], mask[:1]).item() == 2.0


def test_chip_mean_of_a_flat_chip_is_exact() -> None:
    image = torch.full((1, 2, 8, 8), 3.0)
    mask = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.6
    assert masked_l1(chip_mean_fill(image, mask), image, mask).item() == 0.0


def test_idw_fill_weights_visible_pixels_by_inverse_squared_distance() -> None:
    image = torch.tensor([[[[0.0, 9.0, 9.0, 3.0]]]])
    mask = torch.tensor([[[False, True, True, False]]])
    out = idw_fill(image, mask)
    # pixel 1: 0 at distance 1 (weight 1), 3 at distance 2 (weight 1/4) -> 0.75 / 1.25; pixel 2 mirrors it
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 0.6, 2.4, 3.0]))
    # equidistant neighbours: the plain mean, per band
    two = torch.tensor([[[[1.0, 0.0, 5.0]], [[-4.0, 0.0, 4.0]]]])
    filled = idw_fill(two, torch.tensor([[[False, True, False]]]))
    assert filled[0, :, 0, 1].tolist() == [3.0, 0.0]


def test_idw_fill_keeps_visible_pixels_and_handles_degenerate_masks() -> None:
    g = torch.Generator().manual_seed(1)
    image = torch.randn(3, 2, 6, 6, generator=g)
    mask = torch.rand(3, 6, 6, generator=g) < 0.5
    mask[1] = False  # nothing masked: the chip is unchanged
    mask[2] = True  # nothing visible: zero, the normalised mean
    out = idw_fill(image, mask)
    visible = (~mask).unsqueeze(1).expand_as(image)
    assert torch.equal(out[visible], image[visible])
    assert torch.equal(out[1], image[1]) and out[2].abs().sum() == 0
    # a linear ramp interpolated from both sides stays between its neighbours
    ramp = torch.arange(8.0).view(1, 1, 1, 8)
    hole = torch.zeros(1, 1, 8, dtype=torch.bool)
    hole[0, 0, 3:5] = True
    filled = idw_fill(ramp, hole)[0, 0, 0]
    assert 2.0 < filled[3] < filled[4] < 5.0
