"""Loaders for the real downstream benchmarks, reading each publisher's layout from a local folder.

`create_benchmark("bigearthnet", root, "train")` returns a torch Dataset whose samples are dicts of
tensors keyed by msgfm sensor name ("s1", "s2", "rgb", "dsm"; "pan"/"ms" for pan-sharpening) plus the
target. Each class says which task it serves (`task`), which keys are inputs and of which sensor
(`inputs`), the target key (`target_key`) and the band names per key (`band_names`), so
`msgfm finetune --benchmark NAME --root PATH` can run on the real data. See docs/benchmarks.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msgfm.datasets.benchmarks._common import BenchmarkDataError, BenchmarkDataset
from msgfm.datasets.benchmarks.bigearthnet import BigEarthNet
from msgfm.datasets.benchmarks.sen12ms_cr import SEN12MSCR
from msgfm.datasets.benchmarks.spacenet import SpaceNetPansharpen
from msgfm.datasets.benchmarks.vaihingen import Vaihingen

BENCHMARKS: dict[str, type[BenchmarkDataset]] = {
    "bigearthnet": BigEarthNet,
    "sen12ms_cr": SEN12MSCR,
    "spacenet_pansharpen": SpaceNetPansharpen,
    "vaihingen": Vaihingen,
}
"""Benchmark name -> dataset class."""


def create_benchmark(name: str, root: str | Path, split: str = "train", **kwargs: Any) -> BenchmarkDataset:
    """Build the benchmark dataset `name` over the data at `root`; keyword arguments go to its class."""
    try:
        cls = BENCHMARKS[name]
    except KeyError:
        raise BenchmarkDataError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}") from None
    return cls(root, split, **kwargs)


__all__ = [
    "BENCHMARKS",
    "BenchmarkDataError",
    "BenchmarkDataset",
    "BigEarthNet",
    "SEN12MSCR",
    "SpaceNetPansharpen",
    "Vaihingen",
    "create_benchmark",
]
