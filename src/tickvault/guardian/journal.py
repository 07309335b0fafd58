"""The audit journal: ``<data dir>/guardian.sqlite3``.

Every finding transition, decision, action (planned, then its result) and alert is one row of
``events`` with a reason; ``resources`` holds each resource's policy state and last findings
(so ``status`` and ``check`` can read what a running guardian sees), and ``requests`` carries
``resume`` requests from the command line to a running guardian.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson

from tickvault.core.errors import GuardianError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    resource TEXT NOT NULL,
    kind TEXT NOT NULL,
    code TEXT,
    state TEXT,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_resource ON events(resource, id);
CREATE TABLE IF NOT EXISTS resources (
    resource TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    findings TEXT NOT NULL DEFAULT '[]',
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    op TEXT NOT NULL,
    resource TEXT NOT NULL,
    done_at REAL
);
"""

JOURNAL_NAME = "guardian.sqlite3"


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


class Journal:
    """Synchronous and small: a few rows per cycle. Safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise GuardianError(f"cannot open guardian journal {self.path}: {exc}") from exc

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> Journal:
        return cls(data_dir / JOURNAL_NAME)

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise GuardianError(f"guardian journal {self.path}: {exc}") from exc

    def record(
        self,
        ts: float,
        resource: str,
        kind: str,
        reason: str,
        *,
        code: str | None = None,
        state: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Append one event; returns its id. ``kind``: ``transition``, ``decision``,
        ``action_planned``, ``action_result``, ``action_refused``, ``alert``, ``resume``."""
        with self._lock:
            try:
                cur = self._conn.execute(
                    "INSERT INTO events(ts, resource, kind, code, state, reason, detail)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (ts, resource, kind, code, state, reason, _dumps(detail or {})),
                )
            except sqlite3.Error as exc:
                raise GuardianError(f"guardian journal {self.path}: {exc}") from exc
            return int(cur.lastrowid or 0)

    def events(
        self, resource: str | None = None, kind: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        sql = "SELECT id, ts, resource, kind, code, state, reason, detail FROM events WHERE 1=1"
        args: list[Any] = []
        if resource is not None:
            sql += " AND resource=?"
            args.append(resource)
        if kind is not None:
            sql += " AND kind=?"
            args.append(kind)
        rows = self._exec(
            f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT ?) ORDER BY id", (*args, limit)
        )
        return [
            {
                "id": r[0],
                "ts": r[1],
                "resource": r[2],
                "kind": r[3],
                "code": r[4],
                "state": r[5],
                "reason": r[6],
                "detail": orjson.loads(r[7]),
            }
            for r in rows
        ]

    def save_state(
        self, resource: str, state: dict[str, Any], findings: list[dict[str, Any]], ts: float
    ) -> None:
        self._exec(
            "INSERT INTO resources(resource, state, findings, updated_at) VALUES (?,?,?,?)"
            " ON CONFLICT(resource) DO UPDATE SET state=excluded.state,"
            " findings=excluded.findings, updated_at=excluded.updated_at",
            (resource, _dumps(state), _dumps(findings), ts),
        )

    def states(self) -> dict[str, dict[str, Any]]:
        rows = self._exec("SELECT resource, state, findings, updated_at FROM resources")
        return {
            r[0]: {
                "state": orjson.loads(r[1]),
                "findings": orjson.loads(r[2]),
                "updated_at": r[3],
            }
            for r in rows
        }

    def request_resume(self, resource: str, ts: float) -> int:
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO requests(ts, op, resource) VALUES (?, 'resume', ?)", (ts, resource)
            )
            return int(cur.lastrowid or 0)

    def take_requests(self, ts: float) -> list[tuple[str, str]]:
        """Pending requests as ``(op, resource)``, marked done."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                rows = self._conn.execute(
                    "SELECT id, op, resource FROM requests WHERE done_at IS NULL ORDER BY id"
                ).fetchall()
                self._conn.executemany(
                    "UPDATE requests SET done_at=? WHERE id=?", [(ts, r[0]) for r in rows]
                )
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise GuardianError(f"guardian journal {self.path}: {exc}") from exc
        return [(r[1], r[2]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
