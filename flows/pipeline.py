"""The `pipeline` flow: every DVC stage of dvc.yaml as one Prefect task, in DVC's dependency order.

The stage list and its order come from DVC itself (the stage graph of `dvc.repo.Repo.index`, ordered
the way `dvc repro` orders it), so adding a stage to dvc.yaml adds a task here without editing this
file. Each task runs `dvc repro --single-item <stage>` in a subprocess and streams its output line by
line into the Prefect run log, so a run from the UI or a schedule updates dvc.lock exactly as a shell
`dvc repro` does and skips stages whose dependencies and params did not change.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff
from pydantic import BaseModel, Field, field_validator

from flows.concurrent import run_concurrently
from flows.streaming import failure, stream
from msgfm.config import ParamsError, load_params

# Stages that train models: never retried (a failed run is a bug or a resource problem, and a retry
# would repeat hours of compute); matched on the stage name before any foreach suffix ("finetune@cls").
TRAINING_STAGES = ("pretrain", "pretrain_variant", "finetune")

OverrideValue = str | int | float | bool


class PipelineError(RuntimeError):
    """dvc.yaml, a stage selection or a params override is unusable; the message says which and why."""


class RetryPolicy(BaseModel):
    """Retries with exponential backoff for the stages that read the network; none for the others."""

    io_stages: list[str] = Field(
        default_factory=lambda: ["download"],
        description="stages that read the network: retried, and forced by retraining when the source has news",
    )
    retries: int = Field(3, ge=0, le=10, description="retries of an I/O stage after its first failure")
    backoff_s: float = Field(10.0, ge=0, le=3600, description="first retry delay; doubles on each retry")

    @field_validator("io_stages")
    @classmethod
    def _no_training_stage(cls, stages: list[str]) -> list[str]:
        training = [s for s in stages if _stage_base(s) in TRAINING_STAGES]
        if training:
            raise ValueError(f"training stages are never retried, remove {training} from io_stages")
        return stages


class StageRun(BaseModel):
    """What one task did: DVC ran the stage, skipped it (unchanged) or restored it from its run cache."""

    stage: str
    status: Literal["ran", "skipped", "restored"]
    seconds: float
    retries: int


DEFAULT_RETRY = RetryPolicy()


def _stage_base(stage: str) -> str:
    """The stage name without a foreach/matrix suffix ("finetune@cls" -> "finetune")."""
    return stage.split("@", 1)[0]


def _address(stage, root_dir: str) -> str:
    """The stage's name as `dvc repro` takes it from the repository root ("pair", "sub/dvc.yaml:stage")."""
    dvcfile = os.path.relpath(stage.dvcfile.path, root_dir)
    return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"


def plan_stages(
    repo_dir: str | Path,
    target: str | None = None,
    stages: list[str] | None = None,
    downstream_of: list[str] | None = None,
) -> list[str]:
    """Return the DVC stages to run, upstream first, as `dvc repro` would order them.

    With `target`, the stage (or foreach group) and everything upstream of it; with `stages`, exactly
    those stages in pipeline order; with `downstream_of`, those stages and everything that depends on
    them (`dvc repro --downstream`); with none, every pipeline stage of the repository.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.repo.reproduce import plan_repro
    from dvc.stage import PipelineStage

    if sum(bool(x) for x in (target, stages, downstream_of)) > 1:
        raise PipelineError("give one of: a target stage, a list of stages, stages to run downstream of")
    try:
        with Repo(str(repo_dir)) as repo:
            graph = repo.index.graph

            def collect(name: str) -> list:
                address = name if ":" in name else f"{os.path.join(repo.root_dir, 'dvc.yaml')}:{name}"
                return repo.stage.collect(address)

            if target:
                planned = plan_repro(graph, collect(target))
            elif downstream_of:
                planned = plan_repro(graph, [s for name in downstream_of for s in collect(name)], downstream=True)
            else:
                planned = plan_repro(graph)
            order = [_address(s, repo.root_dir) for s in planned if isinstance(s, PipelineStage)]
    except DvcException as e:
        raise PipelineError(f"{Path(repo_dir) / 'dvc.yaml'}: {e}") from None
    if stages:
        unknown = sorted(set(stages) - set(order) - {_stage_base(s) for s in order})
        if unknown:
            raise PipelineError(f"unknown stage(s) {unknown}; dvc.yaml defines {order}")
        order = [s for s in order if s in stages or _stage_base(s) in stages]
    return order


def _hydra_value(value: OverrideValue) -> str:
    """Format a value the way `dvc exp run -S key=value` expects it on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


