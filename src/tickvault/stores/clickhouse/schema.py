"""ClickHouse table layout for the public tables, and turning JSON answers back into values.

Every public table (:data:`tickvault.core.records.KINDS`) becomes::

    CREATE TABLE IF NOT EXISTS db.trades (<columns in KINDS order>, <guard>)
    ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(<event time>) ORDER BY (<natural key>)

* ``ORDER BY`` the natural key: rows with equal keys collapse in background merges, and
  ``FINAL`` collapses them at read time, so a redelivered batch never shows up twice.
* Partitioned by month of the kind's *event* time (trade/agg/depth ``ts_event``, bar
  ``ts_open``, quote ``ts_recv`` since its ``ts_event`` may be NULL): a redelivered record
  carries the same bytes, so its copies land in the same partition and collapse.
* Timestamps: ``DateTime64(6, 'UTC')`` where the server has it (20.1+); ``Int64``
  microseconds since the epoch on older servers (18.16 has only second-precision
  ``DateTime``). :func:`decode_rows` turns the latter back into datetimes for the public
  timestamp columns, so ``query`` returns the same values on every server.
* Booleans are ``UInt8`` (``Bool`` is a 21.12+ alias); ``query`` returns them as bool.
* A value guard mirrors the validation rules of :mod:`tickvault.core.records` (finite positive
  prices, non-negative sizes, non-empty names): a ``CHECK`` constraint on 19.14+, and on
  older servers a ``MATERIALIZED`` column computing ``throwIf(NOT ...)``, which ``SELECT *``
  does not return. A row that breaks it makes the server refuse the insert.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from tickvault.core.records import KINDS, KindSpec
from tickvault.stores.clickhouse.http import ServerFeatures
from tickvault.stores.keys import event_time

GUARD_COLUMN = "_tv_guard"
GUARD_CONSTRAINT = "tv_guard"
PUBLIC_TIMESTAMPS = frozenset(c for s in KINDS.values() for c in s.timestamp_columns)
PUBLIC_BOOLS = frozenset(f.name for s in KINDS.values() for f in s.schema if f.type == pa.bool_())
_EPOCH = dt.datetime(1970, 1, 1)


def quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def column_type(field: pa.Field, features: ServerFeatures) -> str:
    t = field.type
    if t == pa.string():
        base = "String"
    elif t == pa.int64():
        base = "Int64"
    elif t == pa.float64():
        base = "Float64"
    elif t == pa.bool_():
        base = "UInt8"
    elif pa.types.is_timestamp(t):
        base = "DateTime64(6, 'UTC')" if features.datetime64 else "Int64"
    elif t == pa.list_(pa.float64()):
        return "Array(Float64)"
    else:  # pragma: no cover - KINDS only uses the types above
        raise ValueError(f"no ClickHouse type for {t}")
    return f"Nullable({base})" if field.nullable else base


def _rule_sql(name: str, rule: str, nullable: bool) -> str | None:
    col = f"assumeNotNull({name})" if nullable else name
    if rule == "positive":
        cond = f"(isFinite({col}) AND {col} > 0)"
    elif rule == "non_negative":
        cond = f"(isFinite({col}) AND {col} >= 0)"
    elif rule == "text":
        cond = f"length({col}) > 0"
    else:
        return None
    return f"(isNull({name}) OR {cond})" if nullable else cond


def guard_condition(spec: KindSpec) -> str:
    """A boolean SQL expression that holds for every valid row of ``spec``'s table."""
    nullable = {f.name: f.nullable for f in spec.schema}
    parts: list[str] = []
    for name, rules in spec.rules.items():
        for rule in rules:
            sql = _rule_sql(name, rule, nullable[name])
            if sql is not None:
                parts.append(sql)
    for name, rule in spec.list_rules.items():
        op = ">" if rule == "positive" else ">="
        parts.append(f"arrayAll(x -> isFinite(x) AND x {op} 0, {name})")
    if spec.kind == "bar":
        parts.append("high >= low")
    if spec.kind == "depth":
        parts.append(
            "length(bid_prices) = length(bid_qtys) AND length(ask_prices) = length(ask_qtys)"
        )
    return " AND ".join(parts) if parts else "1"


def create_table_sql(spec: KindSpec, database: str, features: ServerFeatures) -> str:
    cols = [f"{quote_ident(f.name)} {column_type(f, features)}" for f in spec.schema]
    guard = guard_condition(spec)
    if features.constraints:
        cols.append(f"CONSTRAINT {GUARD_CONSTRAINT} CHECK {guard}")
    else:
        cols.append(f"{GUARD_COLUMN} UInt8 MATERIALIZED throwIf(NOT ({guard}))")
    event = event_time(spec)
    partition_time = event if features.datetime64 else f"toDateTime(intDiv({event}, 1000000))"
    settings = (
        " SETTINGS non_replicated_deduplication_window = 1000" if features.dedup_token else ""
    )
    return (
        f"CREATE TABLE IF NOT EXISTS {quote_ident(database)}.{quote_ident(spec.table)}"
        f" ({', '.join(cols)}) ENGINE = ReplacingMergeTree()"
        f" PARTITION BY toYYYYMM({partition_time})"
        f" ORDER BY ({', '.join(quote_ident(k) for k in spec.key)}){settings}"
    )


