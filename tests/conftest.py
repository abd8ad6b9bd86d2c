"""Shared fixtures. Tests never touch the network, a GPU, or servers they did not start."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DO_NOT_TRACK", "1")
# test modules import ray before msgfm.cluster.connect can set this: the local instances they start listen on
# loopback only (tests/test_cluster.py checks it)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Prefect reads PREFECT_HOME when it is first imported: point it at a throwaway folder before any test
# imports prefect, so tests never touch ~/.prefect or a server the developer runs; tests use
# prefect_test_harness (tests/test_flows.py) for their own temporary server.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="msgfm-prefect-home-")
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# flows accept a repo_dir only inside MSGFM_REPO_ROOTS (flows/pipeline.py): the tests' repositories are temporary
os.environ.setdefault("MSGFM_REPO_ROOTS", tempfile.gettempdir())

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def test_data() -> Path:
    return TEST_DATA


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder with a tiny simulated world already run through every data stage (see tiny_world.py)."""
    from tiny_world import build_tiny_world

    return build_tiny_world(tmp_path_factory.mktemp("tiny-world"), REPO_ROOT)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The model tests' micro msGFM after one optimizer step (so no weight is at its initial value), saved to disk."""
    import torch
    from model_fixtures import MICRO

    from msgfm.models import create_model
    from msgfm.models.hub import save_pretrained
    from msgfm.sensors import S2_L2A_BANDS

    torch.manual_seed(0)
    model = create_model("msgfm_tiny", **MICRO)
    g = torch.Generator().manual_seed(0)
    batch = {"images": {"s2": torch.randn(2, 12, 32, 32, generator=g)}, "bands": {"s2": S2_L2A_BANDS}}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(batch, generator=g).loss.backward()
    opt.step()
    directory = tmp_path_factory.mktemp("model") / "pretrain"
    save_pretrained(model, directory, extra={"run": "test"})
    return model.eval(), directory
