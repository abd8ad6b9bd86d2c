"""`msgfm <stage>`: the commands dvc.yaml runs, one per pipeline stage, and the GeoTIFF utilities.

The app and the helpers its commands share live in `_app`; the commands in `data` (data stages and their gates),
`training` (pretrain, finetune, evaluate) and `inference` (embed, predict). Importing them registers them.
"""

from __future__ import annotations

from msgfm.cli import data, inference, training
from msgfm.cli._app import ENVIRONMENT_EXIT, LOCK_BUSY_EXIT, app

__all__ = ["ENVIRONMENT_EXIT", "LOCK_BUSY_EXIT", "app", "data", "inference", "main", "training"]


def main() -> None:
    """Console-script entry point."""
    app()
