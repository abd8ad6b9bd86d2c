"""A real benchmark's split streamed from its files: a torch Dataset of task samples, read one at a time.

`BenchmarkSplit` wraps a benchmark loader (msgfm.datasets.benchmarks) and a list of its sample indices
(the label budget for training). Each sample is read when asked for, its bands restricted to those of
the sensor registry, normalised like the chip store's, resized when `size` differs from the native one,
and returned as a TorchGeo-style dict (msgfm.datasets.loaders), so a DataLoader with workers streams a
benchmark of any size (BigEarthNet's 590k patches) with a few batches in memory. For pan-sharpening (`hpf`:
SpaceNet's WorldView MS) the low-resolution MS input is replaced by its HPF fusion with the PAN, the image the
residual head corrects, as on the embedded world.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from msgfm.datasets.loaders import Sample, make_sample
from msgfm.datasets.pansharpen import PAN_RATIO, hpf_fuse
from msgfm.sensors import get_sensor


class BenchmarkSplitError(ValueError):
    """A benchmark cannot be fed to a task model; the message names the benchmark and its input."""


def known_bands(ds: Any) -> dict[str, tuple[str, list[int], tuple[str, ...]]]:
    """Input key -> (sensor, channel indices, band names) of the bands of `ds` the sensor registry knows."""
    unsupported = [k for k, s in ds.inputs.items() if s is None]
    if unsupported:
        raise BenchmarkSplitError(
            f"benchmark {ds.name}: inputs {unsupported} are not sensors of the registry (msgfm.sensors); "
            "fine-tuning on it is not supported yet"
        )
    keep = {}
    for key, sensor in ds.inputs.items():
        known = get_sensor(sensor).band_names
        names = [b for b in ds.band_names[key] if b in known]
        if not names:
            raise BenchmarkSplitError(f"benchmark {ds.name}: input {key!r} has no band of sensor {sensor!r} ({known})")
        keep[key] = (sensor, [list(ds.band_names[key]).index(b) for b in names], tuple(names))
    return keep


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(C, H, W) at `size` (bilinear with antialiasing, or nearest for labels); unchanged when it is already."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    kwargs = {"antialias": True, "align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(x[None], size=size, mode=mode, **kwargs)[0]


def hpf_input(ds: Any, raw: Sample, sensor: str, sample_id: str) -> Sample:
    """Raw sample `raw` of `ds` with its `sensor` (MS) input replaced by its HPF fusion with the other (PAN) input
    (msgfm.datasets.pansharpen.hpf_fuse) at the PAN's size, clamped to the sensor's range; the PAN must be PAN_RATIO x
    the MS."""
    ms_key = next(k for k, s in ds.inputs.items() if s == sensor)
    pan_key = next(k for k in ds.inputs if k != ms_key)
    ms, pan = raw[ms_key], raw[pan_key]
    if tuple(pan.shape[-2:]) != tuple(d * PAN_RATIO for d in ms.shape[-2:]):
        raise BenchmarkSplitError(
            f"benchmark {ds.name} sample {sample_id}: PAN {tuple(pan.shape[-2:])} px is not {PAN_RATIO} x the MS "
            f"{tuple(ms.shape[-2:])} px; pan-sharpening here assumes WorldView's ratio {PAN_RATIO}"
        )
    fused = hpf_fuse(ms[None].float(), pan[None].float())[0].clamp(0.0, get_sensor(sensor).full_scale)
    return {**raw, ms_key: fused}


class BenchmarkSplit(torch.utils.data.Dataset):
    """Samples `index` of benchmark dataset `ds` as task samples at `size`, for a task of `kind` (TaskSpec.kind);
    `out_sensor`/`out_bands` name the normalisation of an image target, `hpf` the input fused with the PAN."""

    def __init__(
        self,
        ds: Any,
        index: Sequence[int] | np.ndarray,
        size: tuple[int, int],
        kind: str,
        out_sensor: str | None = None,
        out_bands: tuple[str, ...] = (),
        hpf: str | None = None,
    ) -> None:
        self.ds, self.size, self.kind = ds, (int(size[0]), int(size[1])), kind
        self.index = np.asarray(index, dtype=np.int64)
        self.out_sensor, self.out_bands, self.hpf = out_sensor, tuple(out_bands), hpf
        self.keep = known_bands(ds)
        self.bands: dict[str, tuple[str, ...]] = {sensor: names for sensor, _, names in self.keep.values()}

    def __len__(self) -> int:
        return len(self.index)

    def _target(self, target: torch.Tensor) -> torch.Tensor:
        """The target at `size`: multi-hot as is, a mask by nearest neighbour, an image normalised and resampled."""
        if self.kind == "multilabel":
            return target.float()
        if self.kind == "segmentation":
            return resize(target[None].float(), self.size, "nearest")[0].long()
        names = list(self.ds.band_names[self.ds.target_key])
        pixels = target[[names.index(b) for b in self.out_bands]].numpy()
        normalised = get_sensor(self.out_sensor).normalise(pixels, self.out_bands)
        return resize(torch.from_numpy(np.ascontiguousarray(normalised)), self.size, "bilinear")

    def __getitem__(self, i: int) -> Sample:
        """Read, normalise and resize sample `i` of the split (sample `index[i]` of the benchmark)."""
        raw = self.ds[int(self.index[i])]
        sample_id = str(raw.get("id", int(self.index[i])))
        if self.hpf is not None:
            raw = hpf_input(self.ds, raw, self.hpf, sample_id)
        images = {}
        for key, (sensor, channels, names) in self.keep.items():
            pixels = get_sensor(sensor).normalise(raw[key][channels].numpy(), names)
            images[sensor] = resize(torch.from_numpy(np.ascontiguousarray(pixels)), self.size, "bilinear")
        bounds = raw.get("bounds")
        return make_sample(
            images,
            self.bands,
            dict.fromkeys(images, True),
            self._target(raw[self.ds.target_key]),
            sample_id=sample_id,
            index=i,
            crs=raw.get("crs"),
            bounds=tuple(float(v) for v in bounds) if bounds is not None else None,
        )

    def only(self, sensors: Sequence[str]) -> BenchmarkSplit:
        """The same samples with only the inputs of `sensors`."""
        kept = copy.copy(self)
        kept.keep = {k: v for k, v in self.keep.items() if v[0] in sensors}
        kept.bands = {s: b for s, b in self.bands.items() if s in sensors}
        return kept

    def fingerprint(self) -> str:
        """SHA-256 over what identifies the samples without reading them: benchmark, root, split, indices, size."""
        digest = hashlib.sha256()
        digest.update(f"{self.ds.name}|{self.ds.root.resolve()}|{self.ds.split}|{self.size}|{self.kind}".encode())
        if self.hpf is not None:
            digest.update(f"|hpf {self.hpf}".encode())
        digest.update(repr(sorted(self.bands.items())).encode())
        digest.update(self.index.tobytes())
        digest.update(str(len(self.ds)).encode())
        return digest.hexdigest()
