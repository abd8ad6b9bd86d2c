"""An exclusive file lock (POSIX `flock`) that records who holds it, so a second run can say who is in the way.

Used by `msgfm <stage>` (one lock per output folder, so two runs never write the same files or share a
download's fixed-name `.part`) and by the retraining flow (flows/lock.py). The operating system releases
a `flock` when its holder exits, even by a crash, so a killed run never leaves a stale lock behind; the
JSON in the file (pid, host, start time, run name) is only for the message the next run prints.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any


class LockBusy(RuntimeError):
    """Another process holds the lock; the message names the lock file and the holder."""


class RunLock:
    """Exclusive, non-reentrant lock on `path`; use as a context manager or with acquire/release."""

    def __init__(self, path: str | Path, run: str | None = None) -> None:
        self.path = Path(path)
        self.run = run
        self._fd: int | None = None

    def holder(self) -> dict[str, Any] | None:
        """Who holds (or last held) the lock, as recorded in the file; None when nobody recorded anything."""
        try:
            text = self.path.read_text()
            return json.loads(text) if text.strip() else None
        except (OSError, json.JSONDecodeError):
            return None

    def describe_holder(self) -> str:
        """The holder in words, for messages."""
        info = self.holder()
        if not info:
            return "holder unknown"
        run = f", run {info['run']}" if info.get("run") else ""
        return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}{run}"

    def acquire(self, timeout_s: float = 0, poll_s: float = 0.2) -> None:
        """Take the lock, waiting up to `timeout_s` seconds; raise LockBusy naming the holder otherwise."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: already held by this RunLock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout_s
        while (fd := self._try_lock()) is None:
            if time.monotonic() >= deadline:
                waited = f" after waiting {timeout_s:g} s" if timeout_s else ""
                raise LockBusy(f"{self.path} is held by {self.describe_holder()}{waited}") from None
            time.sleep(poll_s)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "run": self.run,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def _try_lock(self) -> int | None:
        """The locked descriptor of the file now at `path`, or None while another process holds it."""
        for _ in range(100):  # a releasing holder may unlink the file we opened; open the new one
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)
        raise LockBusy(f"{self.path} keeps being replaced while taking the lock")

    def release(self) -> None:
        """Remove the lock file (no stale file is left beside the outputs) and release the lock."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: a waiter that opened it retries
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
