"""Source checkpoints: how far each input has been durably published.

A checkpoint is advanced only after the bus confirmed the records before it, so a crash
between the append and the checkpoint re-publishes a little (harmless: natural keys) and
never skips anything. Stored in ``state.sqlite3`` in the data dir.

A full disk or an I/O error raises :class:`~tickvault.core.errors.ResourceFault` naming the file
and what to do (never a bare ``sqlite3`` traceback); the checkpoints stay as they were.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tickvault.core.faults import resource_fault

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    source_key TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
"""


class CheckpointStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

        def open_db() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            return conn

        self._conn = self._guard(open_db)

    def _guard(self, op: Callable[[], T]) -> T:
        try:
            return op()
        except (sqlite3.Error, OSError) as exc:
            fault = resource_fault(exc, f"checkpoint store {self.path}")
            if fault is None:
                raise
            raise fault from exc

    def get(self, key: str) -> tuple[int, bool]:
        row = self._guard(
            lambda: self._conn.execute(
                "SELECT position, done FROM checkpoints WHERE source_key=?", (key,)
            ).fetchone()
        )
        return (0, False) if row is None else (int(row[0]), bool(row[1]))

    def save(self, key: str, position: int, done: bool = False) -> None:
        self._guard(
            lambda: self._conn.execute(
                "INSERT INTO checkpoints(source_key, position, done, updated_at)"
                " VALUES (?,?,?,?) ON CONFLICT(source_key) DO UPDATE SET"
                " position=excluded.position, done=excluded.done,"
                " updated_at=excluded.updated_at",
                (key, position, int(done), time.time()),
            )
        )

    def reset(self, key: str) -> None:
        self._guard(
            lambda: self._conn.execute("DELETE FROM checkpoints WHERE source_key=?", (key,))
        )

    def close(self) -> None:
        self._conn.close()
