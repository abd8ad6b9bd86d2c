"""The `retrain-on-new-acquisitions` flow: poll the source, rerun the pipeline on news, gate the new model.

1. Take the retraining lock (params `retrain.lock_path`); a second run exits at once (state Skipped)
   naming the holder, or waits `retrain.lock_wait_s` seconds for it.
2. Ask the configured source (msgfm.ingest.sources, the same listing `msgfm download` uses) for its
   acquisitions and compare them with the ledger `data/raw/acquisitions.parquet`. Nothing new: the run
   finishes Completed with a message and runs no stage.
3. News: run the `pipeline` flow on the network stages (`retry.io_stages`, i.e. download) and every
   stage downstream of them. The network stages are forced, because DVC cannot see that a remote STAC
   API has new items; download fetches only the items missing from the ledger, and DVC skips every later
   stage whose inputs did not change. Stages upstream of download (the simulator publishing the embedded
   source) are not run: the source is taken as it is now. No ledger yet: every stage of dvc.yaml runs.
   Params overrides (flow parameter `overrides`, as `dvc exp run -S`) are applied to params.yaml first, so
   a challenger can be trained with other params; the run is then saved as a DVC experiment.
4. Champion/challenger: if the evaluate stage wrote its test metrics, compare them with the champion's
   in the registry (`msgfm.registry.compare`) and record the decision; the table is a Markdown artifact.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, State
from prefect.tasks import exponential_backoff
from pydantic import BaseModel, Field

from flows.lock import LockBusy, RunLock
from flows.pipeline import (
    DEFAULT_RETRY,
    OverrideValue,
    RetryPolicy,
    check_override_keys,
    check_repo_dir,
    pipeline,
    plan_stages,
)
from msgfm.config import Params, RetrainParams, load_params
from msgfm.geo.io import sha256_file
from msgfm.registry import compare, load_registry, record_decision


class Acquisitions(BaseModel):
    """What the source offers that the ledger does not list yet."""

    offered: int
    in_ledger: int
    new_ids: list[str]
    first_run: bool


def new_acquisitions(repo_dir: str | Path) -> Acquisitions:
    """List the source's acquisitions and return those missing from the acquisitions ledger."""
    from msgfm.ingest.download import read_ledger
    from msgfm.ingest.sources import iter_items

    with contextlib.chdir(repo_dir):  # params paths (source.href, download.out_dir) are relative to the repo
        params = load_params("params.yaml")
        ledger = read_ledger(params.download.out_dir)
        first_run = ledger.empty
        if first_run and params.source.kind == "static" and not _is_published(params):
            return Acquisitions(offered=0, in_ledger=0, new_ids=[], first_run=True)
        offered = [rec.id for rec in iter_items(params.source, limits=params.download)]
    known = set(ledger["id"].astype(str))
    new_ids = sorted(set(offered) - known)
    return Acquisitions(offered=len(offered), in_ledger=len(known), new_ids=new_ids, first_run=first_run)


@task(name="poll source", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=10))
def poll_source(repo_dir: str) -> Acquisitions:
    """The source's acquisitions missing from the ledger (retried: the source may be a remote API)."""
    news = new_acquisitions(repo_dir)
    get_run_logger().info(
        "source offers %d acquisitions, ledger lists %d, new: %d%s",
        news.offered,
        news.in_ledger,
        len(news.new_ids),
        " (no ledger yet: first run)" if news.first_run else "",
    )
    return news


def _is_published(params: Params) -> bool:
    """Whether a local static catalog exists (a URL is assumed to exist; the listing will tell)."""
    from msgfm.ingest.sources import is_url

    return is_url(params.source.href) or Path(params.source.href).is_file()


