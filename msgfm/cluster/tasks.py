"""Independent per-item work (an AOI to co-register, an acquisition to fetch) as Ray tasks, results in input order.

`map_ordered(fn, jobs, workers=1, ...)` is a plain loop in this process; with `workers > 1` each job becomes a
Ray remote call of one CPU on the instance or cluster of `ray.address` (msgfm.cluster.connect), at most
`workers` in flight. Either way the results come back in the order of `jobs`, so a stage that writes them
in that order writes the same bytes however they ran, and the progress bar moves as each job finishes.
A job's exception reaches the caller as its own type (Ray's `RayTaskError` derives from it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from tqdm import tqdm

from msgfm.cluster.connect import connect_ray, shutdown_ray

if TYPE_CHECKING:
    from msgfm.config import RayParams

T = TypeVar("T")


def map_ordered(
    fn: Callable[..., T],
    jobs: Sequence[tuple[Any, ...]],
    *,
    workers: int = 1,
    ray_cfg: RayParams | None = None,
    weights: Sequence[int] | None = None,
    desc: str = "",
    unit: str = "item",
    progress: bool = True,
) -> list[T]:
    """`[fn(*job) for job in jobs]`, as Ray tasks when `workers > 1`; a tqdm bar of `weights` (default 1 per job)."""
    weights = list(weights) if weights is not None else [1] * len(jobs)
    with tqdm(total=sum(weights), desc=desc, unit=unit, disable=not progress) as bar:
        if workers <= 1 or len(jobs) <= 1:
            results = []
            for job, weight in zip(jobs, weights, strict=True):
                results.append(fn(*job))
                bar.update(weight)
            return results
        return _on_ray(fn, jobs, workers, ray_cfg, weights, bar)


def _on_ray(
    fn: Callable[..., T],
    jobs: Sequence[tuple[Any, ...]],
    workers: int,
    ray_cfg: RayParams | None,
    weights: list[int],
    bar: tqdm,
) -> list[T]:
    """Submit the jobs as Ray tasks, at most `workers` at once; gather them in input order."""
    import ray

    from msgfm.config import RayParams

    started = connect_ray(ray_cfg or RayParams(), workers, 1, "ray.data_workers")
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        results: dict[int, T] = {}
        pending: dict[Any, int] = {}
        queue = iter(enumerate(jobs))
        for index, job in queue:
            pending[remote.remote(*job)] = index
            if len(pending) >= workers:
                break
        while pending:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done)
            results[index] = ray.get(done)
            bar.update(weights[index])
            for next_index, job in queue:
                pending[remote.remote(*job)] = next_index
                break
        return [results[i] for i in range(len(jobs))]
    finally:
        if started:
            shutdown_ray()
