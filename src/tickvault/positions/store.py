"""The embedded state store for positions: tables in ``<data dir>/state.sqlite3``.

Tables (this module owns them; other code uses other tables of the same file):

- ``position_state``: append-only snapshot rows. ``row_id`` is the append order. The data
  columns are declared without a type, so SQLite stores every value exactly as given
  (imported legacy history keeps its text in numeric columns, and restore can say so).
- ``position_quarantine``: copies of rows restore refused, with the reason; unique per
  ``(source, source_ref)``, so restoring again does not duplicate them.
- ``position_starts``: start times of trading processes, for the crash-loop guard.

Contract: every write is one ``BEGIN IMMEDIATE`` transaction (WAL, ``synchronous=FULL``), so
a crash leaves either the whole change or none of it. Nothing here deletes or updates a
``position_state`` row. ``seq`` values written here are ``1 + the largest integer seq`` in
the table, so a new row is always the latest of its trade, imported history included.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import orjson

from tickvault.core.errors import (
    PositionSourceError,
    PositionStateError,
    StoreError,
    StoreUnavailable,
)
from tickvault.positions.backend import Candidate, PositionBackend, QuarantineEntry
from tickvault.positions.model import COLUMNS, StateRow

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS position_state (
    row_id INTEGER PRIMARY KEY AUTOINCREMENT,
    trade_id, symbol, side, status, quantity, notional, entry_price, bars_held, ts, seq,
    exit_price, close_reason,
    origin TEXT NOT NULL,
    import_key TEXT UNIQUE,
    raw TEXT
);
CREATE INDEX IF NOT EXISTS position_state_trade ON position_state(trade_id, seq);
CREATE INDEX IF NOT EXISTS position_state_seq ON position_state(seq);
CREATE TABLE IF NOT EXISTS position_quarantine (
    quarantine_id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    source_ref TEXT NOT NULL,
    trade_id,
    reason TEXT NOT NULL,
    row_json TEXT NOT NULL,
    quarantined_at INTEGER NOT NULL,
    UNIQUE (source, source_ref)
);
CREATE TABLE IF NOT EXISTS position_starts (
    start_id INTEGER PRIMARY KEY,
    started_at REAL NOT NULL
);
"""

STATE_COLUMNS: Final = (*COLUMNS, "exit_price", "close_reason")
_SELECT_COLUMNS: Final = ", ".join(STATE_COLUMNS)

# The latest row per trade: the highest integer seq, then the last appended. Rows whose seq
# is not an integer cannot be ordered against the others: they rank lowest (among
# themselves by append order), and ``unordered`` counts them so restore can refuse to guess
# (see sources.StateStoreSource). latest_rows() applies the same order in one table scan.
_LATEST_ORDER: Final = (
    "typeof(seq) = 'integer' DESC, CASE WHEN typeof(seq) = 'integer' THEN seq END DESC, row_id DESC"
)
_LATEST_NAMES: Final = ("row_id", *STATE_COLUMNS)
_SEQ_INDEX: Final = _LATEST_NAMES.index("seq")
_INT64_MAX: Final = 2**63 - 1


def row_json(row: dict[str, Any]) -> str:
    """``row`` as JSON text; values JSON cannot hold (bytes, NaN) become text."""
    return orjson.dumps(row, default=repr, option=orjson.OPT_SORT_KEYS).decode()


