"""The embedded bus: a SQLite database in WAL mode (standard library only).

Design notes
------------
* One database file can hold many streams. Entry ids are one global ``AUTOINCREMENT``
  sequence, so they increase within every stream and are never reused, even after trims.
* Every operation is one transaction; reads that deliver entries use ``BEGIN IMMEDIATE`` so
  several writer processes in one group never receive the same entry.
* ``synchronous=FULL`` by default (a commit survives power loss, not only a process crash);
  ``sqlite:///path?synchronous=normal`` trades that for speed.
* All SQLite calls run on one dedicated thread per bus object, so the event loop never
  blocks on ``fsync`` and the connection is only ever touched by that thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tickvault.bus.base import (
    Bus,
    Capabilities,
    ConsumerInfo,
    DeadLetter,
    Entry,
    GroupInfo,
    NewDeadLetter,
    PendingEntry,
    RetainedEntry,
    StreamInfo,
)
from tickvault.core.errors import BusError, BusUnavailable

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_stream_id ON entries(stream, id);
CREATE TABLE IF NOT EXISTS groups (
    stream TEXT NOT NULL,
    name TEXT NOT NULL,
    last_id INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    PRIMARY KEY (stream, name)
);
CREATE TABLE IF NOT EXISTS pending (
    stream TEXT NOT NULL,
    grp TEXT NOT NULL,
    entry_id INTEGER NOT NULL,
    consumer TEXT NOT NULL,
    deliveries INTEGER NOT NULL,
    delivered_at REAL NOT NULL,
    PRIMARY KEY (stream, grp, entry_id)
);
CREATE INDEX IF NOT EXISTS pending_consumer ON pending(stream, grp, consumer);
CREATE TABLE IF NOT EXISTS consumers (
    stream TEXT NOT NULL,
    grp TEXT NOT NULL,
    name TEXT NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (stream, grp, name)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    key TEXT NOT NULL,
    grp TEXT,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    payload BLOB NOT NULL,
    entry_id TEXT,
    deliveries INTEGER NOT NULL,
    created_at REAL NOT NULL,
    requeued_at REAL,
    UNIQUE (stream, key)
);
"""

_POLL_S = 0.02
_SEEN_EVERY_S = 1.0


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


