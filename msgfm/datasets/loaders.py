"""Task samples as TorchGeo-style dicts, and the DataLoaders that batch them for fine-tuning and evaluation.

Every task split (in memory, `msgfm.datasets.tasks.TaskSplit`, or streamed from files,
`msgfm.datasets.streaming.BenchmarkSplit`) is a map-style torch Dataset whose sample is a dict:

- ``image_<sensor>``: (C, H, W) float32 in normalised units (zeros where the chip is missing),
- ``bands_<sensor>``: its band names in channel order, ``present_<sensor>``: a 0-d bool tensor,
- the target under TorchGeo's key for its kind: ``label`` (multi-hot), ``mask`` (class per pixel) or
  ``target`` (an image, normalised),
- the georeference: ``crs`` (a CRS string) and ``bounds`` (minx, miny, maxx, maxy in that CRS), None where
  unknown, and ``id`` and ``index`` (the sample's name and its position in the split).

`collate_task` stacks samples into a `TaskBatch`; `split_loader` wraps a split in a DataLoader (workers
read and decode samples in parallel, so only a few batches are in memory at once).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler, SequentialSampler

from msgfm.datasets.worker_errors import clear_error_loader

TARGET_KEYS: tuple[str, ...] = ("label", "mask", "target")
"""Sample keys a target may have (TorchGeo's `label` and `mask`, and `target` for image-to-image tasks)."""

Sample = dict[str, Any]


class SplitLike(Protocol):
    """What training and evaluation need of a split: a length, its band names, and samples by index."""

    bands: dict[str, tuple[str, ...]]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


def target_key(target: torch.Tensor) -> str:
    """TorchGeo's key for a target: a vector per sample is a `label`, an integer map a `mask`, else a `target` image."""
    if target.ndim == 1:
        return "label"
    return "target" if target.is_floating_point() else "mask"


def make_sample(
    images: Mapping[str, torch.Tensor],
    bands: Mapping[str, Sequence[str]],
    present: Mapping[str, bool],
    target: torch.Tensor,
    *,
    sample_id: str,
    index: int,
    crs: str | None = None,
    bounds: tuple[float, float, float, float] | None = None,
) -> Sample:
    """One sample dict in the layout of this module's docstring."""
    sample: Sample = {}
    for sensor, image in images.items():
        sample[f"image_{sensor}"] = image
        sample[f"bands_{sensor}"] = tuple(bands[sensor])
        sample[f"present_{sensor}"] = torch.tensor(bool(present[sensor]))
    sample[target_key(target)] = target
    sample.update(crs=crs, bounds=bounds, id=sample_id, index=index)
    return sample


@dataclass
class TaskBatch:
    """Collated samples: per-sensor images and presence (sensors absent from every sample left out), targets."""

    images: dict[str, torch.Tensor]
    bands: dict[str, tuple[str, ...]]
    present: dict[str, torch.Tensor]
    target: torch.Tensor
    index: torch.Tensor
    ids: list[str]
    crs: list[str | None]
    bounds: list[tuple[float, float, float, float] | None]


def collate_task(samples: Sequence[Sample]) -> TaskBatch:
    """Stack sample dicts into a `TaskBatch`; the error names the sensor whose band lists differ."""
    first = samples[0]
    sensors = [key[len("image_") :] for key in first if key.startswith("image_")]
    images, bands, present = {}, {}, {}
    for sensor in sensors:
        names = {s[f"bands_{sensor}"] for s in samples}
        if len(names) != 1:
            raise ValueError(f"sensor {sensor!r}: samples in one batch carry different band lists {sorted(names)}")
        flags = torch.stack([s[f"present_{sensor}"] for s in samples])
        if not bool(flags.any()):
            continue
        images[sensor] = torch.stack([s[f"image_{sensor}"] for s in samples])
        bands[sensor], present[sensor] = names.pop(), flags
    key = next(k for k in TARGET_KEYS if k in first)
    return TaskBatch(
        images=images,
        bands=bands,
        present=present,
        target=torch.stack([s[key] for s in samples]),
        index=torch.tensor([int(s["index"]) for s in samples], dtype=torch.long),
        ids=[s["id"] for s in samples],
        crs=[s["crs"] for s in samples],
        bounds=[s["bounds"] for s in samples],
    )


class EndlessBatches(Sampler[list[int]]):
    """Endless training batches of sample indices: seeded permutations of 0..n-1, each batch full, carried across
    epochs (a batch may hold the end of one permutation and the start of the next)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed)
        order, cursor = torch.empty(0, dtype=torch.long), 0
        while True:
            if cursor + self.batch_size > len(order):
                order, cursor = torch.cat([order[cursor:], torch.randperm(self.n, generator=generator)]), 0
            yield order[cursor : cursor + self.batch_size].tolist()
            cursor += self.batch_size


def split_loader(
    split: SplitLike,
    batch_size: int = 32,
    *,
    batches: Sampler[list[int]] | None = None,
    workers: int = 0,
) -> DataLoader:
    """A DataLoader of `TaskBatch`es over `split`: `batches` (e.g. `EndlessBatches`), or every sample in order;
    an error in one of its `workers` is raised in the caller as itself (msgfm.datasets.worker_errors)."""
    sampler = batches if batches is not None else BatchSampler(SequentialSampler(split), batch_size, drop_last=False)
    return clear_error_loader(split, workers, batch_sampler=sampler, collate_fn=collate_task)