def bars_migration_sql(
    columns: dict[str, str], database: str, constraint: bool | None
) -> list[str]:
    """Statements that bring a ``bars`` table created before nullable volume and the
    ``adjusted`` flag up to date (none when it is current or absent).

    ``columns`` maps the existing table's column names to their types (``system.columns``);
    ``constraint`` says whether the table has the ``CHECK`` guard (None: the server has no
    constraints, 19.14+; False: it has, the table lacks it, so it is added). The value guard
    is replaced first (the new one holds for both layouts), then ``volume`` becomes
    ``Nullable(Float64)`` and ``adjusted`` is added with ``DEFAULT 1``, so rows stored
    before read as adjusted (every earlier download asked for adjusted prices). Stored
    values are not rewritten.
    """
    if not columns:
        return []
    spec = KINDS["bar"]
    volume_nullable = columns.get("volume", "").startswith("Nullable(")
    if volume_nullable and "adjusted" in columns:
        return []
    table = f"{quote_ident(database)}.{quote_ident(spec.table)}"
    guard = guard_condition(spec)
    steps: list[str] = []
    if GUARD_COLUMN in columns:
        steps.append(
            f"ALTER TABLE {table} MODIFY COLUMN {GUARD_COLUMN} UInt8"
            f" MATERIALIZED throwIf(NOT ({guard}))"
        )
    elif constraint is not None:
        if constraint:
            steps.append(f"ALTER TABLE {table} DROP CONSTRAINT {GUARD_CONSTRAINT}")
        steps.append(f"ALTER TABLE {table} ADD CONSTRAINT {GUARD_CONSTRAINT} CHECK {guard}")
    if not volume_nullable:
        steps.append(f"ALTER TABLE {table} MODIFY COLUMN volume Nullable(Float64)")
    if "adjusted" not in columns:
        steps.append(f"ALTER TABLE {table} ADD COLUMN adjusted UInt8 DEFAULT 1 AFTER trade_count")
    return steps


# -- decoding JSONCompact answers ------------------------------------------------------------

_WRAPPED = re.compile(r"^(Nullable|LowCardinality)\((.+)\)$")
_ARRAY = re.compile(r"^Array\((.+)\)$")


def _parse_datetime(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def _micros_to_datetime(value: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=value)


def _or_none(inner: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else inner(v)


def _each(inner: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: [inner(x) for x in v]


def _decoder(ch_type: str, name: str, legacy: bool) -> Callable[[Any], Any] | None:
    """How to turn one JSON value of ``ch_type`` into Python (None: leave it as it is)."""
    wrapped = _WRAPPED.match(ch_type)
    if wrapped:
        inner = _decoder(wrapped.group(2), name, legacy)
        return None if inner is None else _or_none(inner)
    array = _ARRAY.match(ch_type)
    if array:
        inner = _decoder(array.group(1), name, legacy)
        return None if inner is None else _each(inner)
    if ch_type in ("Float64", "Float32"):
        return float
    if ch_type.startswith("DateTime"):
        return _parse_datetime
    if ch_type == "Date":
        return dt.date.fromisoformat
    if legacy and ch_type == "Int64" and name in PUBLIC_TIMESTAMPS:
        return _micros_to_datetime
    if ch_type in ("UInt8", "Bool") and name in PUBLIC_BOOLS:
        return bool
    return None


def decode_rows(
    doc: dict[str, Any], *, legacy_timestamps: bool
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and typed rows of a ``JSONCompact`` document.

    With ``legacy_timestamps`` (tables created on a server without DateTime64), result
    columns named like a public timestamp column and typed ``Int64`` are microseconds since
    the epoch and come back as datetimes; expressions over them stay integers.
    """
    meta = doc.get("meta", [])
    columns = [str(m["name"]) for m in meta]
    decoders = [_decoder(str(m["type"]), str(m["name"]), legacy_timestamps) for m in meta]
    rows: list[tuple[Any, ...]] = []
    if any(d is not None for d in decoders):
        for raw in doc.get("data", []):
            rows.append(tuple(v if d is None else d(v) for d, v in zip(decoders, raw, strict=True)))
    else:
        rows = [tuple(raw) for raw in doc.get("data", [])]
    return columns, rows
