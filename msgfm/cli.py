"""`msgfm <stage>`: the commands dvc.yaml runs, one per pipeline stage.

Each command loads and validates params.yaml (or `--params FILE`), then calls the stage's
implementation in the library. Heavy imports happen inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Annotated

import typer

from msgfm.config import Params, ParamsError, load_params

app = typer.Typer(
    name="msgfm",
    help="msGFM: multisensor geospatial foundation model pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[Path, typer.Option("--params", help="params file to read instead of params.yaml")]


def _load(params_path: Path) -> Params:
    """Load params or exit with the validation message (no traceback)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return load_params(params_path)
    except ParamsError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


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
    from msgfm.data.simulate import simulate_world

    p = _load(params)
    cfg = p.simulate if until is None else p.simulate.model_copy(update={"until": until.date()})
    simulate_world(cfg, seed=p.seed, preview=preview)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
