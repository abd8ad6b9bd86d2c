"""The four downstream tasks built on the embedded world's chip store, as in-memory tensors.

A `TaskSplit` is also a map-style torch Dataset of TorchGeo-style sample dicts (msgfm.datasets.loaders), so
training and evaluation batch it through a DataLoader like the streamed benchmark splits.

Each task is a `TaskSpec` (inputs, target, loss, metrics) and `build_task_data` turns the accepted
chips of the manifest into `TaskSplit`s (train, val, test, and the generalisation sets):

- classification (BigEarthNet-like, multi-label): a clear S2 chip and its paired S1 chip (absent for
  S2 chips without a partner: a missing modality) -> the WorldCover classes present in the chip.
- cloud_removal (SEN12MS-CR-like): a cloudy S2 chip (cloud_fraction > 0) and the S1 chip at the same place
  closest in time to it (at most `pair.max_days` apart; absent otherwise) ->
  the clear S2 chip at the same position acquired next (the simulator gives every cloudy date a
  clear date `simulate.clear_partner_days` later); metrics on reflectance 0..1 (all 12 L2A bands).
- pansharpening, Wald's protocol built from S2: the 10 m bands B02, B03, B04, B08 of a clear chip
  are the reference; MS is that image degraded by 4 (block mean) and PAN is the mean of the four
  bands at 10 m. The encoder has no PAN band, so PAN enters as high-pass detail injected into the
  bicubically upsampled MS (MS_up + PAN - PAN_low, Schowengerdt's HPF fusion) and the network
  predicts a residual correction of that image; metrics on reflectance 0..1 against the original.
- segmentation (Vaihingen-like): an RGB chip and its paired DSM chip (missing where unpaired) ->
  WorldCover classes per pixel on the fine grid; code 0 (unknown) is ignored.

Classes are the WorldCover codes present in the task's training chips (so no metric averages over a
class that cannot occur); their codes are saved with every checkpoint, and the classes of a held-out set
that training lacks are listed in `TaskData.absent`. Sets (msgfm.datasets.holdouts): train/val/test, the
held-out AOIs (`finetune.holdout_aois`, never in train/val) and the later dates (val/test chips dated after
`finetune.train_until`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from msgfm.chips.store import ChipStore, ChipStoreError, open_accepted
from msgfm.datasets.holdouts import absent_classes, partition
from msgfm.datasets.loaders import Sample, make_sample
from msgfm.decisions import gate_table
from msgfm.metrics import (
    TaskMetrics,
    classification_metrics,
    cloud_removal_metrics,
    pansharpening_metrics,
    segmentation_metrics,
)
from msgfm.sensors import S2_L2A_BANDS, SENTINEL2, get_sensor

if TYPE_CHECKING:
    from msgfm.config import Params

TASKS: tuple[str, ...] = ("classification", "cloud_removal", "pansharpening", "segmentation")
"""The four downstream tasks, in the order stages and reports list them."""

PAN_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08")
"""The 10 m S2 bands that form the MS image (and, averaged, the PAN image) of pan-sharpening."""
PAN_RATIO = 4
"""Resolution ratio of Wald's protocol here: MS is degraded by 4 (10 m -> 40 m)."""
IGNORE_INDEX = 255
"""Segmentation target value of unknown pixels (WorldCover code 0), ignored by loss and metrics."""
REFLECTANCE_SCALE = SENTINEL2.full_scale
"""S2 digital numbers per unit reflectance."""


class TaskDataError(RuntimeError):
    """A task cannot be built from the chips; the message names the file or what is missing."""


