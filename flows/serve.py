"""`msgfm-serve` (or `python -m flows.serve`): serve the deployments of flows/deployments.py from this process.

Schedules need a running Prefect server (a temporary one cannot schedule): start it with
`prefect server start --host 127.0.0.1` and `export PREFECT_API_URL=http://127.0.0.1:4200/api`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from flows.deployments import build_deployments
from msgfm.config import ParamsError, load_params

app = typer.Typer(name="msgfm-serve", add_completion=False, pretty_exceptions_enable=False)


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


@app.command()
def serve(
    params: Annotated[Path, typer.Option("--params", help="params file to read instead of params.yaml")] = Path(
        "params.yaml"
    ),
) -> None:
    """Serve the Prefect deployments `pipeline` (on demand) and `retrain-on-new-acquisitions` (cron from params)."""
    try:
        load_params(params)
    except ParamsError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API call otherwise
    problem = api_problem()
    if problem:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    from prefect import serve as prefect_serve

    prefect_serve(*build_deployments(params))


def main() -> None:
    """Console-script entry point (`msgfm-serve`)."""
    app()


if __name__ == "__main__":
    main()
