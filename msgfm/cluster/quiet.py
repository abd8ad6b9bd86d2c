"""Ray's log noise around pretraining: warnings Ray logs on every healthy run, silenced at their loggers.

`runtime_env()` is the runtime environment of the Ray job a stage starts or joins; its setup hook runs
in every Ray worker process of the job (the Train controller and the training workers).
"""

from __future__ import annotations

import logging

PLACEMENT_GROUP_CLEANER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
COORDINATOR_CLIENT = "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"


class DropCoordinatorStartupTimeout(logging.Filter):
    """Drop Ray Train's traceback when its resource request to the AutoscalingCoordinator times out.

    The Train controller's first request creates the coordinator, a detached actor in a fresh worker
    process that imports Ray Data, and waits 5 s for its answer; on a busy machine the actor is not up by
    then, the wait times out and Ray logs "Failed to send resource request ..." with a traceback, then
    sends the request again on its next poll, which succeeds. Without an autoscaler (a local instance) the
    request changes nothing either way. Only that timeout is dropped; any other failure still shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) for the timed-out resource request, True for every other record."""
        from ray.exceptions import GetTimeoutError

        error = record.exc_info[1] if record.exc_info else None
        timed_out = isinstance(error, GetTimeoutError)
        return not (timed_out and record.getMessage().startswith("Failed to send resource request"))


def quiet_ray_workers() -> None:
    """Ray worker setup hook: silence the placement-group cleaner, which without the dashboard cannot reach
    Ray's state API and warns about it every second of the run, and the coordinator's startup timeout."""
    logging.getLogger(PLACEMENT_GROUP_CLEANER).setLevel(logging.ERROR)
    logging.getLogger(COORDINATOR_CLIENT).addFilter(DropCoordinatorStartupTimeout())


def runtime_env() -> dict:
    """A fresh runtime environment for each `ray.init`: Ray writes the exported hook into the dict it is given,
    and a second `ray.init` in the same process would then refuse the stale hook as a conflicting one."""
    return {"worker_process_setup_hook": quiet_ray_workers}
