"""The data dir's owner lock: one process at a time writes a data dir.

Kept apart from the pipeline so that a command can take the lock (and fail fast when
another process holds it) before it imports anything heavy.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

from tickvault.core.errors import ConfigError


class DataDirLock:
    """An exclusive ``flock`` on ``<data dir>/.owner.lock`` held by the owning process."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / ".owner.lock"
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock (a no-op when this object holds it already); raise ConfigError
        naming the holder when another process does."""
        if self._fh is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held for the life of the process
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            from tickvault.service.control import owner_pid

            pid = owner_pid(self.path.parent)
            who = f"process {pid}" if pid else "another process"
            raise ConfigError(
                f"data dir {self.path.parent} is in use by {who}; use `tickvault status` or"
                " `tickvault query` to look at it, or pick another --data-dir"
            ) from None
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    @property
    def held(self) -> bool:
        return self._fh is not None