class PositionStore(PositionBackend):
    """The ``position_*`` tables of one SQLite file.

    ``read_only=True`` opens an existing file without creating it or any table, refuses
    writes (``PRAGMA query_only``) and reads missing tables as empty; it raises
    :class:`PositionSourceError` when the file does not exist.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False, timeout: float = 30.0):
        self.path = Path(path)
        self.read_only = read_only
        self.source_name = "state-store"
        if read_only and not self.path.is_file():
            raise PositionSourceError(f"no state store at {self.path}")
        try:
            if not read_only:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise PositionSourceError(f"cannot open state store {self.path}: {exc}") from None
        try:
            if read_only:
                self._conn.execute("PRAGMA query_only = ON")
            else:
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = FULL")
                self._conn.executescript(_SCHEMA)
            self._tables = {
                r[0]
                for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise PositionSourceError(f"cannot open state store {self.path}: {exc}") from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PositionStore:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- writes ------------------------------------------------------------------------------

    def _translate(self, exc: sqlite3.DatabaseError) -> StoreError:
        """The project's error for a driver error: locked / full / read-only files are
        :class:`StoreUnavailable` (retry later), anything else (corruption) a StoreError."""
        if isinstance(exc, sqlite3.OperationalError):
            return StoreUnavailable(f"state store {self.path}: {exc}")
        return StoreError(f"state store {self.path}: {exc}")

    @contextmanager
    def _reading(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from None
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException as exc:
            if self._conn.in_transaction:
                with suppress(sqlite3.DatabaseError):
                    self._conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.DatabaseError):
                raise self._translate(exc) from None
            raise

    def _next_seq(self, conn: sqlite3.Connection) -> int:
        row = conn.execute(
            "SELECT seq FROM position_state WHERE typeof(seq) = 'integer' ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        seq = 1 if row is None else int(row[0]) + 1
        if seq > _INT64_MAX:
            raise PositionStateError("seq space exhausted: the largest stored seq is 2**63-1")
        return seq

    def append(
        self,
        row: StateRow,
        *,
        origin: str = "book",
        new_trade: bool = False,
        expected_seq: int | None = None,
    ) -> int:
        """Append ``row`` and return its ``seq``; all checks and the insert are atomic.

        ``new_trade`` refuses a trade id that has any history (a trade id is never reused).
        ``expected_seq`` refuses the write unless the trade's latest seq is still that
        (another writer changed the trade meanwhile). Raises :class:`PositionStateError`
        for both, :class:`StoreUnavailable` when the file is locked or unwritable.
        """
        with self._transaction() as conn:
            if new_trade:
                found = conn.execute(
                    "SELECT 1 FROM position_state WHERE trade_id = ? LIMIT 1", (row.trade_id,)
                ).fetchone()
                if found is not None:
                    raise PositionStateError(
                        f"trade {row.trade_id!r} already has position history; trade ids are"
                        " never reused"
                    )
            if expected_seq is not None:
                (latest,) = conn.execute(
                    "SELECT MAX(seq) FROM position_state WHERE trade_id = ?", (row.trade_id,)
                ).fetchone()
                if latest != expected_seq:
                    raise PositionStateError(
                        f"trade {row.trade_id!r} changed in the store (latest seq {latest},"
                        f" expected {expected_seq}); restore before writing"
                    )
            seq = self._next_seq(conn)
            conn.execute(
                f"INSERT INTO position_state ({_SELECT_COLUMNS}, origin)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.trade_id,
                    row.symbol,
                    row.side,
                    row.status,
                    row.quantity,
                    row.notional,
                    row.entry_price,
                    row.bars_held,
                    row.ts,
                    seq,
                    row.exit_price,
                    row.close_reason,
                    origin,
                ),
            )
        return seq

    def append_tombstone(
        self, trade_id: Any, latest_ref: int | str, reason: str, now_us: int
    ) -> int | None:
        """Append a ``CLOSED`` row (quantity and notional 0) that supersedes the malformed
        latest row ``latest_ref`` (a row id, or ``row:<id>``) of ``trade_id``; return its seq,
        or None (nothing written) when that row is no longer the trade's latest."""
        latest_row_id = latest_ref
        if isinstance(latest_ref, str):
            text = latest_ref.removeprefix("row:")
            if not text.isdigit():
                return None
            latest_row_id = int(text)
        with self._transaction() as conn:
            found = conn.execute(
                f"SELECT row_id, symbol, side FROM position_state WHERE trade_id IS ?"
                f" ORDER BY {_LATEST_ORDER} LIMIT 1",
                (_scalar(trade_id),),
            ).fetchone()
            if found is None or found[0] != latest_row_id:
                return None
            seq = self._next_seq(conn)
            conn.execute(
                "INSERT INTO position_state (trade_id, symbol, side, status, quantity, notional,"
                " ts, seq, close_reason, origin) VALUES (?, ?, ?, 'CLOSED', 0.0, 0.0, ?, ?, ?,"
                " 'reconcile')",
                (_scalar(trade_id), found[1], found[2], now_us, seq, reason),
            )
        return seq

    def insert_raw(self, rows: Sequence[tuple[dict[str, Any], str, str]], origin: str) -> int:
        """Insert ``(values, import_key, raw_text)`` rows exactly as given; return how many
        were new (a row whose ``import_key`` is already stored is skipped)."""
        with self._transaction() as conn:
            before = conn.total_changes
            conn.executemany(
                f"INSERT OR IGNORE INTO position_state ({_SELECT_COLUMNS}, origin, import_key,"
                " raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (*(values.get(c) for c in STATE_COLUMNS), origin, key, raw)
                    for values, key, raw in rows
                ),
            )
            return conn.total_changes - before

    def quarantine(self, entries: Sequence[QuarantineEntry], now_us: int) -> int:
        """Copy refused rows to ``position_quarantine``; return how many were new."""
        if not entries:
            return 0
        with self._transaction() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO position_quarantine (source, source_ref, trade_id,"
                " reason, row_json, quarantined_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (e.source, e.source_ref, _scalar(e.trade_id), e.reason, row_json(e.row), now_us)
                    for e in entries
                ),
            )
            return conn.total_changes - before

    # -- reads -------------------------------------------------------------------------------
    # Reads of a table that does not exist (a read-only store of a file other code created)
    # are empty; driver errors surface as StoreError / StoreUnavailable.

    def _select(
        self, table: str, sql: str, params: tuple[Any, ...] = ()
    ) -> Iterator[tuple[list[str], tuple[Any, ...]]]:
        """Yield ``(column names, row)`` for every row of ``sql``."""
        if table not in self._tables:
            return
        with self._reading():
            cur = self._conn.execute(sql, params)
            names = [d[0] for d in cur.description]
            for row in cur:
                yield names, row

    def _dicts(self, table: str, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return [dict(zip(n, r, strict=True)) for n, r in self._select(table, sql, params)]

    def latest_rows(self) -> list[dict[str, Any]]:
        """The latest row of every trade, with ``row_id`` and ``unordered`` (the number of
        the trade's rows whose seq is not an integer).

        One scan in append order keeping the best row per trade: about as fast as a plain
        ``SELECT`` of the table (a window-function query sorts, and is several times slower).
        """
        best: dict[Any, tuple[Any, ...]] = {}
        unordered: dict[Any, int] = {}
        s = _SEQ_INDEX
        sql = f"SELECT row_id, {_SELECT_COLUMNS} FROM position_state ORDER BY row_id"
        for _, row in self._select("position_state", sql):
            trade_id, seq = row[1], row[s]
            old = best.get(trade_id)
            if type(seq) is int:
                if old is None or type(old[s]) is not int or seq >= old[s]:
                    best[trade_id] = row
            else:
                unordered[trade_id] = unordered.get(trade_id, 0) + 1
                if old is None or type(old[s]) is not int:
                    best[trade_id] = row
        out = []
        for trade_id, row in best.items():
            data = dict(zip(_LATEST_NAMES, row, strict=True))
            data["unordered"] = unordered.get(trade_id, 0)
            out.append(data)
        return out

    def read_latest(self) -> list[Candidate] | None:
        """The latest row per trade as candidates (ref ``row:<row_id>``).

        A trade with rows whose seq is not an integer (legacy imports) cannot be ordered:
        it is reported as malformed rather than guessed, unless its latest ordered row is
        ``CLOSED`` (trade ids are never reused, so a closed trade stays closed; this is
        also how a reconcile tombstone settles it).
        """
        rows = self.latest_rows()
        if not rows:
            return None
        out = []
        for row in rows:
            unordered = row.pop("unordered")
            problem = None
            if unordered and row.get("status") != "CLOSED":
                problem = f"unordered history: {unordered} row(s) of this trade have no integer seq"
            out.append(Candidate(f"row:{row.pop('row_id')}", row, problem))
        return out

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """Every ``position_state`` row in append order, with ``row_id`` and ``origin``."""
        sql = f"SELECT row_id, {_SELECT_COLUMNS}, origin FROM position_state ORDER BY row_id"
        for names, row in self._select("position_state", sql):
            yield dict(zip(names, row, strict=True))

    def history(self, trade_id: str) -> list[dict[str, Any]]:
        """Every row of one trade in append order."""
        sql = (
            f"SELECT row_id, {_SELECT_COLUMNS}, origin FROM position_state WHERE trade_id = ?"
            " ORDER BY row_id"
        )
        return self._dicts("position_state", sql, (trade_id,))

    def row_count(self) -> int:
        for _, (count,) in self._select("position_state", "SELECT count(*) FROM position_state"):
            return int(count)
        return 0

    def quarantined(self) -> list[dict[str, Any]]:
        """Every quarantined copy, oldest first (``row`` decoded from JSON)."""
        sql = (
            "SELECT quarantine_id, source, source_ref, trade_id, reason, row_json AS row,"
            " quarantined_at FROM position_quarantine ORDER BY quarantine_id"
        )
        copies = self._dicts("position_quarantine", sql)
        for copy in copies:
            copy["row"] = orjson.loads(copy["row"])
        return copies

    # -- start counter (crash-loop guard) ----------------------------------------------------

    def record_start(self, now: float, window_seconds: float) -> int:
        """Record a start at ``now`` (epoch seconds); forget starts older than the window;
        return the number of starts within ``[now - window_seconds, ...]``, this one included.
        """
        with self._transaction() as conn:
            conn.execute("INSERT INTO position_starts (started_at) VALUES (?)", (now,))
            conn.execute(
                "DELETE FROM position_starts WHERE started_at < ?", (now - window_seconds,)
            )
            (count,) = conn.execute("SELECT count(*) FROM position_starts").fetchone()
        return int(count)

    def starts(self) -> list[float]:
        """Recorded start times (epoch seconds), oldest first."""
        sql = "SELECT started_at FROM position_starts ORDER BY started_at"
        return [float(r[0]) for _, r in self._select("position_starts", sql)]

    def clear_starts(self) -> int:
        """Forget every recorded start (an operator's reset); return how many were cleared."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM position_starts").rowcount


def _scalar(value: Any) -> Any:
    """A value SQLite can bind as is, or its text."""
    if value is None or isinstance(value, str | int | float | bytes):
        return value
    return repr(value)
