"""``tickvault rebuild``: re-write records the bus still retains into a store.

The bus keeps acknowledged entries for ``[bus] retention`` (see
:meth:`~tickvault.bus.base.Bus.trim_retained`), so a store that lost or skipped a time range
is repaired by a replay instead of an export/drop/import. Records go through the normal
path — :func:`~tickvault.core.codec.decode_frame`, :func:`~tickvault.core.codec.split_valid`,
:meth:`~tickvault.stores.base.Store.write` — and every write is idempotent on the natural
keys, so running it over a store that already holds part of the range adds only what is
missing and changes nothing else. Nothing is deleted or overwritten.

Range: a record is rebuilt when its event time (``ts_event``, or ``ts_open`` for bars) is in
``[since, until)``. Entries are scanned from ``since - skew_s`` by append time (a record is
appended after it happened, give or take clock skew) with no upper bound, because a
backfill can append old records late.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tickvault.bus.base import Bus
from tickvault.core.codec import decode_frame, split_valid
from tickvault.core.errors import ConfigError, DecodeError
from tickvault.core.records import KINDS
from tickvault.stores.base import Store

log = logging.getLogger(__name__)

EPOCH = dt.datetime(1970, 1, 1)


@dataclass
class RebuildReport:
    stream: str
    since: str
    until: str | None
    dry_run: bool
    entries_scanned: int = 0
    rows_in_range: int = 0
    inserted: int = 0
    already_stored: int = 0
    undecodable_entries: int = 0
    invalid_rows: int = 0
    by_table: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def event_time_column(kind: str) -> str | None:
    cols = KINDS[kind].timestamp_columns
    for name in ("ts_event", "ts_open"):
        if name in cols:
            return name
    return cols[0] if cols else None


def parse_time(value: str, now: dt.datetime | None = None) -> dt.datetime:
    """ISO 8601 (``2025-11-10T03:20:00Z``; naive means UTC), epoch seconds, or a duration ago
    (``2h``, ``30m``, ``7d``). Returns a naive UTC datetime."""
    from tickvault.delivery.upkeep import parse_duration_ms

    text = value.strip()
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    if text and text[-1] in "smhd" and text[0].isdigit():
        try:
            return now - dt.timedelta(milliseconds=parse_duration_ms(text))
        except ConfigError:
            pass
    try:
        return EPOCH + dt.timedelta(seconds=float(text))
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"invalid time {value!r}: use ISO 8601 (2025-11-10T03:20:00Z), epoch seconds,"
            " or a duration ago (2h)"
        ) from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return parsed


def _in_range(table: pa.Table, column: str, since: dt.datetime, until: dt.datetime | None) -> Any:
    col = table.column(column)
    mask = pc.greater_equal(col, pa.scalar(since, type=col.type))
    if until is not None:
        mask = pc.and_(mask, pc.less(col, pa.scalar(until, type=col.type)))
    return table.filter(mask)


async def rebuild(
    bus: Bus,
    store: Store,
    stream: str,
    since: dt.datetime,
    until: dt.datetime | None = None,
    *,
    dry_run: bool = False,
    skew_s: float = 300.0,
    page: int = 500,
    progress: Callable[[RebuildReport], None] | None = None,
) -> RebuildReport:
    """Write the retained records of ``stream`` with event time in ``[since, until)``."""
    report = RebuildReport(stream, since.isoformat(), until.isoformat() if until else None, dry_run)
    if not dry_run:
        await store.ensure_schema()
    since_ms = max(0, int(((since - EPOCH).total_seconds() - skew_s) * 1000))
    after: str | None = None
    while True:
        entries = await bus.scan(stream, since_ms, None, limit=page, after_id=after)
        if not entries:
            break
        after = entries[-1].id
        tables: dict[str, list[pa.Table]] = {}
        for entry in entries:
            report.entries_scanned += 1
            try:
                frame = decode_frame(entry.payload)
                table, rejects = split_valid(frame)
            except DecodeError:
                report.undecodable_entries += 1
                continue
            report.invalid_rows += len(rejects)
            column = event_time_column(frame.kind)
            if column is None or not table.num_rows:
                continue
            chosen = _in_range(table, column, since, until)
            if chosen.num_rows:
                tables.setdefault(frame.kind, []).append(chosen)
        for kind, parts in tables.items():
            table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
            report.rows_in_range += table.num_rows
            if dry_run:
                continue
            inserted = await store.write(kind, table)
            report.inserted += inserted
            report.already_stored += table.num_rows - inserted
            name = KINDS[kind].table
            report.by_table[name] = report.by_table.get(name, 0) + inserted
        if progress is not None:
            progress(report)
    log.info(
        "rebuild %s: %d rows in range, %d inserted", stream, report.rows_in_range, report.inserted
    )
    return report
