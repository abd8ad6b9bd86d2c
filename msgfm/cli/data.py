"""The data stages: simulate, download, co-register, pair, and the Great Expectations gate after each."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from msgfm.cli._app import ParamsOption, app, lock_outputs, read_params, run_gate, stage_errors


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

    p = read_params(params)
    cfg = p.simulate if until is None else p.simulate.model_copy(update={"until": until.date()})
    with lock_outputs("simulate", cfg.out_dir), stage_errors(SimulateError, code=2):
        simulate_world(cfg, seed=p.seed)
        if preview is not None:
            write_preview(Path(cfg.out_dir), cfg, preview)


@app.command(name="download")
def download_cmd(params: ParamsOption = Path("params.yaml")) -> None:
    """Fetch every new acquisition of the source into data/raw and update the acquisitions ledger."""
    from msgfm.ingest.download import download
    from msgfm.ingest.sources import SourceError

    p = read_params(params)
    with lock_outputs("download", p.download.out_dir), stage_errors(SourceError):
        summary = download(p.source, p.download, ray_cfg=p.ray)
    typer.echo(
        f"download: {summary.items} items offered, {summary.fetched} fetched, {summary.skipped} already present, "
        f"{summary.failed} failed (see {p.download.out_dir / 'acquisitions.parquet'}), {summary.bytes} bytes"
    )


@app.command(name="validate_raw")
def validate_raw_cmd(params: ParamsOption = Path("params.yaml")) -> None:
    """Raw gate: check every downloaded acquisition with Great Expectations; quarantine the bad ones."""
    from msgfm.validation.raw import validate_raw

    p = read_params(params)
    with lock_outputs("validate_raw", p.gates.dir):
        run_gate(
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

    p = read_params(params)
    cfg = p.coregister
    with lock_outputs("coregister", cfg.out_dir), stage_errors(CoregisterError, code=2):
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

    p = read_params(params)
    with lock_outputs("validate_coreg", p.gates.dir):
        run_gate(
            lambda: validate_coreg(
                p.coregister.out_dir, p.coregister, p.gates, gates_dir=p.gates.dir, reports_dir=p.gates.reports_dir
            )
        )


@app.command(name="pair")
def pair_cmd(params: ParamsOption = Path("params.yaml")) -> None:
    """Cut accepted co-registered rasters into chips, pair S1-S2 and RGB-DSM, split by blocks, fill the store."""
    from msgfm.chips.pairing import PairError, pair
    from msgfm.decisions import gate_table

    p = read_params(params)
    with lock_outputs("pair", p.pair.out_dir), stage_errors(PairError, code=2):
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

    p = read_params(params)
    with lock_outputs("validate_pairs", p.gates.dir):
        run_gate(lambda: validate_pairs(p.pair, p.gates, gates_dir=p.gates.dir, reports_dir=p.gates.reports_dir))
