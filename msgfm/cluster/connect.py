"""Joining the configured Ray cluster, or starting a local instance on loopback: pretraining and tuning share it."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from msgfm.cluster.quiet import runtime_env

if TYPE_CHECKING:
    from msgfm.config import RayParams

log = logging.getLogger(__name__)

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch (ray._private.ray_constants.ENABLE_RAY_CLUSTER) between a loopback-only node and a cluster node."""


TEMP_PREFIX = "msgfm-ray-"
"""Prefix of the temp dirs of the local instances msgfm starts (removed again by `shutdown_ray`)."""


class RayClusterError(RuntimeError):
    """The cluster cannot be joined, or the local instance cannot hold the workers asked for."""


def connect_ray(cfg: RayParams, workers: int, threads: int, workers_key: str) -> bool:
    """Join `ray.address` (or RAY_ADDRESS) or start a local instance sized for `workers` x `threads` CPUs;
    True when this call started Ray (the caller then shuts it down). `workers_key` names the param in errors."""
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    imported_before = "ray" in sys.modules
    if not address:
        # Ray reads this when imported: off, a local instance's GCS and raylets listen on 127.0.0.1 only (on
        # Linux they would listen on every interface); `_node_ip_address` alone is resolved back to the LAN IP.
        os.environ.setdefault(LOCAL_ONLY_ENV, "0")
    import ray

    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address, log_to_driver=True, runtime_env=runtime_env())
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RayClusterError(
                f"cannot join the Ray cluster at {address!r} (ray.address / RAY_ADDRESS): {e}"
            ) from None
        return True
    cpus = cfg.num_cpus or os.cpu_count() or 1
    if workers > cpus:
        raise RayClusterError(
            f"{workers_key}={workers} needs {workers} CPUs but the local Ray instance has {cpus}; "
            f"lower {workers_key} or set ray.address to join a cluster"
        )
    if workers * threads > cpus:
        log.warning("workers x threads = %d exceeds the %d CPUs; threads will compete", workers * threads, cpus)
    ray.init(
        address="local",  # a new instance: never join a cluster another process started with `ray start` here
        num_cpus=cpus,
        _temp_dir=local_temp_dir(),
        include_dashboard=cfg.include_dashboard,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        log_to_driver=True,
        runtime_env=runtime_env(),
    )
    ip = ray.util.get_node_ip_address()
    if ip != "127.0.0.1":
        why = (
            f"ray was imported before msgfm connected, so {LOCAL_ONLY_ENV}=0 came too late"
            if imported_before
            else f"{LOCAL_ONLY_ENV}={os.environ.get(LOCAL_ONLY_ENV)}"
        )
        log.warning(
            "the local Ray instance listens on %s, not only on loopback: %s; export %s=0 before Python starts "
            "to keep it on 127.0.0.1", ip, why, LOCAL_ONLY_ENV,
        )  # fmt: skip
    return True


def shutdown_ray() -> None:
    """Shut down the Ray instance this process started and remove the temp dir `local_temp_dir` gave it."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    temp = Path(node.get_temp_dir_path()) if node is not None else None
    ray.shutdown()
    if temp is not None and temp.name.startswith(TEMP_PREFIX):
        shutil.rmtree(temp, ignore_errors=True)


def local_temp_dir() -> str:
    """A fresh folder for a local instance's sessions, sockets and logs, so that two instances on one machine (two
    pipelines, a test beside a pipeline, two users) never share Ray's default /tmp/ray and its session_latest link.

    Kept short (the system temp dir, not the project): Ray puts Unix sockets in it, whose paths are capped at 107
    bytes. Ray picks free ports for its GCS and workers by itself.
    """
    path = tempfile.mkdtemp(prefix=TEMP_PREFIX)
    log.info("local Ray instance: temp dir %s", path)
    return path
