"""Any input size: the encoder, pretraining forward and task heads on sizes other than chip_px, and benchmarks
at native resolution (the real BigEarthNet v1.0 patches are 120 px)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from msgfm.config import load_params
from msgfm.datasets.loaders import split_loader
from msgfm.datasets.tasks import PAN_BANDS, TASKS, get_task
from msgfm.models import create_model
from msgfm.models.heads import build_task_model
from msgfm.sensors import get_sensor
from msgfm.training.benchmark import benchmark_task_data

S2 = get_sensor("s2").band_names


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("msgfm_tiny").eval()


def test_a_64px_chip_gives_the_same_features_as_static_window_masks(model) -> None:
    """dynamic_mask builds the shifted-window mask from the input; at chip_px it is timm's static mask."""
    x = torch.randn(2, len(S2), 64, 64, generator=torch.Generator().manual_seed(1))
    static = create_model("msgfm_tiny").eval()
    static.load_state_dict(model.state_dict())
    for block in (b for stage in static.encoder.stages for b in stage):
        block.dynamic_mask = False
        block._init_buffers()
    shifted = [b for stage in static.encoder.stages for b in stage if b.attn_mask is not None]
    assert shifted, "no block with a shifted window at 64 px"
    with torch.no_grad():
        ours = model.encoder({"s2": x}, {"s2": S2}).features["s2"]
        theirs = static.encoder({"s2": x}, {"s2": S2}).features["s2"]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize(("h", "w"), [(120, 120), (96, 128), (256, 256), (36, 44)])
def test_encoder_takes_any_multiple_of_the_patch_size(model, h: int, w: int) -> None:
    with torch.no_grad():
        maps = model.encoder({"s2": torch.randn(1, len(S2), h, w)}, {"s2": S2}).features["s2"]
    expected, gh, gw = [], h // 4, w // 4
    for _ in range(4):
        expected.append((gh, gw))
        gh, gw = -(-gh // 2), -(-gw // 2)
    assert [tuple(m.shape[-2:]) for m in maps] == expected
    assert all(torch.isfinite(m).all() for m in maps)


def test_pretraining_forward_and_every_task_head_at_120px(model) -> None:
    with torch.no_grad():
        out = model({"images": {"s2": torch.randn(2, len(S2), 120, 120)}, "bands": {"s2": S2}})
    assert out.pred["s2"].shape == (2, len(S2), 120, 120) and out.mask["s2"].shape == (2, 120, 120)
    assert 0.5 < out.mask["s2"].float().mean() < 0.7  # mask_ratio 0.6 of the 15 x 15 cells
    for task in TASKS:
        spec = get_task(task)
        net = build_task_model(spec, create_model("msgfm_tiny").encoder, 5).eval()
        bands = {
            s: (PAN_BANDS if task == "pansharpening" and s == "s2" else get_sensor(s).band_names) for s in spec.inputs
        }
        images = {s: torch.randn(2, len(b), 120, 120) for s, b in bands.items()}
        with torch.no_grad():
            y = net(images, bands)
        want = {"multilabel": (2, 5), "segmentation": (2, 5, 120, 120), "image": (2, len(spec.out_bands), 120, 120)}
        assert tuple(y.shape) == want[spec.kind], task


def test_sizes_the_encoder_cannot_take_are_clear_errors(model) -> None:
    with pytest.raises(ValueError, match="multiples of the patch size 4 px, got \\(62, 64\\)"):
        model.encoder({"s2": torch.randn(1, len(S2), 62, 64)}, {"s2": S2})
    with pytest.raises(ValueError, match="one batch, one size"):
        model.encoder(
            {"s2": torch.randn(1, len(S2), 64, 64), "s1": torch.randn(1, 2, 96, 96)},
            {"s2": S2, "s1": get_sensor("s1").band_names},
        )
    with pytest.raises(ValueError, match="not a whole number of 8 px mask cells"):
        model({"images": {"s2": torch.randn(1, len(S2), 36, 36)}, "bands": {"s2": S2}})


def _batches(data) -> list:
    return [batch for split in data.splits.values() for batch in split_loader(split, 8)]


def test_benchmarks_fine_tune_at_native_resolution_unless_asked(repo_root: Path, test_data: Path) -> None:
    params = load_params(repo_root / "params.yaml")
    native = _batches(benchmark_task_data(params, "bigearthnet", test_data / "bigearthnet-v1"))
    assert {tuple(x.shape[-2:]) for batch in native for x in batch.images.values()} == {(120, 120)}
    params.finetune.benchmark_px = 64
    resized = _batches(benchmark_task_data(params, "bigearthnet", test_data / "bigearthnet-v1"))
    assert {tuple(x.shape[-2:]) for batch in resized for x in batch.images.values()} == {(64, 64)}
    assert all(torch.equal(a.target, b.target) for a, b in zip(native, resized, strict=True))  # labels are per patch
