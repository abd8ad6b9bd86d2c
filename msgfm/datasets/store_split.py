"""A chip-store task split read when asked: which chips make each sample in memory, their pixels in the store.

`StoreSplit` holds, per sample, the store index of its anchor chip, of its partner (-1: missing modality) and of
its target (the clear chip of cloud removal, the fine-grid label chip of segmentation; classification's multi-hot
labels are kept as they are). `take` reads any samples in one vectorised pass into a `TaskSplit` (the in-memory
split; `materialise` reads them all), `__getitem__` reads one, so a DataLoader with workers streams a store of any
size with a few batches in memory (`finetune.stream_chips`). Pixels come from the memory-mapped shards
(msgfm.chips.store), so a streamed and a materialised split give identical samples.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from msgfm.chips.store import MANIFEST_HASH_KEY, ChipStore
from msgfm.datasets.loaders import Sample
from msgfm.datasets.pansharpen import wald_pansharpening_input
from msgfm.datasets.tasks import PAN_BANDS, REFLECTANCE_SCALE, TaskSplit
from msgfm.sensors import get_sensor


def _rows(array: np.ndarray | None, pos: np.ndarray) -> np.ndarray | None:
    return None if array is None else array[pos]


@dataclass
class StoreSplit(torch.utils.data.Dataset):
    """Samples of one split of `task` as store indices: `anchor` chips of `anchor_sensor` (with `partner` chips of
    `partner_sensor`, -1 where absent), `target_index` rows (cloud removal: S2 chips; segmentation: fine label
    chips, mapped to classes by `lookup`) or `labels` (classification's multi-hot rows)."""

    store: ChipStore
    task: str
    anchor_sensor: str
    anchor: np.ndarray
    partner_sensor: str | None = None
    partner: np.ndarray | None = None
    target_index: np.ndarray | None = None
    labels: torch.Tensor | None = None
    lookup: np.ndarray | None = None
    ids: list[str] = field(default_factory=list)
    crs: list[str] = field(default_factory=list)
    bounds: list[tuple[float, float, float, float]] = field(default_factory=list)
    inputs: tuple[str, ...] = ()
    """The sensors fed to the model (`only` narrows them); empty: the anchor and its partner."""

    def __post_init__(self) -> None:
        if not self.inputs:
            self.inputs = tuple(s for s in (self.anchor_sensor, self.partner_sensor) if s is not None)

    def __len__(self) -> int:
        return len(self.anchor)

    @property
    def bands(self) -> dict[str, tuple[str, ...]]:
        """Band names of each input, in channel order."""
        if self.task == "pansharpening":
            return {self.anchor_sensor: PAN_BANDS}
        return {s: self.store.bands(s) for s in self.inputs}

    def take(self, index: Sequence[int] | np.ndarray) -> TaskSplit:
        """Samples `index` read from the store, in that order, as an in-memory TaskSplit."""
        pos = np.asarray(index, dtype=np.int64).reshape(-1)
        anchor = self.anchor[pos]
        if self.task == "pansharpening":
            images, target = self._pansharpening(anchor)
            present = {self.anchor_sensor: torch.ones(len(pos), dtype=torch.bool)}
        else:
            images, present = self._images(anchor, _rows(self.partner, pos))
            target = self._target(pos)
        return TaskSplit(
            {s: images[s] for s in self.inputs},
            self.bands,
            {s: present[s] for s in self.inputs},
            target,
            [self.ids[i] for i in pos.tolist()] if self.ids else [],
            [self.crs[i] for i in pos.tolist()] if self.crs else [],
            [self.bounds[i] for i in pos.tolist()] if self.bounds else [],
        )

    def _images(
        self, anchor: np.ndarray, partner: np.ndarray | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Anchor and partner chips (zeros where the partner is absent) and their presence flags."""
        n = len(anchor)
        images = {self.anchor_sensor: torch.from_numpy(self.store.read(self.anchor_sensor, anchor.tolist()))}
        present = {self.anchor_sensor: torch.ones(n, dtype=torch.bool)}
        if self.partner_sensor is not None and partner is not None:
            px = self.store.chip_px
            other = torch.zeros(n, len(self.store.bands(self.partner_sensor)), px, px)
            has = partner >= 0
            if has.any():
                other[torch.from_numpy(has)] = torch.from_numpy(
                    self.store.read(self.partner_sensor, partner[has].tolist())
                )
            images[self.partner_sensor], present[self.partner_sensor] = other, torch.from_numpy(has)
        return images, present

    def _target(self, pos: np.ndarray) -> torch.Tensor:
        if self.task == "classification":
            assert self.labels is not None
            return self.labels[torch.from_numpy(pos)]
        assert self.target_index is not None
        rows = self.target_index[pos].tolist()
        if self.task == "cloud_removal":
            return torch.from_numpy(self.store.read("s2", rows))
        assert self.lookup is not None
        return torch.from_numpy(self.lookup[self.store.labels("fine", rows)])

    def _pansharpening(self, anchor: np.ndarray) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Wald's protocol on the anchors' 10 m bands: the HPF-fused input and the original bands, normalised."""
        sensor = get_sensor(self.anchor_sensor)
        order = [self.store.bands(self.anchor_sensor).index(b) for b in PAN_BANDS]
        raw = self.store.raw(self.anchor_sensor, anchor.tolist())[:, order].astype(np.float32)
        fused = wald_pansharpening_input(torch.from_numpy(raw / REFLECTANCE_SCALE)).clamp(0.0, 1.0)
        images = {self.anchor_sensor: torch.from_numpy(sensor.normalise(fused.numpy() * REFLECTANCE_SCALE, PAN_BANDS))}
        return images, torch.from_numpy(sensor.normalise(raw, PAN_BANDS))

    def __getitem__(self, index: int) -> Sample:
        """Sample `index` read from the store, as a TorchGeo-style dict (msgfm.datasets.loaders)."""
        sample = self.take([index])[0]
        return {**sample, "index": index}

    def materialise(self) -> TaskSplit:
        """Every sample read into memory."""
        return self.take(np.arange(len(self)))

    def subset(self, index: Sequence[int] | np.ndarray) -> StoreSplit:
        """The samples at `index`, in that order, still unread."""
        pos = np.asarray(index, dtype=np.int64).reshape(-1)
        pick = pos.tolist()
        return dataclasses.replace(
            self,
            anchor=self.anchor[pos],
            partner=_rows(self.partner, pos),
            target_index=_rows(self.target_index, pos),
            labels=None if self.labels is None else self.labels[torch.from_numpy(pos)],
            ids=[self.ids[i] for i in pick] if self.ids else [],
            crs=[self.crs[i] for i in pick] if self.crs else [],
            bounds=[self.bounds[i] for i in pick] if self.bounds else [],
        )

    def only(self, sensors: Sequence[str]) -> StoreSplit:
        """The same samples with only the inputs of `sensors` (the others left out, not zero-filled)."""
        return dataclasses.replace(self, inputs=tuple(s for s in self.inputs if s in sensors))

    def fingerprint(self) -> str:
        """SHA-256 over what identifies the samples without reading their pixels: the store's manifest hash (the
        manifest carries every chip's mean and std), the task, the inputs and every index."""
        digest = hashlib.sha256()
        digest.update(f"{self.store.index.get(MANIFEST_HASH_KEY)}|{self.task}|{self.inputs}".encode())
        for part in (self.anchor, self.partner, self.target_index, self.lookup):
            digest.update(b"-" if part is None else np.ascontiguousarray(part).tobytes())
        if self.labels is not None:
            digest.update(self.labels.numpy().tobytes())
        return digest.hexdigest()
