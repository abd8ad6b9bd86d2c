"""A stage's subprocess with its output streamed line by line into the Prefect log (both flow paths use it)."""

from __future__ import annotations

import collections
import logging
import subprocess
from collections.abc import Sequence


class StageFailed(RuntimeError):
    """A stage's command exited non-zero; the message holds the exit code and the last log lines."""


def stream(
    cmd: str | Sequence[str], cwd: str, env: dict[str, str], logger: logging.Logger | logging.LoggerAdapter
) -> tuple[int, list[str]]:
    """Run `cmd` (a shell line when a string), log each non-empty output line; (exit code, every line).

    A flow cancelled or crashed while streaming terminates the child, so no stage keeps running unseen.
    """
    lines: list[str] = []
    proc = subprocess.Popen(
        cmd,
        shell=isinstance(cmd, str),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if line := raw.rstrip():
                lines.append(line)
                logger.info(line)
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
    return code, lines


def failure(what: str, code: int, lines: list[str], keep: int = 30) -> StageFailed:
    """The error for a failed stage command: `what`, its exit code and its last `keep` output lines."""
    tail = collections.deque(lines, maxlen=keep)
    return StageFailed(f"{what} exited with code {code}; last lines:\n" + "\n".join(tail))
