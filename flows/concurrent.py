"""Independent DVC stages at once: the pipeline flow's path when `concurrency` > 1.

`dvc repro` holds the repository lock for its whole run, so two stages cannot be reproduced by DVC at
the same time. Here the flow itself walks DVC's graph: a stage is ready when every stage it depends on
is done; for each ready stage DVC is asked whether it changed (`dvc status`), the changed stages'
commands (`cmd` of dvc.yaml, with the environment `dvc repro` would give them) run as concurrent Prefect
tasks, at most `concurrency` at a time, and each finished stage is recorded with `dvc commit --force`,
which hashes its outputs into the cache and writes its dvc.lock entry as `dvc repro` does. Every DVC
call stays in the flow's own thread, one at a time; only the stage commands overlap, and each msgfm stage
holds a lock on its own output folder. The Prefect UI's timeline shows the overlapping task runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.futures import as_completed

from flows.streaming import StageFailed, failure, stream

DVC = [sys.executable, "-m", "dvc"]


def stage_dependencies(repo_dir: str | Path, order: list[str]) -> dict[str, set[str]]:
    """For each stage of `order`, the stages of `order` it depends on directly (DVC's graph)."""
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    from flows.pipeline import _address

    with Repo(str(repo_dir)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages whose outputs it reads
        names = {s: _address(s, repo.root_dir) for s in graph.nodes if isinstance(s, PipelineStage)}
        wanted = set(order)
        return {
            names[s]: {names[d] for d in graph.successors(s) if d in names and names[d] in wanted}
            for s in names
            if names[s] in wanted
        }


def stage_commands(repo_dir: str | Path, order: list[str]) -> dict[str, str]:
    """The shell command of each stage of `order`, as dvc.yaml defines it (foreach items resolved)."""
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    from flows.pipeline import _address

    with Repo(str(repo_dir)) as repo:
        stages = [s for s in repo.index.stages if isinstance(s, PipelineStage)]
        return {_address(s, repo.root_dir): s.cmd for s in stages if _address(s, repo.root_dir) in order}


def _dvc(args: list[str], repo_dir: str, env: dict[str, str]) -> str:
    """Run a DVC command in the flow's thread; a failure raises with its output."""
    done = subprocess.run([*DVC, *args], cwd=repo_dir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise StageFailed(f"dvc {' '.join(args)} exited with code {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def changed(stage: str, repo_dir: str, env: dict[str, str]) -> bool:
    """Whether DVC would run the stage: its deps, params, outputs or command differ from dvc.lock."""
    return bool(json.loads(_dvc(["status", "--json", stage], repo_dir, env) or "{}"))


@task(name="stage-command", task_run_name="{stage}")
def run_command(stage: str, cmd: str, repo_dir: str, env: dict[str, str]) -> float:
    """Run one stage's command (as `dvc repro` would), streaming its output into the Prefect log; seconds."""
    logger = get_run_logger()
    logger.info("$ %s  (stage %s, in %s)", cmd, stage, repo_dir)
    started = time.monotonic()
    code, lines = stream(cmd, repo_dir, env, logger)
    if code != 0:
        raise failure(f"stage {stage}: `{cmd}`", code, lines)
    return time.monotonic() - started


def run_concurrently(
    order: list[str],
    repo_dir: str,
    env: dict[str, str],
    concurrency: int,
    is_forced: Callable[[str], bool],
    retry_options: Callable[[str], dict[str, Any]],
) -> list[dict[str, Any]]:
    """Run `order`'s stages as DVC's graph permits, at most `concurrency` commands at a time (each with its
    `retry_options`); what each did."""
    logger = get_run_logger()
    deps = stage_dependencies(repo_dir, order)
    commands = stage_commands(repo_dir, order)
    done: dict[str, dict[str, Any]] = {}
    running: dict[Any, str] = {}
    pending = list(order)
    while pending or running:
        ready = [s for s in pending if deps[s] <= set(done)]
        for stage in ready:
            if len(running) >= concurrency:
                break
            pending.remove(stage)
            if not is_forced(stage) and not changed(stage, repo_dir, env):
                logger.info("stage %s didn't change, skipping", stage)
                done[stage] = {"stage": stage, "status": "skipped", "seconds": 0.0, "retries": 0}
                continue
            runner = run_command.with_options(**retry_options(stage))
            running[runner.submit(stage, commands[stage], repo_dir, env)] = stage
        if not running:
            if pending and not [s for s in pending if deps[s] <= set(done)]:
                raise RuntimeError(f"stages {pending} wait on stages that are not in the plan")
            continue
        future = next(as_completed(list(running)))
        stage = running.pop(future)
        seconds = future.result()  # a failed command raises here: the flow fails and the stage is not committed
        _dvc(["commit", "--force", stage], repo_dir, env)
        done[stage] = {"stage": stage, "status": "ran", "seconds": round(seconds, 3), "retries": 0}
    return [done[s] for s in order]
