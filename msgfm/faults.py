"""Kill points for the fault-injection tests: a process whose `MSGFM_KILL_AT` names a point SIGKILLs itself there.

Polling for a file cannot land a kill between two renames a few microseconds apart; a named point in
the code can. Unset (always, outside tests/test_faults.py), a kill point does nothing.
"""

from __future__ import annotations

import os
import signal

KILL_AT_ENV = "MSGFM_KILL_AT"


def kill_point(name: str) -> None:
    """SIGKILL this process here when `MSGFM_KILL_AT` is `name`, as `kill -9` at exactly this point would."""
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
