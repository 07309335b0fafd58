"""Helpers of the crash tests: where a replay stands, and killing it at a chosen instant."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from .cli_helpers import spawn


def published_lines(data_dir: Path) -> int:
    """Lines the replay has durably published so far (its checkpoint), read concurrently."""
    path = data_dir / "state.sqlite3"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as conn:
            row = conn.execute("SELECT max(position) FROM checkpoints").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0] or 0)


def kill_when(
    args: list[str | Path], ready: Callable[[], bool], jitter: float, timeout: float = 60
) -> bool:
    """Start the command, SIGKILL it once ``ready()`` holds (+ jitter); True if killed."""
    proc = spawn(*args)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.005)  # polling a condition with a deadline
    time.sleep(jitter)  # lands the kill at a random instant after the condition
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    return killed
