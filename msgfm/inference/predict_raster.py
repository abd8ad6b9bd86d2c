"""`msgfm predict`: a fine-tuned task model (msgfm finetune) run on GeoTIFFs of any size, tiled like `msgfm embed`.

The model folder is one `<finetune.out_dir>/<task>/<variant>/` (best.json + model.safetensors, checked to
belong together). Inputs are one GeoTIFF per sensor of the task (segmentation: rgb and dsm; cloud removal:
s2 and s1; pan-sharpening: the upsampled s2), all on one pixel grid; a sensor may be left out where the head
allows it (sensors are fused by averaging), except the residual sensor of an image head. Windows of the
model's chip size overlap by half and each keeps its central half (tiling.py, stride 1), so the output is
the model's own output on a window wherever a pixel lies. Output: a Cloud-Optimized GeoTIFF on the inputs'
grid (same CRS and transform): class codes (uint8, best.json's class codes) for segmentation, the output
bands in physical units (float32) for image tasks, with a STAC item beside it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from msgfm.datasets.tasks import get_task
from msgfm.inference.embed import COG_MEDIA_TYPE, bind_input
from msgfm.inference.products import write_item
from msgfm.inference.rasters import InferenceInputError, RasterInput, bounded_gdal_cache, check_same_grid, grid_writer
from msgfm.inference.tiled import resolve_device, run_tiled
from msgfm.inference.tiling import axis_plan
from msgfm.models.finetuned import BEST_FILE, WEIGHTS_FILE, checkpoint_mismatch, rebuild_task_model
from msgfm.models.heads import TaskModel
from msgfm.models.hub import load_weights
from msgfm.sensors import get_sensor

log = logging.getLogger(__name__)
DENSE_KINDS = ("segmentation", "image")


def load_task_model(model_dir: str | Path) -> tuple[TaskModel, dict[str, Any]]:
    """The fine-tuned model in `model_dir` and its best.json; errors name the files."""
    model_dir = Path(model_dir)
    mismatch = checkpoint_mismatch(model_dir)
    if mismatch:
        raise InferenceInputError(f"{mismatch}; --model must be a folder written by `msgfm finetune`")
    try:
        best = json.loads((model_dir / BEST_FILE).read_text())
        model = rebuild_task_model(best, get_task(best["task"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise InferenceInputError(f"{model_dir / BEST_FILE}: not a fine-tuned model record: {e}") from None
    load_weights(model, model_dir / WEIGHTS_FILE)
    return model.eval(), best


def _open_inputs(paths: Mapping[str, str | Path], spec) -> list[RasterInput]:
    """Open and bind one input per sensor of the task; errors name the file or the missing sensor."""
    unknown = [s for s in paths if s not in spec.inputs]
    if unknown or not paths:
        raise InferenceInputError(
            f"task {spec.name} takes --input for sensors {list(spec.inputs)}; got {list(paths) or 'none'}"
        )
    if spec.residual and spec.residual not in paths:
        raise InferenceInputError(f"task {spec.name} needs --input {spec.residual}=FILE (its output corrects it)")
    inputs = []
    try:
        for sensor, path in paths.items():
            inputs.append(RasterInput(path))
            bind_input(inputs[-1], sensor, None)
        check_same_grid(inputs)
    except Exception:
        for inp in inputs:
            inp.src.close()
        raise
    return inputs


def predict_geotiff(
    inputs: Mapping[str, str | Path],
    model_dir: str | Path,
    out_path: str | Path,
    batch_size: int = 16,
    device: str = "auto",
    when: dt.datetime | None = None,
) -> Path:
    """Run a fine-tuned segmentation or image-to-image model over GeoTIFFs {sensor: path}; write a COG + item."""
    out_path = Path(out_path)
    if out_path.suffix.lower() not in (".tif", ".tiff"):
        raise InferenceInputError(f"{out_path}: output must end in .tif or .tiff (a COG)")
    torch_device = resolve_device(device)
    model, best = load_task_model(model_dir)
    spec = get_task(best["task"])
    if spec.kind not in DENSE_KINDS:
        raise InferenceInputError(
            f"{model_dir}: task {spec.name} predicts one label set per chip, not a raster; "
            "predict runs segmentation, cloud_removal and pansharpening models"
        )
    model.to(torch_device)
    with bounded_gdal_cache():
        opened = _open_inputs(inputs, spec)
        try:
            acquired = opened[0].acquired(when)
            return _predict(opened, model, best, Path(model_dir), out_path, (batch_size, torch_device, acquired))
        finally:
            for inp in opened:
                inp.src.close()


def _predict(opened, model: TaskModel, best, model_dir: Path, out_path: Path, run: tuple) -> Path:
    """The tiled run and the output COG and item of predict_geotiff; run = (batch size, device, datetime)."""
    batch_size, device, acquired = run
    spec = get_task(best["task"])
    first = opened[0]
    chip = model.encoder.config.chip_px
    plans = (axis_plan(first.shape[0], chip, 1), axis_plan(first.shape[1], chip, 1))
    bands = {inp.sensor: inp.bands for inp in opened}
    codes = np.asarray(best["class_codes"])
    if spec.kind == "segmentation":
        channels, count, dtype = len(codes), 1, "uint8" if codes.max(initial=0) < 256 else "uint16"
        names = ["class"]
    else:
        channels, count, dtype = len(spec.out_bands), len(spec.out_bands), "float32"
        names = list(spec.out_bands)
    out_sensor = get_sensor(spec.out_sensor) if spec.out_sensor else None

    def forward(images):
        return model(images, bands)

    log.info("predicting %s with %s (%s) on %s", out_path, model_dir, spec.name, device)
    shape = (count, *first.shape)
    with grid_writer(out_path, shape, first.src.crs, first.src.transform, dtype) as grid:

        def sink(row0: int, block: np.ndarray) -> None:
            if spec.kind == "segmentation":
                grid.write_rows(row0, codes[block.argmax(axis=0)][None].astype(dtype))
            else:
                grid.write_rows(row0, out_sensor.denormalise(block, spec.out_bands))

        run_tiled(opened, forward, plans, channels, sink, batch_size, device, desc=f"predict {spec.name}")
        tags = {"task": spec.name, "model": str(model_dir), "inputs": ",".join(bands)}
        if spec.kind == "segmentation":
            tags["class_codes"] = ",".join(str(int(c)) for c in codes)
        grid.to_cog(names, tags, overviews=True)
        properties = {f"msgfm:{k}": v for k, v in tags.items()}
        write_item(
            out_path,
            media_type=COG_MEDIA_TYPE,
            crs=grid.crs,
            transform=grid.transform,
            shape=first.shape,
            when=acquired,
            properties=properties,
            raster_bands=[{"data_type": dtype}] * count,
        )
    return out_path
