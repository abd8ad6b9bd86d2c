"""Task samples and DataLoaders (msgfm.datasets.loaders) and benchmark splits streamed from files
(msgfm.datasets.streaming), on hand-made splits and the real BigEarthNet v1.0 sample patches."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from msgfm.datasets.benchmarks import BenchmarkDataError, create_benchmark
from msgfm.datasets.loaders import EndlessBatches, collate_task, make_sample, split_loader
from msgfm.datasets.streaming import BenchmarkSplit
from msgfm.datasets.tasks import TaskSplit
from msgfm.sensors import get_sensor

S2 = get_sensor("s2").band_names
S1 = get_sensor("s1").band_names


def _split(n: int = 10) -> TaskSplit:
    gen = torch.Generator().manual_seed(0)
    present = torch.arange(n) % 3 != 0  # every third S2 chip has no S1 partner
    s1 = torch.randn(n, 2, 8, 8, generator=gen) * present[:, None, None, None]
    return TaskSplit(
        images={"s2": torch.randn(n, len(S2), 8, 8, generator=gen), "s1": s1},
        bands={"s2": S2, "s1": S1},
        present={"s2": torch.ones(n, dtype=torch.bool), "s1": present},
        target=(torch.rand(n, 5, generator=gen) > 0.5).float(),
        ids=[f"chip{i}" for i in range(n)],
        crs=["EPSG:32632"] * n,
        bounds=[(float(i), 0.0, i + 80.0, 80.0) for i in range(n)],
    )


def test_in_memory_split_batches_equal_direct_indexing() -> None:
    """A TaskSplit through the DataLoader gives exactly what indexing its tensors gives, georeference included."""
    split = _split()
    sample = split[4]
    assert sample["image_s2"].shape == (len(S2), 8, 8) and sample["bands_s1"] == S1
    assert sample["label"].shape == (5,) and sample["crs"] == "EPSG:32632" and sample["bounds"][0] == 4.0
    index = torch.tensor([3, 4, 5, 6])
    batch = next(iter(split_loader(split, batches=[index.tolist()])))
    images, present, target = split.batch(index)
    assert batch.images.keys() == images.keys() and batch.ids == ["chip3", "chip4", "chip5", "chip6"]
    for sensor in images:
        assert torch.equal(batch.images[sensor], images[sensor]) and torch.equal(batch.present[sensor], present[sensor])
    assert torch.equal(batch.target, target) and torch.equal(batch.index, index)
    alone = collate_task([split[0], split[3]])  # no S1 partner in either: the sensor is left out, as before
    assert set(alone.images) == {"s2"}
    in_order = list(split_loader(split, 4))
    assert [len(b.ids) for b in in_order] == [4, 4, 2] and torch.equal(
        torch.cat([b.index for b in in_order]), torch.arange(10)
    )


def test_collate_names_the_sensor_whose_bands_differ() -> None:
    a = make_sample(
        {"s2": torch.zeros(2, 4, 4)}, {"s2": ("B02", "B03")}, {"s2": True}, torch.zeros(3), sample_id="a", index=0
    )
    b = make_sample(
        {"s2": torch.zeros(2, 4, 4)}, {"s2": ("B03", "B04")}, {"s2": True}, torch.zeros(3), sample_id="b", index=1
    )
    with pytest.raises(ValueError, match="sensor 's2': samples in one batch carry different band lists"):
        collate_task([a, b])


def test_endless_batches_are_seeded_permutations_carried_across_epochs() -> None:
    batches = iter(EndlessBatches(10, 4, seed=7))
    drawn = [next(batches) for _ in range(5)]  # 20 indices: two whole permutations
    assert all(len(b) == 4 for b in drawn)
    flat = [i for b in drawn for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert drawn == [next(it) for it in [iter(EndlessBatches(10, 4, seed=7))] for _ in range(5)]
    assert drawn != [next(it) for it in [iter(EndlessBatches(10, 4, seed=8))] for _ in range(5)]


def test_benchmark_split_streams_normalised_samples_and_workers_agree(test_data: Path) -> None:
    """Real BigEarthNet patches: each streamed sample is the registry-normalised patch with its georeference;
    two DataLoader workers give the same batches as the main process; `size` resamples."""
    ds = create_benchmark("bigearthnet", test_data / "bigearthnet-v1", "train")
    split = BenchmarkSplit(ds, np.arange(len(ds)), (120, 120), "multilabel")
    sample, raw = split[1], ds[1]
    l2a = split.bands["s2"]
    assert l2a == ds.band_names["s2"] and len(l2a) == 12  # BigEarthNet's L2A has no B10
    np.testing.assert_allclose(sample["image_s2"].numpy(), get_sensor("s2").normalise(raw["s2"].numpy(), l2a))
    np.testing.assert_allclose(sample["image_s1"].numpy(), get_sensor("s1").normalise(raw["s1"].numpy(), S1))
    assert torch.equal(sample["label"], raw["label"]) and sample["id"] == ds.s2_patches[1]
    with rasterio.open(
        test_data / "bigearthnet-v1/BigEarthNet-v1.0" / ds.s2_patches[1] / f"{ds.s2_patches[1]}_B02.tif"
    ) as src:
        assert sample["crs"] == src.crs.to_string() and sample["bounds"] == tuple(src.bounds)
    main = list(split_loader(split, 1))
    workers = list(split_loader(split, 1, workers=2))
    assert [b.ids for b in main] == [b.ids for b in workers] == [[p] for p in ds.s2_patches]
    for a, b in zip(main, workers, strict=True):
        assert all(torch.equal(a.images[s], b.images[s]) for s in ("s2", "s1"))
    small = BenchmarkSplit(ds, [1], (64, 64), "multilabel")[0]
    assert small["image_s2"].shape == (12, 64, 64)
    assert abs(float(small["image_s2"].mean() - sample["image_s2"].mean())) < 0.05  # antialiased: same mean
    assert set(split.only(["s2"])[0]) >= {"image_s2"} and "image_s1" not in split.only(["s2"])[0]
    assert split.fingerprint() == BenchmarkSplit(ds, np.arange(len(ds)), (120, 120), "multilabel").fingerprint()
    assert split.fingerprint() != BenchmarkSplit(ds, [1], (120, 120), "multilabel").fingerprint()


def _in_memory(split: BenchmarkSplit) -> TaskSplit:
    """Every sample of a streamed split collated into one in-memory TaskSplit (the reference it must match)."""
    whole = collate_task([split[i] for i in range(len(split))])
    return TaskSplit(whole.images, whole.bands, whole.present, whole.target, whole.ids)


@pytest.mark.parametrize(("name", "folder"), [("bigearthnet", "bigearthnet-v1"), ("spacenet_pansharpen", "spacenet")])
def test_streamed_test_scores_equal_the_in_memory_ones(name: str, folder: str, test_data: Path) -> None:
    """The trivial baselines scored batch by batch on a streamed benchmark (train statistics streamed too) give
    the metrics and per-sample statistics of the same splits read into memory."""
    from msgfm.config import load_params
    from msgfm.evaluation.scoring import TRIVIAL, score_batches, score_outputs, trivial_outputs, trivial_predictor
    from msgfm.training.benchmark import benchmark_task_data

    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    streamed = benchmark_task_data(params, name, test_data / folder)
    memory = dataclasses.replace(streamed, splits={k: _in_memory(v) for k, v in streamed.splits.items()})
    test = streamed.splits["test"]
    for baseline in TRIVIAL[streamed.spec.name]:
        got = score_batches(streamed, test, trivial_predictor(baseline, streamed, 2), batch_size=2)
        want = score_outputs(memory, memory.splits["test"], trivial_outputs(baseline, memory, memory.splits["test"]))
        assert set(got.metrics) == set(want.metrics) and len(got.stats) == len(test), baseline
        for metric, value in want.metrics.items():
            np.testing.assert_allclose(np.asarray(got.metrics[metric]), np.asarray(value), atol=1e-5, err_msg=metric)
        for key, array in want.stats.arrays.items():
            np.testing.assert_allclose(got.stats.arrays[key], array, atol=1e-6, err_msg=f"{baseline} {key}")


def test_a_corrupt_file_read_in_a_worker_raises_msgfms_error_naming_it(test_data: Path, tmp_path: Path) -> None:
    """A band file that is not a GeoTIFF, read by a DataLoader worker: the caller gets the benchmark's own error
    naming the patch and the file, as the main process would raise it, not torch's wrapped worker traceback."""
    root = tmp_path / "ben"
    shutil.copytree(test_data / "bigearthnet-v1", root)
    ds = create_benchmark("bigearthnet", root, "train")
    patch = ds.s2_patches[1]
    (root / "BigEarthNet-v1.0" / patch / f"{patch}_B03.tif").write_bytes(b"not a tiff " * 100)
    split = BenchmarkSplit(ds, np.arange(len(ds)), (120, 120), "multilabel")
    with pytest.raises(BenchmarkDataError) as in_main:
        list(split_loader(split, 1))
    with pytest.raises(BenchmarkDataError) as in_worker:
        list(split_loader(split, 1, workers=1))
    message = str(in_worker.value)
    assert message == str(in_main.value)
    assert f"{patch}_B03.tif" in message and "band B03" in message
    assert "DataLoader worker" not in message and "Traceback" not in message
    assert any("raised in a DataLoader worker" in note for note in in_worker.value.__notes__)  # kept for debugging