REPO_ROOTS_ENV = "MSGFM_REPO_ROOTS"
"""Folders (os.pathsep-separated) a flow's `repo_dir` may be in; unset: the repository holding flows/."""


def check_repo_dir(repo_dir: str | Path) -> str:
    """The resolved `repo_dir` if it lies in an allowed root (MSGFM_REPO_ROOTS), else PipelineError.

    A flow run's parameters come from whoever can reach the Prefect API: they must not point DVC at any folder.
    """
    repo = Path(repo_dir).resolve()
    listed = os.environ.get(REPO_ROOTS_ENV, "")
    roots = [Path(r).resolve() for r in listed.split(os.pathsep) if r] or [Path(__file__).resolve().parent.parent]
    if not any(repo == root or root in repo.parents for root in roots):
        raise PipelineError(
            f"repo_dir {repo} is outside the allowed repository roots {[str(r) for r in roots]}: "
            f"add it to {REPO_ROOTS_ENV} ({os.pathsep}-separated) on the machine serving the flows"
        )
    return str(repo)


def check_override_keys(params_file: Path, keys: list[str]) -> None:
    """Refuse overrides of params outside `retrain.allowed_overrides` (sections or dotted keys) of params_file."""
    try:
        allowed = load_params(params_file).retrain.allowed_overrides
    except ParamsError as e:
        raise PipelineError(f"{params_file}: {e}") from None
    refused = [k for k in keys if not any(k == a or k.startswith(a + ".") for a in allowed)]
    if refused:
        raise PipelineError(
            f"params overrides {refused} refused: flow runs may override only {allowed} "
            f"(retrain.allowed_overrides in {params_file})"
        )


@task(name="apply params overrides")
def apply_overrides(repo_dir: str, overrides: dict[str, OverrideValue]) -> list[str]:
    """Write `key=value` overrides into params.yaml with DVC's own `-S` code, then validate the result.

    This is what `dvc exp run -S key=value` does to the workspace before reproducing; an override of
    an unknown key or one that breaks the params schema restores params.yaml and fails the run.
    """
    from dvc.exceptions import DvcException
    from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

    params_file = Path(repo_dir) / "params.yaml"
    check_override_keys(params_file, list(overrides))
    original = params_file.read_text()
    items = [f"{key}={_hydra_value(value)}" for key, value in overrides.items()]
    try:
        dvc_apply_overrides(params_file, items)
        load_params(params_file)
    except (DvcException, ParamsError) as e:
        params_file.write_text(original)
        cause = f": {e.__cause__}" if e.__cause__ else ""
        raise PipelineError(f"{params_file}: params overrides {items} rejected: {e}{cause}") from None
    get_run_logger().info("params.yaml overridden: %s", ", ".join(items))
    return items


def _stage_env(repo_dir: str) -> dict[str, str]:
    """Environment for `dvc repro`: stage commands find `msgfm` and import the repository's own code.

    The interpreter's bin dir goes first on PATH; the repository goes first on PYTHONPATH, so a stage
    runs exactly the source files that dvc.yaml lists as its dependencies (and DVC hashed).
    """
    bin_dir = str(Path(sys.executable).parent)
    pythonpath = os.pathsep.join(p for p in (repo_dir, os.environ.get("PYTHONPATH", "")) if p)
    return os.environ | {
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": pythonpath,
        "PYTHONUNBUFFERED": "1",
        "DVC_NO_ANALYTICS": "1",
    }


