"""Peak memory of a benchmarked process tree (a stage's CLI and its DataLoader / Ray workers), sampled in a thread.

The one home of the sampler the benchmarks share: bench_stream, bench_scaling and bench_load each start a
`msgfm` process and record the largest sums over it and its descendants while it runs.
"""

from __future__ import annotations

import threading
from types import TracebackType

import psutil

FIGURES = ("rss", "anon", "pss", "main_rss", "processes")
"""rss: summed resident bytes (a page shared after fork counts in every process); anon: rss minus file-backed and
shared pages (heap, tensors: what must fit, since cached memmap pages can be dropped); pss: proportional set size
(shared pages split between their sharers, 0 unless asked, it costs a smaps read); main_rss: the root process's own."""


def tree_memory(proc: psutil.Process, pss: bool = False) -> dict[str, int]:
    """Memory of `proc` and its descendants now (see FIGURES); processes gone meanwhile count 0."""
    out = dict.fromkeys(FIGURES, 0)
    try:
        tree = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return out
    for p in tree:
        try:
            info = p.memory_full_info() if pss else p.memory_info()
        except psutil.Error:
            continue
        out["rss"] += info.rss
        out["anon"] += info.rss - getattr(info, "shared", 0)
        out["pss"] += getattr(info, "pss", 0)
        out["processes"] += 1
        if p.pid == proc.pid:
            out["main_rss"] = info.rss
    return out


class PeakMemory:
    """`with PeakMemory(pid) as mem: <wait for it>`; then `mem.peak[figure]` is the largest value sampled."""

    def __init__(self, pid: int, interval: float = 0.2, pss: bool = False) -> None:
        self.peak = dict.fromkeys(FIGURES, 0)
        self._proc, self._interval, self._pss = psutil.Process(pid), interval, pss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for key, value in tree_memory(self._proc, self._pss).items():
                self.peak[key] = max(self.peak[key], value)
            self._stop.wait(self._interval)

    def mib(self, figure: str) -> float:
        """A peak in MiB, to one decimal."""
        return round(self.peak[figure] / 2**20, 1)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
