"""The `ray` params section: where Ray runs, for the data stages' tasks and the training stages (msgfm.cluster)."""

from __future__ import annotations

from pydantic import Field

from msgfm.config.base import Section


class RayParams(Section):
    """Where Ray runs (pretraining, parallel trials, the data stages' tasks): a local instance, or a cluster."""

    address: str | None = Field(None, description="join this cluster (host:port or 'auto'); null: RAY_ADDRESS or local")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local instance; null: all of this machine's")
    include_dashboard: bool = Field(False, description="start the dashboard (bound to 127.0.0.1) with a local instance")
    data_workers: int = Field(
        1, ge=1, le=1024, description="Ray tasks at once for download's items, coregister's and pair's AOIs; 1: inline"
    )
