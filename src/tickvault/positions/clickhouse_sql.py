"""SQL of the ClickHouse position-state backend, and turning its answers into rows.

Every statement here runs unchanged on ClickHouse 18.16 (Debian's server, the one the test
suite starts) and on current releases (``tests/test_clickhouse_modern.py`` runs them
through ``chdb``): plain ``MergeTree``/``ReplacingMergeTree`` without ``PARTITION BY``,
``toInt64OrNull``, tuple ``IN`` with a ``GROUP BY`` subquery, ``FINAL``.

Tables tickvault owns (it writes to no other table):

- ``tickvault_position_state``: append-only snapshot rows, ``MergeTree ORDER BY (trade_id,
  seq)``. A plain MergeTree never merges two rows into one, so no row disappears and no
  read depends on merge timing.
- ``tickvault_position_quarantine``: copies of refused rows, ``ReplacingMergeTree ORDER BY
  (source, source_ref)``; identical copies collapse, reads use ``FINAL``.
- ``tickvault_position_starts``: start times of trading processes and operator resets.
- ``tickvault_position_tombstones``: reconcile's verdicts on rows of a table tickvault did
  not create (it cannot append to that table).

**Latest row per trade: an explicit maximum of ``seq`` in the query, not ``FINAL``.**
:func:`latest_sql` selects, per trade, every row whose ordering key equals the trade's
maximum (``(trade, key) IN (SELECT trade, max(key) ... GROUP BY trade)``). That answer is
the same before, during and after any merge, on any engine the user's table has, because
it is computed from all rows present. ``ReplacingMergeTree ... FINAL`` was not chosen: it
collapses rows by the sorting key alone, so two different rows with equal ``seq`` (a write
race) would silently become one arbitrary survivor, and a read without ``FINAL`` sees
pre-merge duplicates; here both rows come back and restore refuses to guess between them.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from tickvault.core.errors import ConfigError
from tickvault.positions.backend import Candidate
from tickvault.positions.model import to_epoch_us
from tickvault.positions.store import STATE_COLUMNS, row_json
from tickvault.stores.clickhouse.schema import quote_ident, quote_str

OWN_PREFIX: Final = "tickvault_position_"
STATE_TABLE: Final = "tickvault_position_state"
QUARANTINE_TABLE: Final = "tickvault_position_quarantine"
STARTS_TABLE: Final = "tickvault_position_starts"
TOMBSTONE_TABLE: Final = "tickvault_position_tombstones"

KEY_MIN: Final = "toInt64('-9223372036854775808')"
"""The ordering key of a row without an integer seq: below every real one."""

_STATE_DDL: Final = """CREATE TABLE IF NOT EXISTS {db}.tickvault_position_state (
    trade_id String, symbol Nullable(String), side Nullable(String), status String,
    quantity Float64, notional Float64, entry_price Nullable(Float64),
    bars_held Nullable(Int64), ts Int64, seq Int64, exit_price Nullable(Float64),
    close_reason Nullable(String), origin String, writer String
) ENGINE = MergeTree() ORDER BY (trade_id, seq)"""

_QUARANTINE_DDL: Final = """CREATE TABLE IF NOT EXISTS {db}.tickvault_position_quarantine (
    source String, source_ref String, trade_id Nullable(String), reason String,
    row_json String, quarantined_at Int64
) ENGINE = ReplacingMergeTree() ORDER BY (source, source_ref)"""

_STARTS_DDL: Final = """CREATE TABLE IF NOT EXISTS {db}.tickvault_position_starts (
    scope String, event String, at Float64
) ENGINE = MergeTree() ORDER BY (scope, at)"""

_TOMBSTONE_DDL: Final = """CREATE TABLE IF NOT EXISTS {db}.tickvault_position_tombstones (
    source_table String, trade_id String, settles_ref String, reason String, ts Int64
) ENGINE = ReplacingMergeTree() ORDER BY (source_table, trade_id, settles_ref)"""


def own_tables_ddl(database: str, *, foreign: bool) -> list[str]:
    """``CREATE DATABASE`` and the tables tickvault needs next to a state table: its own
    snapshot table, or (``foreign``) the tombstone table for a user's table."""
    db = quote_ident(database)
    ddl = [f"CREATE DATABASE IF NOT EXISTS {db}"]
    ddl.append((_TOMBSTONE_DDL if foreign else _STATE_DDL).format(db=db))
    ddl.extend(t.format(db=db) for t in (_QUARANTINE_DDL, _STARTS_DDL))
    return ddl


def is_own_table(table: str) -> bool:
    return table.startswith(OWN_PREFIX)


