"""The tiled inference loop shared by `msgfm embed` and `msgfm predict`: strip by strip, batch by batch.

For each row of windows (tiling.py) every input is read as one strip (rasterio windowed read), cut into
model-sized windows, normalised per window and run through the model in batches of `batch_size`; the
outputs go to the `Stitcher`, whose finished rows go to `sink` at once. Memory is one strip of windows
and one strip of outputs, whatever the raster's size. The windows and their batches depend only on the
raster's size, so the same input gives the same outputs (on CPU, bit for bit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from msgfm.inference.rasters import InferenceInputError, RasterInput
from msgfm.inference.tiling import AxisPlan, Stitcher, window_count
from msgfm.models import device as models_device

Forward = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]
"""{sensor: (B, C, W, W) normalised windows on the device} -> (B, D, n, n) outputs."""


def resolve_device(device: str) -> torch.device:
    """msgfm.models.device.resolve_device, its errors as the command's input errors (named after --device)."""
    try:
        return models_device.resolve_device(device)
    except ValueError as e:
        raise InferenceInputError(f"--device: {e}") from None


class StripReader:
    """Strips of one input cut into chunks of one window step, so rows shared by two window rows are read once."""

    def __init__(self, inp: RasterInput, plan_y: AxisPlan, plan_x: AxisPlan) -> None:
        origins = plan_y.origins
        self.inp, self.size = inp, plan_y.window_px
        self.chunk = origins[1] - origins[0] if len(origins) > 1 else self.size
        self.col0, self.span = plan_x.span_px()
        self.chunks: dict[int, np.ndarray] = {}

    def strip(self, row0: int) -> np.ndarray:
        """(C, window, span) pixels of the window row starting at `row0` (mean-padded, physical units)."""
        starts = range(row0, row0 + self.size, self.chunk)
        for r in starts:
            if r not in self.chunks:
                self.chunks[r] = self.inp.read_strip(r, self.chunk, self.col0, self.span)
        for r in [r for r in self.chunks if r < row0]:
            del self.chunks[r]
        return np.concatenate([self.chunks[r] for r in starts], axis=1)


def window_row(readers: Sequence[StripReader], plan_y: AxisPlan, plan_x: AxisPlan, k: int) -> dict[str, np.ndarray]:
    """Window row `k` of every input: {sensor: (n_windows_x, C, W, W) normalised float32}."""
    size = plan_y.window_px
    rows = {}
    for reader in readers:
        strip = reader.strip(plan_y.origins[k])
        windows = np.stack([strip[:, :, o - reader.col0 : o - reader.col0 + size] for o in plan_x.origins])
        rows[reader.inp.sensor] = reader.inp.normalise(windows)
    return rows


def run_tiled(
    inputs: Sequence[RasterInput],
    forward: Forward,
    plans: tuple[AxisPlan, AxisPlan],
    channels: int,
    sink: Callable[[int, np.ndarray], None],
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    desc: str = "tiles",
) -> None:
    """Run `forward` over every window of the inputs (one grid); pass finished (row0, (C, rows, W)) blocks to sink.

    Batches are cut from the row-major sequence of windows, across window rows, so every batch but the
    last is full; a window row goes to the stitcher as soon as all its windows are through the model.
    """
    if batch_size < 1:
        raise InferenceInputError(f"--batch-size must be at least 1, got {batch_size}")
    plan_y, plan_x = plans
    device = torch.device(device)
    stitcher = Stitcher(plan_y, plan_x, channels)
    per_row = len(plan_x.origins)
    readers = [StripReader(inp, plan_y, plan_x) for inp in inputs]
    pending: dict[str, list[np.ndarray]] = {inp.sensor: [] for inp in inputs}
    outputs: list[np.ndarray] = []
    done_rows = 0

    def run(n: int) -> None:
        """Run the first n pending windows through the model."""
        batch = {}
        for sensor, parts in pending.items():
            windows = np.concatenate(parts)
            batch[sensor], pending[sensor] = windows[:n], [windows[n:]]
        images = {s: torch.from_numpy(x).to(device) for s, x in batch.items()}
        with torch.inference_mode():
            outputs.append(forward(images).float().cpu().numpy())
        bar.update(n)

    with tqdm(total=window_count(plan_y, plan_x), desc=desc, unit="window", leave=False) as bar:
        for k in range(len(plan_y.origins)):
            for sensor, windows in window_row(readers, plan_y, plan_x, k).items():
                pending[sensor].append(windows)
            waiting = sum(len(p) for p in next(iter(pending.values())))
            last = k == len(plan_y.origins) - 1
            while waiting >= batch_size or (last and waiting):
                run(min(batch_size, waiting))
                waiting -= min(batch_size, waiting)
            ready = np.concatenate(outputs) if outputs else np.zeros((0,))
            while len(ready) >= per_row and done_rows <= k:
                for row0, block in stitcher.add_row(done_rows, ready[:per_row]):
                    sink(row0, block)
                ready, done_rows = ready[per_row:], done_rows + 1
            outputs = [ready] if len(ready) else []
