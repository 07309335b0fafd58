"""Natural-key helpers shared by the server-backed stores."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from tickvault.records import KindSpec

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
