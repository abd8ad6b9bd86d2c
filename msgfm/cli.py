"""`msgfm <stage>`: the commands dvc.yaml runs, one per pipeline stage.

Each command loads and validates params.yaml (or `--params FILE`), takes the lock of the folder it writes
(`_lock_outputs`), then calls the stage's implementation in the library. Heavy imports happen inside the
commands so `--help` stays fast.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from msgfm.config import Params, ParamsError, load_params
from msgfm.ingest.redact import redact
from msgfm.locks import LockBusy, RunLock
from msgfm.log_setup import setup_logging

app = typer.Typer(
    name="msgfm",
    help="msGFM: multisensor geospatial foundation model pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ENVIRONMENT_EXIT = 3  # the machine (disk full, read-only, no permission), not the data, stopped the stage
ParamsOption = Annotated[Path, typer.Option("--params", help="params file to read instead of params.yaml")]
DeviceOption = Annotated[
    str | None,
    typer.Option(
        help="auto, cpu or cuda (finetune/evaluate: overrides finetune.device; auto: the GPU when there is one)"
    ),
]


@contextlib.contextmanager
def _stage_errors(*errors: type[Exception], code: int = 1) -> Iterator[None]:
    """Report a stage's own errors (their messages name the file and the problem) as `error: ...`, exit `code`.

    An environment fault (disk full, read-only, no permission, I/O error) exits ENVIRONMENT_EXIT instead.
    """
    try:
        yield
    except errors as e:
        typer.echo(f"error: {redact(str(e))}", err=True)
        raise typer.Exit(code) from None
    except Exception as e:
        from msgfm.geo.io import environment_fault

        fault = environment_fault(e)
        if fault is None:
            raise
        typer.echo(f"error: {fault}", err=True)
        raise typer.Exit(ENVIRONMENT_EXIT) from None


def _load(params_path: Path) -> Params:
    """Load params or exit with the validation message (no traceback)."""
    setup_logging()
    for noisy in ("great_expectations", "ray", "filelock", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with _stage_errors(ParamsError, code=2):
        return load_params(params_path)


def _on_device(p: Params, device: str | None) -> Params:
    """Params with finetune.device set by --device; a device torch cannot use is a usage error (exit 2)."""
    from msgfm.models.device import resolve_device

    choice = device or p.finetune.device
    try:
        resolve_device(choice)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    return p.model_copy(update={"finetune": p.finetune.model_copy(update={"device": choice})})


LOCK_BUSY_EXIT = 75  # EX_TEMPFAIL: another run of the stage is writing the same folder; try again later


@contextlib.contextmanager
def _lock_outputs(stage: str, out_dir: Path) -> Iterator[None]:
    """Hold `<parent>/.<out_dir name>.msgfm.lock` while the stage runs; exit 75 at once when another run holds it.

    Two runs writing one folder would share download's fixed-name `.part` files and overwrite each other's
    outputs, so the second fails fast naming the holder. The lock sits beside the folder, not in it: DVC
    deletes and caches a stage's output folder, and a lock inside it could be deleted under its holder.
    """
    out_dir = Path(out_dir)
    lock = RunLock(out_dir.parent / f".{out_dir.name}.msgfm.lock", run=f"msgfm {stage}")
    from msgfm.geo.io import write_fault

    try:
        lock.acquire()
    except LockBusy as e:
        typer.echo(f"error: msgfm {stage} is already writing {out_dir}: {e}", err=True)
        raise typer.Exit(LOCK_BUSY_EXIT) from None
    except OSError as e:  # a full or read-only disk already stops the lock file: the machine's fault, not the data's
        fault = write_fault(e, lock.path)
        if fault is None:
            raise
        typer.echo(f"error: {fault}", err=True)
        raise typer.Exit(ENVIRONMENT_EXIT) from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # releasing on a read-only disk must not hide the stage's own error
            lock.release()


def _run_gate(run: Callable[[], Any]) -> None:
    """Run a gate and report it: exit 1 when it fails (its message says why), 2 when an input is missing or stale."""
    from msgfm.chips.store import ChipStoreError
    from msgfm.validation.gates import GateFailed

    with _stage_errors(FileNotFoundError, ChipStoreError, code=2), _stage_errors(GateFailed):
        result = run()
        result.raise_if_failed()
    typer.echo(result.message)


@app.command()
def simulate(
    params: ParamsOption = Path("params.yaml"),
    until: Annotated[
        dt.datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="publish only acquisitions up to this date (overrides params)"),
    ] = None,
    preview: Annotated[
        Path | None, typer.Option(help="also write a PNG showing one AOI's four sensors side by side")
    ] = None,
) -> None:
    """Generate the simulated multisensor world as a static STAC catalog of COGs (data/source)."""
    from msgfm.sim.preview import write_preview
    from msgfm.sim.simulate import SimulateError, simulate_world

    p = _load(params)
    cfg = p.simulate if until is None else p.simulate.model_copy(update={"until": until.date()})
    with _lock_outputs("simulate", cfg.out_dir), _stage_errors(SimulateError, code=2):
        simulate_world(cfg, seed=p.seed)
        if preview is not None:
            write_preview(Path(cfg.out_dir), cfg, preview)


@app.command(name="download")
def download_cmd(params: ParamsOption = Path("params.yaml")) -> None:
    """Fetch every new acquisition of the source into data/raw and update the acquisitions ledger."""
    from msgfm.ingest.download import download
    from msgfm.ingest.sources import SourceError

    p = _load(params)
    with _lock_outputs("download", p.download.out_dir), _stage_errors(SourceError):
        summary = download(p.source, p.download, ray_cfg=p.ray)
    typer.echo(
        f"download: {summary.items} items offered, {summary.fetched} fetched, {summary.skipped} already present, "
        f"{summary.failed} failed (see {p.download.out_dir / 'acquisitions.parquet'}), {summary.bytes} bytes"
    )


@app.command(name="validate_raw")
def validate_raw_cmd(params: ParamsOption = Path("params.yaml")) -> None:
    """Raw gate: check every downloaded acquisition with Great Expectations; quarantine the bad ones."""
    from msgfm.validation.raw import validate_raw

    p = _load(params)
    with _lock_outputs("validate_raw", p.gates.dir):
        _run_gate(
            lambda: validate_raw(
                p.download.out_dir, p.source, p.gates, gates_dir=p.gates.dir, reports_dir=p.gates.reports_dir
            )
        )


@app.command(name="coregister")
def coregister_cmd(params: ParamsOption = Path("params.yaml")) -> None:
    """Put every accepted acquisition of an AOI on one grid (S1/S2 10 m, RGB/DSM fine), shift-corrected."""
    from msgfm.coreg.inputs import CoregisterError
    from msgfm.coreg.stage import coregister
    from msgfm.decisions import gate_table

    p = _load(params)
    cfg = p.coregister
    with _lock_outputs("coregister", cfg.out_dir), _stage_errors(CoregisterError, code=2):
        table = coregister(
            cfg,
            ledger=p.download.out_dir / "acquisitions.parquet",
            raw_gate=gate_table(p.gates.dir, "raw"),
            raw_dir=p.download.out_dir,
            out_dir=cfg.out_dir,
            report=cfg.report,
            truth_dir=cfg.truth_dir,
            ray_cfg=p.ray,
        )
    ok = int((table["status"] == "ok").sum())
    typer.echo(f"coregister: {ok}/{len(table)} rasters written to {cfg.out_dir} (report: {cfg.report})")


@app.command(name="validate_coreg")
def validate_coreg_cmd(params: ParamsOption = Path("params.yaml")) -> None:
    """Coreg gate: every raster on its AOI grid, aligned within gates.max_residual_px, with enough overlap."""
    from msgfm.validation.coreg import validate_coreg

    p = _load(params)
    with _lock_outputs("validate_coreg", p.gates.dir):
        _run_gate(
            lambda: validate_coreg(
                p.coregister.out_dir, p.coregister, p.gates, gates_dir=p.gates.dir, reports_dir=p.gates.reports_dir
            )
        )


@app.command(name="pair")
def pair_cmd(params: ParamsOption = Path("params.yaml")) -> None:
    """Cut accepted co-registered rasters into chips, pair S1-S2 and RGB-DSM, split by blocks, fill the store."""
    from msgfm.chips.pairing import PairError, pair
    from msgfm.decisions import gate_table

    p = _load(params)
    with _lock_outputs("pair", p.pair.out_dir), _stage_errors(PairError, code=2):
        manifest = pair(
            p.pair,
            coreg_dir=p.coregister.out_dir,
            coreg_gate=gate_table(p.gates.dir, "coreg"),
            seed=p.seed,
            ray_cfg=p.ray,
        )
    typer.echo(f"pair: {len(manifest)} chips ({int(manifest['paired'].sum())} paired) in {p.pair.out_dir}")


@app.command(name="validate_pairs")
def validate_pairs_cmd(params: ParamsOption = Path("params.yaml")) -> None:
    """Pairs gate: manifest schema, every split per sensor, disjoint splits, classes in train, paired share, stats."""
    from msgfm.validation.pairs import validate_pairs

    p = _load(params)
    with _lock_outputs("validate_pairs", p.gates.dir):
        _run_gate(lambda: validate_pairs(p.pair, p.gates, gates_dir=p.gates.dir, reports_dir=p.gates.reports_dir))


@app.command()
def pretrain(
    params: ParamsOption = Path("params.yaml"),
    single_sensor: Annotated[
        bool, typer.Option("--single-sensor", help="the baseline: pretrain on pretrain.single_sensor alone")
    ] = False,
) -> None:
    """Cross-sensor MIM pretraining on Ray Train; resumes from the latest checkpoint after a crash."""
    from msgfm.datasets.pretrain import PretrainDataError
    from msgfm.training.pretrain import PretrainError, run_pretrain, single_sensor_params

    p = _load(params)
    if single_sensor:
        p = single_sensor_params(p)
    with _lock_outputs("pretrain", p.pretrain.out_dir), _stage_errors(PretrainError, PretrainDataError):
        metrics = run_pretrain(p)
    val = metrics["val"]
    typer.echo(
        f"pretrained {metrics['steps']} steps in {metrics['wall_time_s']:.0f} s "
        f"({metrics['samples_per_s']:.1f} samples/s); validation masked L1 {val['loss']:.4f} "
        f"vs {val['mean_baseline']:.4f} for predicting the mean, {val['chip_mean_baseline']:.4f} for each chip's "
        f"visible mean (worst term ratio {val['worst_ratio_chip_mean']:.2f})"
    )


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
    model = model or _load(params).pretrain.out_dir  # params are read only when --model is not given
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
    with _stage_errors():
        try:
            yield
        except (FileNotFoundError, ValueError, KeyError) as e:
            typer.echo(f"error: {e.args[0] if isinstance(e, KeyError) else e}", err=True)
            raise typer.Exit(2) from None


@app.command()
def finetune(
    params: ParamsOption = Path("params.yaml"),
    task: Annotated[
        str | None, typer.Option(help="classification, cloud_removal, pansharpening or segmentation")
    ] = None,
    variant: Annotated[
        list[str] | None, typer.Option(help="pretrained, scratch, single_sensor (repeatable; default: params)")
    ] = None,
    benchmark: Annotated[
        str | None,
        typer.Option(help="fine-tune on a real benchmark (bigearthnet, sen12ms_cr, spacenet_pansharpen, vaihingen)"),
    ] = None,
    root: Annotated[Path | None, typer.Option(help="the benchmark's local folder (with --benchmark)")] = None,
    device: DeviceOption = None,
) -> None:
    """Optuna-tuned fine-tuning of msGFM and its baselines on one downstream task (data/models/<task>)."""
    from msgfm.datasets.benchmarks import BenchmarkDataError
    from msgfm.datasets.tasks import TASKS, TaskDataError
    from msgfm.models.finetuned import VARIANTS, TaskModelError
    from msgfm.training.benchmark import run_benchmark_finetune
    from msgfm.training.finetune import FinetuneError, run_finetune

    p = _on_device(_load(params), device)
    bad = [v for v in variant or [] if v not in VARIANTS]
    if bad:
        typer.echo(f"error: unknown variant(s) {bad}; variants are {list(VARIANTS)}", err=True)
        raise typer.Exit(2)
    with _stage_errors(FinetuneError, TaskModelError, TaskDataError, BenchmarkDataError):
        if benchmark is not None:
            if root is None:
                typer.echo("error: --benchmark needs --root (the dataset's local folder)", err=True)
                raise typer.Exit(2)
            with _lock_outputs("finetune", p.finetune.out_dir / "benchmarks" / benchmark):
                summary = run_benchmark_finetune(p, benchmark, root, variant or None)
        else:
            if task not in TASKS:
                typer.echo(f"error: --task must be one of {list(TASKS)}, got {task!r}", err=True)
                raise typer.Exit(2)
            with _lock_outputs("finetune", p.finetune.out_dir / task):
                summary = run_finetune(p, task, variant or None)
    for name, result in summary.items():
        if isinstance(result, dict) and "value" in result:
            typer.echo(
                f"{summary['task']}/{name}: best trial {result['trial']} val {result['metric']} {result['value']:.4f} "
                f"({result['trials_finished']} trials, {result['trials_pruned']} pruned, {result['wall_time_s']:.0f} s)"
            )
        elif isinstance(result, dict) and "missing" in result:
            typer.echo(f"{summary['task']}/{name}: skipped: {result['missing']}")


@app.command()
def evaluate(params: ParamsOption = Path("params.yaml"), device: DeviceOption = None) -> None:
    """Test metrics, baselines, modality ablations, generalisation, plots and the report (data/reports/report.md)."""
    from msgfm.datasets.tasks import TaskDataError
    from msgfm.evaluation.evaluate import EvaluateError, run_evaluate

    p = _on_device(_load(params), device)
    with _lock_outputs("evaluate", p.evaluate.report.parent), _stage_errors(EvaluateError, TaskDataError):
        metrics = run_evaluate(p)
    for task, values in metrics.items():
        scalar = sorted((k, v) for k, v in values.items() if isinstance(v, float))
        typer.echo(f"{task} (n {values['n']['chips']} chips): " + ", ".join(f"{k} {v:.4f}" for k, v in scalar))
    typer.echo(f"report: {p.evaluate.report}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
