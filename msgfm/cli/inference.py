"""The utilities on GeoTIFFs of any size (not stages): `msgfm embed` and `msgfm predict`."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from msgfm.cli._app import DeviceOption, ParamsOption, app, read_params, stage_errors
from msgfm.log_setup import setup_logging

BatchOption = Annotated[int, typer.Option(min=1, help="windows run through the model at once")]


@app.command()
def embed(
    src: Annotated[Path, typer.Argument(help="GeoTIFF of a known sensor (s1, s2, rgb, dsm) in physical units")],
    out: Annotated[Path, typer.Argument(help="output: .tif (COG, one band per feature) or .parquet (GeoParquet)")],
    model: Annotated[
        Path | None,
        typer.Option(help="pretrained model directory (model.safetensors + config.json); default: pretrain.out_dir"),
    ] = None,
    sensor: Annotated[str | None, typer.Option(help="sensor of the file; default: its 'sensor' tag")] = None,
    bands: Annotated[
        str | None, typer.Option(help="comma-separated band names of the file; default: its band descriptions")
    ] = None,
    stage: Annotated[int, typer.Option(help="encoder stage whose features are written (-1: last, stride 32)")] = -1,
    batch_size: BatchOption = 16,
    device: DeviceOption = None,
    quantize: Annotated[str | None, typer.Option(help="int8: store int8 codes and their scale")] = None,
    when: Annotated[
        dt.datetime | None, typer.Option("--datetime", help="acquisition time; default: the file's datetime tag")
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Tiled, georeferenced embeddings of a GeoTIFF of any size, with a STAC item (utility, not a stage)."""
    from msgfm.inference.embed import embed_geotiff

    setup_logging()
    model = model or read_params(params).pretrain.out_dir  # params are read only when --model is not given
    band_list = [b.strip() for b in bands.split(",") if b.strip()] if bands else None
    options = dict(stage=stage, batch_size=batch_size, device=device or "auto", quantize=quantize, when=when)
    with _inference_errors():
        path = embed_geotiff(src, model, out, sensor=sensor, bands=band_list, **options)
    typer.echo(f"wrote {path}")


@app.command()
def predict(
    out: Annotated[Path, typer.Argument(help="output COG (.tif) on the inputs' grid")],
    model: Annotated[Path, typer.Option(help="fine-tuned model folder: <finetune.out_dir>/<task>/<variant>")],
    inputs: Annotated[
        list[str], typer.Option("--input", help="SENSOR=GeoTIFF, one per sensor of the task (e.g. rgb=a.tif)")
    ],
    batch_size: BatchOption = 16,
    device: DeviceOption = None,
    when: Annotated[
        dt.datetime | None, typer.Option("--datetime", help="acquisition time; default: the file's datetime tag")
    ] = None,
) -> None:
    """Run a fine-tuned segmentation, cloud-removal or pan-sharpening model over GeoTIFFs of any size, tiled."""
    from msgfm.inference.predict_raster import predict_geotiff

    setup_logging()
    pairs = dict(item.partition("=")[::2] for item in inputs)
    if any(not k or not v for k, v in pairs.items()) or len(pairs) != len(inputs):
        typer.echo(f"error: --input takes SENSOR=FILE, once per sensor; got {inputs}", err=True)
        raise typer.Exit(2)
    with _inference_errors():
        path = predict_geotiff(pairs, model, out, batch_size=batch_size, device=device or "auto", when=when)
    typer.echo(f"wrote {path}")


@contextlib.contextmanager
def _inference_errors() -> Iterator[None]:
    """A bad input, model or option of `embed`/`predict` exits 2 with its message (it names the file).

    A full, read-only or failing disk exits ENVIRONMENT_EXIT, as the stages do.
    """
    with stage_errors():
        try:
            yield
        except (FileNotFoundError, ValueError, KeyError) as e:
            typer.echo(f"error: {e.args[0] if isinstance(e, KeyError) else e}", err=True)
            raise typer.Exit(2) from None
