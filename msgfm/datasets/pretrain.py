"""Pretraining batches from the chip store: sensors mixed in set proportions, paired chips together.

A batch is drawn as a series of picks: a sensor chosen by `pretrain.sensor_mix`, then one of its
accepted chips; a chip with an accepted partner (S1 with S2, RGB with DSM) brings the partner along,
so the model can reconstruct one sensor from the other. Unpaired chips are single-sensor samples.
Flips and 90-degree rotations are drawn per pick and applied identically to both chips of a pair.
Each Ray worker reads its own shard: chip positions are hashed to ranks, so partners stay together.
Chips of the held-out AOIs (`finetune.holdout_aois`) are left out when `pretrain.exclude_holdout_aois`
(the default), so the generalisation test's biome is unseen by pretraining as well as by fine-tuning.
`pretrain_loader` streams the batches of steps `start..steps` through a DataLoader (`pretrain.loader_workers`
processes read and augment ahead of the training step); batch `step` is drawn from a generator seeded by
(seed, rank, step) alone, so any number of workers, and a resumed run, give the same batches.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from msgfm.chips.store import ChipStore, ChipStoreError, open_accepted
from msgfm.config import Params
from msgfm.datasets.collate import collate_multisensor
from msgfm.datasets.worker_errors import clear_error_loader
from msgfm.decisions import gate_table


class PretrainDataError(RuntimeError):
    """The accepted chips cannot feed pretraining; the message names the file or what is missing."""


@dataclass
class PretrainChips:
    """The accepted chips of one split (and one worker's shard) that pretraining draws from."""

    store: ChipStore
    rows: pd.DataFrame
    sensors: tuple[str, ...]
    mix: dict[str, float]
    _by_sensor: dict[str, np.ndarray] = field(init=False)
    _partner_row: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.rows = self.rows.reset_index(drop=True)
        self._by_sensor = {s: np.flatnonzero(self.rows["sensor"].to_numpy() == s) for s in self.sensors}
        self._by_sensor = {s: idx for s, idx in self._by_sensor.items() if len(idx)}
        position = {chip_id: i for i, chip_id in enumerate(self.rows["id"])}
        self._partner_row = np.array([position.get(p, -1) for p in self.rows["partner_id"]], dtype=np.int64)

    @property
    def present(self) -> tuple[str, ...]:
        """Sensors that have at least one chip here."""
        return tuple(self._by_sensor)

    def __len__(self) -> int:
        return len(self.rows)

    def _picks(self, rng: np.random.Generator, batch_size: int) -> list[int]:
        sensors = list(self._by_sensor)
        weights = np.array([self.mix[s] for s in sensors], dtype=np.float64)
        weights /= weights.sum()
        picks, chips = [], 0
        while chips < batch_size:
            sensor = sensors[rng.choice(len(sensors), p=weights)]
            row = int(rng.choice(self._by_sensor[sensor]))
            picks.append(row)
            chips += 1 + (self._partner_row[row] >= 0)
        return picks

    def _batch(self, picks: list[int], transforms: list[tuple[int, bool]]) -> dict[str, Any]:
        """Read the picked chips (and their partners) and collate them into the model's batch format."""
        entries: list[tuple[int, int, bool]] = []  # (row, pick number, comes with a partner)
        for n, row in enumerate(picks):
            partner = int(self._partner_row[row])
            entries.append((row, n, partner >= 0))
            if partner >= 0:
                entries.append((partner, n, True))
        sensors = self.rows["sensor"].to_numpy()
        store_index = self.rows["store_index"].to_numpy()
        samples: list[dict[str, Any]] = []
        for sensor in self._by_sensor:
            mine = [e for e in entries if sensors[e[0]] == sensor]
            if not mine:
                continue
            pixels = self.store.read(sensor, [int(store_index[e[0]]) for e in mine])
            bands = self.store.bands(sensor)
            for (_, pick, paired), image in zip(mine, pixels, strict=True):
                k, flip = transforms[pick]
                image = np.rot90(image, k, axes=(1, 2))
                if flip:
                    image = image[:, :, ::-1]
                samples.append(
                    {
                        "sensor": sensor,
                        "image": np.ascontiguousarray(image),
                        "bands": bands,
                        "pair": pick if paired else None,
                    }
                )
        return dict(collate_multisensor(samples))

    def sample_batch(self, rng: np.random.Generator, batch_size: int, augment: bool = True) -> dict[str, Any]:
        """A random batch of about `batch_size` chips (a pair may add one over)."""
        picks = self._picks(rng, batch_size)
        transforms = [(int(rng.integers(4)), bool(rng.random() < 0.5)) if augment else (0, False) for _ in picks]
        return self._batch(picks, transforms)

    def fixed_batch(self, n_chips: int) -> dict[str, Any]:
        """A deterministic batch: up to `n_chips` chips per sensor, paired chips first, with their partners."""
        picks: list[int] = []
        taken: set[int] = set()
        for idx in self._by_sensor.values():
            order = sorted(idx, key=lambda r: (self._partner_row[r] < 0, self.rows.at[r, "id"]))
            chosen = [r for r in order if r not in taken][:n_chips]
            picks.extend(chosen)
            taken.update(chosen)
            taken.update(int(self._partner_row[r]) for r in chosen if self._partner_row[r] >= 0)
        return self._batch(picks, [(0, False)] * len(picks))

    def band_means(self, max_chips: int = 256) -> dict[str, torch.Tensor]:
        """Per-band mean of the normalised chips of each sensor: what a mean predictor outputs."""
        means = {}
        for sensor, idx in self._by_sensor.items():
            rows = idx[np.linspace(0, len(idx) - 1, min(max_chips, len(idx))).astype(int)]
            pixels = self.store.read(sensor, self.rows["store_index"].to_numpy()[rows].tolist())
            means[sensor] = torch.from_numpy(pixels.mean(axis=(0, 2, 3)))
        return means


def step_rng(seed: int, rank: int, step: int) -> np.random.Generator:
    """The generator batch `step` of worker `rank` is drawn with: a pure function of (seed, rank, step)."""
    return np.random.default_rng(np.random.SeedSequence([seed, rank, step]))


class PretrainBatches(IterableDataset):
    """Batches of steps `start..stop` drawn from `chips`; DataLoader worker w of k yields steps start + w, + k, ...
    (the DataLoader takes one from each worker in turn, so batches arrive in step order)."""

    def __init__(
        self, chips: PretrainChips, seed: int, rank: int, batch_size: int, augment: bool, start: int, stop: int
    ) -> None:
        super().__init__()
        self.chips, self.seed, self.rank = chips, seed, rank
        self.batch_size, self.augment, self.start, self.stop = batch_size, augment, start, stop

    def __iter__(self):  # noqa: ANN204 - an iterator of batch dicts
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for step in range(self.start + worker, self.stop, workers):
            yield self.chips.sample_batch(step_rng(self.seed, self.rank, step), self.batch_size, self.augment)


def pretrain_loader(chips: PretrainChips, params: Params, rank: int, start: int = 0) -> DataLoader:
    """A DataLoader of the batches of steps `start..pretrain.steps` of worker `rank`, read by
    `pretrain.loader_workers` processes (0: in the training process)."""
    cfg = params.pretrain
    batches = PretrainBatches(chips, params.seed, rank, cfg.batch_size, cfg.augment, start, cfg.steps)
    workers = min(cfg.loader_workers, max(0, cfg.steps - start))
    return clear_error_loader(batches, workers, batch_size=None)


def _shard_of(rows: pd.DataFrame, world: int) -> np.ndarray:
    """Rank of each chip: a hash of its position, so chips of one place (and partners) share a worker."""
    keys = rows["aoi"].astype(str) + "/" + rows["grid"].astype(str) + "/" + rows["row"].astype(str)
    keys = keys + "/" + rows["col"].astype(str)
    return np.array([zlib.crc32(k.encode()) % world for k in keys], dtype=np.int64)


def load_pretrain_chips(params: Params, split: str, rank: int = 0, world: int = 1) -> PretrainChips:
    """The accepted chips of `split` for the pretrained sensors, restricted to worker `rank` of `world`."""
    cfg = params.pretrain
    try:
        store, rows = open_accepted(cfg.chips_dir, cfg.manifest, gate_table(params.gates.dir, "pairs"))
    except ChipStoreError as e:
        raise PretrainDataError(str(e)) from None
    rows = rows[rows["sensor"].isin(cfg.sensors)]
    rows = rows[rows["split"] == split]
    held = list(params.finetune.holdout_aois) if cfg.exclude_holdout_aois else []
    rows = rows[~rows["aoi"].isin(held)]
    if world > 1:
        rows = rows[_shard_of(rows, world) == rank]
    if rows.empty:
        raise PretrainDataError(
            f"{cfg.manifest}: no accepted {split!r} chips of sensors {list(cfg.sensors)}"
            + (f" outside the held-out AOIs {held} (pretrain.exclude_holdout_aois)" if held else "")
            + (f" for worker {rank} of {world}" if world > 1 else "")
        )
    absent = [s for s in cfg.sensors if s not in set(rows["sensor"]) and s in store.sensors]
    if absent and split == "train":
        raise PretrainDataError(f"{cfg.manifest}: no accepted train chips of sensors {absent} (check the gates)")
    return PretrainChips(store=store, rows=rows, sensors=tuple(cfg.sensors), mix=dict(cfg.sensor_mix))