@task(name="champion/challenger")
def gate_challenger(repo_dir: str, cfg: RetrainParams) -> str:
    """Compare the evaluated model with the champion, record the decision, publish the table."""
    repo = Path(repo_dir)
    metrics_file = repo / cfg.metrics_path
    if not metrics_file.is_file():
        message = f"no evaluation stage yet ({cfg.metrics_path} does not exist), nothing to promote"
        create_markdown_artifact(markdown=f"# Champion / challenger\n\n{message}.\n", key="champion-challenger")
        return message
    challenger = json.loads(metrics_file.read_text())
    registry_file = repo / cfg.registry_path
    champion = (load_registry(registry_file).get("champion") or {}).get("metrics")
    decision = compare(champion, challenger, cfg.tolerance)
    lock_sha = sha256_file(repo / "dvc.lock")
    # Keep the dvc.lock this model came from: `dvc checkout` with it restores the model from the DVC cache.
    kept_lock = registry_file.parent / "locks" / f"{lock_sha}.dvc.lock"
    kept_lock.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(repo / "dvc.lock", kept_lock)
    run_name = flow_run.get_name() or "manual"
    record_decision(
        registry_file,
        decision,
        challenger,
        model_id=f"{run_name}-{lock_sha[:12]}",
        dvc_lock_sha256=lock_sha,
        run_id=flow_run.get_id(),
    )
    create_markdown_artifact(markdown=decision.to_markdown(), key="champion-challenger", description=decision.reason)
    return ("promoted: " if decision.promote else "not promoted: ") + decision.reason


@flow(name="retrain-on-new-acquisitions", description="Rerun the pipeline when the source has new acquisitions.")
def retrain(
    repo_dir: str = ".",
    overrides: dict[str, OverrideValue] | None = None,
    lock_wait_s: Annotated[float | None, Field(ge=0)] = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> State:
    """Poll the source; on new acquisitions rerun the pipeline and gate the new model; else do nothing.

    Args:
        repo_dir: the msgfm repository (where dvc.yaml is).
        overrides: params.yaml overrides for the challenger, as `dvc exp run -S key=value`, e.g.
            {"finetune.trials": 5}; applied only when there is something new, and left in params.yaml.
        lock_wait_s: seconds to wait for a running retrain before giving up (empty: params retrain.lock_wait_s).
        retry: retries with exponential backoff for the stages that read the network.
    """
    repo = check_repo_dir(repo_dir)
    check_override_keys(Path(repo) / "params.yaml", list(overrides or {}))
    logger = get_run_logger()
    cfg = load_params(Path(repo) / "params.yaml").retrain
    lock = RunLock(Path(repo) / cfg.lock_path, run=flow_run.get_name())
    try:
        lock.acquire(timeout_s=cfg.lock_wait_s if lock_wait_s is None else lock_wait_s)
    except LockBusy as busy:
        message = f"another retraining run is working ({busy}); this run did nothing"
        logger.warning(message)
        return Completed(name="Skipped", message=message, data={"ran_pipeline": False, "reason": "locked"})
    try:
        news = poll_source(repo)
        if not news.new_ids and not news.first_run:
            message = f"no new acquisitions: the source's {news.offered} items are all in the ledger; nothing to do"
            logger.info(message)
            return Completed(message=message, data={"ran_pipeline": False, "reason": "nothing new"})
        every_stage = plan_stages(repo)
        io_present = [s for s in every_stage if s in retry.io_stages or s.split("@")[0] in retry.io_stages]
        if news.first_run or not io_present:
            why = "first run (no ledger yet)" if news.first_run else f"{len(news.new_ids)} new acquisitions"
            stages = every_stage
        else:
            # The source changed, not the stages that publish it: run the network stages and what depends on them.
            why = f"{len(news.new_ids)} new acquisitions"
            stages = plan_stages(repo, downstream_of=io_present)
        logger.info("%s: running %s, forcing %s", why, " -> ".join(stages), io_present or "nothing")
        results = pipeline(repo_dir=repo, stages=stages, overrides=overrides, force_stages=io_present, retry=retry)
        promotion = gate_challenger(repo, cfg)
        ran = [r.stage for r in results if r.status != "skipped"]
        message = f"{why}; stages re-run: {', '.join(ran) or 'none'}; {promotion}"
        logger.info(message)
        data: dict[str, Any] = {"ran_pipeline": True, "new_ids": news.new_ids, "stages_run": ran, "gate": promotion}
        return Completed(message=message, data=data)
    finally:
        lock.release()