def parse_columns(text: str | None) -> dict[str, str]:
    """``"quantity=qty,notional=size_usd"`` -> ``{"quantity": "qty", ...}``: tickvault's
    column names on the left, the table's on the right."""
    mapping: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        ours, sep, theirs = part.partition("=")
        ours, theirs = ours.strip(), theirs.strip()
        if not sep or not ours or not theirs:
            raise ConfigError(f"column mapping {part.strip()!r}: expected tickvault_name=column")
        mapping[ours] = theirs
    check_columns(mapping)
    return mapping


def check_columns(mapping: Mapping[str, str]) -> None:
    unknown = sorted(set(mapping) - set(STATE_COLUMNS))
    if unknown:
        raise ConfigError(
            f"unknown tickvault column(s) {', '.join(unknown)} in the mapping;"
            f" known: {', '.join(STATE_COLUMNS)}"
        )


_WRAPPED = re.compile(r"^(?:Nullable|LowCardinality)\((.+)\)$")


def base_type(ch_type: str) -> str:
    """``Nullable(LowCardinality(String))`` -> ``String``."""
    while (m := _WRAPPED.match(ch_type)) is not None:
        ch_type = m.group(1)
    return ch_type


def _is_int(t: str) -> bool:
    return re.fullmatch(r"U?Int(8|16|32|64|128|256)", t) is not None


class TableLayout:
    """How one state table's columns map to tickvault's and how its rows are ordered.

    ``table_columns`` is ``{column: ClickHouse type}`` as ``system.columns`` lists it.
    Rows are ordered by ``seq``; a table without a ``seq`` column is ordered by ``ts``.
    """

    def __init__(
        self,
        database: str,
        table: str,
        table_columns: Mapping[str, str],
        mapping: Mapping[str, str],
    ) -> None:
        check_columns(mapping)
        self.database, self.table = database, table
        self.qualified = f"{quote_ident(database)}.{quote_ident(table)}"
        self.sources: dict[str, tuple[str, str]] = {}
        """tickvault column -> (the table's column, its base type), for those present."""
        for ours in STATE_COLUMNS:
            theirs = mapping.get(ours, ours)
            if theirs in table_columns:
                self.sources[ours] = (theirs, base_type(table_columns[theirs]))
            elif ours in mapping:
                raise ConfigError(f"table {database}.{table} has no column {theirs!r} (for {ours})")
        if "trade_id" not in self.sources:
            raise ConfigError(
                f"table {database}.{table} has no trade_id column; map it:"
                " --columns trade_id=<column>"
            )
        self.order_by = "seq" if "seq" in self.sources else "ts"
        if self.order_by not in self.sources:
            raise ConfigError(
                f"table {database}.{table} has neither a seq nor a ts column to order rows by;"
                " map one: --columns seq=<column>"
            )
        self.has_origin = "origin" in table_columns and is_own_table(table)
        self.trade_key = f"ifNull(toString({quote_ident(self.sources['trade_id'][0])}), '')"
        self.order_key = _order_key(*self.sources[self.order_by])

    def _select_list(self) -> str:
        parts = []
        for ours, (theirs, t) in self.sources.items():
            col = quote_ident(theirs)
            if ours == "ts" and t == "DateTime":
                parts.append(f"toInt64(toUInt32({col})) * 1000000 AS {quote_ident(ours)}")
            elif ours == "ts" and t.startswith("DateTime64"):
                parts.append(f"toUnixTimestamp64Micro({col}) AS {quote_ident(ours)}")
            else:
                parts.append(f"{col} AS {quote_ident(ours)}")
        if self.has_origin:
            parts.append("origin")
        parts.append(f"{self.order_key} AS _tv_k")
        parts.append(f"{self.trade_key} AS _tv_tk")
        return ", ".join(parts)

    def latest_sql(self, trade_id: str | None = None) -> str:
        """Every row at its trade's maximal ordering key (rows without one rank lowest)."""
        key = f"ifNull({self.order_key}, {KEY_MIN})"
        where = "" if trade_id is None else f" WHERE {self.trade_key} = {quote_str(trade_id)}"
        return (
            f"SELECT {self._select_list()} FROM {self.qualified}"
            f" WHERE ({self.trade_key}, {key}) IN (SELECT {self.trade_key}, max({key})"
            f" FROM {self.qualified}{where} GROUP BY {self.trade_key})"
        )

    def unordered_sql(self) -> str:
        """Trades with rows that have no integer ordering key, and how many."""
        return (
            f"SELECT {self.trade_key} AS tk, countIf(isNull({self.order_key})) AS n"
            f" FROM {self.qualified} GROUP BY tk HAVING countIf(isNull({self.order_key})) > 0"
        )

    def rows_sql(self) -> str:
        return (
            f"SELECT {self._select_list()} FROM {self.qualified}"
            f" ORDER BY _tv_tk, ifNull(_tv_k, {KEY_MIN})"
        )


