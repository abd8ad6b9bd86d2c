"""Task heads over msGFM features: output shapes, sensor fusion and missing modalities, residual image-to-image."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import MICRO, one_thread  # noqa: F401 (autouse fixture)

from msgfm.models import create_model
from msgfm.models.heads import (
    ClassificationHead,
    DetailInjection,
    ImageToImageHead,
    SegmentationHead,
    TaskModel,
    fuse_sensors,
)
from msgfm.sensors import S2_L2A_BANDS

BANDS = {"s1": ("VV", "VH"), "s2": S2_L2A_BANDS}


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return create_model("msgfm_tiny", **MICRO).encoder


def images(b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {s: torch.randn(b, len(bands), 32, 32, generator=g) for s, bands in BANDS.items()}


def test_classification_and_segmentation_shapes(encoder) -> None:
    dims = encoder.dims
    clf = TaskModel(encoder, ClassificationHead(dims, num_classes=19))
    seg = TaskModel(encoder, SegmentationHead(dims, num_classes=6, channels=16))
    assert clf(images(), BANDS).shape == (2, 19)
    assert seg(images(), BANDS).shape == (2, 6, 32, 32)
    logits, aux = clf(images(), BANDS, return_aux=True)
    assert logits.shape == (2, 19) and aux.ndim == 0 and aux > 0  # the MoE balancing loss


def test_missing_modality_runs_on_the_sensors_present(encoder) -> None:
    """A head fine-tuned on S1+S2 runs on S2 alone; the result is the S2-only fusion."""
    clf = TaskModel(encoder, ClassificationHead(encoder.dims, num_classes=5)).eval()
    both, only_s2 = images(), {"s2": images()["s2"]}
    out_s2 = clf(only_s2, {"s2": S2_L2A_BANDS})
    assert out_s2.shape == (2, 5) and not torch.allclose(out_s2, clf(both, BANDS))
    # per-sample availability: sample 1 lacks S1 -> it gets exactly the S2-only answer
    present = {"s1": torch.tensor([True, False]), "s2": torch.tensor([True, True])}
    mixed = clf(both, BANDS, present=present)
    torch.testing.assert_close(mixed[1], out_s2[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed[0], clf(both, BANDS)[0], rtol=1e-4, atol=1e-5)


def test_fuse_sensors_averages_present_sensors() -> None:
    a, b = [torch.full((2, 3, 4, 4), 1.0)], [torch.full((2, 3, 4, 4), 3.0)]
    fused = fuse_sensors({"s1": a, "s2": b}, {"s1": torch.tensor([True, False])})
    assert fused[0][0].unique().tolist() == [2.0] and fused[0][1].unique().tolist() == [3.0]
    with pytest.raises(ValueError, match="no sensor features"):
        fuse_sensors({})


def test_image_to_image_head_takes_several_sensors_and_predicts_a_residual(encoder) -> None:
    """Cloud removal: S1 + cloudy S2 -> clear S2; the residual formulation starts at the identity."""
    out_bands = ("B02", "B03", "B04", "B08")
    head = ImageToImageHead(encoder.dims, ["s1", "s2"], "s2", out_bands, channels=16, residual="s2")
    model = TaskModel(encoder, head)
    x = images()
    out = model(x, BANDS)
    assert out.shape == (2, 4, 32, 32)
    order = [S2_L2A_BANDS.index(b) for b in out_bands]
    torch.testing.assert_close(out, x["s2"][:, order])  # zero-initialised last layer: output = input bands
    loss = (out - torch.randn_like(out)).abs().mean()
    loss.backward()
    assert head.stems["s1"].weight["VV"].grad is not None  # S1 pixels feed the prediction
    assert model(x, BANDS).shape == (2, 4, 32, 32)
    with pytest.raises(ValueError, match="lacks output bands"):
        model({"s2": x["s2"][:, :2]}, {"s2": ("B02", "B03")})


def test_detail_injection_starts_at_its_input_and_learns_band_gains_the_fusion_lacks(encoder) -> None:
    """Pan-sharpening's head: at zero gains the output is the HPF-fused input; when each band's true detail is
    the injected PAN detail scaled by its own gain (what HPF gets wrong), a few Adam steps on the head recover
    gains that beat the input by a margin a gain-free head cannot reach."""
    torch.manual_seed(0)
    head = ImageToImageHead(encoder.dims, ["s2"], "s2", S2_L2A_BANDS, channels=8, residual="s2", detail_ratio=4)
    model = TaskModel(encoder, head)
    x = images(4)
    torch.testing.assert_close(model({"s2": x["s2"]}, {"s2": BANDS["s2"]}), x["s2"])
    true_gains = torch.linspace(-0.5, 0.8, len(S2_L2A_BANDS))
    reference = DetailInjection(len(S2_L2A_BANDS), 4)
    with torch.no_grad():
        reference.weight.copy_(torch.diag(true_gains) / reference.scale)
        target = x["s2"] + reference(x["s2"])
    features = {"s2": [f.detach() for f in encoder({"s2": x["s2"]}, {"s2": BANDS["s2"]}).features["s2"]]}
    optimiser = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(60):
        loss = (head(features, images={"s2": x["s2"]}, bands={"s2": BANDS["s2"]}) - target).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    input_error = (x["s2"] - target).abs().mean().item()
    assert loss.item() < 0.3 * input_error, (loss.item(), input_error)
    torch.testing.assert_close(torch.diag(head.detail.gains.detach()), true_gains, atol=0.15, rtol=0)
    with pytest.raises(ValueError, match="needs residual"):
        ImageToImageHead(encoder.dims, ["s2"], "s2", S2_L2A_BANDS, detail_ratio=4)