@dataclass(frozen=True)
class TaskSpec:
    """What a task feeds the network and how its output is scored."""

    name: str
    inputs: tuple[str, ...]
    kind: str  # "multilabel", "image", "segmentation"
    out_sensor: str | None = None
    out_bands: tuple[str, ...] = ()
    residual: str | None = None
    grid: str = "s10"

    def metrics(self, num_classes: int) -> TaskMetrics:
        """A fresh metrics collection for this task."""
        if self.name == "classification":
            return classification_metrics(num_classes)
        if self.name == "cloud_removal":
            return cloud_removal_metrics(1.0)
        if self.name == "pansharpening":
            return pansharpening_metrics(PAN_RATIO, 1.0)
        return segmentation_metrics(num_classes, ignore_index=IGNORE_INDEX)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Training loss: BCE (multi-label), cross-entropy (segmentation), L1 in normalised units (images)."""
        if self.kind == "multilabel":
            return F.binary_cross_entropy_with_logits(output, target)
        if self.kind == "segmentation":
            return F.cross_entropy(output, target.long(), ignore_index=IGNORE_INDEX)
        return F.l1_loss(output, target)

    def to_metric_space(self, output: torch.Tensor) -> torch.Tensor:
        """Network output (or a target) -> what the metrics take: image tasks in 0..1 (value / sensor full_scale)."""
        if self.kind != "image":
            return output
        sensor = get_sensor(self.out_sensor)
        mean, std = sensor.stats(self.out_bands)
        mean_t = torch.as_tensor(mean, dtype=output.dtype, device=output.device)[:, None, None]
        std_t = torch.as_tensor(std, dtype=output.dtype, device=output.device)[:, None, None]
        return ((output * std_t + mean_t) / sensor.full_scale).clamp(0.0, 1.0)


TASK_SPECS: dict[str, TaskSpec] = {
    "classification": TaskSpec("classification", ("s2", "s1"), "multilabel"),
    "cloud_removal": TaskSpec(
        "cloud_removal", ("s2", "s1"), "image", out_sensor="s2", out_bands=S2_L2A_BANDS, residual="s2"
    ),
    "pansharpening": TaskSpec("pansharpening", ("s2",), "image", out_sensor="s2", out_bands=PAN_BANDS, residual="s2"),
    "segmentation": TaskSpec("segmentation", ("rgb", "dsm"), "segmentation", grid="fine"),
}
"""Task name -> spec."""


def get_task(name: str) -> TaskSpec:
    """The spec of task `name`; the error lists the known tasks."""
    try:
        return TASK_SPECS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; tasks are {list(TASKS)}") from None


@dataclass
class TaskSplit:
    """Samples of one split in memory: per-sensor images (normalised), presence flags, targets, chip ids and
    georeference (each chip's CRS and bounds, empty where unknown)."""

    images: dict[str, torch.Tensor]
    bands: dict[str, tuple[str, ...]]
    present: dict[str, torch.Tensor]
    target: torch.Tensor
    ids: list[str] = field(default_factory=list)
    crs: list[str] = field(default_factory=list)
    bounds: list[tuple[float, float, float, float]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def __getitem__(self, index: int) -> Sample:
        """Sample `index` as a TorchGeo-style dict (msgfm.datasets.loaders)."""
        return make_sample(
            {s: x[index] for s, x in self.images.items()},
            self.bands,
            {s: bool(p[index]) for s, p in self.present.items()},
            self.target[index],
            sample_id=self.ids[index] if self.ids else str(index),
            index=index,
            crs=self.crs[index] if self.crs else None,
            bounds=self.bounds[index] if self.bounds else None,
        )

    def subset(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> TaskSplit:
        """The samples at `index`, in that order."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return TaskSplit(
            images={s: x[idx] for s, x in self.images.items()},
            bands=dict(self.bands),
            present={s: p[idx] for s, p in self.present.items()},
            target=self.target[idx],
            ids=[self.ids[i] for i in idx.tolist()] if self.ids else [],
            crs=[self.crs[i] for i in idx.tolist()] if self.crs else [],
            bounds=[self.bounds[i] for i in idx.tolist()] if self.bounds else [],
        )

    def only(self, sensors: Sequence[str]) -> TaskSplit:
        """The same samples with only the inputs of `sensors` (the others left out, not zero-filled)."""
        keep = [s for s in self.images if s in sensors]
        return dataclasses.replace(
            self,
            images={s: self.images[s] for s in keep},
            bands={s: self.bands[s] for s in keep},
            present={s: self.present[s] for s in keep},
        )

    def batch(self, index: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """(images, present, target) of the samples at `index`; sensors absent from every sample are left out."""
        present = {s: p[index] for s, p in self.present.items()}
        keep = [s for s in self.images if bool(present[s].any())]
        return {s: self.images[s][index] for s in keep}, {s: present[s] for s in keep}, self.target[index]


@dataclass
class TaskData:
    """A task's splits plus what a checkpoint must remember to read its outputs (class codes)."""

    spec: TaskSpec
    splits: dict[str, TaskSplit]  # or, for a real benchmark, streamed splits (msgfm.datasets.streaming)
    class_codes: tuple[int, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)
    absent: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Per held-out set, the classes it holds that no training chip has (msgfm.datasets.holdouts.absent_classes)."""

    @property
    def num_classes(self) -> int:
        return len(self.class_codes)

    def only(self, sensors: Sequence[str]) -> TaskData | str:
        """The task fed only the inputs an encoder has trained embeddings for (`sensors`), or why it cannot
        run on them (none of its inputs, or not the sensor its output corrects)."""
        kept = tuple(s for s in self.spec.inputs if s in sensors)
        if kept == self.spec.inputs:
            return self
        if not kept or (self.spec.residual and self.spec.residual not in kept):
            return (
                f"{self.spec.name} needs {list(self.spec.inputs)}; the encoder was pretrained on {list(sensors)} only"
            )
        dropped = [s for s in self.spec.inputs if s not in kept]
        notes = {**self.notes, "inputs": f"{dropped} left out: the encoder has no trained embedding for them"}
        return TaskData(
            dataclasses.replace(self.spec, inputs=kept),
            {name: split.only(kept) for name, split in self.splits.items()},
            self.class_codes,
            notes,
            self.absent,
        )


def label_budget(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of round(fraction * n) (at least 1) of n samples, drawn without replacement with `seed`."""
    if n <= 0:
        raise TaskDataError("no training samples to draw a label budget from")
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    k = min(n, max(1, int(round(fraction * n))))
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


# ----------------------------------------------------------------------------------------------
# reading the accepted chips


def accepted_chips(params: Params) -> tuple[ChipStore, pd.DataFrame]:
    """The chip store and the manifest rows of the chips validate_pairs accepted."""
    cfg = params.finetune
    try:
        store, rows = open_accepted(cfg.chips_dir, cfg.manifest, gate_table(params.gates.dir, "pairs"))
    except ChipStoreError as e:
        raise TaskDataError(str(e)) from None
    rows["day"] = pd.to_datetime(rows["date"]).dt.date
    return store, rows.reset_index(drop=True)


def _partner_rows(rows: pd.DataFrame, anchors: pd.DataFrame, sensor: str) -> np.ndarray:
    """Store index of each anchor's accepted partner chip of `sensor`, -1 where it has none."""
    mine = rows[rows["sensor"] == sensor]
    index = dict(zip(mine["id"], mine["store_index"], strict=True))
    pairs = zip(anchors["partner_id"], anchors["partner_sensor"], strict=True)
    out = [int(index.get(p, -1)) if ps == sensor else -1 for p, ps in pairs]
    return np.array(out, dtype=np.int64)


def _read_with_partner(
    store: ChipStore, anchors: pd.DataFrame, anchor_sensor: str, partner_sensor: str, partner: np.ndarray
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, ...]], dict[str, torch.Tensor]]:
    """Images, bands and presence flags of anchor chips and their partners (zeros where absent)."""
    anchor = torch.from_numpy(store.read(anchor_sensor, anchors["store_index"].tolist()))
    n = len(anchors)
    bands = {anchor_sensor: store.bands(anchor_sensor), partner_sensor: store.bands(partner_sensor)}
    other = torch.zeros(n, len(bands[partner_sensor]), store.chip_px, store.chip_px)
    has = partner >= 0
    if has.any():
        other[torch.from_numpy(has)] = torch.from_numpy(store.read(partner_sensor, partner[has].tolist()))
    present = {anchor_sensor: torch.ones(n, dtype=torch.bool), partner_sensor: torch.from_numpy(has)}
    return {anchor_sensor: anchor, partner_sensor: other}, bands, present


def _georef(anchors: pd.DataFrame) -> dict[str, list]:
    """TaskSplit's georeference fields from manifest rows: each chip's CRS and bounds (empty without those columns)."""
    if not {"crs", "minx", "miny", "maxx", "maxy"} <= set(anchors.columns):
        return {}
    corners = anchors[["minx", "miny", "maxx", "maxy"]].to_numpy(dtype=float)
    return {"crs": [str(c) for c in anchors["crs"]], "bounds": [tuple(map(float, b)) for b in corners]}


def _classification(store: ChipStore, rows: pd.DataFrame, anchors: pd.DataFrame, codes: tuple[int, ...]) -> TaskSplit:
    images, bands, present = _read_with_partner(store, anchors, "s2", "s1", _partner_rows(rows, anchors, "s1"))
    target = torch.zeros(len(anchors), len(codes))
    for i, labels in enumerate(anchors["labels"]):
        for code in labels:
            if int(code) in codes:
                target[i, codes.index(int(code))] = 1.0
    return TaskSplit(images, bands, present, target, list(anchors["id"]), **_georef(anchors))


def nearest_in_time(rows: pd.DataFrame, anchors: pd.DataFrame, sensor: str, max_days: int) -> np.ndarray:
    """Store index of the `sensor` chip at each anchor's place closest in time (at most `max_days`), -1 if none."""
    key = ["aoi", "grid", "row", "col"]
    other = rows.loc[rows["sensor"] == sensor, [*key, "day", "store_index"]]
    joined = anchors[[*key, "day"]].reset_index(drop=True).reset_index(names="anchor")
    joined = joined.merge(other, on=key, suffixes=("", "_other"))
    joined["gap"] = (pd.to_datetime(joined["day_other"]) - pd.to_datetime(joined["day"])).dt.days.abs()
    joined = joined[joined["gap"] <= max_days].sort_values(["anchor", "gap", "day_other"])
    joined = joined.drop_duplicates("anchor")
    out = np.full(len(anchors), -1, dtype=np.int64)
    out[joined["anchor"].to_numpy(dtype=np.int64)] = joined["store_index"].to_numpy(dtype=np.int64)
    return out


def _cloud_removal(store: ChipStore, rows: pd.DataFrame, anchors: pd.DataFrame, max_days: int) -> TaskSplit:
    # the S1 chip closest in time to the cloudy acquisition, as SEN12MS-CR pairs them: pairing gives S1 to
    # the S2 date it is closest to, which is often the clear one that follows a cloudy date
    s1 = nearest_in_time(rows, anchors, "s1", max_days)
    images, bands, present = _read_with_partner(store, anchors, "s2", "s1", s1)
    target = torch.from_numpy(store.read("s2", anchors["clear_index"].tolist()))
    return TaskSplit(images, bands, present, target, list(anchors["id"]), **_georef(anchors))


def wald_ms_upsampled(reference: torch.Tensor) -> torch.Tensor:
    """Wald's protocol on reflectance (B, C, H, W): degraded by PAN_RATIO (block mean), upsampled bicubically."""
    ms_low = F.avg_pool2d(reference, PAN_RATIO)
    return F.interpolate(ms_low, size=reference.shape[-2:], mode="bicubic", align_corners=False)


def hpf_fuse(ms_low: torch.Tensor, pan: torch.Tensor) -> torch.Tensor:
    """Schowengerdt's HPF fusion: MS (B, C, H/r, W/r) upsampled bicubically to the PAN's (B, 1, H, W) size, plus the
    PAN's detail above the MS resolution (PAN minus its r x r block mean, upsampled the same way); r = PAN_RATIO."""
    size = pan.shape[-2:]
    ms_up = F.interpolate(ms_low, size=size, mode="bicubic", align_corners=False)
    pan_low = F.interpolate(F.avg_pool2d(pan, PAN_RATIO), size=size, mode="bicubic", align_corners=False)
    return ms_up + (pan - pan_low)


def wald_pansharpening_input(reference: torch.Tensor) -> torch.Tensor:
    """Wald's protocol on reflectance (B, 4, H, W): MS degraded by PAN_RATIO, upsampled, plus PAN high-pass detail."""
    return hpf_fuse(F.avg_pool2d(reference, PAN_RATIO), reference.mean(dim=1, keepdim=True))


def _pansharpening(store: ChipStore, anchors: pd.DataFrame) -> TaskSplit:
    sensor = get_sensor("s2")
    order = [store.bands("s2").index(b) for b in PAN_BANDS]
    raw = store.raw("s2", anchors["store_index"].tolist())[:, order].astype(np.float32)
    reference = torch.from_numpy(raw / REFLECTANCE_SCALE)
    fused = wald_pansharpening_input(reference).clamp(0.0, 1.0).numpy() * REFLECTANCE_SCALE
    images = {"s2": torch.from_numpy(sensor.normalise(fused, PAN_BANDS))}
    target = torch.from_numpy(sensor.normalise(raw, PAN_BANDS))
    present = {"s2": torch.ones(len(anchors), dtype=torch.bool)}
    return TaskSplit(images, {"s2": PAN_BANDS}, present, target, list(anchors["id"]), **_georef(anchors))


def _segmentation(store: ChipStore, rows: pd.DataFrame, anchors: pd.DataFrame, codes: tuple[int, ...]) -> TaskSplit:
    images, bands, present = _read_with_partner(store, anchors, "rgb", "dsm", _partner_rows(rows, anchors, "dsm"))
    lookup = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for i, code in enumerate(codes):
        lookup[code] = i
    labels = store.labels("fine", anchors["label_index"].tolist())
    return TaskSplit(images, bands, present, torch.from_numpy(lookup[labels]), list(anchors["id"]), **_georef(anchors))


def _anchors(task: str, rows: pd.DataFrame, max_cloud: float, clear_days: int) -> pd.DataFrame:
    """The chips each sample of `task` starts from (one sample per row)."""
    if task in ("classification", "pansharpening"):
        return rows[(rows["sensor"] == "s2") & (rows["cloud_fraction"] <= max_cloud)]
    if task == "segmentation":
        return rows[rows["sensor"] == "rgb"]
    s2 = rows[rows["sensor"] == "s2"]
    clear = s2[s2["cloud_fraction"] <= max_cloud]
    cloudy = s2[s2["cloud_fraction"] > max_cloud]
    key = ["aoi", "grid", "row", "col"]
    joined = cloudy.merge(clear[[*key, "day", "store_index"]], on=key, suffixes=("", "_clear"))
    gap = (pd.to_datetime(joined["day_clear"]) - pd.to_datetime(joined["day"])).dt.days
    joined = joined[(gap > 0) & (gap <= clear_days)].assign(gap=gap)
    joined = joined.sort_values([*key, "day", "gap"]).drop_duplicates("id")
    return joined.rename(columns={"store_index_clear": "clear_index"}).drop(columns=["day_clear", "gap"])


def build_task_data(
    params: Params,
    task: str,
    label_fraction: float | None = None,
    seed: int | None = None,
    loaded: tuple[ChipStore, pd.DataFrame] | None = None,
) -> TaskData:
    """Train (label budget applied), val, test, holdout_aoi and later splits of `task` from the accepted chips."""
    spec = get_task(task)
    cfg = params.finetune
    store, rows = loaded if loaded is not None else accepted_chips(params)
    anchors = _anchors(task, rows, cfg.max_cloud_fraction, cfg.clear_within_days).reset_index(drop=True)
    if anchors.empty:
        raise TaskDataError(f"{cfg.manifest}: no accepted chips make a {task} sample")
    parts, notes = partition(anchors, cfg.holdout_aois, cfg.train_until, task)
    if parts["train"].empty:
        raise TaskDataError(f"{cfg.manifest}: no {task} training chips outside the held-out AOIs and dates")
    codes: tuple[int, ...] = ()
    if spec.kind == "multilabel":
        codes = tuple(sorted({int(c) for labels in parts["train"]["labels"] for c in labels if int(c) > 0}))
    elif spec.kind == "segmentation":
        present_codes = np.unique(store.labels("fine", parts["train"]["label_index"].tolist()))
        codes = tuple(int(c) for c in present_codes if c > 0)
    absent = absent_classes(spec.kind, parts, codes, store)
    fraction = cfg.label_fraction if label_fraction is None else label_fraction
    budget = label_budget(len(parts["train"]), fraction, params.seed if seed is None else seed)
    parts["train"] = parts["train"].iloc[budget]

    build: Callable[[pd.DataFrame], TaskSplit]
    if task == "classification":
        build = lambda a: _classification(store, rows, a, codes)  # noqa: E731
    elif task == "cloud_removal":
        build = lambda a: _cloud_removal(store, rows, a, params.pair.max_days)  # noqa: E731
    elif task == "pansharpening":
        build = lambda a: _pansharpening(store, a)  # noqa: E731
    else:
        build = lambda a: _segmentation(store, rows, a, codes)  # noqa: E731
    splits = {}
    for name, part in parts.items():
        if part.empty:
            notes.setdefault(name, f"no {task} chips in {name}")
            continue
        splits[name] = build(part.reset_index(drop=True))
    return TaskData(spec=spec, splits=splits, class_codes=codes, notes=notes, absent=absent)