def _order_key(column: str, t: str) -> str:
    """An Int64 (NULL when the value has no integer reading) that orders a trade's rows."""
    col = quote_ident(column)
    if _is_int(t):
        return f"toInt64({col})"
    if t == "DateTime":
        return f"toInt64(toUInt32({col}))"
    return f"toInt64OrNull(toString({col}))"


# -- decoding answers ------------------------------------------------------------------------

_FLOAT_TEXT: Final = {"nan": math.nan, "-nan": math.nan, "inf": math.inf, "+inf": math.inf}
_FLOAT_TEXT_NEG: Final = {"-inf": -math.inf}


def _decoder(ch_type: str) -> Any:
    t = base_type(ch_type)
    if t.startswith("Float"):
        return _float
    if t.startswith("Decimal"):
        return lambda v: v if v is None else float(v)
    if _is_int(t):
        return _integer
    return None


def _integer(value: Any) -> Any:
    """64-bit integers arrive quoted when the output settings could not be sent."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value


def _float(value: Any) -> Any:
    """Floats of a JSON answer sent with ``output_format_json_quote_denormals=1``."""
    if isinstance(value, str):
        lowered = value.lower()
        if lowered in _FLOAT_TEXT:
            return _FLOAT_TEXT[lowered]
        if lowered in _FLOAT_TEXT_NEG:
            return _FLOAT_TEXT_NEG[lowered]
        return value
    return float(value) if isinstance(value, int) else value


def decode(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of a ``JSONCompact`` answer as dicts; floats keep NaN and infinities."""
    meta = doc.get("meta", [])
    names = [str(m["name"]) for m in meta]
    decoders = [_decoder(str(m["type"])) for m in meta]
    out = []
    for raw in doc.get("data", []):
        out.append(
            {
                n: (v if d is None or v is None else d(v))
                for n, d, v in zip(names, decoders, raw, strict=True)
            }
        )
    return out


def state_row(raw: dict[str, Any], layout: TableLayout) -> dict[str, Any]:
    """tickvault's view of one answer row: every state column (None when the table has
    none), ``ts`` as epoch microseconds where it reads as a time, ``seq`` as the ordering
    key where the table orders by ``ts`` or keeps ``seq`` as text."""
    row = {c: raw.get(c) for c in STATE_COLUMNS}
    ts = row["ts"]
    if ts is not None and not isinstance(ts, bool):
        with contextlib.suppress(ValueError):
            row["ts"] = to_epoch_us(ts)
    key = raw.get("_tv_k")
    if key is not None and (layout.order_by == "ts" or not isinstance(row["seq"], int)):
        row["seq"] = key
    return row


def ref_of(row: Mapping[str, Any]) -> str:
    """A row's identity within its table: the SHA-1 of its values (tables have no row id;
    identical duplicates share one ref, which is what they are)."""
    return "sha1:" + hashlib.sha1(row_json(dict(row)).encode()).hexdigest()


def pick_latest(
    raws: Iterable[dict[str, Any]], layout: TableLayout, unordered: Mapping[str, int]
) -> list[Candidate]:
    """Candidates from :meth:`TableLayout.latest_sql` rows (several per trade when rows
    share the maximal key) and :meth:`TableLayout.unordered_sql` counts.

    A trade whose latest rows differ is malformed ("write race"), unless all are CLOSED.
    A trade with unordered rows is malformed unless its latest ordered row is CLOSED.
    """
    by_trade: dict[str, dict[str, tuple[dict[str, Any], Any]]] = {}
    for raw in raws:
        row = state_row(raw, layout)
        by_trade.setdefault(str(raw["_tv_tk"]), {})[ref_of(row)] = (row, raw.get("_tv_k"))
    out = []
    for trade, rows in by_trade.items():
        refs = sorted(rows)
        row, key = rows[refs[0]]
        problem = None
        n_unordered = unordered.get(trade, 0)
        if key is None:
            problem = f"unordered history: {n_unordered} row(s) of this trade have no integer seq"
        elif len(refs) > 1 and any(r.get("status") != "CLOSED" for r, _ in rows.values()):
            problem = (
                f"{len(refs)} different rows share the latest {layout.order_by} {key}"
                " (a write race); cannot tell which is current"
            )
        elif n_unordered and row.get("status") != "CLOSED":
            problem = f"unordered history: {n_unordered} row(s) of this trade have no integer seq"
        out.append(Candidate(refs[0], row, problem))
    return out


def insert_sql(qualified: str, columns: Iterable[str]) -> str:
    return (
        f"INSERT INTO {qualified} ({', '.join(quote_ident(c) for c in columns)}) FORMAT JSONEachRow"
    )
