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

from tickvault.positions.model import Malformed, assess_latest
from tickvault.positions.restore import judge
from tickvault.positions.sources import StateStoreSource
from tickvault.positions.store import PositionStore


class MalformedRow(msgspec.Struct, frozen=True, kw_only=True):
    row_id: int
    trade_id: Any
    reason: str
    status: Any
    quantity: Any
    notional: Any
    origin: str | None = None


class Tombstone(msgspec.Struct, frozen=True, kw_only=True):
    trade_id: Any
    row_id: int
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


def find_malformed(store: PositionStore) -> tuple[list[MalformedRow], list[MalformedRow]]:
    """``(latest, superseded)`` malformed rows of ``store`` (see the module docstring)."""
    candidates = StateStoreSource(store).read() or []
    _, quarantined = judge(candidates, "state-store")
    latest_reasons = {int(q.source_ref.removeprefix("row:")): q.reason for q in quarantined}
    latest: list[MalformedRow] = []
    superseded: list[MalformedRow] = []
    for row in store.iter_rows():
        row_id = row["row_id"]
        if row_id in latest_reasons:
            latest.append(_malformed(row, latest_reasons[row_id]))
        elif row.get("status") != "CLOSED":
            verdict = assess_latest(row)
            if isinstance(verdict, Malformed):
                superseded.append(_malformed(row, verdict.reason))
    return latest, superseded


def reconcile(
    store: PositionStore, *, apply: bool = False, clock: Callable[[], float] = time.time
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
