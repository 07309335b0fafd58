"""Reconcile legacy malformed rows: list them, and settle them with tombstones on request.

A trade whose latest row is malformed is quarantined at every restore, forever, until
something newer settles it. :func:`reconcile` lists:

- ``latest``: malformed rows that are their trade's latest (what restore quarantines);
- ``superseded``: malformed rows already followed by a valid row (harmless history).

With ``apply=True`` it appends, for each ``latest`` row, a tombstone: a ``CLOSED`` row
(quantity and notional 0, ``origin = 'reconcile'``, the reason in ``close_reason``) that
becomes the trade's latest, so restore sees the trade as flat. History is never deleted or
rewritten. A row that stopped being its trade's latest between listing and applying is
left alone (reported as skipped). Check the venue first: a tombstone declares the trade
flat.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from tickvault.positions.backend import PositionBackend, row_ref
from tickvault.positions.model import Malformed, assess_latest
from tickvault.positions.restore import judge
from tickvault.positions.sources import StateStoreSource


class MalformedRow(msgspec.Struct, frozen=True, kw_only=True):
    row_id: int | str
    """The row's id (SQLite) or its ``sha1:`` content reference (ClickHouse)."""
    trade_id: Any
    reason: str
    status: Any
    quantity: Any
    notional: Any
    origin: str | None = None


class Tombstone(msgspec.Struct, frozen=True, kw_only=True):
    trade_id: Any
    row_id: int | str
    """The malformed row it settles."""
    seq: int | None
    """The tombstone's seq; None when it was skipped (the row was no longer the latest)."""


class ReconcileReport(msgspec.Struct, kw_only=True):
    latest: list[MalformedRow]
    superseded: list[MalformedRow]
    applied: bool
    tombstones: list[Tombstone] = msgspec.field(default_factory=list)


def _malformed(row: dict[str, Any], reason: str) -> MalformedRow:
    return MalformedRow(
        row_id=row["row_id"],
        trade_id=row.get("trade_id"),
        reason=reason,
        status=row.get("status"),
        quantity=row.get("quantity"),
        notional=row.get("notional"),
        origin=row.get("origin"),
    )


def find_malformed(store: PositionBackend) -> tuple[list[MalformedRow], list[MalformedRow]]:
    """``(latest, superseded)`` malformed rows of ``store`` (see the module docstring)."""
    candidates = StateStoreSource(store).read() or []
    _, quarantined = judge(candidates, store.source_name)
    latest_reasons = {q.source_ref: q.reason for q in quarantined}
    latest: list[MalformedRow] = []
    superseded: list[MalformedRow] = []
    listed: set[str] = set()
    for row in store.iter_rows():
        ref = row_ref(row)
        if ref in latest_reasons:
            if ref not in listed:  # identical duplicate rows share one ref: list it once
                listed.add(ref)
                latest.append(_malformed(row, latest_reasons[ref]))
        elif row.get("status") != "CLOSED":
            verdict = assess_latest(row)
            if isinstance(verdict, Malformed):
                superseded.append(_malformed(row, verdict.reason))
    return latest, superseded


def reconcile(
    store: PositionBackend, *, apply: bool = False, clock: Callable[[], float] = time.time
) -> ReconcileReport:
    """List malformed rows; with ``apply``, tombstone every trade whose latest is one."""
    latest, superseded = find_malformed(store)
    report = ReconcileReport(latest=latest, superseded=superseded, applied=apply)
    if apply:
        for m in latest:
            reason = f"reconcile: tombstone for malformed row {m.row_id} ({m.reason})"
            seq = store.append_tombstone(m.trade_id, m.row_id, reason, round(clock() * 1e6))
            report.tombstones.append(Tombstone(trade_id=m.trade_id, row_id=m.row_id, seq=seq))
    return report
