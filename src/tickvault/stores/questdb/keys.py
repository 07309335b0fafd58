"""Natural-key lookups of the QuestDB store: which stored rows may share a key with a batch."""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tickvault.core.records import KindSpec
from tickvault.stores.keys import event_time

RESEND_WINDOW_US = 86_400_000_000
"""How far apart (µs of designated time) a record and a venue's resend of it are looked for."""


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _iso(micros: int) -> str:
    seconds, frac = divmod(micros, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:06d}Z"


def key_filter(spec: KindSpec, batch: pa.Table) -> str:
    """``WHERE`` text matching the stored rows that may share a natural key with ``batch``.

    QuestDB's UPSERT KEYS include the designated timestamp, so it collapses a redelivery
    (same bytes) but not a venue's resend or a conflicting version whose designated
    timestamp differs (a quote's arrival time ``ts_recv``; a trade re-sent with another
    time). So the lookup is by natural key, over the batch's designated-timestamp range
    widened by :data:`RESEND_WINDOW_US` when that timestamp is not part of the key (QuestDB
    then scans only those partitions), with each integer key column bounded by the batch's
    own min and max (ids are dense, so few rows come back). A version stored further than
    that window away is not found.
    """
    ts = event_time(spec)
    micros = pc.cast(batch.column(ts), pa.int64())
    bounds = pc.min_max(micros).as_py()
    widen = 0 if ts in spec.key else RESEND_WINDOW_US
    where = [
        f"{ts} >= {sql_str(_iso(max(0, bounds['min'] - widen)))}",
        f"{ts} <= {sql_str(_iso(bounds['max'] + widen))}",
    ]
    for name in spec.key:
        kind = batch.schema.field(name).type
        if kind == pa.string():
            values = pc.unique(batch.column(name)).to_pylist()
            where.append(f"{name} IN ({', '.join(sql_str(v) for v in values)})")
        elif kind == pa.int64():
            ids = pc.min_max(batch.column(name)).as_py()
            where.append(f"{name} BETWEEN {int(ids['min'])} AND {int(ids['max'])}")
    return " AND ".join(where)


def key_tuples(spec: KindSpec, batch: pa.Table) -> list[tuple[Any, ...]]:
    columns = [batch.column(c).to_pylist() for c in spec.key]
    return list(zip(*columns, strict=True))
