"""The `msgfm` typer app and what its commands share: params loading, the output lock, error reporting, options.

Each command loads and validates params.yaml (or `--params FILE`), takes the lock of the folder it writes
(`lock_outputs`), then calls the stage's implementation in the library. Heavy imports happen inside the
commands so `--help` stays fast.
"""

from __future__ import annotations

import contextlib
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
def stage_errors(*errors: type[Exception], code: int = 1) -> Iterator[None]:
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


def read_params(params_path: Path) -> Params:
    """Load params or exit with the validation message (no traceback)."""
    setup_logging()
    for noisy in ("great_expectations", "ray", "filelock", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with stage_errors(ParamsError, code=2):
        return load_params(params_path)


def on_device(p: Params, device: str | None) -> Params:
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
def lock_outputs(stage: str, out_dir: Path) -> Iterator[None]:
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


def run_gate(run: Callable[[], Any]) -> None:
    """Run a gate and report it: exit 1 when it fails (its message says why), 2 when an input is missing or stale."""
    from msgfm.chips.store import ChipStoreError
    from msgfm.validation.gates import GateFailed

    with stage_errors(FileNotFoundError, ChipStoreError, code=2), stage_errors(GateFailed):
        result = run()
        result.raise_if_failed()
    typer.echo(result.message)
