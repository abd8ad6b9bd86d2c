"""The training stages: pretraining, fine-tuning (pipeline tasks and real benchmarks) and evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from msgfm.cli._app import DeviceOption, ParamsOption, app, lock_outputs, on_device, read_params, stage_errors


@app.command()
def pretrain(
    params: ParamsOption = Path("params.yaml"),
    variant: Annotated[
        str | None, typer.Option(help="a baseline of pretrain_variants.define (single_s2, no_cross, dense, ...)")
    ] = None,
) -> None:
    """Cross-sensor MIM pretraining on Ray Train; resumes from the latest checkpoint after a crash."""
    from msgfm.config import ParamsError
    from msgfm.datasets.pretrain import PretrainDataError
    from msgfm.training.pretrain import PretrainError, run_pretrain

    p = read_params(params)
    if variant is not None:
        try:
            p = p.pretrain_variant(variant)
        except ParamsError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
    with lock_outputs("pretrain", p.pretrain.out_dir), stage_errors(PretrainError, PretrainDataError):
        metrics = run_pretrain(p)
    val = metrics["val"]
    typer.echo(
        f"pretrained {metrics['steps']} steps in {metrics['wall_time_s']:.0f} s "
        f"({metrics['samples_per_s']:.1f} samples/s); validation masked L1 {val['loss']:.4f} "
        f"vs {val['mean_baseline']:.4f} for predicting the mean, {val['chip_mean_baseline']:.4f} for each chip's "
        f"visible mean (worst term ratio {val['worst_ratio_chip_mean']:.2f})"
    )


@app.command()
def finetune(
    params: ParamsOption = Path("params.yaml"),
    task: Annotated[
        str | None, typer.Option(help="classification, cloud_removal, pansharpening or segmentation")
    ] = None,
    variant: Annotated[
        list[str] | None,
        typer.Option(help="pretrained, scratch or a pretrain_variants.define name (repeatable; default: params)"),
    ] = None,
    benchmark: Annotated[
        str | None,
        typer.Option(help="fine-tune on a real benchmark (bigearthnet, sen12ms_cr, spacenet_pansharpen, vaihingen)"),
    ] = None,
    root: Annotated[Path | None, typer.Option(help="the benchmark's local folder (with --benchmark)")] = None,
    device: DeviceOption = None,
) -> None:
    """Optuna-tuned fine-tuning of msGFM and its baselines on one downstream task (data/models/<task>)."""
    from msgfm.config import FIXED_VARIANTS
    from msgfm.datasets.benchmarks import BenchmarkDataError
    from msgfm.datasets.tasks import TASKS, TaskDataError
    from msgfm.models.finetuned import NOT_APPLICABLE, TaskModelError
    from msgfm.training.benchmark import run_benchmark_finetune
    from msgfm.training.finetune import FinetuneError, run_finetune

    p = on_device(read_params(params), device)
    known = [*FIXED_VARIANTS, *p.pretrain_variants.define]
    bad = [v for v in variant or [] if v not in known]
    if bad:
        typer.echo(f"error: unknown variant(s) {bad}; variants are {known}", err=True)
        raise typer.Exit(2)
    with stage_errors(FinetuneError, TaskModelError, TaskDataError, BenchmarkDataError):
        if benchmark is not None:
            if root is None:
                typer.echo("error: --benchmark needs --root (the dataset's local folder)", err=True)
                raise typer.Exit(2)
            with lock_outputs("finetune", p.finetune.out_dir / "benchmarks" / benchmark):
                summary = run_benchmark_finetune(p, benchmark, root, variant or None)
        else:
            if task not in TASKS:
                typer.echo(f"error: --task must be one of {list(TASKS)}, got {task!r}", err=True)
                raise typer.Exit(2)
            with lock_outputs("finetune", p.finetune.out_dir / task):
                summary = run_finetune(p, task, variant or None)
    for name, result in summary.items():
        if isinstance(result, dict) and "value" in result:
            typer.echo(
                f"{summary['task']}/{name}: best trial {result['trial']} val {result['metric']} {result['value']:.4f} "
                f"({result['trials_finished']} trials, {result['trials_pruned']} pruned, {result['wall_time_s']:.0f} s)"
            )
        elif isinstance(result, dict) and "missing" in result:
            typer.echo(f"{summary['task']}/{name}: skipped: {result['missing']}")
        elif isinstance(result, dict) and NOT_APPLICABLE in result:
            typer.echo(f"{summary['task']}/{name}: {NOT_APPLICABLE}: {result[NOT_APPLICABLE]}")


@app.command()
def evaluate(params: ParamsOption = Path("params.yaml"), device: DeviceOption = None) -> None:
    """Test metrics, baselines, modality ablations, generalisation, plots and the report (data/reports/report.md)."""
    from msgfm.datasets.tasks import TaskDataError
    from msgfm.evaluation.evaluate import EvaluateError, run_evaluate

    p = on_device(read_params(params), device)
    with lock_outputs("evaluate", p.evaluate.report.parent), stage_errors(EvaluateError, TaskDataError):
        metrics = run_evaluate(p)
    for task, values in metrics.items():
        scalar = sorted((k, v) for k, v in values.items() if isinstance(v, float))
        typer.echo(f"{task} (n {values['n']['chips']} chips): " + ", ".join(f"{k} {v:.4f}" for k, v in scalar))
    typer.echo(f"report: {p.evaluate.report}")
