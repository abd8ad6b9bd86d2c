"""Errors raised in DataLoader workers, raised again in the main process as themselves.

torch re-raises a worker's exception as a new one whose message is "Caught X in DataLoader worker process 0" plus
the worker's traceback (or as a RuntimeError when X cannot be rebuilt from one string), so a bad file's clear
message (msgfm's data errors name the file and the problem) reached the user buried in a traceback. Here the
worker catches the error and returns it as the sample or batch; the loader raises the original exception in the
main process, with the worker's traceback kept as a note (shown by Python, not by the CLI's one-line `error:`).
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, IterableDataset


class WorkerFailure:
    """An exception caught in a worker, carried back to the main process in place of a sample or batch."""

    def __init__(self, error: BaseException) -> None:
        error.add_note(f"raised in a DataLoader worker:\n{''.join(traceback.format_exception(error)).rstrip()}")
        try:
            pickle.dumps(error)
        except Exception:  # an exception that cannot travel: its type and message can
            error = RuntimeError(f"{type(error).__name__}: {error}")
        self.error = error


class CatchingDataset(Dataset):
    """A map-style dataset whose `__getitem__` returns a WorkerFailure instead of raising."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except Exception as e:
            return WorkerFailure(e)


class CatchingIterable(IterableDataset):
    """An iterable dataset that yields a WorkerFailure and stops where its iterator would raise."""

    def __init__(self, dataset: IterableDataset) -> None:
        super().__init__()
        self.dataset = dataset

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self.dataset
        except Exception as e:
            yield WorkerFailure(e)


def catching_collate(collate: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    """`collate` passing on the first WorkerFailure among the samples, and returning its own error as one."""

    def run(samples: list[Any]) -> Any:
        failed = next((s for s in samples if isinstance(s, WorkerFailure)), None)
        if failed is not None:
            return failed
        try:
            return collate(samples)
        except Exception as e:
            return WorkerFailure(e)

    return run


class ClearErrorLoader(DataLoader):
    """A DataLoader over a Catching* dataset: a WorkerFailure coming out is raised as its original exception."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        for batch in super().__iter__():
            if isinstance(batch, WorkerFailure):
                raise batch.error
            yield batch


def clear_error_loader(dataset: Any, workers: int, **kwargs: Any) -> DataLoader:
    """A DataLoader over `dataset` (`kwargs` as DataLoader's); with `workers` > 0, read by that many processes
    whose errors reach the caller as themselves (the Catching* wrappers, `catching_collate`, ClearErrorLoader)."""
    if not workers:
        return DataLoader(dataset, **kwargs)
    wrapped = CatchingIterable(dataset) if isinstance(dataset, IterableDataset) else CatchingDataset(dataset)
    if kwargs.get("collate_fn") is not None:
        kwargs["collate_fn"] = catching_collate(kwargs["collate_fn"])
    return ClearErrorLoader(wrapped, num_workers=workers, prefetch_factor=2, **kwargs)
