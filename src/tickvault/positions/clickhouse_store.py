"""Position state in ClickHouse: ``clickhouse://[user[:password]@]host[:8123]/db``.

Two ways to use it (see docs/positions.md):

- **tickvault's own table** (default, ``tickvault_position_state``): the book appends
  snapshot rows, reconcile appends tombstones, exactly as on the SQLite backend.
- **the user's existing table** (``table="position_state"``, ``columns={"quantity": "qty",
  ...}`` mapping tickvault's names to theirs): read-only. tickvault sends every read of it
  with ``readonly=2``, never writes to it, and keeps what it must write (quarantine copies,
  start times, reconcile tombstones) in its own ``tickvault_position_*`` tables of the same
  database.

**Sequence.** ``append`` gives a trade's new row ``seq = its latest seq + 1`` (1 for a new
trade), after checking ``new_trade`` / ``expected_seq`` against the table. ClickHouse has no
transactions, so two writers can pass the check together and both insert the same ``seq``:
``append`` reads the rows at its ``seq`` back and raises :class:`PositionStateError` when
another writer's row is there, and restore, seeing different rows at a trade's latest
``seq``, quarantines the trade ("write race") instead of picking one.

**Atomicity is per insert.** One book change is one row in one ``INSERT`` into a
table without partitions: ClickHouse writes it as one part, committed whole or not at all
(an insert cut off mid-body commits nothing). What a crash in the middle of a book change
can leave: nothing (crash before the insert is acknowledged), or the complete new row
(crash after): never half a row, and never a stale row chosen over it, because restore
takes the maximum ``seq`` from all rows, whatever the merges have done. A crash between a
reconcile's tombstones leaves some trades settled and others not; running it again
finishes the rest (a settled trade's latest row is no longer malformed).

The HTTP client is :class:`~tickvault.stores.clickhouse.http.ClickHouseHTTP`, the market-data
store's; :mod:`tickvault.positions.clickhouse_wire` drives it synchronously.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import orjson

from tickvault.core.errors import (
    ConfigError,
    PositionSourceError,
    PositionStateError,
    StoreError,
    StoreUnavailable,
)
from tickvault.positions.backend import Candidate, PositionBackend, QuarantineEntry
from tickvault.positions.clickhouse_sql import (
    QUARANTINE_TABLE,
    STARTS_TABLE,
    STATE_TABLE,
    TOMBSTONE_TABLE,
    TableLayout,
    is_own_table,
    own_tables_ddl,
    pick_latest,
    ref_of,
    state_row,
)
from tickvault.positions.clickhouse_wire import READ_ONLY_CODES, ClickHouseConnection, http_from_url
from tickvault.positions.model import StateRow
from tickvault.positions.store import row_json
from tickvault.stores.clickhouse.http import ClickHouseServerError
from tickvault.stores.clickhouse.schema import quote_ident, quote_str

_UNKNOWN_TABLE_CODES = frozenset({60, 81})  # UNKNOWN_TABLE, UNKNOWN_DATABASE
_LOOKUP_CHUNK = 500
"""Quarantine keys per lookup query (a query's text is limited to 256 KiB by default)."""


class ClickHousePositionStore(ClickHouseConnection, PositionBackend):
    """Position state in one ClickHouse database (see the module docstring).

    ``http`` is anything with :class:`ClickHouseHTTP`'s ``post`` and ``json`` coroutines.
    Opening asks the server's version and, unless ``read_only``, creates tickvault's own
    tables; an unreachable server raises :class:`PositionSourceError`.
    """

    def __init__(
        self,
        http: Any,
        database: str,
        *,
        table: str | None = None,
        columns: Mapping[str, str] | None = None,
        read_only: bool = False,
    ) -> None:
        self.table = table or STATE_TABLE
        super().__init__(http, database, f"clickhouse:{database}.{self.table}", read_only)
        self.foreign = not is_own_table(self.table)
        if not self.foreign and columns:
            self.close()
            raise ConfigError("a column mapping applies to a table tickvault did not create")
        self.columns = dict(columns or {})
        self._qualified = f"{quote_ident(database)}.{quote_ident(self.table)}"
        self._layout: TableLayout | None = None
        try:
            self.connect()
            if not read_only:
                self._create_tables()
        except StoreError as exc:
            self.close()
            raise PositionSourceError(f"cannot open {self.source_name}: {exc}") from None

    def _create_tables(self) -> None:
        """Create tickvault's own tables; a user the server keeps read-only makes this a
        read-only backend instead (restore still reads; writes then fail, as warnings)."""
        try:
            for ddl in own_tables_ddl(self.database, foreign=self.foreign):
                self._post(ddl)
        except ClickHouseServerError as exc:
            if exc.code not in READ_ONLY_CODES:
                raise
            self.read_only = True

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        read_only: bool = False,
        table: str | None = None,
        columns: Mapping[str, str] | None = None,
    ) -> ClickHousePositionStore:
        http, database = http_from_url(url)
        return cls(http, database, table=table, columns=columns, read_only=read_only)

    def __enter__(self) -> ClickHousePositionStore:
        return self

    def layout(self) -> TableLayout | None:
        """The state table's layout; None when tickvault's own table does not exist yet.
        A user's table that does not exist raises :class:`PositionSourceError`."""
        if self._layout is None:
            found = self._rows(
                "SELECT name, type FROM system.columns WHERE database = "
                f"{quote_str(self.database)} AND table = {quote_str(self.table)}"
            )
            if not found:
                if self.foreign:
                    raise PositionSourceError(
                        f"no table {self.database}.{self.table} on the ClickHouse server"
                    )
                return None
            types = {str(r["name"]): str(r["type"]) for r in found}
            self._layout = TableLayout(self.database, self.table, types, self.columns)
        return self._layout

    def _read(self, sql: str) -> list[dict[str, Any]]:
        """Rows of a read; the server unreachable or refusing is PositionSourceError."""
        try:
            return self._rows(sql)
        except StoreError as exc:
            raise PositionSourceError(f"{self.source_name}: {exc}") from None

    # -- snapshot rows -----------------------------------------------------------------------

    def read_latest(self) -> list[Candidate] | None:
        layout = self.layout()
        if layout is None:
            return None
        raws = self._read(layout.latest_sql())
        if not raws:
            return None
        unordered = {str(r["tk"]): int(r["n"]) for r in self._read(layout.unordered_sql())}
        candidates = pick_latest(raws, layout, unordered)
        if self.foreign:
            candidates = self._apply_tombstones(candidates)
        return candidates

    def _tombstones(self) -> dict[tuple[str, str], str]:
        """``{(trade_id, settled ref): reason}`` of reconcile for the user's table."""
        try:
            rows = self._rows(
                f"SELECT trade_id, settles_ref, reason FROM {self._own(TOMBSTONE_TABLE)} FINAL"
                f" WHERE source_table = {quote_str(self.table)}",
                read_table=False,
            )
        except ClickHouseServerError as exc:
            if exc.code in _UNKNOWN_TABLE_CODES:
                return {}
            raise
        return {(str(r["trade_id"]), str(r["settles_ref"])): str(r["reason"]) for r in rows}

    def _apply_tombstones(self, candidates: list[Candidate]) -> list[Candidate]:
        settled = self._tombstones()
        if not settled:
            return candidates
        out = []
        for c in candidates:
            reason = settled.get((_trade_key(c.row.get("trade_id")), c.ref))
            if reason is None:
                out.append(c)
                continue
            closed = dict(c.row, status="CLOSED", quantity=0.0, notional=0.0, close_reason=reason)
            out.append(Candidate(f"tombstone:{c.ref}", closed))
        return out

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        layout = self.layout()
        if layout is None:
            return
        for raw in self._read(layout.rows_sql()):
            row = state_row(raw, layout)
            ref = ref_of(row)
            row["row_id"] = ref
            row["origin"] = raw.get("origin")
            yield row

    def row_count(self) -> int:
        if self.layout() is None:
            return 0
        [row] = self._read(f"SELECT count() AS n FROM {self._qualified}")
        return int(row["n"])

    def _latest_of(self, trade_id: str) -> tuple[int | None, int]:
        """``(max seq, number of rows)`` of one trade in tickvault's own table."""
        [row] = self._rows(
            f"SELECT max(seq) AS m, count() AS n FROM {self._qualified}"
            f" WHERE trade_id = {quote_str(trade_id)}",
            read_table=False,
        )
        n = int(row["n"])
        return (int(row["m"]) if n else None), n

    def append(
        self,
        row: StateRow,
        *,
        origin: str = "book",
        new_trade: bool = False,
        expected_seq: int | None = None,
    ) -> int:
        if self.foreign:
            raise PositionStateError(
                f"tickvault does not write to {self.database}.{self.table}: it did not create"
                f" it (book writes go to {STATE_TABLE})"
            )
        latest, count = self._latest_of(row.trade_id)
        if new_trade and count:
            raise PositionStateError(
                f"trade {row.trade_id!r} already has position history; trade ids are never reused"
            )
        if expected_seq is not None and latest != expected_seq:
            raise PositionStateError(
                f"trade {row.trade_id!r} changed in the store (latest seq {latest},"
                f" expected {expected_seq}); restore before writing"
            )
        seq = 1 if latest is None else latest + 1
        writer = uuid.uuid4().hex
        values = {
            "trade_id": row.trade_id,
            "symbol": row.symbol,
            "side": row.side,
            "status": row.status,
            "quantity": row.quantity,
            "notional": row.notional,
            "entry_price": row.entry_price,
            "bars_held": row.bars_held,
            "ts": row.ts,
            "seq": seq,
            "exit_price": row.exit_price,
            "close_reason": row.close_reason,
            "origin": origin,
            "writer": writer,
        }
        self._insert(STATE_TABLE, [values])
        others = self._rows(
            f"SELECT writer FROM {self._qualified} WHERE trade_id = {quote_str(row.trade_id)}"
            f" AND seq = {seq} AND writer != {quote_str(writer)}",
            read_table=False,
        )
        if others:
            raise PositionStateError(
                f"trade {row.trade_id!r}: another writer wrote seq {seq} at the same time;"
                " restore quarantines the trade until it is reconciled"
            )
        return seq

    def append_tombstone(
        self, trade_id: Any, latest_ref: int | str, reason: str, now_us: int
    ) -> int | None:
        layout = self.layout()
        if layout is None:
            return None
        tid = _trade_key(trade_id)
        current = pick_latest(self._read(layout.latest_sql(tid)), layout, {})
        if self.foreign:
            if not current or current[0].ref != latest_ref:
                return None
            self._insert(
                TOMBSTONE_TABLE,
                [
                    {
                        "source_table": self.table,
                        "trade_id": tid,
                        "settles_ref": str(latest_ref),
                        "reason": reason,
                        "ts": now_us,
                    }
                ],
            )
            seq = current[0].row.get("seq")
            return seq + 1 if isinstance(seq, int) else None
        if not current or current[0].ref != latest_ref:
            return None
        last = current[0].row
        closed = StateRow(
            trade_id=tid,
            symbol=last.get("symbol"),
            side=last.get("side"),
            status="CLOSED",
            quantity=0.0,
            notional=0.0,
            entry_price=None,
            bars_held=None,
            ts=now_us,
            close_reason=reason,
        )
        return self.append(closed, origin="reconcile")

    # -- quarantine --------------------------------------------------------------------------

    def quarantine(self, entries: Sequence[QuarantineEntry], now_us: int) -> int:
        if self.read_only:
            raise StoreError(f"{self.source_name} is open read-only; not writing")
        fresh: dict[tuple[str, str], QuarantineEntry] = {}
        for e in entries:
            fresh.setdefault((e.source, e.source_ref), e)
        if not fresh:
            return 0
        pairs = list(fresh)
        for start in range(0, len(pairs), _LOOKUP_CHUNK):  # stays far below max_query_size
            keys = ", ".join(
                f"({quote_str(s)}, {quote_str(r)})" for s, r in pairs[start : start + _LOOKUP_CHUNK]
            )
            try:
                stored = self._rows(
                    f"SELECT source, source_ref FROM {self._own(QUARANTINE_TABLE)}"
                    f" WHERE (source, source_ref) IN ({keys})",
                    read_table=False,
                )
            except ClickHouseServerError as exc:
                if exc.code not in _UNKNOWN_TABLE_CODES:
                    raise
                raise StoreUnavailable(f"no table {QUARANTINE_TABLE}: {exc}") from None
            for r in stored:
                fresh.pop((str(r["source"]), str(r["source_ref"])), None)
        self._insert(
            QUARANTINE_TABLE,
            [
                {
                    "source": e.source,
                    "source_ref": e.source_ref,
                    "trade_id": None if e.trade_id is None else str(e.trade_id),
                    "reason": e.reason,
                    "row_json": row_json(e.row),
                    "quarantined_at": now_us,
                }
                for e in fresh.values()
            ],
        )
        return len(fresh)

    def quarantined(self) -> list[dict[str, Any]]:
        try:
            rows = self._rows(
                "SELECT source, source_ref, trade_id, reason, row_json AS row, quarantined_at"
                f" FROM {self._own(QUARANTINE_TABLE)} FINAL ORDER BY quarantined_at, source_ref",
                read_table=False,
            )
        except ClickHouseServerError as exc:
            if exc.code in _UNKNOWN_TABLE_CODES:
                return []
            raise
        for number, copy in enumerate(rows, start=1):
            copy["quarantine_id"] = number
            copy["row"] = orjson.loads(copy["row"])
        return rows

    # -- start counter -----------------------------------------------------------------------

    def record_start(self, now: float, window_seconds: float) -> int:
        self._insert(STARTS_TABLE, [{"scope": self.table, "event": "start", "at": now}])
        return sum(1 for t in self.starts() if t >= now - window_seconds)

    def starts(self) -> list[float]:
        """Starts after the last reset (a reset is an appended marker: nothing is deleted)."""
        table, scope = self._own(STARTS_TABLE), quote_str(self.table)
        try:
            rows = self._rows(
                f"SELECT at FROM {table} WHERE scope = {scope} AND event = 'start' AND at >"
                f" (SELECT max(at) FROM {table} WHERE scope = {scope} AND event = 'reset')"
                " ORDER BY at",
                read_table=False,
            )
        except ClickHouseServerError as exc:
            if exc.code in _UNKNOWN_TABLE_CODES:
                return []
            raise
        return [float(r["at"]) for r in rows]

    def clear_starts(self) -> int:
        current = self.starts()
        if current:
            self._insert(STARTS_TABLE, [{"scope": self.table, "event": "reset", "at": current[-1]}])
        return len(current)


def _trade_key(trade_id: Any) -> str:
    """A trade id as the queries group it (``ifNull(toString(trade_id), '')``)."""
    return "" if trade_id is None else str(trade_id)