@task(name="dvc-repro", task_run_name="dvc repro {stage}")
def run_stage(stage: str, repo_dir: str, force: bool = False) -> StageRun:
    """Run one stage with `dvc repro --single-item`, streaming its output into the Prefect log."""
    from prefect.runtime import task_run

    logger = get_run_logger()
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage, *(["--force"] if force else [])]
    logger.info("$ dvc repro --single-item %s%s  (in %s)", stage, " --force" if force else "", repo_dir)
    started = time.monotonic()
    status: Literal["ran", "skipped", "restored"] = "ran"
    code, lines = stream(cmd, repo_dir, _stage_env(repo_dir), logger)
    if code != 0:
        raise failure(f"dvc repro {stage}", code, lines)
    if any("didn't change, skipping" in line for line in lines):
        status = "skipped"
    elif any("is cached - skipping run" in line for line in lines):
        status = "restored"
    return StageRun(
        stage=stage, status=status, seconds=round(time.monotonic() - started, 3), retries=task_run.run_count - 1
    )


def _summary_markdown(results: list[StageRun], overrides: list[str]) -> str:
    lines = ["# DVC stages", ""]
    if overrides:
        lines += [f"params overrides: `{' '.join(overrides)}`", ""]
    lines += ["| stage | status | seconds | retries |", "|---|---|---|---|"]
    lines += [f"| {r.stage} | {r.status} | {r.seconds:.1f} | {r.retries} |" for r in results]
    return "\n".join(lines) + "\n"


@flow(name="pipeline", description="Run the DVC stages of dvc.yaml in dependency order, one task each.")
def pipeline(
    target: str | None = None,
    stages: list[str] | None = None,
    overrides: dict[str, OverrideValue] | None = None,
    force: bool = False,
    force_stages: list[str] | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    repo_dir: str = ".",
    concurrency: int = 1,
) -> list[StageRun]:
    """Run the selected DVC stages upstream first; DVC skips each one whose inputs did not change.

    Args:
        target: run this stage (or foreach group) and everything upstream of it; empty: every stage.
        stages: run exactly these stages, in pipeline order (instead of a target).
        overrides: params.yaml overrides, as `dvc exp run -S key=value`, e.g. {"simulate.size_px": 96};
            the run is then saved as a DVC experiment named after the flow run.
        force: re-run the selected stages even if nothing changed (`dvc repro --force`).
        force_stages: re-run only these stages even if unchanged.
        retry: retries with exponential backoff for the stages that read the network.
        repo_dir: the msgfm repository (where dvc.yaml is).
        concurrency: stages run at once where DVC's graph permits (the pretraining variants, the four
            fine-tuning tasks); 1 (the default, right for 2 cores) runs them one after another with
            `dvc repro`. See flows/concurrent.py.
    """
    repo = check_repo_dir(repo_dir)
    logger = get_run_logger()
    order = plan_stages(repo, target=target, stages=stages)
    if not order:
        raise PipelineError(f"{repo}/dvc.yaml defines no pipeline stages")
    logger.info("stages in dependency order: %s", " -> ".join(order))
    applied = apply_overrides(repo, overrides) if overrides else []
    forced = set(force_stages or [])
    io = set(retry.io_stages)
    if concurrency < 1:
        raise PipelineError(f"concurrency must be at least 1, got {concurrency}")

    def retry_options(stage: str) -> dict:
        is_io = stage in io or _stage_base(stage) in io
        return {
            "retries": retry.retries if is_io else 0,
            "retry_delay_seconds": exponential_backoff(backoff_factor=retry.backoff_s)
            if is_io and retry.retries
            else 0,
        }

    def is_forced(stage: str) -> bool:
        return force or stage in forced or _stage_base(stage) in forced

    if concurrency > 1:
        done = run_concurrently(order, repo, _stage_env(repo), concurrency, is_forced, retry_options)
        results = [StageRun(**r) for r in done]
    else:
        results = [run_stage.with_options(**retry_options(s))(s, repo, force=is_forced(s)) for s in order]
    if applied:
        _save_experiment(repo, logger)
    create_markdown_artifact(
        markdown=_summary_markdown(results, applied),
        key="pipeline-stages",
        description="What each DVC stage did in this run",
    )
    return results


def _save_experiment(repo: str, logger) -> None:
    """Record an overridden run as a DVC experiment (what `dvc exp run -S` leaves behind): `dvc exp show`."""
    name = flow_run.get_name() or f"pipeline-{int(time.time())}"
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "save", "--force", "--name", name],
        cwd=repo,
        env=_stage_env(repo),
        capture_output=True,
        text=True,
    )
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise PipelineError(f"dvc exp save failed (exit {done.returncode}): {output}")
    logger.info("saved as DVC experiment %r: %s", name, output)
