"""Natural-key helpers shared by the server-backed stores."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from tickvault.core.records import KindSpec

EVENT_TIME: dict[str, str] = {
    "trade": "ts_event",
    "agg_trade": "ts_event",
    "depth": "ts_event",
    "bar": "ts_open",
    "quote": "ts_recv",  # a quote's ts_event may be NULL (Binance spot bookTicker)
}
"""Per kind, the timestamp a store partitions by (ClickHouse) or designates (QuestDB).

It never changes when a record is redelivered (the bytes are the same), so the copies of a
redelivered record land in the same partition and collapse there.
"""


def event_time(spec: KindSpec) -> str:
    """The kind's event-time column (see :data:`EVENT_TIME`); for kinds not listed there,
    a non-nullable timestamp column: one in the key, else ``ts_event``, else ``ts_recv``,
    else the first one."""
    if spec.kind in EVENT_TIME:
        return EVENT_TIME[spec.kind]
    required = [
        str(f.name) for f in spec.schema if f.name in spec.timestamp_columns and not f.nullable
    ]
    for name in [*(k for k in spec.key if k in required), "ts_event", "ts_recv", *required]:
        if name in required:
            return name
    raise ValueError(f"record kind {spec.kind} has no non-nullable timestamp column")


def order_column(spec: KindSpec) -> str:
    """The column ``latest()`` orders by: ``ts_recv`` where the kind has it, else event time."""
    return (
        "ts_open"
        if spec.kind == "bar"
        else ("ts_recv" if "ts_recv" in spec.columns else event_time(spec))
    )


def first_per_key(table: pa.Table, spec: KindSpec) -> pa.Table:
    """``table`` without rows whose natural key appeared earlier in it."""
    table = table.combine_chunks()
    numbered = table.select(list(spec.key)).append_column(
        "_tv_i", pa.array(range(table.num_rows), pa.int64())
    )
    firsts = numbered.group_by(list(spec.key), use_threads=False).aggregate([("_tv_i", "min")])
    if firsts.num_rows == table.num_rows:
        return table
    first_rows = firsts.column("_tv_i_min")
    return table.take(pc.take(first_rows, pc.sort_indices(first_rows)))
