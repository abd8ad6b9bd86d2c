"""The retraining lock: msgfm's run lock (msgfm/locks.py, its one home), named here for the flows."""

from __future__ import annotations

from msgfm.locks import LockBusy, RunLock

__all__ = ["LockBusy", "RunLock"]