class SqliteBus(Bus):
    """Bus on a local SQLite file. ``SqliteBus.from_url("sqlite:///data/bus.db")``."""

    capabilities = Capabilities(retention=True)

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        if self.synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise BusError(f"invalid synchronous mode {synchronous!r}")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-bus")
        self._conn: sqlite3.Connection | None = None
        self._seen: dict[tuple[str, str, str], float] = {}
        self._appended = asyncio.Event()

    @classmethod
    def from_url(cls, url: str) -> SqliteBus:
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(url)
        path = parts.path if not parts.netloc else parts.netloc + parts.path
        if url.startswith("sqlite:///"):
            path = url[len("sqlite:///") :].split("?", 1)[0]
        if not path:
            raise BusError(f"sqlite bus URL needs a path: {url!r}")
        opts = parse_qs(parts.query)
        return cls(path, synchronous=opts.get("synchronous", ["FULL"])[0])

    # -- plumbing ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
                conn.execute("PRAGMA busy_timeout=30000")
                conn.executescript(_SCHEMA)
            except (sqlite3.Error, OSError) as exc:
                raise BusUnavailable(f"cannot open SQLite bus {self.path}: {exc}") from exc
            self._conn = conn
        return self._conn

    def _tx(self, fn: Callable[[sqlite3.Connection], T], immediate: bool = True) -> T:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (disk full): never let a failed
                # ROLLBACK hide the error that matters.
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            return result
        except sqlite3.OperationalError as exc:
            raise BusUnavailable(f"SQLite bus {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise BusError(f"SQLite bus {self.path}: {exc}") from exc

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _touch(self, conn: sqlite3.Connection, stream: str, group: str, consumer: str) -> None:
        now = time.time()
        key = (stream, group, consumer)
        if now - self._seen.get(key, 0.0) < _SEEN_EVERY_S:
            return
        self._seen[key] = now
        conn.execute(
            "INSERT INTO consumers(stream, grp, name, seen_at) VALUES (?,?,?,?) "
            "ON CONFLICT(stream, grp, name) DO UPDATE SET seen_at=excluded.seen_at",
            (stream, group, consumer, now),
        )

    # -- groups and appends -------------------------------------------------------------------

    async def ensure_group(self, stream: str, group: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO groups(stream, name, last_id, created_at) VALUES (?,?,0,?)",
                (stream, group, time.time()),
            )

        await self._run(self._tx, op)

    async def append(self, stream: str, payloads: Sequence[bytes]) -> list[str]:
        if not payloads:
            return []

        def op(conn: sqlite3.Connection) -> list[str]:
            now = time.time()
            ids = []
            for payload in payloads:
                cur = conn.execute(
                    "INSERT INTO entries(stream, payload, created_at) VALUES (?,?,?)",
                    (stream, payload, now),
                )
                ids.append(str(cur.lastrowid))
            return ids

        ids: list[str] = await self._run(self._tx, op)
        self._appended.set()
        return ids

    # -- delivery ---------------------------------------------------------------------------

    def _deliver(self, stream: str, group: str, consumer: str, count: int) -> list[Entry]:
        def op(conn: sqlite3.Connection) -> list[Entry]:
            self._touch(conn, stream, group, consumer)
            row = conn.execute(
                "SELECT last_id FROM groups WHERE stream=? AND name=?", (stream, group)
            ).fetchone()
            if row is None:
                raise BusError(f"no group {group!r} on stream {stream!r}")
            rows = conn.execute(
                "SELECT id, payload FROM entries WHERE stream=? AND id>? ORDER BY id LIMIT ?",
                (stream, row[0], count),
            ).fetchall()
            if not rows:
                return []
            now = time.time()
            conn.executemany(
                "INSERT OR REPLACE INTO pending(stream, grp, entry_id, consumer, deliveries,"
                " delivered_at) VALUES (?,?,?,?,1,?)",
                [(stream, group, r[0], consumer, now) for r in rows],
            )
            conn.execute(
                "UPDATE groups SET last_id=? WHERE stream=? AND name=?",
                (rows[-1][0], stream, group),
            )
            return [Entry(str(r[0]), r[1], 1) for r in rows]

        return self._tx(op)

    async def read(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int = 0
    ) -> list[Entry]:
        deadline = time.monotonic() + block_ms / 1000
        while True:
            self._appended.clear()
            entries = await self._run(self._deliver, stream, group, consumer, count)
            remaining = deadline - time.monotonic()
            if entries or remaining <= 0:
                return entries
            # Appends from this process wake us at once; other processes are polled.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._appended.wait(), timeout=min(_POLL_S, remaining))

    def _redeliver(
        self, stream: str, group: str, consumer: str, count: int, min_idle_ms: int | None
    ) -> list[Entry]:
        def op(conn: sqlite3.Connection) -> list[Entry]:
            self._touch(conn, stream, group, consumer)
            now = time.time()
            if min_idle_ms is None:
                rows = conn.execute(
                    "SELECT entry_id, deliveries FROM pending WHERE stream=? AND grp=? AND"
                    " consumer=? ORDER BY entry_id LIMIT ?",
                    (stream, group, consumer, count),
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT entry_id, deliveries FROM pending WHERE stream=? AND grp=? AND"
                    " delivered_at<=? ORDER BY entry_id LIMIT ?",
                    (stream, group, now - min_idle_ms / 1000, count),
                ).fetchall()
            out: list[Entry] = []
            for entry_id, deliveries in rows:
                payload = conn.execute(
                    "SELECT payload FROM entries WHERE id=?", (entry_id,)
                ).fetchone()
                if payload is None:  # trimmed underneath us: nothing left to deliver
                    conn.execute(
                        "DELETE FROM pending WHERE stream=? AND grp=? AND entry_id=?",
                        (stream, group, entry_id),
                    )
                    continue
                conn.execute(
                    "UPDATE pending SET consumer=?, deliveries=?, delivered_at=? WHERE"
                    " stream=? AND grp=? AND entry_id=?",
                    (consumer, deliveries + 1, now, stream, group, entry_id),
                )
                out.append(Entry(str(entry_id), payload[0], deliveries + 1))
            return out

        return self._tx(op)

    async def read_own_pending(
        self, stream: str, group: str, consumer: str, count: int
    ) -> list[Entry]:
        return await self._run(self._redeliver, stream, group, consumer, count, None)

    async def claim_stale(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[Entry]:
        return await self._run(self._redeliver, stream, group, consumer, count, min_idle_ms)

    async def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0

        def op(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            conn.executemany(
                "DELETE FROM pending WHERE stream=? AND grp=? AND entry_id=?",
                [(stream, group, int(i)) for i in ids],
            )
            return conn.total_changes - before

        return await self._run(self._tx, op)

    async def pending(
        self, stream: str, group: str, consumer: str | None = None, count: int = 1000
    ) -> list[PendingEntry]:
        def op(conn: sqlite3.Connection) -> list[PendingEntry]:
            sql = "SELECT entry_id, consumer, deliveries, delivered_at FROM pending WHERE stream=?"
            sql += " AND grp=?"
            args: list[Any] = [stream, group]
            if consumer is not None:
                sql += " AND consumer=?"
                args.append(consumer)
            rows = conn.execute(sql + " ORDER BY entry_id LIMIT ?", [*args, count]).fetchall()
            now = time.time()
            return [PendingEntry(str(r[0]), r[1], r[2], _ms(now - r[3])) for r in rows]

        return await self._run(self._tx, op, False)

    async def consumers(self, stream: str, group: str) -> list[ConsumerInfo]:
        def op(conn: sqlite3.Connection) -> list[ConsumerInfo]:
            now = time.time()
            rows = conn.execute(
                "SELECT c.name, c.seen_at, (SELECT count(*) FROM pending p WHERE"
                " p.stream=c.stream AND p.grp=c.grp AND p.consumer=c.name) FROM consumers c"
                " WHERE c.stream=? AND c.grp=? ORDER BY c.name",
                (stream, group),
            ).fetchall()
            return [ConsumerInfo(r[0], r[2], _ms(now - r[1])) for r in rows]

        return await self._run(self._tx, op, False)

    async def delete_consumer(self, stream: str, group: str, name: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            n = conn.execute(
                "SELECT count(*) FROM pending WHERE stream=? AND grp=? AND consumer=?",
                (stream, group, name),
            ).fetchone()[0]
            # Same semantics as Redis XGROUP DELCONSUMER: its pending entries go with it.
            conn.execute(
                "DELETE FROM pending WHERE stream=? AND grp=? AND consumer=?",
                (stream, group, name),
            )
            conn.execute(
                "DELETE FROM consumers WHERE stream=? AND grp=? AND name=?", (stream, group, name)
            )
            self._seen.pop((stream, group, name), None)
            return int(n)

        return await self._run(self._tx, op)

    # -- dead letters -----------------------------------------------------------------------

    @staticmethod
    def _insert_letters(
        conn: sqlite3.Connection, stream: str, group: str | None, letters: Sequence[NewDeadLetter]
    ) -> int:
        before = conn.total_changes
        now = time.time()
        conn.executemany(
            "INSERT OR IGNORE INTO dead_letters(stream, key, grp, kind, reason, payload,"
            " entry_id, deliveries, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (
                    stream,
                    x.key,
                    group,
                    x.kind,
                    x.reason,
                    x.payload,
                    x.entry_id,
                    x.delivery_count,
                    now,
                )
                for x in letters
            ],
        )
        return conn.total_changes - before

    async def dead_letter(self, stream: str, group: str, entry: Entry, reason: str) -> None:
        letter = NewDeadLetter(
            kind="frame",
            reason=reason,
            payload=entry.payload,
            key=f"entry:{entry.id}",
            entry_id=entry.id,
            delivery_count=entry.delivery_count,
        )

        def op(conn: sqlite3.Connection) -> None:
            self._insert_letters(conn, stream, group, [letter])
            conn.execute(
                "DELETE FROM pending WHERE stream=? AND grp=? AND entry_id=?",
                (stream, group, int(entry.id)),
            )

        await self._run(self._tx, op)

    async def add_dead_letters(
        self, stream: str, group: str | None, letters: Sequence[NewDeadLetter]
    ) -> int:
        if not letters:
            return 0
        return await self._run(
            self._tx, lambda conn: self._insert_letters(conn, stream, group, letters)
        )

    @staticmethod
    def _letter(row: Sequence[Any]) -> DeadLetter:
        return DeadLetter(
            id=str(row[0]),
            stream=row[1],
            group=row[2],
            kind=row[3],
            reason=row[4],
            payload=bytes(row[5]),
            entry_id=row[6],
            delivery_count=row[7],
            created_at=row[8],
            requeued_at=row[9],
        )

    _LETTER_COLS = (
        "id, stream, grp, kind, reason, payload, entry_id, deliveries, created_at, requeued_at"
    )

    async def dead_letters(
        self, stream: str | None = None, limit: int = 1000, include_requeued: bool = False
    ) -> list[DeadLetter]:
        def op(conn: sqlite3.Connection) -> list[DeadLetter]:
            sql = f"SELECT {self._LETTER_COLS} FROM dead_letters WHERE 1=1"
            args: list[Any] = []
            if stream is not None:
                sql += " AND stream=?"
                args.append(stream)
            if not include_requeued:
                sql += " AND requeued_at IS NULL"
            rows = conn.execute(sql + " ORDER BY id LIMIT ?", [*args, limit]).fetchall()
            return [self._letter(r) for r in rows]

        return await self._run(self._tx, op, False)

    async def get_dead_letter(self, letter_id: str) -> DeadLetter | None:
        def op(conn: sqlite3.Connection) -> DeadLetter | None:
            row = conn.execute(
                f"SELECT {self._LETTER_COLS} FROM dead_letters WHERE id=?", (int(letter_id),)
            ).fetchone()
            return self._letter(row) if row else None

        return await self._run(self._tx, op, False)

    async def mark_requeued(self, letter_id: str) -> None:
        await self._run(
            self._tx,
            lambda conn: conn.execute(
                "UPDATE dead_letters SET requeued_at=? WHERE id=?", (time.time(), int(letter_id))
            ),
        )

    async def dead_letter_counts(self, stream: str | None = None) -> dict[str, int]:
        def op(conn: sqlite3.Connection) -> dict[str, int]:
            sql = "SELECT reason, count(*) FROM dead_letters WHERE requeued_at IS NULL"
            args: list[Any] = []
            if stream is not None:
                sql += " AND stream=?"
                args.append(stream)
            rows = conn.execute(sql + " GROUP BY reason ORDER BY 2 DESC", args).fetchall()
            return {r[0]: r[1] for r in rows}

        return await self._run(self._tx, op, False)

    # -- upkeep and introspection -----------------------------------------------------------

    async def trim_acknowledged(self, stream: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            bound = conn.execute(
                "SELECT min(b) FROM (SELECT g.last_id + 1 AS b FROM groups g WHERE g.stream=?"
                " UNION ALL SELECT min(entry_id) FROM pending WHERE stream=?)",
                (stream, stream),
            ).fetchone()[0]
            if bound is None:
                return 0
            cur = conn.execute("DELETE FROM entries WHERE stream=? AND id<?", (stream, bound))
            return cur.rowcount

        return await self._run(self._tx, op)

    @staticmethod
    def _ack_bound(conn: sqlite3.Connection, stream: str) -> int | None:
        """The smallest entry id some group still needs (delivered-to bound or pending)."""
        bound = conn.execute(
            "SELECT min(b) FROM (SELECT g.last_id + 1 AS b FROM groups g WHERE g.stream=?"
            " UNION ALL SELECT min(entry_id) FROM pending WHERE stream=?)",
            (stream, stream),
        ).fetchone()[0]
        return None if bound is None else int(bound)

    async def trim_retained(
        self, stream: str, *, keep_age_s: float, keep_bytes: int | None = None
    ) -> int:
        def op(conn: sqlite3.Connection) -> int:
            bound = self._ack_bound(conn, stream)
            if bound is None:
                return 0
            oldest_kept = time.time() - keep_age_s
            total = conn.execute(
                "SELECT coalesce(sum(length(payload)), 0) FROM entries WHERE stream=?",
                (stream,),
            ).fetchone()[0]
            cut = 0
            rows = conn.execute(
                "SELECT id, created_at, length(payload) FROM entries WHERE stream=? AND id<?"
                " ORDER BY id",
                (stream, bound),
            )
            for entry_id, created_at, size in rows:
                too_big = keep_bytes is not None and total > keep_bytes
                if created_at >= oldest_kept and not too_big:
                    break
                cut = entry_id
                total -= size
            if not cut:
                return 0
            cur = conn.execute("DELETE FROM entries WHERE stream=? AND id<=?", (stream, cut))
            return cur.rowcount

        return await self._run(self._tx, op)

    async def scan(
        self,
        stream: str,
        since_ms: int,
        until_ms: int | None = None,
        *,
        limit: int = 1000,
        after_id: str | None = None,
    ) -> list[RetainedEntry]:
        def op(conn: sqlite3.Connection) -> list[RetainedEntry]:
            sql = "SELECT id, payload, created_at FROM entries WHERE stream=? AND id>?"
            sql += " AND created_at>=?"
            args: list[Any] = [stream, int(after_id or 0), since_ms / 1000]
            if until_ms is not None:
                sql += " AND created_at<?"
                args.append(until_ms / 1000)
            rows = conn.execute(sql + " ORDER BY id LIMIT ?", [*args, limit]).fetchall()
            return [RetainedEntry(str(r[0]), r[1], int(r[2] * 1000)) for r in rows]

        return await self._run(self._tx, op, False)

    async def info(self, stream: str) -> StreamInfo:
        def op(conn: sqlite3.Connection) -> StreamInfo:
            length, first, last = conn.execute(
                "SELECT count(*), min(id), max(id) FROM entries WHERE stream=?", (stream,)
            ).fetchone()
            now = time.time()
            groups = []
            for name, last_id in conn.execute(
                "SELECT name, last_id FROM groups WHERE stream=? ORDER BY name", (stream,)
            ).fetchall():
                n_consumers = conn.execute(
                    "SELECT count(*) FROM consumers WHERE stream=? AND grp=?", (stream, name)
                ).fetchone()[0]
                n_pending, oldest = conn.execute(
                    "SELECT count(*), min(e.created_at) FROM pending p LEFT JOIN entries e"
                    " ON e.id=p.entry_id WHERE p.stream=? AND p.grp=?",
                    (stream, name),
                ).fetchone()
                lag = conn.execute(
                    "SELECT count(*) FROM entries WHERE stream=? AND id>?", (stream, last_id)
                ).fetchone()[0]
                groups.append(
                    GroupInfo(
                        name=name,
                        consumers=n_consumers,
                        pending=n_pending,
                        lag=lag,
                        oldest_pending_age_ms=None if oldest is None else _ms(now - oldest),
                        last_delivered_id=str(last_id) if last_id else None,
                    )
                )
            return StreamInfo(
                stream=stream,
                length=length,
                first_id=None if first is None else str(first),
                last_id=None if last is None else str(last),
                groups=groups,
            )

        return await self._run(self._tx, op, False)

    async def streams(self) -> list[str]:
        def op(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT stream FROM groups UNION SELECT DISTINCT stream FROM entries"
                " UNION SELECT DISTINCT stream FROM dead_letters ORDER BY 1"
            ).fetchall()
            return [r[0] for r in rows]

        return await self._run(self._tx, op, False)

    async def close(self) -> None:
        def op() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._run(op)
        self._executor.shutdown(wait=True)
