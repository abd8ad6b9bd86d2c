"""The Ray connection every Ray stage shares (msgfm/cluster/connect.py)."""

from __future__ import annotations

import ray

from msgfm.cluster.connect import connect_ray
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
