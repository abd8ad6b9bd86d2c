"""The Ray connection every Ray stage shares (msgfm/cluster/connect.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import ray
from dvc_repo import REPO_ROOT

from msgfm.cluster.connect import TEMP_PREFIX, connect_ray, shutdown_ray
from msgfm.config import RayParams


@ray.remote(num_cpus=1)
def _hook_ran() -> bool:
    """True when the worker's setup hook silenced the placement-group cleaner."""
    import logging

    from msgfm.cluster.quiet import PLACEMENT_GROUP_CLEANER

    return logging.getLogger(PLACEMENT_GROUP_CLEANER).level == logging.ERROR


def test_a_second_local_instance_in_the_same_process_starts_with_its_setup_hook():
    """Stages run one after another in one process (the flows, the test suite): the second ray.init used to
    fail with "Conflicting worker_process_setup_hook" because Ray had written the first hook into a shared dict."""
    cfg = RayParams(num_cpus=1)
    for _ in range(2):
        assert connect_ray(cfg, 1, 1, "ray.data_workers") is True
        try:
            assert ray.get(_hook_ran.remote()) is True
        finally:
            ray.shutdown()


SIDE_BY_SIDE = """
import sys, time
import ray
from msgfm.cluster.connect import connect_ray
from msgfm.config import RayParams

assert connect_ray(RayParams(num_cpus=1), 1, 1, "ray.data_workers") is True
square = ray.remote(num_cpus=1)(lambda x: x * x)
print("up", ray._private.worker._global_node.get_temp_dir_path(), flush=True)
sys.stdin.readline()  # wait until the other instance is up too
print("result", sum(ray.get([square.remote(i) for i in range(5)])), flush=True)
ray.shutdown()
"""


@pytest.mark.slow  # two local Ray instances start and run side by side: ~20 s idle, more under load
def test_two_local_instances_from_two_processes_run_side_by_side():
    """Two processes (two pipelines, or a test beside a pipeline) each start a local instance: both come up, each in
    its own temp dir, and both run tasks while the other is up."""
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SIDE_BY_SIDE],
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(2)
    ]
    try:
        ups = [p.stdout.readline().split() for p in procs]  # both instances are up at once now
        assert [u[0] for u in ups] == ["up", "up"], ups
        assert ups[0][1] != ups[1][1] and not any(u[1].startswith("/tmp/ray") for u in ups)
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0]
    assert all("result 30" in out for out in outs), outs


def test_a_local_instance_listens_on_loopback_only_and_leaves_no_temp_dir():
    """The GCS and the node address are 127.0.0.1 (not the LAN address every interface would expose), and
    shutdown_ray removes the instance's own temp dir (/tmp used to collect one per run)."""
    assert connect_ray(RayParams(num_cpus=1), 1, 1, "ray.data_workers") is True
    try:
        node = ray._private.worker._global_node
        temp = node.get_temp_dir_path()
        assert node.node_ip_address == "127.0.0.1" and node.gcs_address.startswith("127.0.0.1:"), node.gcs_address
        assert os.path.basename(temp).startswith(TEMP_PREFIX) and os.path.isdir(temp)
    finally:
        shutdown_ray()
    assert not ray.is_initialized() and not os.path.exists(temp)
