"""`python -m flows.serve` (or `msgfm serve`): serve the two deployments from this process.

- `pipeline`: on demand, for the UI's Run button (its parameters form comes from the flow signature).
- `retrain-on-new-acquisitions`: on the cron schedule of params.yaml `retrain.cron` / `retrain.timezone`.

Schedules need a running Prefect server (a temporary one cannot schedule): start it with
`prefect server start --host 127.0.0.1` and `export PREFECT_API_URL=http://127.0.0.1:4200/api`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.pipeline import pipeline
from flows.retrain import retrain
from msgfm.config import load_params

PIPELINE_DEPLOYMENT = "pipeline"
RETRAIN_DEPLOYMENT = "retrain-on-new-acquisitions"


def build_deployments(params_path: str | Path = "params.yaml") -> list[RunnerDeployment]:
    """The two deployments, bound to the repository that holds `params_path`."""
    params_path = Path(params_path).resolve()
    cfg = load_params(params_path).retrain
    repo_dir = str(params_path.parent)
    return [
        pipeline.to_deployment(
            name=PIPELINE_DEPLOYMENT,
            description="Run the DVC stages of dvc.yaml (all, a target and its upstream, or a list) on demand.",
            parameters={"repo_dir": repo_dir},
            tags=["msgfm"],
        ),
        retrain.to_deployment(
            name=RETRAIN_DEPLOYMENT,
            description=f"Poll the source on '{cfg.cron}' ({cfg.timezone}); rerun the pipeline on new acquisitions.",
            schedules=[Cron(cfg.cron, timezone=cfg.timezone)],
            parameters={"repo_dir": repo_dir},
            tags=["msgfm"],
        ),
    ]


def api_problem() -> str | None:
    """Why the configured Prefect API cannot take deployments, or None when it can."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return (
            "PREFECT_API_URL is not set. Start a server with `prefect server start --host 127.0.0.1` and "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api` (a temporary server cannot run schedules)."
        )
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as e:
        return f"the Prefect API at {url} does not answer ({e}); is `prefect server start --host 127.0.0.1` running?"
    return None


def main(params_path: str | Path = "params.yaml") -> None:
    """Serve both deployments until interrupted; exit with a message if no Prefect server is reachable."""
    from prefect import serve

    problem = api_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    serve(*build_deployments(params_path))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
